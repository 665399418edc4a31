// asymvq-run: the C API from the command line, tensors in and out as safetensors.
//
//   asymvq-run decode  --engines DIR --latents Z.safetensors [--image I.safetensors --mask M.safetensors]
//                      [--space vae|diffusion] [--decode-region mask|auto|full [--margin K]] --out OUT.safetensors
//   asymvq-run inpaint --engines DIR --prompt-embeds E.safetensors [--negative-embeds N.safetensors]
//                      --image I.safetensors --mask M.safetensors --steps 4 --guidance 7.5 --seed 0
//                      [--scheduler ddim|euler] [--decode-region mask|auto|full [--margin K]] --out OUT.safetensors
//
// With --decode-region mask or auto, what was decoded goes to stdout as one line, the Python API's words
// (asymvq.models.region.RegionChoice.describe): "decoded: box 1:5,2:6 (auto: share 0.33, predicted 3.10x, box statistics)".
//
// Exit status: 0 on success, else the asymvq_status value (1 invalid argument, 2 not found,
// 3 manifest, 4 unsupported, 5 runtime, 6 format, 7 io); the message goes to stderr as
// "asymvq-run: ASYMVQ_ERR_...: <message>".
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "asymvq/asymvq.h"
#include "safetensors.h"

namespace {

const char* kUsage =
    "usage:\n"
    "  asymvq-run decode  --engines DIR --latents Z.safetensors [--image I.safetensors --mask M.safetensors]\n"
    "                     [--space vae|diffusion] [--decode-region mask|auto|full [--margin K]]\n"
    "                     --out OUT.safetensors [--device cpu]\n"
    "                     (--space: latents in the VAE's space, the default, or the diffusion loop's,\n"
    "                     converted with the directory's latent_space: z / scaling_factor + shift_factor;\n"
    "                     --decode-region mask: decode only the mask's box grown by --margin latent pixels,\n"
    "                     default the manifest's (4), the rest copied from --image; auto: the box when the\n"
    "                     manifest's cost model says it pays, else the whole image; full: the whole image,\n"
    "                     the default. With mask or auto, what was decoded is printed: \"decoded: ...\")\n"
    "  asymvq-run inpaint --engines DIR (--prompt-embeds E.safetensors | --prompt-ids IDS.safetensors)\n"
    "                     [--negative-embeds N.safetensors | --negative-ids NIDS.safetensors]\n"
    "                     [--image I.safetensors --mask M.safetensors | --height H --width W]\n"
    "                     [--steps 50] [--guidance 7.5] [--seed 0] [--scheduler ddim|euler]\n"
    "                     [--decode-region mask|auto|full [--margin K]] --out OUT.safetensors [--device cpu]\n"
    "                     (--decode-region as decode's, for the job's decode step)\n";

int die(asymvq_status s, const std::string& msg) {
  std::fprintf(stderr, "asymvq-run: %s: %s\n", asymvq_status_name(s), msg.c_str());
  return static_cast<int>(s);
}

struct Loaded {
  asymvq::st::Tensor t;
  asymvq_tensor view{};
};

// Reads the one tensor of `path` into `l` and points l.view at it.
void load(const std::string& path, const std::string& arg, Loaded& l) {
  l.t = asymvq::st::read_one(path, arg);
  l.view.shape = l.t.shape.data();
  l.view.ndim = static_cast<int32_t>(l.t.shape.size());
  if (l.t.is_int()) {
    l.view.dtype = ASYMVQ_INT64;
    l.view.data = l.t.i64.data();
  } else {
    l.view.dtype = ASYMVQ_FLOAT32;
    l.view.data = l.t.f32.data();
  }
}

// asymvq.models.region.RegionChoice.describe, word for word (the tests compare the two); the host decodes a box
// with its own GroupNorm statistics (region_stats "box"; "lowres" runs on the torch backend only).
std::string describe(const asymvq_region_choice& c, const std::string& asked) {
  char buf[256];
  if (c.decoded == ASYMVQ_DECODED_NONE)
    std::snprintf(buf, sizeof buf, "none (empty mask; %s)", asked.c_str());
  else if (c.decoded == ASYMVQ_DECODED_FULL)
    std::snprintf(buf, sizeof buf, "full (%s: box share %.2f, predicted %.2fx < %gx, box statistics)", asked.c_str(), c.share,
                  c.predicted_speedup, c.min_speedup);
  else
    std::snprintf(buf, sizeof buf, "box %d:%d,%d:%d (%s: share %.2f, predicted %.2fx, box statistics)", c.y0, c.y1, c.x0, c.x1, asked.c_str(),
                  c.share, c.predicted_speedup);
  return buf;
}

bool parse_int(const std::string& s, long long& out) {
  char* end = nullptr;
  out = std::strtoll(s.c_str(), &end, 10);
  return !s.empty() && end && *end == '\0';
}

int run(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "-h" || std::string(argv[1]) == "--help") {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? ASYMVQ_ERR_INVALID_ARGUMENT : 0;
  }
  std::string cmd = argv[1];
  if (cmd != "decode" && cmd != "inpaint") return die(ASYMVQ_ERR_INVALID_ARGUMENT, "command: expected decode or inpaint, got '" + cmd + "'\n" + kUsage);
  static const std::map<std::string, std::vector<std::string>> allowed = {
      {"decode", {"--engines", "--latents", "--image", "--mask", "--space", "--decode-region", "--margin", "--out", "--device"}},
      {"inpaint", {"--engines", "--prompt-embeds", "--negative-embeds", "--prompt-ids", "--negative-ids", "--image", "--mask",
                   "--height", "--width", "--steps", "--guidance", "--seed", "--scheduler", "--decode-region", "--margin",
                   "--out", "--device"}},
  };
  std::map<std::string, std::string> opt;
  for (int i = 2; i < argc; ++i) {
    std::string k = argv[i];
    const auto& ok = allowed.at(cmd);
    if (std::find(ok.begin(), ok.end(), k) == ok.end())
      return die(ASYMVQ_ERR_INVALID_ARGUMENT, cmd + ": unknown option '" + k + "'\n" + kUsage);
    if (i + 1 >= argc) return die(ASYMVQ_ERR_INVALID_ARGUMENT, k + ": expected a value, got nothing");
    opt[k] = argv[++i];
  }
  for (const char* req : {"--engines", "--out"})
    if (!opt.count(req)) return die(ASYMVQ_ERR_INVALID_ARGUMENT, std::string(req) + ": required");

  // Inputs first: a bad file is reported before the engines are loaded.
  std::map<std::string, Loaded> in;
  std::vector<std::string> files = cmd == "decode" ? std::vector<std::string>{"--latents", "--image", "--mask"}
                                                   : std::vector<std::string>{"--prompt-embeds", "--negative-embeds", "--prompt-ids",
                                                                              "--negative-ids", "--image", "--mask"};
  if (cmd == "decode" && !opt.count("--latents")) return die(ASYMVQ_ERR_INVALID_ARGUMENT, "--latents: required");
  bool diffusion_space = opt.count("--space") && opt["--space"] == "diffusion";
  if (opt.count("--space") && opt["--space"] != "vae" && opt["--space"] != "diffusion")
    return die(ASYMVQ_ERR_INVALID_ARGUMENT, "--space: expected vae or diffusion, got '" + opt["--space"] + "'");
  // asymvq_decode_region_ex's region, or asymvq_inpaint_params.region
  asymvq_region region_mode = ASYMVQ_REGION_NONE;
  if (opt.count("--decode-region")) {
    const std::string& r = opt["--decode-region"];
    if (r == "mask") region_mode = ASYMVQ_REGION_MASK;
    else if (r == "auto") region_mode = ASYMVQ_REGION_AUTO;
    else if (r != "full") return die(ASYMVQ_ERR_INVALID_ARGUMENT, "--decode-region: expected mask, auto or full, got '" + r + "'");
  }
  bool region = region_mode != ASYMVQ_REGION_NONE;
  long long margin = -1;  // the library's default
  if (opt.count("--margin")) {
    if (!region) return die(ASYMVQ_ERR_INVALID_ARGUMENT, "--margin: only with --decode-region mask or auto");
    if (!parse_int(opt["--margin"], margin) || margin < 0 || margin > 1 << 20)
      return die(ASYMVQ_ERR_INVALID_ARGUMENT, "--margin: expected an integer >= 0 (latent pixels), got '" + opt["--margin"] + "'");
  }
  if (region && (!opt.count("--image") || !opt.count("--mask")))
    return die(ASYMVQ_ERR_INVALID_ARGUMENT, "--decode-region: " + opt["--decode-region"] + " needs --image and --mask");
  for (auto& k : files) {
    if (!opt.count(k)) continue;
    try {
      load(opt[k], k, in[k]);
    } catch (const asymvq::st::NotFound& e) {
      return die(ASYMVQ_ERR_NOT_FOUND, k + ": " + e.what());
    } catch (const asymvq::st::FormatError& e) {
      return die(ASYMVQ_ERR_FORMAT, k + ": " + e.what());
    } catch (const std::bad_alloc&) {
      return die(ASYMVQ_ERR_FORMAT, k + ": " + opt[k] + ": too large to read");
    } catch (const std::exception& e) {
      return die(ASYMVQ_ERR_IO, k + ": " + e.what());
    }
  }
  auto ptr = [&](const char* k) -> const asymvq_tensor* { return in.count(k) ? &in[k].view : nullptr; };

  asymvq_inpaint_params p;
  asymvq_inpaint_params_init(&p);
  asymvq_region_choice choice;
  asymvq_region_choice_init(&choice);
  if (cmd == "inpaint") {
    long long v;
    if (opt.count("--steps")) {
      if (!parse_int(opt["--steps"], v) || v < 1 || v > 100000) return die(ASYMVQ_ERR_INVALID_ARGUMENT, "--steps: expected a positive integer, got '" + opt["--steps"] + "'");
      p.steps = static_cast<int32_t>(v);
    }
    if (opt.count("--seed")) {
      if (!parse_int(opt["--seed"], v) || v < 0) return die(ASYMVQ_ERR_INVALID_ARGUMENT, "--seed: expected a non-negative integer, got '" + opt["--seed"] + "'");
      p.seed = static_cast<uint64_t>(v);
    }
    for (const char* k : {"--height", "--width"})
      if (opt.count(k)) {
        if (!parse_int(opt[k], v) || v < 8 || v > 1 << 16) return die(ASYMVQ_ERR_INVALID_ARGUMENT, std::string(k) + ": expected a positive multiple of 8, got '" + opt[k] + "'");
        (std::string(k) == "--height" ? p.height : p.width) = static_cast<int32_t>(v);
      }
    if (opt.count("--guidance")) {
      char* end = nullptr;
      p.guidance_scale = std::strtod(opt["--guidance"].c_str(), &end);
      if (opt["--guidance"].empty() || *end) return die(ASYMVQ_ERR_INVALID_ARGUMENT, "--guidance: expected a number, got '" + opt["--guidance"] + "'");
    }
    if (opt.count("--scheduler")) {
      if (opt["--scheduler"] == "ddim") p.scheduler = ASYMVQ_SCHEDULER_DDIM;
      else if (opt["--scheduler"] == "euler") p.scheduler = ASYMVQ_SCHEDULER_EULER;
      else return die(ASYMVQ_ERR_INVALID_ARGUMENT, "--scheduler: expected ddim or euler, got '" + opt["--scheduler"] + "'");
    }
    p.prompt_embeds = ptr("--prompt-embeds");
    p.negative_embeds = ptr("--negative-embeds");
    p.prompt_ids = ptr("--prompt-ids");
    p.negative_ids = ptr("--negative-ids");
    p.image = ptr("--image");
    p.mask = ptr("--mask");
    p.region = region_mode;
    p.margin = static_cast<int32_t>(margin);
    p.region_choice = &choice;
  }

  asymvq_host* host = nullptr;
  const char* device = opt.count("--device") ? opt["--device"].c_str() : "cpu";
  asymvq_status s = asymvq_open(opt["--engines"].c_str(), device, &host);
  if (s != ASYMVQ_OK) return die(s, asymvq_last_error());
  asymvq_output out{};
  if (cmd == "decode" && region)
    s = (diffusion_space ? asymvq_decode_region_scaled_ex : asymvq_decode_region_ex)(
        host, ptr("--latents"), ptr("--image"), ptr("--mask"), region_mode, static_cast<int32_t>(margin), &choice, &out);
  else if (cmd == "decode") s = (diffusion_space ? asymvq_decode_scaled : asymvq_decode)(host, ptr("--latents"), ptr("--image"),
                                                                                        ptr("--mask"), &out);
  else s = asymvq_inpaint(host, &p, &out);
  if (s != ASYMVQ_OK) {
    std::string msg = asymvq_last_error();
    asymvq_close(host);
    return die(s, msg);
  }
  asymvq_close(host);
  if (region) std::printf("decoded: %s\n", describe(choice, opt["--decode-region"]).c_str());
  try {
    asymvq::st::write_f32(opt["--out"], "sample", std::vector<int64_t>(out.shape, out.shape + out.ndim), out.data);
  } catch (const std::exception& e) {
    asymvq_output_free(&out);
    return die(ASYMVQ_ERR_IO, std::string("--out: ") + e.what());
  }
  asymvq_output_free(&out);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    return die(ASYMVQ_ERR_RUNTIME, e.what());
  }
}
