// Decoding: the decoder engines on latents (VAE or diffusion space), with and without image and mask, and
// region decoding (asymvq.models.region: the box region.cpp chooses, the rest is the source), which both
// asymvq_decode_region(_ex) and the decode step of asymvq_inpaint run.
#include <c10/core/InferenceMode.h>

#include <cstdio>

#include "host.h"

namespace asymvq {

namespace {

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
                                 int64_t margin, asymvq_region region, RegionChoice* choice) {
  Engine& e = h.need("decoder", "region decoding");
  int64_t B = latents.size(0), lh = latents.size(2), lw = latents.size(3);
  RegionChoice c = choose_region(h, mask, margin, lh, lw, e.inputs[0], region);
  if (choice) *choice = c;
  auto source = [&] { return image.expand({B, 3, kVaeScale * lh, kVaeScale * lw}).to(h.device, at::kFloat).clone(); };
  if (c.decoded == ASYMVQ_DECODED_NONE) return source();
  if (c.decoded == ASYMVQ_DECODED_FULL) return run1(e, {latents, image, mask});
  const Box& b = c.box;
  auto pix = [&](const at::Tensor& t) {
    return t.slice(2, kVaeScale * b.y0, kVaeScale * b.y1).slice(3, kVaeScale * b.x0, kVaeScale * b.x1);
  };
  at::Tensor crop = run1(e, {latents.slice(2, b.y0, b.y1).slice(3, b.x0, b.x1), pix(image), pix(mask)});
  at::Tensor out = source();
  pix(out).copy_(crop);
  return out;
}

at::Tensor decode_region(Host& h, const at::Tensor& latents, const at::Tensor& image, const at::Tensor& mask, int region,
                         int64_t margin, RegionChoice* choice) {
  c10::InferenceMode guard;
  if (region != ASYMVQ_REGION_MASK && region != ASYMVQ_REGION_AUTO)
    fail_arg("region", "ASYMVQ_REGION_MASK (1) or ASYMVQ_REGION_AUTO (2) (asymvq_decode decodes the whole image)",
             std::to_string(region));
  check_latents(h, latents);
  at::Tensor m = checked_mask(latents, image, mask);
  return decode_checked_region(h, latents, image, m, margin, static_cast<asymvq_region>(region), choice);
}

at::Tensor decode_region_scaled(Host& h, const at::Tensor& latents, const at::Tensor& image, const at::Tensor& mask,
                                int region, int64_t margin, RegionChoice* choice) {
  c10::InferenceMode guard;
  check_latents(h, latents);
  return decode_region(h, h.latent_space.to_vae(latents), image, mask, region, margin, choice);
}

}  // namespace asymvq
