// Region decoding's geometry and choice (asymvq.models.region, the same rules and words): the mask's box grown by
// the margin, snapped to the decoder engine's exported range, and region AUTO's cost model, which this host reads
// from the engines manifest's "region" (RegionModel.to_dict) rather than writing the numbers again.
#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <utility>

#include "host.h"
#include "json.h"

namespace asymvq {

namespace {

[[noreturn]] void bad(const std::string& where, const std::string& what) {
  fail(ASYMVQ_ERR_MANIFEST, "engines: " + where + ": " + what);
}

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
// (asymvq.models.region.snap_box).
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

// "region": {"default_margin", "time_fit": [a, b], "auto_min_speedup"}, checked as RegionModel.from_dict checks it;
// absent in a directory exported before the manifest recorded it.
std::optional<RegionModel> read_region_model(const json::Value& manifest, const std::string& where) {
  const json::Value* r = manifest.find("region");
  if (!r) return std::nullopt;
  auto keys_ok = [&] {
    if (!r->is_object() || r->obj.size() != 3) return false;
    for (const char* k : {"default_margin", "time_fit", "auto_min_speedup"})
      if (!r->find(k)) return false;
    return true;
  };
  if (!keys_ok()) bad(where, "region must be an object with exactly the keys ['default_margin', 'time_fit', 'auto_min_speedup']");
  RegionModel out;
  const json::Value& m = *r->find("default_margin");
  if (!m.is_number() || !m.is_int || m.i < 0) bad(where, "region.default_margin must be an integer >= 0");
  out.default_margin = m.i;
  const json::Value& fit = *r->find("time_fit");
  bool fit_ok = fit.is_array() && fit.arr.size() == 2;
  for (size_t i = 0; fit_ok && i < 2; ++i) fit_ok = fit.arr[i].is_number() && std::isfinite(fit.arr[i].num);
  if (!fit_ok) bad(where, "region.time_fit must be two finite numbers [a, b] (t_region / t_full = a + b * share)");
  out.fit_a = fit.arr[0].num;
  out.fit_b = fit.arr[1].num;
  const json::Value& s = *r->find("auto_min_speedup");
  if (!s.is_number() || !std::isfinite(s.num) || !(s.num > 0)) bad(where, "region.auto_min_speedup must be a positive finite number");
  out.auto_min_speedup = s.num;
  return out;
}

void require_region_model(const Host& h, asymvq_region region, int64_t margin) {
  if (h.region_model) return;
  const std::string lacks = h.root + "/manifest.json records no region model (\"region\": it was exported by an asymvq from "
                                     "before the manifest recorded one)";
  if (region == ASYMVQ_REGION_AUTO)
    fail(ASYMVQ_ERR_UNSUPPORTED, "region: ASYMVQ_REGION_AUTO decides with the engines directory's cost model, and " + lacks +
                                     "; re-export the directory with `asymvq export --format aoti`, or decode with "
                                     "ASYMVQ_REGION_MASK and a margin >= 0");
  if (margin < 0)
    fail(ASYMVQ_ERR_UNSUPPORTED, "margin: the default (< 0) is the engines directory's region.default_margin, and " + lacks +
                                     "; pass a margin >= 0, or re-export the directory with `asymvq export --format aoti`");
}

RegionChoice choose_region(const Host& h, const at::Tensor& mask, int64_t margin, int64_t lh, int64_t lw,
                           const TensorSpec& latent_spec, asymvq_region region) {
  require_region_model(h, region, margin);
  const RegionModel* model = h.region_model ? &*h.region_model : nullptr;  // none: MASK with a margin given
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double threshold = model ? model->auto_min_speedup : nan;
  if (margin < 0) margin = model->default_margin;
  std::optional<Box> box = mask_box(mask, margin, lh, lw);
  if (!box) return {ASYMVQ_DECODED_NONE, Box{0, 0, 0, 0}, 0.0, std::numeric_limits<double>::infinity(), threshold};
  const Box whole{0, lh, 0, lw};
  try {
    box = snap_box(*box, lh, lw, latent_spec);
  } catch (const HostError&) {
    if (region == ASYMVQ_REGION_MASK) throw;
    return {ASYMVQ_DECODED_FULL, whole, 1.0, 1.0, threshold};  // "auto": no crop fits the engine, so the whole image
  }
  double share = double((box->y1 - box->y0) * (box->x1 - box->x0)) / double(lh * lw);
  // 1 / max(a + b * share, 1e-6): asymvq.models.region.RegionModel.predicted_speedup, the same double arithmetic
  double speedup = model ? 1.0 / std::max(model->fit_a + model->fit_b * share, 1e-6) : nan;
  if (region == ASYMVQ_REGION_AUTO && speedup < threshold) return {ASYMVQ_DECODED_FULL, whole, share, speedup, threshold};
  return {ASYMVQ_DECODED_BOX, *box, share, speedup, threshold};
}

}  // namespace asymvq
