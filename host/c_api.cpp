// The C API: argument checks, tensor views in and library-allocated outputs out, and the
// one place where C++ exceptions stop (every entry point catches everything).
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>

#include "asymvq/asymvq.h"
#include "host.h"

struct asymvq_host {
  std::unique_ptr<asymvq::Host> impl;
};

namespace {

thread_local std::string g_error;

asymvq_status set_error(asymvq_status s, const std::string& msg) {
  g_error = msg;
  return s;
}

std::string first_line(const char* what) {
  std::string s = what ? what : "";
  auto nl = s.find('\n');
  return nl == std::string::npos ? s : s.substr(0, nl);
}

// Runs f(), turning every exception into a status and a thread-local message.
template <class F>
asymvq_status guarded(F&& f) {
  try {
    g_error.clear();
    f();
    return ASYMVQ_OK;
  } catch (const asymvq::HostError& e) {
    return set_error(e.status, e.what());
  } catch (const std::bad_alloc&) {
    return set_error(ASYMVQ_ERR_RUNTIME, "out of memory");
  } catch (const std::exception& e) {
    return set_error(ASYMVQ_ERR_RUNTIME, "internal error: " + first_line(e.what()));
  } catch (...) {
    return set_error(ASYMVQ_ERR_RUNTIME, "internal error: unknown exception");
  }
}

// A caller-owned view as a tensor (copied, so the caller may free it as soon as we return).
at::Tensor view(const asymvq_tensor* t, const char* arg, asymvq_dtype want) {
  if (t == nullptr) asymvq::fail_arg(arg, "a tensor", "NULL");
  const char* dt = want == ASYMVQ_FLOAT32 ? "float32" : "int64";
  if (t->dtype != want) asymvq::fail_arg(arg, std::string("dtype ") + dt, t->dtype == ASYMVQ_INT64 ? "int64" : t->dtype == ASYMVQ_FLOAT32 ? "float32" : "an unknown dtype");
  if (t->ndim < 1 || t->ndim > ASYMVQ_MAX_DIMS || t->shape == nullptr)
    asymvq::fail_arg(arg, "1 to 8 dims with a shape array", "ndim " + std::to_string(t->ndim));
  std::vector<int64_t> shape(t->shape, t->shape + t->ndim);
  int64_t numel = 1;
  for (int64_t s : shape) {
    if (s < 1 || s > (int64_t(1) << 40)) asymvq::fail_arg(arg, "positive sizes", "shape " + asymvq::shape_str(shape));
    if (numel > (int64_t(1) << 40) / s) asymvq::fail_arg(arg, "a tensor under 2^40 elements", "shape " + asymvq::shape_str(shape));
    numel *= s;
  }
  if (t->data == nullptr) asymvq::fail_arg(arg, "data for shape " + asymvq::shape_str(shape), "a NULL data pointer");
  auto type = want == ASYMVQ_FLOAT32 ? at::kFloat : at::kLong;
  return at::from_blob(const_cast<void*>(t->data), shape, at::TensorOptions().dtype(type)).clone();
}

void fill(asymvq_output* out, const at::Tensor& result) {
  at::Tensor t = result.to(at::kCPU, at::kFloat).contiguous();
  if (t.dim() > ASYMVQ_MAX_DIMS) asymvq::fail(ASYMVQ_ERR_RUNTIME, "output has too many dims");
  size_t bytes = static_cast<size_t>(t.numel()) * sizeof(float);
  float* data = static_cast<float*>(std::malloc(bytes ? bytes : 1));
  if (!data) throw std::bad_alloc();
  std::memcpy(data, t.data_ptr<float>(), bytes);
  std::memset(out, 0, sizeof *out);
  out->data = data;
  out->ndim = static_cast<int32_t>(t.dim());
  out->numel = t.numel();
  for (int64_t i = 0; i < t.dim(); ++i) out->shape[i] = t.size(i);
}

void check_host(const asymvq_host* h) {
  if (h == nullptr || !h->impl) asymvq::fail_arg("host", "a handle from asymvq_open", "NULL");
}

void check_out(asymvq_output* out) {
  if (out == nullptr) asymvq::fail_arg("out", "a pointer to an asymvq_output", "NULL");
  std::memset(out, 0, sizeof *out);
}

}  // namespace

extern "C" {

// ASYMVQ_VERSION_STRING (asymvq/version.h): runtime/__init__.py's __version__, through CMakeLists.txt.
const char* asymvq_version(void) { return ASYMVQ_VERSION_STRING; }

const char* asymvq_last_error(void) { return g_error.c_str(); }

const char* asymvq_status_name(asymvq_status s) {
  switch (s) {
    case ASYMVQ_OK: return "ASYMVQ_OK";
    case ASYMVQ_ERR_INVALID_ARGUMENT: return "ASYMVQ_ERR_INVALID_ARGUMENT";
    case ASYMVQ_ERR_NOT_FOUND: return "ASYMVQ_ERR_NOT_FOUND";
    case ASYMVQ_ERR_MANIFEST: return "ASYMVQ_ERR_MANIFEST";
    case ASYMVQ_ERR_UNSUPPORTED: return "ASYMVQ_ERR_UNSUPPORTED";
    case ASYMVQ_ERR_RUNTIME: return "ASYMVQ_ERR_RUNTIME";
    case ASYMVQ_ERR_FORMAT: return "ASYMVQ_ERR_FORMAT";
    case ASYMVQ_ERR_IO: return "ASYMVQ_ERR_IO";
  }
  return "ASYMVQ_ERR_UNKNOWN";
}

asymvq_status asymvq_open(const char* engines_dir, const char* device, asymvq_host** out) {
  return guarded([&] {
    if (out == nullptr) asymvq::fail_arg("out", "a pointer to an asymvq_host*", "NULL");
    *out = nullptr;
    if (engines_dir == nullptr) asymvq::fail_arg("engines_dir", "a directory path", "NULL");
    auto h = std::make_unique<asymvq_host>();
    h->impl = asymvq::open_host(engines_dir, device ? device : "cpu");
    *out = h.release();
  });
}

void asymvq_close(asymvq_host* host) {
  try {
    delete host;
  } catch (...) {
  }
}

asymvq_status asymvq_has_component(const asymvq_host* host, const char* component, int* present) {
  return guarded([&] {
    check_host(host);
    if (component == nullptr) asymvq::fail_arg("component", "a component name", "NULL");
    if (present == nullptr) asymvq::fail_arg("present", "a pointer to an int", "NULL");
    *present = host->impl->find(component) != nullptr;
  });
}

asymvq_status asymvq_unet_channels(const asymvq_host* host, int* channels) {
  return guarded([&] {
    check_host(host);
    if (channels == nullptr) asymvq::fail_arg("channels", "a pointer to an int", "NULL");
    asymvq::Engine* unet = host->impl->find("unet");
    *channels = unet ? static_cast<int>(unet->inputs[0].opt[1]) : 0;
  });
}

asymvq_status asymvq_latent_space(const asymvq_host* host, int* channels, double* scaling_factor, double* shift_factor) {
  return guarded([&] {
    check_host(host);
    if (channels == nullptr || scaling_factor == nullptr || shift_factor == nullptr)
      asymvq::fail_arg(channels == nullptr ? "channels" : scaling_factor == nullptr ? "scaling_factor" : "shift_factor",
                       "a pointer", "NULL");
    const asymvq::LatentSpace& ls = host->impl->latent_space;
    *channels = static_cast<int>(ls.channels);
    *scaling_factor = ls.scaling_factor;
    *shift_factor = ls.shift_factor;
  });
}

namespace {

asymvq_status decode_call(asymvq_host* host, const asymvq_tensor* latents, const asymvq_tensor* image,
                          const asymvq_tensor* mask, asymvq_output* out, bool scaled) {
  return guarded([&] {
    check_host(host);
    check_out(out);
    at::Tensor z = view(latents, "latents", ASYMVQ_FLOAT32);
    at::Tensor img, m;
    if (image) img = view(image, "image", ASYMVQ_FLOAT32);
    if (mask) m = view(mask, "mask", ASYMVQ_FLOAT32);
    std::lock_guard<std::mutex> lock(host->impl->lock);
    auto& h = *host->impl;
    const at::Tensor *ip = image ? &img : nullptr, *mp = mask ? &m : nullptr;
    fill(out, scaled ? asymvq::decode_scaled(h, z, ip, mp) : asymvq::decode(h, z, ip, mp));
  });
}

}  // namespace

asymvq_status asymvq_decode(asymvq_host* host, const asymvq_tensor* latents, const asymvq_tensor* image,
                            const asymvq_tensor* mask, asymvq_output* out) {
  return decode_call(host, latents, image, mask, out, false);
}

asymvq_status asymvq_decode_scaled(asymvq_host* host, const asymvq_tensor* latents, const asymvq_tensor* image,
                                   const asymvq_tensor* mask, asymvq_output* out) {
  return decode_call(host, latents, image, mask, out, true);
}

namespace {

// `choice` checked (its struct_size) and cleared before the work, filled after it.
void check_choice(asymvq_region_choice* choice, const char* arg) {
  if (choice == nullptr) return;
  if (choice->struct_size != sizeof *choice)
    asymvq::fail_arg(std::string(arg) + ".struct_size", std::to_string(sizeof *choice) + " (call asymvq_region_choice_init first)",
                     std::to_string(choice->struct_size));
  asymvq_region_choice_init(choice);
}

void report(asymvq_region_choice* out, const asymvq::RegionChoice& c) {
  if (out == nullptr) return;
  out->decoded = static_cast<int32_t>(c.decoded);
  out->y0 = static_cast<int32_t>(c.box.y0);
  out->y1 = static_cast<int32_t>(c.box.y1);
  out->x0 = static_cast<int32_t>(c.box.x0);
  out->x1 = static_cast<int32_t>(c.box.x1);
  out->share = c.share;
  out->predicted_speedup = c.speedup;
  out->min_speedup = c.min_speedup;
}

asymvq_status region_call(asymvq_host* host, const asymvq_tensor* latents, const asymvq_tensor* image,
                          const asymvq_tensor* mask, int32_t region, int32_t margin, asymvq_region_choice* choice,
                          asymvq_output* out, bool scaled) {
  return guarded([&] {
    check_host(host);
    check_out(out);
    check_choice(choice, "choice");
    at::Tensor z = view(latents, "latents", ASYMVQ_FLOAT32);
    at::Tensor img = view(image, "image", ASYMVQ_FLOAT32), m = view(mask, "mask", ASYMVQ_FLOAT32);
    std::lock_guard<std::mutex> lock(host->impl->lock);
    auto& h = *host->impl;
    asymvq::RegionChoice c;
    fill(out, scaled ? asymvq::decode_region_scaled(h, z, img, m, region, margin, &c)
                     : asymvq::decode_region(h, z, img, m, region, margin, &c));
    report(choice, c);
  });
}

}  // namespace

asymvq_status asymvq_decode_region(asymvq_host* host, const asymvq_tensor* latents, const asymvq_tensor* image,
                                   const asymvq_tensor* mask, int32_t margin, asymvq_output* out) {
  return region_call(host, latents, image, mask, ASYMVQ_REGION_MASK, margin, nullptr, out, false);
}

asymvq_status asymvq_decode_region_scaled(asymvq_host* host, const asymvq_tensor* latents, const asymvq_tensor* image,
                                          const asymvq_tensor* mask, int32_t margin, asymvq_output* out) {
  return region_call(host, latents, image, mask, ASYMVQ_REGION_MASK, margin, nullptr, out, true);
}

void asymvq_region_choice_init(asymvq_region_choice* choice) {
  if (choice == nullptr) return;
  std::memset(choice, 0, sizeof *choice);
  choice->struct_size = sizeof *choice;
}

asymvq_status asymvq_decode_region_ex(asymvq_host* host, const asymvq_tensor* latents, const asymvq_tensor* image,
                                      const asymvq_tensor* mask, int32_t region, int32_t margin, asymvq_region_choice* choice,
                                      asymvq_output* out) {
  return region_call(host, latents, image, mask, region, margin, choice, out, false);
}

asymvq_status asymvq_decode_region_scaled_ex(asymvq_host* host, const asymvq_tensor* latents, const asymvq_tensor* image,
                                             const asymvq_tensor* mask, int32_t region, int32_t margin,
                                             asymvq_region_choice* choice, asymvq_output* out) {
  return region_call(host, latents, image, mask, region, margin, choice, out, true);
}

asymvq_status asymvq_encode_text(asymvq_host* host, const asymvq_tensor* input_ids, asymvq_output* out) {
  return guarded([&] {
    check_host(host);
    check_out(out);
    at::Tensor ids = view(input_ids, "input_ids", ASYMVQ_INT64);
    std::lock_guard<std::mutex> lock(host->impl->lock);
    fill(out, asymvq::encode_text(*host->impl, ids));
  });
}

void asymvq_inpaint_params_init(asymvq_inpaint_params* p) {
  if (p == nullptr) return;
  std::memset(p, 0, sizeof *p);
  p->struct_size = sizeof *p;
  p->steps = 50;
  p->guidance_scale = 7.5;
  p->scheduler = ASYMVQ_SCHEDULER_DDIM;
  p->region = ASYMVQ_REGION_NONE;
  p->margin = -1;
  p->region_choice = nullptr;
}

asymvq_status asymvq_inpaint(asymvq_host* host, const asymvq_inpaint_params* p, asymvq_output* out) {
  return guarded([&] {
    check_host(host);
    check_out(out);
    if (p == nullptr) asymvq::fail_arg("params", "a pointer to asymvq_inpaint_params", "NULL");
    // An older caller's struct ends before the fields of later ABIs: they are not its memory, never read them.
    bool v1 = p->struct_size == ASYMVQ_INPAINT_PARAMS_V1_SIZE, v2 = p->struct_size == ASYMVQ_INPAINT_PARAMS_V2_SIZE;
    if (p->struct_size != sizeof *p && !v1 && !v2)
      asymvq::fail_arg("params.struct_size",
                       std::to_string(sizeof *p) + " (call asymvq_inpaint_params_init first; or " +
                           std::to_string(ASYMVQ_INPAINT_PARAMS_V2_SIZE) + " or " +
                           std::to_string(ASYMVQ_INPAINT_PARAMS_V1_SIZE) + ", the ABI 2 and 1 layouts)",
                       std::to_string(p->struct_size));
    asymvq_region_choice* choice = v1 || v2 ? nullptr : p->region_choice;
    check_choice(choice, "params.region_choice");
    asymvq::InpaintArgs a;
    if (p->prompt_embeds) a.prompt_embeds = view(p->prompt_embeds, "prompt_embeds", ASYMVQ_FLOAT32);
    if (p->negative_embeds) a.negative_embeds = view(p->negative_embeds, "negative_embeds", ASYMVQ_FLOAT32);
    if (p->prompt_ids) a.prompt_ids = view(p->prompt_ids, "prompt_ids", ASYMVQ_INT64);
    if (p->negative_ids) a.negative_ids = view(p->negative_ids, "negative_ids", ASYMVQ_INT64);
    if (p->image) a.image = view(p->image, "image", ASYMVQ_FLOAT32);
    if (p->mask) a.mask = view(p->mask, "mask", ASYMVQ_FLOAT32);
    a.height = p->height;
    a.width = p->width;
    a.steps = p->steps;
    a.guidance_scale = p->guidance_scale;
    a.seed = p->seed;
    a.scheduler = p->scheduler;
    if (!v1) {
      // as an int: a C caller may store any int in the enum, which C++ may not load as the enum type
      static_assert(sizeof p->region == sizeof(int), "asymvq_region is an int");
      int region;
      std::memcpy(&region, &p->region, sizeof region);
      a.region = region;
      a.margin = p->margin;
    }
    if (p->stats) std::memset(p->stats, 0, sizeof *p->stats);
    std::lock_guard<std::mutex> lock(host->impl->lock);
    asymvq::RegionChoice c;
    fill(out, asymvq::inpaint(*host->impl, a, p->stats, &c));
    report(choice, c);
  });
}

void asymvq_output_free(asymvq_output* out) {
  if (out == nullptr) return;
  std::free(out->data);
  std::memset(out, 0, sizeof *out);
}

}  // extern "C"
