// The engines directory: manifest.json checked exactly as asymvq.engines.load_engine_dir checks
// it (format version, the latent space, the region model (region.cpp), known components, I/O names, dtypes, shape ranges and
// latent channel dims, sha256 of every artifact file, the device a package was compiled for),
// then one AOTInductor engine per component. Feeds are checked against the exported ranges and tied dims here, because
// compiled AOTInductor code trusts its inputs (it reads past a smaller image otherwise).
#include <openssl/evp.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "host.h"
#include "json.h"

namespace fs = std::filesystem;

namespace asymvq {

namespace {

// component -> (inputs, outputs): asymvq.engines.COMPONENT_IO.
const std::map<std::string, std::pair<std::vector<std::string>, std::vector<std::string>>>& component_io() {
  static const std::map<std::string, std::pair<std::vector<std::string>, std::vector<std::string>>> io = {
      {"text-encoder", {{"input_ids"}, {"last_hidden_state"}}},
      {"vae-encoder", {{"image"}, {"moments"}}},
      {"unet", {{"sample", "timestep", "encoder_hidden_states"}, {"noise_pred"}}},
      {"decoder", {{"latent", "image", "mask"}, {"sample"}}},
      {"decoder-plain", {{"latent"}, {"sample"}}},
      // SDXL and FLUX.1 Fill: known (a directory of theirs opens), run by the Python pipeline; the host decodes
      {"sdxl-text-encoder", {{"input_ids"}, {"penultimate_hidden_state"}}},
      {"sdxl-text-encoder-2", {{"input_ids"}, {"penultimate_hidden_state", "text_embeds"}}},
      {"sdxl-unet", {{"sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids"}, {"noise_pred"}}},
      {"t5-encoder", {{"input_ids"}, {"last_hidden_state"}}},
      {"flux-text-encoder", {{"input_ids"}, {"pooler_output"}}},
      {"flux-transformer", {{"sample", "masked_latent", "mask", "timestep", "guidance", "encoder_hidden_states",
                             "pooled_projections"}, {"noise_pred"}}},
  };
  return io;
}

std::string join(const std::vector<std::string>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", '" : "'") + v[i] + "'";
  return s + "]";
}

std::string read_file(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  if (!f) fail(ASYMVQ_ERR_IO, "cannot read " + p.string());
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string sha256_file(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  if (!f) fail(ASYMVQ_ERR_IO, "cannot read " + p.string());
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) fail(ASYMVQ_ERR_RUNTIME, "sha256: OpenSSL init failed");
  std::vector<char> buf(1 << 22);
  while (f) {
    f.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    if (f.gcount() > 0) EVP_DigestUpdate(ctx.get(), buf.data(), static_cast<size_t>(f.gcount()));
  }
  if (f.bad()) fail(ASYMVQ_ERR_IO, "error while reading " + p.string());
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  EVP_DigestFinal_ex(ctx.get(), md, &n);
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned i = 0; i < n; ++i) {
    out += hex[md[i] >> 4];
    out += hex[md[i] & 15];
  }
  return out;
}

[[noreturn]] void bad(const std::string& msg) { fail(ASYMVQ_ERR_MANIFEST, "engines: " + msg); }

const json::Value& need_key(const json::Value& obj, const std::string& key, const std::string& where) {
  const json::Value* v = obj.find(key);
  if (!v) bad(where + " has no '" + key + "'");
  return *v;
}

std::vector<int64_t> int_list(const json::Value& v, const std::string& where) {
  if (!v.is_array()) bad(where + " must be a list of integers");
  std::vector<int64_t> out;
  for (auto& x : v.arr) {
    if (!x.is_number() || !x.is_int || x.i < 1) bad(where + " must be a list of positive integers");
    out.push_back(x.i);
  }
  return out;
}

TensorSpec parse_spec(const json::Value& v, const std::string& where) {
  if (!v.is_object()) bad(where + " is not an object");
  TensorSpec s;
  const auto& name = need_key(v, "name", where);
  const auto& dtype = need_key(v, "dtype", where);
  if (!name.is_string() || !dtype.is_string()) bad(where + ": name and dtype must be strings");
  s.name = name.str;
  s.dtype = dtype.str;
  const auto& dims = need_key(v, "dims", where);
  if (!dims.is_array()) bad(where + ": dims must be a list");
  for (auto& d : dims.arr) {
    Dim dim;
    if (d.is_string()) {
      dim.symbolic = true;
      dim.text = d.str;
      auto star = d.str.find('*');
      if (star != std::string::npos) {
        try {
          dim.factor = std::stoll(d.str.substr(0, star));
        } catch (...) {
          bad(where + ": bad symbolic dim '" + d.str + "'");
        }
        dim.base = d.str.substr(star + 1);
      } else {
        dim.base = d.str;
      }
      if (dim.base.empty() || dim.factor < 1) bad(where + ": bad symbolic dim '" + d.str + "'");
    } else if (d.is_number() && d.is_int && d.i >= 1) {
      dim.value = d.i;
      dim.text = std::to_string(d.i);
    } else {
      bad(where + ": dims must be positive integers or names");
    }
    s.dims.push_back(dim);
  }
  s.min = int_list(need_key(v, "min", where), where + ".min");
  s.opt = int_list(need_key(v, "opt", where), where + ".opt");
  s.max = int_list(need_key(v, "max", where), where + ".max");
  size_t n = s.dims.size();
  if (s.min.size() != n || s.opt.size() != n || s.max.size() != n)
    bad(where + ": min/opt/max must have one size per dim (" + std::to_string(n) + ")");
  for (size_t i = 0; i < n; ++i) {
    if (!(s.min[i] <= s.opt[i] && s.opt[i] <= s.max[i])) bad(where + ": min <= opt <= max does not hold for dim " + std::to_string(i));
    if (!s.dims[i].symbolic && (s.min[i] != s.dims[i].value || s.max[i] != s.dims[i].value))
      bad(where + ": fixed dim " + std::to_string(i) + " has a range other than its size");
  }
  return s;
}

// The dtype each input must have at this precision (COMPONENT_IO's conventions).
std::string expected_dtype(const std::string& input, const std::string& precision) {
  if (input == "input_ids") return "int64";
  if (input == "timestep") return "float32";
  return precision == "fp16" ? "float16" : "float32";
}

at::ScalarType scalar_type(const std::string& dtype) {
  if (dtype == "float32") return at::kFloat;
  if (dtype == "float16") return at::kHalf;
  if (dtype == "int64") return at::kLong;
  fail(ASYMVQ_ERR_MANIFEST, "engines: unknown dtype '" + dtype + "'");
}

// Checked relative path inside root: no absolute paths, no '..', and, once symlinks are followed,
// still under root (as asymvq.engines.manifest.safe_path: a link to an identical file outside
// would pass the sha256 check, so the path itself must be refused).
fs::path inside(const fs::path& root, const std::string& rel, const std::string& where) {
  fs::path p(rel);
  if (rel.empty() || p.is_absolute()) bad(where + ": artifact path '" + rel + "' must be relative to the directory");
  for (auto& part : p)
    if (part == "..") bad(where + ": artifact path '" + rel + "' leaves the directory");
  std::error_code ec;
  const fs::path real = fs::weakly_canonical(root / p, ec), top = fs::weakly_canonical(root, ec);
  if (ec) bad(where + ": artifact path '" + rel + "' cannot be resolved (" + ec.message() + ")");
  auto r = real.begin();
  for (auto t = top.begin(); t != top.end(); ++t, ++r)
    if (r == real.end() || *r != *t)
      bad(where + ": artifact path '" + rel + "' leads out of the directory (to " + real.string() + ")");
  return root / p;
}

constexpr int64_t kFormatVersion = 2;  // asymvq.engines.manifest.FORMAT_VERSION

// "latent_space": {"channels", "scaling_factor", "shift_factor"}, checked as LatentSpace.from_dict checks it.
LatentSpace read_latent_space(const json::Value& manifest, const std::string& where) {
  const json::Value* ls = manifest.find("latent_space");
  auto keys_ok = [&] {
    if (!ls || !ls->is_object() || ls->obj.size() != 3) return false;
    for (const char* k : {"channels", "scaling_factor", "shift_factor"})
      if (!ls->find(k)) return false;
    return true;
  };
  if (!keys_ok())
    bad(where + ": latent_space must be an object with exactly the keys ['channels', 'scaling_factor', 'shift_factor']");
  LatentSpace out;
  const json::Value& c = *ls->find("channels");
  if (!c.is_number() || !c.is_int || c.i < 1) bad(where + ": latent_space.channels must be a positive integer");
  out.channels = c.i;
  const json::Value& sf = *ls->find("scaling_factor");
  if (!sf.is_number() || !std::isfinite(sf.num) || !(sf.num > 0))
    bad(where + ": latent_space.scaling_factor must be a positive finite number");
  out.scaling_factor = sf.num;
  const json::Value& sh = *ls->find("shift_factor");
  if (!sh.is_number() || !std::isfinite(sh.num)) bad(where + ": latent_space.shift_factor must be a finite number");
  out.shift_factor = sh.num;
  return out;
}

// The channel dim of the tensors in the latent space (COMPONENT vocabulary: latent_channels, 2*latent_channels).
void check_latent_dims(const TensorSpec& s, const LatentSpace& ls, const std::string& where) {
  int64_t want = 0;
  if (s.name == "latent" || s.name == "noise_pred") want = ls.channels;
  else if (s.name == "moments") want = 2 * ls.channels;
  if (want && (s.dims.size() != 4 || s.dims[1].symbolic || s.dims[1].value != want))
    bad(where + " " + s.name + " has dims " + s.dims_str() + ", expected " + std::to_string(want) +
        " channels (latent_space.channels = " + std::to_string(ls.channels) + ")");
}

void read_scheduler(Host& h, const json::Value& manifest) {
  const json::Value* sub = manifest.find("scheduler");
  if (!sub) return;
  if (!sub->is_string()) bad("manifest.json: 'scheduler' must be a folder name");
  fs::path p = inside(h.root, sub->str, "manifest.json scheduler") / "scheduler_config.json";
  if (!fs::is_regular_file(p)) bad(p.string() + " is missing");
  json::Value cfg;
  try {
    cfg = json::parse(read_file(p));
  } catch (const json::ParseError& e) {
    bad(p.string() + " is not valid JSON (" + e.what() + ")");
  }
  if (!cfg.is_object()) bad(p.string() + " is not a JSON object");
  SchedulerConfig& s = h.scheduler;
  for (auto& [k, v] : cfg.obj) {
    auto num = [&](double& out) {
      if (!v.is_number()) bad(p.string() + ": " + k + " must be a number");
      out = v.num;
    };
    auto integer = [&](int64_t& out) {
      if (!v.is_number() || !v.is_int) bad(p.string() + ": " + k + " must be an integer");
      out = v.i;
    };
    auto str = [&](std::string& out) {
      if (!v.is_string()) bad(p.string() + ": " + k + " must be a string");
      out = v.str;
    };
    auto flag = [&](bool& out) {
      if (v.kind != json::Value::Bool) bad(p.string() + ": " + k + " must be true or false");
      out = v.b;
    };
    if (k == "num_train_timesteps") integer(s.num_train_timesteps);
    else if (k == "beta_start") num(s.beta_start);
    else if (k == "beta_end") num(s.beta_end);
    else if (k == "beta_schedule") str(s.beta_schedule);
    else if (k == "prediction_type") str(s.prediction_type);
    else if (k == "timestep_spacing") str(s.timestep_spacing);
    else if (k == "steps_offset") integer(s.steps_offset);
    else if (k == "set_alpha_to_one") flag(s.set_alpha_to_one);
    else if (k == "clip_sample") flag(s.clip_sample);
    else if (k == "clip_sample_range") num(s.clip_sample_range);
    else if (k == "interpolation_type") str(s.interpolation_type);
    else if (k == "final_sigmas_type") str(s.final_sigmas_type);
    else if (k == "trained_betas") {
      if (v.kind != json::Value::Null) s.unsupported.push_back("trained_betas");
    } else if (k == "thresholding" || k == "rescale_betas_zero_snr" || k == "use_karras_sigmas" ||
               k == "use_exponential_sigmas" || k == "use_beta_sigmas") {
      if (v.kind == json::Value::Bool && v.b) s.unsupported.push_back(k + "=true");
    } else if (k == "timestep_type") {
      if (!v.is_string() || v.str != "discrete") s.unsupported.push_back("timestep_type other than discrete");
    }
    // other keys (_class_name, skip_prk_steps, PNDM/DPM options, ...) do not concern DDIM or Euler
  }
  if (s.num_train_timesteps < 1) bad(p.string() + ": num_train_timesteps must be positive");
  h.has_scheduler = true;
}

// "" through the exported CLIPTokenizer with padding="max_length" (77): bos, eos, then pad.
void read_empty_prompt(Host& h, const json::Value& manifest) {
  const json::Value* sub = manifest.find("tokenizer");
  if (!sub || !sub->is_string()) return;
  fs::path dir = inside(h.root, sub->str, "manifest.json tokenizer");
  try {
    json::Value cfg = json::parse(read_file(dir / "tokenizer_config.json"));
    json::Value tok = json::parse(read_file(dir / "tokenizer.json"));
    auto token = [&](const char* key) -> std::string {
      const json::Value* v = cfg.find(key);
      if (v && v->is_string()) return v->str;
      if (v && v->is_object() && v->find("content") && v->find("content")->is_string()) return v->find("content")->str;
      return "";
    };
    auto id_of = [&](const std::string& t) -> int64_t {
      if (const json::Value* added = tok.find("added_tokens"); added && added->is_array())
        for (auto& a : added->arr)
          if (a.find("content") && a.find("content")->str == t && a.find("id")) return a.find("id")->i;
      if (const json::Value* model = tok.find("model"))
        if (const json::Value* vocab = model->find("vocab"))
          if (const json::Value* id = vocab->find(t)) return id->i;
      return -1;
    };
    int64_t top = -1;  // the largest token id: ids at or above the vocabulary would index past the embedding table
    if (const json::Value* added = tok.find("added_tokens"); added && added->is_array())
      for (auto& a : added->arr)
        if (const json::Value* id = a.find("id"); id && id->is_int) top = std::max(top, id->i);
    if (const json::Value* model = tok.find("model"))
      if (const json::Value* vocab = model->find("vocab"); vocab && vocab->is_object())
        for (auto& kv : vocab->obj)
          if (kv.second.is_int) top = std::max(top, kv.second.i);
    h.vocab_size = top + 1;
    int64_t bos = id_of(token("bos_token")), eos = id_of(token("eos_token")), pad = id_of(token("pad_token"));
    int64_t len = 77;
    if (const json::Value* m = cfg.find("model_max_length"); m && m->is_int && m->i > 2 && m->i < 100000) len = m->i;
    if (bos < 0 || eos < 0 || pad < 0) return;
    h.empty_prompt_ids.assign(static_cast<size_t>(len), pad);
    h.empty_prompt_ids[0] = bos;
    h.empty_prompt_ids[1] = eos;
  } catch (const std::exception&) {
    h.empty_prompt_ids.clear();  // unreadable tokenizer: callers must pass negative embeddings
    h.vocab_size = 0;
  }
}

}  // namespace

std::string shape_str(at::IntArrayRef shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  if (shape.size() == 1) s += ",";
  return s + ")";
}

std::string TensorSpec::dims_str() const {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + (dims[i].symbolic ? "'" + dims[i].text + "'" : dims[i].text);
  return s + "]";
}

Engine::Engine(std::string component_, std::vector<TensorSpec> inputs_, std::vector<TensorSpec> outputs_,
               const std::string& path, const at::Device& device)
    : component(std::move(component_)), inputs(std::move(inputs_)), outputs(std::move(outputs_)), device_(device) {
  try {
    loader_ = std::make_unique<torch::inductor::AOTIModelPackageLoader>(path, "model", false, 1,
                                                                        device.is_cuda() ? device.index() : -1);
  } catch (const std::exception& e) {
    std::string what = e.what();
    what = what.substr(0, what.find('\n'));
    fail(ASYMVQ_ERR_RUNTIME, "engines: loading the " + component + " AOTInductor package " + path + " failed: " + what);
  }
}

Engine::~Engine() = default;

std::vector<at::Tensor> Engine::run(std::vector<at::Tensor> feeds) {
  if (feeds.size() != inputs.size()) fail(ASYMVQ_ERR_RUNTIME, component + " engine: wrong number of feeds");
  int64_t batch = feeds[0].dim() ? feeds[0].size(0) : 1;
  std::map<std::string, std::tuple<std::string, std::string, int64_t>> seen;  // base dim -> (input, dim text, size)
  for (size_t k = 0; k < feeds.size(); ++k) {
    const TensorSpec& spec = inputs[k];
    at::Tensor t = feeds[k];
    if (t.dim() == 0 && spec.dims.size() == 1) t = t.reshape({1});
    if (t.dim() == static_cast<int64_t>(spec.dims.size()) && spec.dims[0].symbolic && spec.dims[0].base == "batch" &&
        t.size(0) == 1 && batch > 1) {
      std::vector<int64_t> shape(t.sizes().begin(), t.sizes().end());
      shape[0] = batch;
      t = t.expand(shape);
    }
    bool ok = t.dim() == static_cast<int64_t>(spec.dims.size());
    for (int64_t d = 0; ok && d < t.dim(); ++d) ok = spec.min[d] <= t.size(d) && t.size(d) <= spec.max[d];
    if (!ok)
      fail(ASYMVQ_ERR_INVALID_ARGUMENT,
           component + " engine: " + spec.name + " must have shape " + spec.dims_str() + " within " + shape_str(spec.min) +
               ".." + shape_str(spec.max) + " (the ranges it was exported for; re-export with --shapes to widen them), got " +
               shape_str(t.sizes()));
    if (spec.dims[0].symbolic && spec.dims[0].base == "batch" && t.size(0) != batch)
      fail(ASYMVQ_ERR_INVALID_ARGUMENT, component + " engine: " + spec.name + " has batch " + std::to_string(t.size(0)) +
                                            ", expected " + std::to_string(batch) + " (or 1)");
    for (size_t d = 0; d < spec.dims.size(); ++d) {
      const Dim& dim = spec.dims[d];
      if (!dim.symbolic) continue;
      int64_t n = t.size(static_cast<int64_t>(d));
      auto it = seen.emplace(dim.base, std::make_tuple(spec.name, dim.text, n)).first;
      auto& [ref_name, ref_text, ref_n] = it->second;
      int64_t ref_factor = 1;
      if (auto star = ref_text.find('*'); star != std::string::npos) ref_factor = std::stoll(ref_text.substr(0, star));
      if (n % dim.factor || n * ref_factor != ref_n * dim.factor)
        fail(ASYMVQ_ERR_INVALID_ARGUMENT, component + " engine: " + spec.name + " has " + dim.text + " = " + std::to_string(n) +
                                              ", which does not fit " + ref_name + "'s " + ref_text + " = " + std::to_string(ref_n));
    }
    feeds[k] = t.to(device_, scalar_type(spec.dtype)).contiguous();
  }
  std::vector<at::Tensor> out;
  try {
    c10::InferenceMode guard;
    out = loader_->run(feeds);
  } catch (const std::exception& e) {
    std::string what = e.what();
    fail(ASYMVQ_ERR_RUNTIME, component + " engine: run failed: " + what.substr(0, what.find('\n')));
  }
  if (out.size() != outputs.size())
    fail(ASYMVQ_ERR_RUNTIME, component + " engine: returned " + std::to_string(out.size()) + " outputs, the manifest lists " +
                                 std::to_string(outputs.size()));
  for (auto& t : out)
    if (t.is_floating_point()) t = t.to(at::kFloat);
  return out;
}

Engine* Host::find(const std::string& component) const {
  for (auto& e : engines)
    if (e->component == component) return e.get();
  return nullptr;
}

Engine& Host::need(const std::string& component, const std::string& why) const {
  Engine* e = find(component);
  if (!e) {
    std::vector<std::string> have;
    for (auto& x : engines) have.push_back(x->component);
    fail(ASYMVQ_ERR_UNSUPPORTED, why + " needs a '" + component + "' engine; " + root + " has " + join(have) +
                                     " (export it with `asymvq export --format aoti --component " + component + "`)");
  }
  return *e;
}

std::unique_ptr<Host> open_host(const std::string& dir, const std::string& device) {
  auto h = std::make_unique<Host>();
  h->root = dir;
  try {
    h->device = at::Device(device);
  } catch (const std::exception&) {
    fail_arg("device", "'cpu', 'cuda' or 'cuda:N'", "'" + device + "'");
  }
  if (!h->device.is_cpu() && !h->device.is_cuda()) fail_arg("device", "'cpu', 'cuda' or 'cuda:N'", "'" + device + "'");
  fs::path root(dir);
  std::error_code ec;
  if (!fs::is_directory(root, ec))
    fail(ASYMVQ_ERR_NOT_FOUND, "engines_dir: expected a directory written by `asymvq export`, got '" + dir + "'");
  fs::path mpath = root / "manifest.json";
  if (!fs::is_regular_file(mpath, ec))
    fail(ASYMVQ_ERR_NOT_FOUND, "engines: " + mpath.string() + " is missing; build the directory with `asymvq export --out " + dir + "`");
  json::Value m;
  try {
    m = json::parse(read_file(mpath));
  } catch (const json::ParseError& e) {
    bad(mpath.string() + " is not valid JSON (" + e.what() + ")");
  }
  const json::Value* version = m.find("format_version");
  if (!version || !version->is_int || version->i != kFormatVersion)
    bad(mpath.string() + " has format_version " +
        (version && version->is_int ? std::to_string(version->i) : version && version->is_number() ? std::to_string(version->num) : "(none)") +
        "; this asymvq reads " + std::to_string(kFormatVersion) +
        (version && version->is_int && version->i < kFormatVersion
             ? " (format 1 does not record the latent space): re-export the directory with `asymvq export`"
             : ""));
  const json::Value* comps = m.find("components");
  if (!comps || !comps->is_object() || comps->obj.empty()) bad(mpath.string() + " lists no components");
  if (const json::Value* p = m.find("precision"); p && p->is_string()) h->precision = p->str;
  if (h->precision != "fp32" && h->precision != "fp16") bad(mpath.string() + " has precision '" + h->precision + "' (fp32 or fp16)");
  h->latent_space = read_latent_space(m, mpath.string());
  h->region_model = read_region_model(m, mpath.string());
  if (const json::Value* f = m.find("family")) {  // absent: sd (directories from before the families)
    if (!f->is_string() || (f->str != "sd" && f->str != "sdxl" && f->str != "flux-fill"))
      bad(mpath.string() + ": family must be one of ['sd', 'sdxl', 'flux-fill']");
    h->family = f->str;
  }
  const auto& io = component_io();
  for (auto& [name, entry] : comps->obj) {
    if (!io.count(name)) {
      std::vector<std::string> known;
      for (auto& kv : io) known.push_back(kv.first);
      bad(mpath.string() + " has unknown component '" + name + "' (known: " + join(known) + ")");
    }
    const json::Value* ins = entry.find("inputs");
    const json::Value* outs = entry.find("outputs");
    const json::Value* arts = entry.find("artifacts");
    if (!ins || !outs || !arts || !ins->is_array() || !outs->is_array() || !arts->is_object() || ins->arr.empty() ||
        outs->arr.empty() || arts->obj.empty())
      bad(name + " in " + mpath.string() + " lacks inputs, outputs or artifacts");
  }
  struct Verified {
    std::string name;
    std::vector<TensorSpec> inputs, outputs;
    std::string path;
  };
  std::vector<Verified> verified;
  for (auto& [name, entry] : comps->obj) {
    std::vector<TensorSpec> inputs, outputs;
    for (size_t i = 0; i < entry.find("inputs")->arr.size(); ++i)
      inputs.push_back(parse_spec(entry.find("inputs")->arr[i], name + " input " + std::to_string(i)));
    for (size_t i = 0; i < entry.find("outputs")->arr.size(); ++i)
      outputs.push_back(parse_spec(entry.find("outputs")->arr[i], name + " output " + std::to_string(i)));
    std::vector<std::string> in_names, out_names;
    for (auto& s : inputs) in_names.push_back(s.name);
    for (auto& s : outputs) out_names.push_back(s.name);
    const auto& want = io.at(name);
    if (in_names != want.first || out_names != want.second)
      bad(name + " in " + dir + " has I/O " + join(in_names) + " -> " + join(out_names) + ", expected " + join(want.first) +
          " -> " + join(want.second));
    for (auto& s : inputs)
      if (s.dtype != expected_dtype(s.name, h->precision))
        bad(name + " input " + s.name + " has dtype " + s.dtype + ", expected " + expected_dtype(s.name, h->precision) + " for a " +
            h->precision + " directory");
    for (auto& s : outputs)
      if (s.dtype != expected_dtype(s.name, h->precision))
        bad(name + " output " + s.name + " has dtype " + s.dtype + ", expected " + expected_dtype(s.name, h->precision));
    for (auto& s : inputs) check_latent_dims(s, h->latent_space, name + " input");
    for (auto& s : outputs) check_latent_dims(s, h->latent_space, name + " output");
    const json::Value* arts = entry.find("artifacts");
    const json::Value* aoti = arts->find("aoti");
    if (!aoti || !aoti->is_object()) {
      std::vector<std::string> built;
      for (auto& kv : arts->obj) built.push_back(kv.first);
      bad(name + " has no 'aoti' artifact in " + dir + " (built: " + join(built) +
          "); rebuild with `asymvq export --format aoti`");
    }
    const json::Value* files = aoti->find("files");
    const json::Value* path = aoti->find("path");
    if (!files || !files->is_object() || files->obj.empty() || !path || !path->is_string())
      bad(name + " aoti artifact lacks 'path' or 'files'");
    for (auto& [rel, digest] : files->obj) {
      fs::path f = inside(root, rel, name + " aoti artifact");
      if (!fs::is_regular_file(f, ec)) bad(name + " aoti artifact " + f.string() + " is missing");
      if (!digest.is_string()) bad(name + " aoti artifact " + rel + ": sha256 must be a string");
      std::string actual = sha256_file(f);
      if (actual != digest.str)
        bad(name + " aoti artifact " + f.string() + " is corrupted or was replaced (sha256 " + actual.substr(0, 12) +
            "..., manifest says " + digest.str.substr(0, 12) + "...); re-export it");
    }
    if (!files->find(path->str)) bad(name + " aoti artifact: its path '" + path->str + "' is not among its hashed files");
    std::string built_for = "cpu";
    if (const json::Value* d = aoti->find("device"); d && d->is_string()) built_for = d->str;
    std::string want_type = h->device.is_cuda() ? "cuda" : "cpu";
    if (built_for != want_type)
      bad("the " + name + " AOTInductor package in " + dir + " was compiled for " + built_for + ", not " + want_type +
          "; open it with device '" + built_for + "'");
    verified.push_back({name, std::move(inputs), std::move(outputs), inside(root, path->str, name).string()});
  }
  read_scheduler(*h, m);
  read_empty_prompt(*h, m);
  // Everything is verified before the first package is loaded (a refusal costs no load).
  for (auto& v : verified) h->engines.push_back(std::make_unique<Engine>(v.name, v.inputs, v.outputs, v.path, h->device));
  return h;
}

}  // namespace asymvq
