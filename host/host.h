// Internal C++ side of the asymvq host (not installed): the engines directory, its AOTInductor
// engines, the schedulers and the inpainting loop. The C API (c_api.cpp) wraps it and turns
// every exception into a status and a message.
#pragma once

#include <ATen/ATen.h>

#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "asymvq/asymvq.h"

namespace torch::inductor {
class AOTIModelPackageLoader;
}

namespace asymvq {

namespace json {
struct Value;
}

// Thrown inside the library; c_api.cpp turns it into (status, message).
struct HostError : std::runtime_error {
  asymvq_status status;
  HostError(asymvq_status s, const std::string& msg) : std::runtime_error(msg), status(s) {}
};

[[noreturn]] inline void fail(asymvq_status s, const std::string& msg) { throw HostError(s, msg); }
// "arg: expected X, got Y" (the Python side's wording).
[[noreturn]] inline void fail_arg(const std::string& arg, const std::string& expected, const std::string& got) {
  fail(ASYMVQ_ERR_INVALID_ARGUMENT, arg + ": expected " + expected + ", got " + got);
}
std::string shape_str(at::IntArrayRef shape);

constexpr int64_t kVaeScale = 8;  // image pixels a latent pixel: LatentSpace.vae_scale_factor (every VAE of the family)

// Input checks shared by decode and the inpainting job (decode.cpp), in the Python side's words.
void check_finite(const at::Tensor& t, const std::string& arg, const std::string& expected);
std::string range_str(const at::Tensor& t);  // "values in [lo, hi]"
void check_image(const at::Tensor& image, const std::string& arg);  // finite, in [-1, 1]

struct Dim {
  bool symbolic = false;
  int64_t value = 0;     // fixed size
  int64_t factor = 1;    // "8*h": factor 8, base "h"
  std::string base;      // symbolic base name ("batch", "h", "w")
  std::string text;      // as written in the manifest
};

struct TensorSpec {
  std::string name, dtype;
  std::vector<Dim> dims;
  std::vector<int64_t> min, opt, max;
  std::string dims_str() const;
};

// One component's AOTInductor package with the manifest's I/O specs.
class Engine {
 public:
  Engine(std::string component, std::vector<TensorSpec> inputs, std::vector<TensorSpec> outputs, const std::string& path,
         const at::Device& device);
  ~Engine();
  // Feeds in input order; conformed (batch 1 expanded, dtype and device), checked against the
  // exported ranges and tied dims, run; outputs as float32 on the host's device.
  std::vector<at::Tensor> run(std::vector<at::Tensor> feeds);
  const std::string component;
  const std::vector<TensorSpec> inputs, outputs;

 private:
  at::Device device_;
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> loader_;
};

inline at::Tensor run1(Engine& e, std::vector<at::Tensor> feeds) { return e.run(std::move(feeds)).at(0); }

struct SchedulerConfig {
  int64_t num_train_timesteps = 1000;
  double beta_start = 0.0001, beta_end = 0.02;
  std::string beta_schedule = "linear";
  std::string prediction_type = "epsilon";
  std::string timestep_spacing;  // empty: the scheduler's own default (DDIM leading, Euler linspace)
  int64_t steps_offset = 0;
  bool set_alpha_to_one = true;
  bool clip_sample = true;
  double clip_sample_range = 1.0;
  std::string interpolation_type = "linear";
  std::string final_sigmas_type = "zero";
  std::vector<std::string> unsupported;  // options set that this host does not implement (refused on use)
};

// manifest.json's latent_space (asymvq.models.latent_space.LatentSpace): what the UNet loop runs on
// (diffusion space) against what the VAE encoder yields and the decoder takes (VAE space).
struct LatentSpace {
  int64_t channels = 0;
  double scaling_factor = 0.0, shift_factor = 0.0;
  // z / scaling_factor + shift_factor; no shift added when it is 0 (bit for bit Python's SD arithmetic).
  at::Tensor to_vae(const at::Tensor& z) const;
  // (x - shift_factor) * scaling_factor.
  at::Tensor to_diffusion(const at::Tensor& x) const;
};

// manifest.json's "region" (asymvq.models.region.RegionModel): the default margin of a region decode and the cost
// model region AUTO decides with (a region decode takes fit_a + fit_b * share of the full decode's time).
struct RegionModel {
  int64_t default_margin = 0;
  double fit_a = 0.0, fit_b = 0.0, auto_min_speedup = 0.0;
};
std::optional<RegionModel> read_region_model(const json::Value& manifest, const std::string& where);  // region.cpp

struct Host {
  std::string root;
  at::Device device{at::kCPU};
  std::string precision = "fp32";
  LatentSpace latent_space;
  std::optional<RegionModel> region_model;  // none: a directory exported before the manifest recorded it
  std::string family = "sd";  // the manifest's: sd runs every call; sdxl and flux-fill decode only
  std::vector<std::unique_ptr<Engine>> engines;
  bool has_scheduler = false;
  SchedulerConfig scheduler;
  std::vector<int64_t> empty_prompt_ids;  // "" through the exported CLIP tokenizer (padding to 77), when it is there
  int64_t vocab_size = 0;                  // token ids must be below this (0: no tokenizer, ids refused)
  std::mutex lock;                         // one call at a time per handle

  Engine* find(const std::string& component) const;
  Engine& need(const std::string& component, const std::string& why) const;
};

std::unique_ptr<Host> open_host(const std::string& dir, const std::string& device);

// VAE-space latents -> image; decode_scaled takes diffusion-space latents (h.latent_space.to_vae first).
at::Tensor decode(Host& h, const at::Tensor& latents, const at::Tensor* image, const at::Tensor* mask);
at::Tensor decode_scaled(Host& h, const at::Tensor& latents, const at::Tensor* image, const at::Tensor* mask);

struct Box {
  int64_t y0, y1, x0, x1;  // latent pixels, [y0, y1) x [x0, x1)
};

// What a region request decodes (asymvq.models.region.RegionChoice; the C API's asymvq_region_choice).
struct RegionChoice {
  asymvq_decoded decoded = ASYMVQ_DECODED_FULL;
  Box box{0, 0, 0, 0};      // the box decoded; the whole latent for FULL, zeros for NONE
  double share = 1.0;       // the mask's (snapped) box's fraction of the latent
  double speedup = 1.0;     // predicted by the cost model for that box (NaN without a region model)
  double min_speedup = std::numeric_limits<double>::quiet_NaN();  // AUTO's threshold, the manifest's
};

// region.cpp. Refuses (ASYMVQ_ERR_UNSUPPORTED, naming the re-export) a request that needs the manifest's region model
// (AUTO, or the default margin: margin < 0) on a directory that records none.
void require_region_model(const Host& h, asymvq_region region, int64_t margin);
// The box a region request decodes for the checked (B or 1, 1, 8 lh, 8 lw) mask (asymvq.models.region.choose_region):
// the mask's box grown by `margin` (< 0: the manifest's default) and snapped to `latent_spec`'s range; MASK decodes it
// (refused when no crop fits the engine), AUTO only at the manifest's auto_min_speedup or more, else the whole image.
RegionChoice choose_region(const Host& h, const at::Tensor& mask, int64_t margin, int64_t lh, int64_t lw,
                           const TensorSpec& latent_spec, asymvq_region region);

// Region decoding: `region` (an int from the caller) ASYMVQ_REGION_MASK or _AUTO, as choose_region decides; every
// pixel outside the box is `image`. `choice`, when given, receives what was decoded.
at::Tensor decode_region(Host& h, const at::Tensor& latents, const at::Tensor& image, const at::Tensor& mask, int region,
                         int64_t margin, RegionChoice* choice);
at::Tensor decode_region_scaled(Host& h, const at::Tensor& latents, const at::Tensor& image, const at::Tensor& mask,
                                int region, int64_t margin, RegionChoice* choice);
// The region decode of checked inputs (VAE-space latents, image in [-1, 1], mask in {0, 1}), which decode_region and
// inpaint's decode step share.
at::Tensor decode_checked_region(Host& h, const at::Tensor& latents, const at::Tensor& image, const at::Tensor& mask,
                                 int64_t margin, asymvq_region region, RegionChoice* choice);
at::Tensor encode_text(Host& h, const at::Tensor& ids);

struct InpaintArgs {
  at::Tensor prompt_embeds, negative_embeds, prompt_ids, negative_ids, image, mask;  // undefined when absent
  int64_t height = 0, width = 0;
  int64_t steps = 50;
  double guidance_scale = 7.5;
  uint64_t seed = 0;
  asymvq_scheduler scheduler = ASYMVQ_SCHEDULER_DDIM;
  int region = ASYMVQ_REGION_NONE;  // an asymvq_region, checked by inpaint
  int64_t margin = -1;              // < 0: the default
};
// `choice`, when given, receives what the decode step decoded (FULL, the whole latent, without a region).
at::Tensor inpaint(Host& h, const InpaintArgs& args, asymvq_inpaint_stats* stats, RegionChoice* choice);

}  // namespace asymvq
