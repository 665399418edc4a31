// Decoding: the decoder engines on latents (VAE or diffusion space), with and without image and mask, and
// region decoding (asymvq.models.region: the mask's box only, the rest is the source), which both
// asymvq_decode_region and the decode step of asymvq_inpaint run.
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <optional>
#include <tuple>
#include <utility>

#include "host.h"

namespace asymvq {

namespace {

constexpr int64_t kDefaultMargin = 4;  // asymvq.models.region.DEFAULT_MARGIN (tests/host/test_host_region.py checks it)
// asymvq.models.region's cost model: a region decode takes a + b * share of the full decode's time, and "auto"
// decodes the box only at a predicted speed-up of AUTO_MIN_SPEEDUP or more (REGION_TIME_FIT, AUTO_MIN_SPEEDUP;
// tests/host/test_host_region_inpaint.py checks the choice on both sides of the threshold against Python's).
constexpr double kRegionFitA = -0.0128, kRegionFitB = 0.9925, kAutoMinSpeedup = 1.2;

void check_latents(const Host& h, const at::Tensor& latents) {
  int64_t c = h.latent_space.channels;
  if (latents.dim() != 4 || latents.size(1) != c)
    fail_arg("latents", "shape (B, " + std::to_string(c) + ", h, w) (the engines directory's latent_space.channels)",
             "shape " + shape_str(latents.sizes()));
  check_finite(latents, "latents", "finite values");
}

// image and mask checked against the latents (shapes, values); the mask as {0, 1} floats.
at::Tensor checked_mask(const at::Tensor& latents, const at::Tensor& image, const at::Tensor& mask) {
  int64_t B = latents.size(0), H = kVaeScale * latents.size(2), W = kVaeScale * latents.size(3);
  if (image.dim() != 4 || image.size(1) != 3) fail_arg("image", "shape (B, 3, H, W)", "shape " + shape_str(image.sizes()));
  if (image.size(2) != H || image.size(3) != W)
    fail_arg("image", "spatial size 8x the latents' = " + std::to_string(H) + "x" + std::to_string(W),
             std::to_string(image.size(2)) + "x" + std::to_string(image.size(3)));
  if (image.size(0) != 1 && image.size(0) != B)
    fail_arg("image", "batch 1 or " + std::to_string(B) + " (the latent batch)", "batch " + std::to_string(image.size(0)));
  check_image(image, "image");
  if (mask.dim() != 4 || mask.size(1) != 1) fail_arg("mask", "shape (B, 1, H, W)", "shape " + shape_str(mask.sizes()));
  if (mask.size(2) != H || mask.size(3) != W)
    fail_arg("mask", "spatial size " + std::to_string(H) + "x" + std::to_string(W) + " (the image's)",
             std::to_string(mask.size(2)) + "x" + std::to_string(mask.size(3)));
  if (mask.size(0) != 1 && mask.size(0) != B)
    fail_arg("mask", "batch 1 or " + std::to_string(B) + " (the latent batch)", "batch " + std::to_string(mask.size(0)));
  check_finite(mask, "mask", "binary values {0, 1} or {0, 255}");
  at::Tensor m = mask;
  if (!((m == 0) | (m == 1)).all().item<bool>()) {
    if (((m == 0) | (m == 255)).all().item<bool>()) m = m / 255.0;
    else fail_arg("mask", "binary values, all in {0, 1} or all in {0, 255} (1/255 = hole); binarise soft masks at 0.5",
                  "non-binary " + range_str(m));
  }
  return m;
}

struct Box {
  int64_t y0, y1, x0, x1;  // latent pixels, [y0, y1) x [x0, x1)
};

// The latent-pixel box around every hole pixel of the (B or 1, 1, 8h, 8w) mask (union over the batch), grown by
// `margin` and clipped to the latent; nothing for a mask without a hole (asymvq.models.region.mask_box).
std::optional<Box> mask_box(const at::Tensor& m, int64_t margin, int64_t lh, int64_t lw) {
  at::Tensor hole = (m > 0.5).any(0).any(0);  // (H, W)
  at::Tensor rows = at::nonzero(hole.any(1)).flatten(), cols = at::nonzero(hole.any(0)).flatten();
  if (rows.numel() == 0) return std::nullopt;
  int64_t y0 = rows[0].item<int64_t>() / kVaeScale, y1 = (rows[-1].item<int64_t>() + kVaeScale) / kVaeScale;
  int64_t x0 = cols[0].item<int64_t>() / kVaeScale, x1 = (cols[-1].item<int64_t>() + kVaeScale) / kVaeScale;
  return Box{std::max(y0 - margin, int64_t(0)), std::min(y1 + margin, lh), std::max(x0 - margin, int64_t(0)),
             std::min(x1 + margin, lw)};
}

// [a, b) along one latent axis of `size`, grown to the engine's smallest crop `lo` or refused above its largest `hi`
// (asymvq.models.region.snap_box, the same rule and words).
std::pair<int64_t, int64_t> snap_axis(int64_t a, int64_t b, int64_t size, int64_t lo, int64_t hi, const std::string& axis,
                                      const std::string& where) {
  int64_t n = b - a;
  if (n > hi)
    fail(ASYMVQ_ERR_INVALID_ARGUMENT,
         "region: the mask's box is " + std::to_string(n) + " latent pixels along " + axis + " (" + std::to_string(kVaeScale * n) +
             " image pixels), above the " + std::to_string(hi) + " that " + where +
             " accepts; decoding a region there needs a dynamic engine (re-export with --shapes covering the box), or "
             "decode the whole image");
  if (n >= lo) return {a, b};
  if (lo > size)
    fail(ASYMVQ_ERR_INVALID_ARGUMENT, "region: " + where + " accepts at least " + std::to_string(lo) + " latent pixels along " +
                                          axis + ", the image has " + std::to_string(size) +
                                          "; decoding a region there needs a dynamic engine (re-export with --shapes)");
  a = std::min(std::max(a - (lo - n) / 2, int64_t(0)), size - lo);
  return {a, a + lo};
}

Box snap_box(Box b, int64_t lh, int64_t lw, const TensorSpec& spec) {
  // the latent input: AOTInductor binds its exported range
  std::string where = "the aoti decoder engine (latent h " + std::to_string(spec.min[2]) + ".." + std::to_string(spec.max[2]) +
                      ", w " + std::to_string(spec.min[3]) + ".." + std::to_string(spec.max[3]) + ")";
  std::tie(b.y0, b.y1) = snap_axis(b.y0, b.y1, lh, spec.min[2], spec.max[2], "the height", where);
  std::tie(b.x0, b.x1) = snap_axis(b.x0, b.x1, lw, spec.min[3], spec.max[3], "the width", where);
  return b;
}

}  // namespace

void check_finite(const at::Tensor& t, const std::string& arg, const std::string& expected) {
  if (!at::isfinite(t).all().item<bool>()) fail_arg(arg, expected, "NaN or Inf");
}

std::string range_str(const at::Tensor& t) {
  char buf[96];
  std::snprintf(buf, sizeof buf, "values in [%g, %g]", t.min().item<double>(), t.max().item<double>());
  return buf;
}

void check_image(const at::Tensor& image, const std::string& arg) {
  check_finite(image, arg, "finite values in [-1, 1]");
  double lo = image.min().item<double>(), hi = image.max().item<double>();
  if (lo < -1.0 - 1e-3 || hi > 1.0 + 1e-3) fail_arg(arg, "values in [-1, 1] (x / 127.5 - 1 for 8-bit images)", range_str(image));
}

at::Tensor decode(Host& h, const at::Tensor& latents, const at::Tensor* image, const at::Tensor* mask) {
  c10::InferenceMode guard;
  check_latents(h, latents);
  if ((image == nullptr) != (mask == nullptr))
    fail_arg(image == nullptr ? "image" : "mask", "a tensor whenever the other of image/mask is given", "NULL");
  if (image == nullptr) return run1(h.need("decoder-plain", "decode without image and mask"), {latents});
  at::Tensor m = checked_mask(latents, *image, *mask);
  return run1(h.need("decoder", "decode with image and mask"), {latents, *image, m});
}

at::Tensor decode_scaled(Host& h, const at::Tensor& latents, const at::Tensor* image, const at::Tensor* mask) {
  c10::InferenceMode guard;
  check_latents(h, latents);  // before converting: the message names the caller's latents
  return decode(h, h.latent_space.to_vae(latents), image, mask);
}

at::Tensor decode_checked_region(Host& h, const at::Tensor& latents, const at::Tensor& image, const at::Tensor& mask,
                                 int64_t margin, asymvq_region region) {
  if (margin < 0) margin = kDefaultMargin;
  Engine& e = h.need("decoder", "region decoding");
  int64_t B = latents.size(0), lh = latents.size(2), lw = latents.size(3);
  std::optional<Box> box = mask_box(mask, margin, lh, lw);
  if (!box) return image.expand({B, 3, kVaeScale * lh, kVaeScale * lw}).to(h.device, at::kFloat).clone();  // the source
  try {
    box = snap_box(*box, lh, lw, e.inputs[0]);
  } catch (const HostError&) {
    if (region == ASYMVQ_REGION_MASK) throw;
    return run1(e, {latents, image, mask});  // "auto": no crop fits the engine, so the whole image
  }
  if (region == ASYMVQ_REGION_AUTO) {
    double share = double((box->y1 - box->y0) * (box->x1 - box->x0)) / double(lh * lw);
    double speedup = 1.0 / std::max(kRegionFitA + kRegionFitB * share, 1e-6);
    if (speedup < kAutoMinSpeedup) return run1(e, {latents, image, mask});
  }
  auto pix = [&](const at::Tensor& t) {
    return t.slice(2, kVaeScale * box->y0, kVaeScale * box->y1).slice(3, kVaeScale * box->x0, kVaeScale * box->x1);
  };
  at::Tensor crop = run1(e, {latents.slice(2, box->y0, box->y1).slice(3, box->x0, box->x1), pix(image), pix(mask)});
  at::Tensor out = image.expand({B, 3, kVaeScale * lh, kVaeScale * lw}).to(h.device, at::kFloat).clone();
  pix(out).copy_(crop);
  return out;
}

at::Tensor decode_region(Host& h, const at::Tensor& latents, const at::Tensor& image, const at::Tensor& mask, int64_t margin) {
  c10::InferenceMode guard;
  check_latents(h, latents);
  at::Tensor m = checked_mask(latents, image, mask);
  return decode_checked_region(h, latents, image, m, margin, ASYMVQ_REGION_MASK);
}

at::Tensor decode_region_scaled(Host& h, const at::Tensor& latents, const at::Tensor& image, const at::Tensor& mask,
                                int64_t margin) {
  c10::InferenceMode guard;
  check_latents(h, latents);
  return decode_region(h, h.latent_space.to_vae(latents), image, mask, margin);
}

}  // namespace asymvq
