// Decode and the inpainting loop, with the arithmetic of asymvq.InpaintPipeline (diffusers'
// StableDiffusionInpaintPipeline) op for op, in libtorch, so a seed gives the same image:
// the same CPU generator (mt19937, seeded like torch.Generator().manual_seed), the same draws
// in the same order (initial noise, then the VAE posterior sample of the masked image), the
// scheduler's 0-d float32 tensor arithmetic of diffusers' DDIMScheduler (eta 0) and
// EulerDiscreteScheduler (s_churn 0: no noise is drawn, as in diffusers 0.42), numpy's
// float64 timestep/sigma tables rebuilt in double.
#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <utility>

#include "host.h"

namespace asymvq {

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// ---------------------------------------------------------------------------------------
// Schedulers. Tables are built once per call (a fresh scheduler per call, as the pipeline).
struct Betas {
  at::Tensor alphas_cumprod;  // float32 (N,)
};

Betas make_betas(const SchedulerConfig& c) {
  auto f32 = at::TensorOptions().dtype(at::kFloat);
  at::Tensor betas;
  if (c.beta_schedule == "linear") {
    betas = at::linspace(c.beta_start, c.beta_end, c.num_train_timesteps, f32);
  } else if (c.beta_schedule == "scaled_linear") {
    betas = at::pow(at::linspace(std::pow(c.beta_start, 0.5), std::pow(c.beta_end, 0.5), c.num_train_timesteps, f32), 2);
  } else {
    fail(ASYMVQ_ERR_UNSUPPORTED, "scheduler: beta_schedule '" + c.beta_schedule +
                                     "' is not implemented by the C++ host (linear, scaled_linear)");
  }
  at::Tensor alphas = at::rsub(betas, 1.0);
  return {at::cumprod(alphas, 0)};
}

// numpy.round: half to even.
double np_round(double x) { return std::nearbyint(x); }

// numpy.linspace(start, stop, num) in float64.
std::vector<double> np_linspace(double start, double stop, int64_t num) {
  std::vector<double> y(static_cast<size_t>(num));
  if (num == 1) {
    y[0] = start;
    return y;
  }
  double step = (stop - start) / static_cast<double>(num - 1);
  for (int64_t i = 0; i < num; ++i) y[static_cast<size_t>(i)] = static_cast<double>(i) * step + start;
  y.back() = stop;
  return y;
}

// numpy.interp(x, arange(len(fp)), fp) with numpy's exact-hit rule.
double np_interp(double x, const std::vector<double>& fp) {
  int64_t n = static_cast<int64_t>(fp.size());
  if (x <= 0) return fp[0];
  if (x >= static_cast<double>(n - 1)) return fp.back();
  int64_t j = static_cast<int64_t>(std::floor(x));
  if (static_cast<double>(j) == x) return fp[static_cast<size_t>(j)];
  double slope = (fp[static_cast<size_t>(j + 1)] - fp[static_cast<size_t>(j)]) / 1.0;
  double r = slope * (x - static_cast<double>(j)) + fp[static_cast<size_t>(j)];
  if (std::isnan(r)) r = slope * (x - static_cast<double>(j + 1)) + fp[static_cast<size_t>(j + 1)];
  return r;
}

class Scheduler {
 public:
  virtual ~Scheduler() = default;
  std::vector<at::Tensor> timesteps;  // 0-d tensors, as iterating scheduler.timesteps
  virtual at::Tensor init_noise_sigma_mul(const at::Tensor& noise) = 0;
  virtual at::Tensor scale_model_input(const at::Tensor& x, size_t i) = 0;
  virtual at::Tensor step(const at::Tensor& model_output, size_t i, const at::Tensor& sample) = 0;
};

void refuse_unsupported(const SchedulerConfig& c, const char* name) {
  if (!c.unsupported.empty())
    fail(ASYMVQ_ERR_UNSUPPORTED, std::string("scheduler: the engines directory's scheduler_config.json sets ") + c.unsupported[0] +
                                     ", which the C++ host's " + name + " does not implement");
}

class DDIM : public Scheduler {
 public:
  DDIM(const SchedulerConfig& c, int64_t steps) : c_(c), steps_(steps) {
    refuse_unsupported(c, "DDIM");
    if (steps > c.num_train_timesteps)
      fail_arg("steps", "at most num_train_timesteps = " + std::to_string(c.num_train_timesteps), std::to_string(steps));
    ac_ = make_betas(c).alphas_cumprod;
    final_ = c.set_alpha_to_one ? at::scalar_tensor(1.0, at::kFloat) : ac_[0];
    std::string spacing = c.timestep_spacing.empty() ? "leading" : c.timestep_spacing;
    int64_t n = c.num_train_timesteps;
    std::vector<int64_t> ts;
    if (spacing == "linspace") {
      auto v = np_linspace(0, static_cast<double>(n - 1), steps);
      for (auto it = v.rbegin(); it != v.rend(); ++it) ts.push_back(static_cast<int64_t>(np_round(*it)));
    } else if (spacing == "leading") {
      int64_t ratio = n / steps;
      for (int64_t i = steps - 1; i >= 0; --i) ts.push_back(i * ratio + c.steps_offset);
    } else if (spacing == "trailing") {
      double ratio = static_cast<double>(n) / static_cast<double>(steps);
      int64_t len = static_cast<int64_t>(std::ceil(static_cast<double>(n) / ratio));
      for (int64_t i = 0; i < len; ++i) ts.push_back(static_cast<int64_t>(np_round(static_cast<double>(n) + i * -ratio)) - 1);
    } else {
      fail(ASYMVQ_ERR_UNSUPPORTED, "scheduler: timestep_spacing '" + spacing + "' (linspace, leading or trailing)");
    }
    for (int64_t t : ts) timesteps.push_back(at::scalar_tensor(t, at::kLong));
    if (c.prediction_type != "epsilon" && c.prediction_type != "sample" && c.prediction_type != "v_prediction")
      fail(ASYMVQ_ERR_UNSUPPORTED, "scheduler: prediction_type '" + c.prediction_type + "'");
  }
  at::Tensor init_noise_sigma_mul(const at::Tensor& noise) override { return noise * 1.0; }
  at::Tensor scale_model_input(const at::Tensor& x, size_t) override { return x; }
  at::Tensor step(const at::Tensor& eps, size_t i, const at::Tensor& sample) override {
    int64_t t = timesteps[i].item<int64_t>();
    int64_t prev = t - c_.num_train_timesteps / steps_;
    at::Tensor a_t = ac_[t];
    at::Tensor a_prev = prev >= 0 ? ac_[prev] : final_;
    at::Tensor b_t = at::rsub(a_t, 1);
    at::Tensor pred_orig, pred_eps;
    if (c_.prediction_type == "epsilon") {
      pred_orig = (sample - at::pow(b_t, 0.5) * eps) / at::pow(a_t, 0.5);
      pred_eps = eps;
    } else if (c_.prediction_type == "sample") {
      pred_orig = eps;
      pred_eps = (sample - at::pow(a_t, 0.5) * pred_orig) / at::pow(b_t, 0.5);
    } else {
      pred_orig = at::pow(a_t, 0.5) * sample - at::pow(b_t, 0.5) * eps;
      pred_eps = at::pow(a_t, 0.5) * eps + at::pow(b_t, 0.5) * sample;
    }
    if (c_.clip_sample) pred_orig = pred_orig.clamp(-c_.clip_sample_range, c_.clip_sample_range);
    at::Tensor b_prev = at::rsub(a_prev, 1);
    at::Tensor variance = (b_prev / b_t) * at::rsub(a_t / a_prev, 1);
    at::Tensor std_dev = at::pow(variance, 0.5) * 0.0;  // eta = 0
    at::Tensor direction = at::pow(at::rsub(a_prev, 1) - at::pow(std_dev, 2), 0.5) * pred_eps;
    return at::pow(a_prev, 0.5) * pred_orig + direction;
  }

 private:
  SchedulerConfig c_;
  int64_t steps_;
  at::Tensor ac_, final_;
};

class Euler : public Scheduler {
 public:
  Euler(const SchedulerConfig& c, int64_t steps) : c_(c) {
    refuse_unsupported(c, "Euler");
    if (c.interpolation_type != "linear")
      fail(ASYMVQ_ERR_UNSUPPORTED, "scheduler: interpolation_type '" + c.interpolation_type + "' (the C++ host's Euler: linear)");
    if (c.prediction_type != "epsilon" && c.prediction_type != "sample" && c.prediction_type != "v_prediction")
      fail(ASYMVQ_ERR_UNSUPPORTED, "scheduler: prediction_type '" + c.prediction_type + "'");
    int64_t n = c.num_train_timesteps;
    spacing_ = c.timestep_spacing.empty() ? "linspace" : c.timestep_spacing;
    std::vector<float> ts;  // np.float32
    if (spacing_ == "linspace") {
      auto v = np_linspace(0, static_cast<double>(n - 1), steps);
      for (auto it = v.rbegin(); it != v.rend(); ++it) ts.push_back(static_cast<float>(*it));
    } else if (spacing_ == "leading") {
      int64_t ratio = n / steps;
      for (int64_t i = steps - 1; i >= 0; --i) ts.push_back(static_cast<float>(np_round(static_cast<double>(i * ratio))));
      for (auto& t : ts) t += static_cast<float>(c.steps_offset);
    } else if (spacing_ == "trailing") {
      double ratio = static_cast<double>(n) / static_cast<double>(steps);
      int64_t len = static_cast<int64_t>(std::ceil(static_cast<double>(n) / ratio));
      for (int64_t i = 0; i < len; ++i) ts.push_back(static_cast<float>(np_round(static_cast<double>(n) + i * -ratio)));
      for (auto& t : ts) t -= 1.0f;
    } else {
      fail(ASYMVQ_ERR_UNSUPPORTED, "scheduler: timestep_spacing '" + spacing_ + "' (linspace, leading or trailing)");
    }
    at::Tensor ac = make_betas(c).alphas_cumprod;
    at::Tensor all = at::pow(at::rsub(ac, 1) / ac, 0.5).contiguous();  // float32, as np.array(...) of it
    std::vector<double> fp(all.data_ptr<float>(), all.data_ptr<float>() + all.numel());
    std::vector<float> sig;
    for (float t : ts) sig.push_back(static_cast<float>(np_interp(static_cast<double>(t), fp)));
    if (c.final_sigmas_type == "sigma_min") sig.push_back(static_cast<float>(std::pow((1.0 - fp[0]) / fp[0], 0.5)));
    else if (c.final_sigmas_type == "zero") sig.push_back(0.0f);
    else fail(ASYMVQ_ERR_UNSUPPORTED, "scheduler: final_sigmas_type '" + c.final_sigmas_type + "'");
    if (c.final_sigmas_type == "sigma_min") {  // ((1 - ac[0]) / ac[0]) ** 0.5 in float32 tensors
      at::Tensor a0 = ac[0];
      sig.back() = at::pow(at::rsub(a0, 1) / a0, 0.5).item<float>();
    }
    sigmas_ = at::from_blob(sig.data(), {static_cast<int64_t>(sig.size())}, at::kFloat).clone();
    for (float t : ts) timesteps.push_back(at::scalar_tensor(t, at::kFloat));
  }
  at::Tensor init_noise_sigma_mul(const at::Tensor& noise) override {
    at::Tensor m = sigmas_.max();
    if (spacing_ == "linspace" || spacing_ == "trailing") return noise * m;
    return noise * at::pow(at::pow(m, 2) + 1, 0.5);
  }
  at::Tensor scale_model_input(const at::Tensor& x, size_t i) override {
    at::Tensor sigma = sigmas_[static_cast<int64_t>(i)];
    return x / at::pow(at::pow(sigma, 2) + 1, 0.5);
  }
  at::Tensor step(const at::Tensor& out, size_t i, const at::Tensor& sample_in) override {
    at::Tensor sample = sample_in.to(at::kFloat);
    at::Tensor sigma = sigmas_[static_cast<int64_t>(i)];
    at::Tensor sigma_hat = sigma * (0.0 + 1);  // gamma = 0 (s_churn 0): no noise drawn
    at::Tensor pred;
    if (c_.prediction_type == "sample") pred = out;
    else if (c_.prediction_type == "epsilon") pred = sample - sigma_hat * out;
    else pred = out * (-sigma / at::pow(at::pow(sigma, 2) + 1, 0.5)) + (sample / (at::pow(sigma, 2) + 1));
    at::Tensor derivative = (sample - pred) / sigma_hat;
    at::Tensor dt = sigmas_[static_cast<int64_t>(i) + 1] - sigma_hat;
    return (sample + derivative * dt).to(out.scalar_type());
  }

 private:
  SchedulerConfig c_;
  std::string spacing_;
  at::Tensor sigmas_;
};

// The host runs SD 1.x's whole job; of SDXL and FLUX.1 Fill only the decode (their loops run in Python).
void require_sd(const Host& h, const std::string& what) {
  if (h.family != "sd")
    fail(ASYMVQ_ERR_UNSUPPORTED, what + ": " + h.root + " is a " + h.family + " directory; the C++ host decodes its "
         "latents only (decode), the whole job runs in Python (asymvq inpaint --engines DIR)");
}

}  // namespace

at::Tensor LatentSpace::to_vae(const at::Tensor& z) const {
  at::Tensor x = z / scaling_factor;
  return shift_factor != 0.0 ? x + shift_factor : x;
}

at::Tensor LatentSpace::to_diffusion(const at::Tensor& x) const {
  return (shift_factor != 0.0 ? x - shift_factor : x) * scaling_factor;
}

at::Tensor encode_text(Host& h, const at::Tensor& ids) {
  c10::InferenceMode guard;
  require_sd(h, "encoding token ids");
  Engine& e = h.need("text-encoder", "encoding token ids");
  int64_t len = e.inputs[0].max[1];
  if (ids.dim() != 2 || ids.size(1) != len)
    fail_arg("input_ids", "shape (B, " + std::to_string(len) + ") int64 CLIP token ids", "shape " + shape_str(ids.sizes()));
  if (h.vocab_size <= 0)
    fail(ASYMVQ_ERR_UNSUPPORTED, "input_ids: " + h.root + " has no readable tokenizer/ to bound token ids; pass embeddings");
  int64_t lo = ids.min().item<int64_t>(), hi = ids.max().item<int64_t>();
  if (lo < 0 || hi >= h.vocab_size)
    fail_arg("input_ids", "token ids in [0, " + std::to_string(h.vocab_size) + ") (the tokenizer's vocabulary)",
             "ids in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  return run1(e, {ids});
}

at::Tensor inpaint(Host& h, const InpaintArgs& a, asymvq_inpaint_stats* stats, RegionChoice* choice) {
  c10::InferenceMode guard;
  auto t_start = Clock::now();
  asymvq_inpaint_stats st{};
  require_sd(h, "inpaint");
  Engine& unet = h.need("unet", "inpaint");
  const TensorSpec& sample_spec = unet.inputs[0];
  const TensorSpec& ehs_spec = unet.inputs[2];
  int64_t unet_channels = sample_spec.opt[1];
  bool inpainting = unet_channels == 2 * h.latent_space.channels + 1;  // noise, mask and masked-image latents
  if (!h.has_scheduler)
    fail(ASYMVQ_ERR_UNSUPPORTED, "inpaint: " + h.root + " has no scheduler/ (exported without the SD components)");
  if (a.steps < 1 || a.steps > h.scheduler.num_train_timesteps)
    fail_arg("steps", "an integer in [1, " + std::to_string(h.scheduler.num_train_timesteps) + "] (num_train_timesteps)",
             std::to_string(a.steps));
  if (!std::isfinite(a.guidance_scale)) fail_arg("guidance_scale", "a finite number", std::to_string(a.guidance_scale));
  bool has_cond = a.image.defined() || a.mask.defined();
  if (has_cond && !inpainting)
    fail_arg("image / mask", "none: this directory's UNet has " + std::to_string(unet_channels) + " input channels (text-to-image)",
             "an image and a mask");
  if (!has_cond && inpainting)
    fail_arg("image / mask", "both: this directory's UNet has " + std::to_string(unet_channels) + " input channels (inpainting)",
             "none");
  if (has_cond && (!a.image.defined() || !a.mask.defined()))
    fail_arg(a.image.defined() ? "mask" : "image", "a tensor whenever the other of image/mask is given", "NULL");
  if (a.region != ASYMVQ_REGION_NONE && a.region != ASYMVQ_REGION_MASK && a.region != ASYMVQ_REGION_AUTO)
    fail_arg("region", "ASYMVQ_REGION_NONE (0), ASYMVQ_REGION_MASK (1) or ASYMVQ_REGION_AUTO (2)", std::to_string(a.region));
  if (a.region == ASYMVQ_REGION_NONE && a.margin >= 0)
    fail_arg("margin", "-1 without a region (it is the context around the mask's box: set region MASK or AUTO)",
             std::to_string(a.margin));
  if (a.region != ASYMVQ_REGION_NONE && !inpainting)
    fail_arg("region", "ASYMVQ_REGION_NONE for text-to-image (a region decode needs an image and a mask)",
             a.region == ASYMVQ_REGION_MASK ? "ASYMVQ_REGION_MASK" : "ASYMVQ_REGION_AUTO");
  const auto region = static_cast<asymvq_region>(a.region);
  if (region != ASYMVQ_REGION_NONE) require_region_model(h, region, a.margin);  // before the loop, not after it

  // Image and mask, as prepare_image_and_mask leaves them: image in [-1, 1], mask binarised at 0.5.
  at::Tensor pixels, mask;
  int64_t height, width;
  if (inpainting) {
    pixels = a.image;
    if (pixels.dim() != 4 || pixels.size(1) != 3) fail_arg("image", "shape (B, 3, H, W)", "shape " + shape_str(pixels.sizes()));
    check_image(pixels, "image");
    if (a.mask.dim() != 4 || a.mask.size(1) != 1) fail_arg("mask", "shape (B, 1, H, W)", "shape " + shape_str(a.mask.sizes()));
    if (a.mask.size(2) != pixels.size(2) || a.mask.size(3) != pixels.size(3))
      fail_arg("mask", "the image's size " + std::to_string(pixels.size(2)) + "x" + std::to_string(pixels.size(3)) + " (HxW)",
               std::to_string(a.mask.size(2)) + "x" + std::to_string(a.mask.size(3)));
    if (a.mask.size(0) != 1 && a.mask.size(0) != pixels.size(0))
      fail_arg("mask", "batch 1 or " + std::to_string(pixels.size(0)) + " (the image batch)", "batch " + std::to_string(a.mask.size(0)));
    check_finite(a.mask, "mask", "finite values in [0, 1]");
    mask = (a.mask >= 0.5).to(at::kFloat);
    height = pixels.size(2);
    width = pixels.size(3);
    if (height % kVaeScale || width % kVaeScale)
      fail_arg("image", "height and width multiples of 8", std::to_string(height) + "x" + std::to_string(width));
  } else {
    height = a.height ? a.height : kVaeScale * sample_spec.opt[2];
    width = a.width ? a.width : kVaeScale * sample_spec.opt[3];
    if (height <= 0 || width <= 0 || height % kVaeScale || width % kVaeScale)
      fail_arg("height / width", "positive multiples of 8", std::to_string(height) + "x" + std::to_string(width));
  }

  // Text embeddings: (negative, positive) stacked under guidance.
  auto check_embeds = [&](const at::Tensor& e, const char* arg) {
    if (e.dim() != 3 || e.size(1) != ehs_spec.opt[1] || e.size(2) != ehs_spec.opt[2])
      fail_arg(arg, "float32 (B, " + std::to_string(ehs_spec.opt[1]) + ", " + std::to_string(ehs_spec.opt[2]) + ") (the UNet's encoder_hidden_states)",
               "shape " + shape_str(e.sizes()));
    check_finite(e, arg, "finite values");
  };
  if (a.prompt_embeds.defined() == a.prompt_ids.defined())
    fail_arg("prompt_embeds / prompt_ids", "exactly one of them", a.prompt_embeds.defined() ? "both" : "neither");
  if (a.negative_embeds.defined() && a.negative_ids.defined())
    fail_arg("negative_embeds / negative_ids", "at most one of them", "both");
  at::Tensor embeds;
  auto t0 = Clock::now();
  if (a.prompt_ids.defined()) embeds = encode_text(h, a.prompt_ids);
  else embeds = a.prompt_embeds;
  check_embeds(embeds, a.prompt_ids.defined() ? "prompt_ids" : "prompt_embeds");
  int64_t batch = embeds.size(0);
  bool do_cfg = a.guidance_scale > 1.0;
  if (do_cfg) {
    at::Tensor negative;
    if (a.negative_embeds.defined()) {
      negative = a.negative_embeds;
      check_embeds(negative, "negative_embeds");
      if (negative.sizes() != embeds.sizes())
        fail_arg("negative_embeds", "the shape of prompt_embeds " + shape_str(embeds.sizes()), shape_str(negative.sizes()));
    } else {
      at::Tensor ids = a.negative_ids;
      if (!ids.defined()) {
        if (h.empty_prompt_ids.empty() || !h.find("text-encoder"))
          fail_arg("negative_embeds", "embeddings (or negative_ids) when guidance_scale > 1: " + h.root +
                                          " has no tokenizer/text-encoder for the empty prompt", "NULL");
        ids = at::tensor(h.empty_prompt_ids, at::kLong).reshape({1, -1}).expand({batch, -1}).contiguous();
      } else if (ids.dim() != 2 || ids.size(0) != batch) {
        fail_arg("negative_ids", "shape (" + std::to_string(batch) + ", tokens) (the prompt batch)", "shape " + shape_str(ids.sizes()));
      }
      negative = encode_text(h, ids);
      check_embeds(negative, "negative_ids");
    }
    embeds = at::cat({negative, embeds});
  }
  embeds = embeds.to(h.device, at::kFloat);
  st.text_encode_s = a.prompt_ids.defined() || (do_cfg && !a.negative_embeds.defined()) ? since(t0) : 0.0;
  if (inpainting && pixels.size(0) != 1 && pixels.size(0) != batch && batch % pixels.size(0))
    fail_arg("image", "batch 1 or a divisor of " + std::to_string(batch) + " (the prompt batch)", "batch " + std::to_string(pixels.size(0)));

  std::unique_ptr<Scheduler> sched;
  if (a.scheduler == ASYMVQ_SCHEDULER_DDIM) sched = std::make_unique<DDIM>(h.scheduler, a.steps);
  else if (a.scheduler == ASYMVQ_SCHEDULER_EULER) sched = std::make_unique<Euler>(h.scheduler, a.steps);
  else fail_arg("scheduler", "ASYMVQ_SCHEDULER_DDIM or ASYMVQ_SCHEDULER_EULER", std::to_string(static_cast<int>(a.scheduler)));

  int64_t lh = height / kVaeScale, lw = width / kVaeScale;
  at::Generator gen = at::detail::createCPUGenerator(a.seed);
  auto f32 = at::TensorOptions().dtype(at::kFloat);
  at::Tensor noise = at::randn({batch, h.latent_space.channels, lh, lw}, gen, f32).to(h.device);
  at::Tensor latents = sched->init_noise_sigma_mul(noise);

  std::vector<at::Tensor> extra;
  if (inpainting) {
    t0 = Clock::now();
    Engine& vae = h.need("vae-encoder", "inpaint (the masked image's latents)");
    at::Tensor mask_latent = at::upsample_nearest2d(mask, {lh, lw}).to(h.device);
    at::Tensor masked = pixels * (mask < 0.5);
    at::Tensor moments = run1(vae, {masked.to(h.device)});
    auto mv = moments.chunk(2, 1);
    at::Tensor logvar = at::clamp(mv[1], -30.0, 20.0);
    at::Tensor std_ = at::exp(logvar * 0.5);
    at::Tensor draw = at::randn(mv[0].sizes(), gen, f32).to(h.device);
    at::Tensor masked_latents = h.latent_space.to_diffusion(mv[0] + std_ * draw);
    mask_latent = mask_latent.repeat({batch / mask_latent.size(0), 1, 1, 1});
    masked_latents = masked_latents.repeat({batch / masked_latents.size(0), 1, 1, 1});
    extra = {do_cfg ? at::cat({mask_latent, mask_latent}) : mask_latent,
             do_cfg ? at::cat({masked_latents, masked_latents}) : masked_latents};
    st.vae_encode_s = since(t0);
  }

  t0 = Clock::now();
  for (size_t i = 0; i < sched->timesteps.size(); ++i) {
    const at::Tensor& t = sched->timesteps[i];
    at::Tensor model_in = do_cfg ? at::cat({latents, latents}) : latents;
    model_in = sched->scale_model_input(model_in, i);
    if (!extra.empty()) model_in = at::cat({model_in, extra[0], extra[1]}, 1);
    at::Tensor timestep = t.reshape({1}).to(h.device, at::kFloat).repeat({model_in.size(0)});
    auto tu = Clock::now();
    at::Tensor noise_pred = run1(unet, {model_in, timestep, embeds});
    st.unet_s += since(tu);
    if (do_cfg) {
      auto parts = noise_pred.chunk(2);
      noise_pred = parts[0] + a.guidance_scale * (parts[1] - parts[0]);
    }
    latents = sched->step(noise_pred, i, latents);
  }
  st.loop_s = since(t0);
  st.steps = static_cast<int32_t>(sched->timesteps.size());

  t0 = Clock::now();
  at::Tensor latent = h.latent_space.to_vae(latents);
  at::Tensor out;
  RegionChoice decoded;  // without a region: the whole image
  decoded.box = Box{0, lh, 0, lw};
  if (h.region_model) decoded.min_speedup = h.region_model->auto_min_speedup;
  if (inpainting) {
    auto tile = [&](const at::Tensor& x) {
      return (x.size(0) == 1 || x.size(0) == batch) ? x : x.repeat({batch / x.size(0), 1, 1, 1});
    };
    Engine& decoder = h.need("decoder", "inpaint (the asymmetric decoder)");
    at::Tensor image = tile(pixels).to(h.device), m = tile(mask).to(h.device);
    out = region == ASYMVQ_REGION_NONE ? run1(decoder, {latent, image, m})
                                       : decode_checked_region(h, latent, image, m, a.margin, region, &decoded);
  } else {
    out = run1(h.need("decoder-plain", "text-to-image"), {latent});
  }
  st.decode_s = since(t0);
  st.total_s = since(t_start);
  if (stats) *stats = st;
  if (choice) *choice = decoded;
  return out;
}

}  // namespace asymvq
