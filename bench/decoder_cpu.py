"""A decoder on this CPU against diffusers eager fp32: every backend and precision side by side, in one run.

Any decoder preset (``--preset``, default x1.5): the latents have the preset's channels (4 or 16) and are
drawn in diffusion space and brought to the VAE's by its scaling and shift (``config.latent_space``).
The peer is diffusers with the same seeded weights (diffusers' module is the source; ours loads its
state dict): ``AsymmetricAutoencoderKL.decode`` for the Asymmetric VQGAN presets (base, x1.5, x2, tiny),
``AutoencoderKL.decode`` for the plain ones (vanilla, sdxl, sd3, flux, tiny-flux). ASUKA's conditional
decoder (asuka-flux, tiny-asuka) has no diffusers class: its peer is the plain FLUX decoder in diffusers,
and the run times both of ours, the plain FLUX decoder (the peer's weights) on every backend and ASUKA's
(the same decoder weights, a seeded branch) on ``ASUKA_BACKENDS``, so that ASUKA's cost sits next to the
plain decoder's: time and counted FLOPs per backend (``asuka_vs_plain``).

Backends: asymvq's torch fp32, torch bf16 (``asymvq.models.cpu_bf16``), ONNX Runtime fp32, OpenVINO fp32
and OpenVINO bf16 (inference-precision hint; dynamic, and reshaped to the benchmarked size: "static"),
the ONNX file and the IR exported from ours with the default dynamic ranges a user's export gets,
256..1024. Backends run interleaved round-robin so that drift of a shared machine hits them alike.
Reported: min and median after warm-up, speed-up against diffusers (min and median), PSNR (images in
[-1, 1], peak-to-peak 2) and max abs against diffusers fp32 (ASUKA's rows: against our ASUKA fp32),
achieved GFLOP/s (FLOPs counted on the meta device) and its share of the machine's matmul peak at that
precision (a short probe: a measurement, not a spec), the CPU's model and features
(``bench_common.cpu_record``: bf16 or not) and the load average before and after. Writes
bench/results/decoder_cpu.json (x1.5; other presets decoder_cpu_<preset>_<size>.json) and its .png.

Exports are cached under out/bench-cache/ (keyed by the weights' hash), so reruns skip them.
Without OpenVINO (the openvino extra) its rows are left out and listed under "skipped"; the
other rows run (diffusers is needed: it is the peer).

    .venv/bin/python bench/decoder_cpu.py [--threads 2] [--preset x1.5] [--size 256] [--repeats 3]

The record for the FLUX decoder and ASUKA's (issue 19), one command, on a quiet machine:

    .venv/bin/python bench/decoder_cpu.py --preset asuka-flux --size 512 --warmup 1 --repeats 2

512x512, not 1024: one fp32 FLUX decode at 1024 is ~10 TFLOP, about a minute on two cores, and the
record decodes 10 rows x 3 rounds. Estimate on the 2-core Xeon (AMX), quiet: ~6 min (a round ~90 s:
the fp32 rows 11-19 s each, the bf16 ones 3-5 s; plus the matmul probes, OpenVINO compiles and load
times), ~1 min more on the first run for the two exports (cached afterwards). 1024 (``--size 1024
--repeats 1``): ~15 min.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import shutil
import statistics
import time
from pathlib import Path

import torch
from bench_common import add_cpu_comparison_args, cpu_record, diffusers_vae, interleaved, loadavg, psnr, versions

from asymvq.profiling.flops import count_decoder, probe_peak
from asymvq.profiling.profiler import cpu_name

HERE = Path(__file__).parent
RESULTS = HERE / "results" / "decoder_cpu.json"
CACHE = HERE.parent / "out" / "bench-cache"
PEER = "diffusers eager fp32"
# ASUKA's decoder, next to the plain one, on fp32 and the fastest CPU paths (the record's time budget)
ASUKA_BACKENDS = ("asymvq torch fp32", "asymvq torch bf16", "openvino bf16")
ASUKA = "asuka "  # prefix of ASUKA's rows


def plain_config(config):
    """The decoder without its condition branch (ASUKA's peer in diffusers: FLUX's plain decoder)."""
    return dataclasses.replace(config, condition=None, gate_conv=False)


def peer_config(preset: str):
    from asymvq.models import preset_config

    config = preset_config(preset)
    if config.condition not in (None, "conv", "asuka"):
        raise SystemExit(f"--preset: diffusers has no decoder with a {config.condition!r} branch to compare against")
    return plain_config(config) if config.condition == "asuka" else config


def diffusers_decoder(preset: str, seed: int):
    """The peer: diffusers' VAE with the preset's decoder (or, for ASUKA's, the plain FLUX decoder)."""
    return diffusers_vae(peer_config(preset), seed)


def our_decoder(preset: str, reference) -> torch.nn.Module:
    """Ours with the peer's weights; for ASUKA's preset the plain decoder of the peer (``our_asuka``: with the branch)."""
    from asymvq.models import AsymmetricDecoder
    from asymvq.models.checkpoints import convert_diffusers_state_dict, load_state_dict_strict

    decoder = AsymmetricDecoder(peer_config(preset)).eval()
    load_state_dict_strict(decoder, convert_diffusers_state_dict(reference.state_dict()), "diffusers")
    return decoder


def our_asuka(preset: str, plain, seed: int) -> torch.nn.Module:
    """ASUKA's decoder: the plain decoder's weights where they are shared, the condition branch seeded."""
    from asymvq.models import AsymmetricDecoder, preset_config

    torch.manual_seed(seed + 7)
    decoder = AsymmetricDecoder(preset_config(preset)).eval()
    missing, unexpected = decoder.load_state_dict(plain.state_dict(), strict=False)
    if unexpected or not all(k.startswith("condition_encoder.") for k in missing):
        raise RuntimeError(f"ASUKA's decoder and the plain one differ past the branch: {unexpected or missing}")
    return decoder


def _have_openvino() -> bool:
    try:
        import openvino  # noqa: F401  (defers the openvino extra)
    except ImportError:
        return False
    return True


def exported(decoder, log, openvino: bool = True) -> tuple[str, Path, Path, list, list, dict]:
    """(component, decoder.onnx, decoder.xml, input specs, output specs, export seconds), cached by weights hash;
    a decoder without a branch is exported as the plain component (latent -> sample)."""
    from asymvq.engines.manifest import weights_sha256
    from asymvq.export import DEFAULT_SHAPES, io_specs
    from asymvq.models.component_modules import DecoderComponent, PlainDecoderComponent
    from asymvq.models.components import DECODER, DECODER_PLAIN

    plain = decoder.condition_encoder is None
    component, module = (DECODER_PLAIN, PlainDecoderComponent(decoder)) if plain else (DECODER, DecoderComponent(decoder))
    shapes = DEFAULT_SHAPES["sd15"]  # the default dynamic ranges a user's export gets (256..1024)
    inputs, outputs = io_specs(component, module, shapes, "fp32")
    folder = CACHE / f"{component}-{weights_sha256(module)[:16]}"
    onnx, xml = folder / "decoder.onnx", folder / "decoder.xml"
    seconds = {}
    if not onnx.is_file():
        from asymvq.export.onnx_export import export_onnx

        log(f"exporting the {component} to ONNX (cached in {folder})")
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        t = time.perf_counter()
        export_onnx(module, inputs, outputs, onnx)
        seconds["onnx_export_s"] = round(time.perf_counter() - t, 1)
    if openvino and not xml.is_file():
        from asymvq.export.openvino_export import export_openvino

        t = time.perf_counter()
        export_openvino(onnx, xml)
        seconds["openvino_convert_s"] = round(time.perf_counter() - t, 1)
    return component, onnx, xml, inputs, outputs, seconds


def backends(decoder, feeds: dict, threads: int, openvino: bool, log, loads: dict, export_s: dict,
             names=None) -> dict:
    """name -> a call decoding ``feeds`` with ``decoder`` on that backend; ``names``: only those (exports skipped
    where none needs them). Engine load seconds go to ``loads``, export seconds to ``export_s``."""
    from asymvq.engines.onnxruntime_engine import OnnxRuntimeEngine
    from asymvq.models.cpu_bf16 import to_cpu_bf16

    keep = (lambda n: names is None or n in names)  # noqa: E731
    args = [feeds["latent"]] + ([] if decoder.condition_encoder is None else [feeds["image"], feeds["mask"]])
    runs = {}
    if keep("asymvq torch fp32"):
        runs["asymvq torch fp32"] = lambda: decoder(*args)
    if keep("asymvq torch bf16"):
        bf16, lat16 = to_cpu_bf16(copy.deepcopy(decoder)), args[0].bfloat16()
        runs["asymvq torch bf16"] = lambda: bf16(lat16, *args[1:])
    exported_names = ("onnxruntime fp32",) + (("openvino fp32", "openvino bf16", "openvino bf16 static") if openvino else ())
    if not any(keep(n) for n in exported_names):
        return runs
    component, onnx, xml, inputs, outputs, seconds = exported(decoder, log, openvino)
    export_s.update(seconds)
    engine_feeds = dict(zip(("latent", "image", "mask"), args))
    if keep("onnxruntime fp32"):
        ort = OnnxRuntimeEngine(component, onnx, inputs, outputs, threads=threads)
        runs["onnxruntime fp32"] = lambda: ort(**engine_feeds)["sample"]
    if openvino:
        from asymvq.engines.openvino_engine import OpenVINOEngine

        for name, precision, static in (("openvino fp32", "fp32", False), ("openvino bf16", "bf16", False),
                                        ("openvino bf16 static", "bf16", True)):
            if keep(name):
                t = time.perf_counter()
                engine = OpenVINOEngine(component, xml, inputs, outputs, precision=precision, threads=threads,
                                        cache_dir=False, static_shapes=static)
                loads[name] = round(time.perf_counter() - t, 2)
                runs[name] = lambda engine=engine: engine(**engine_feeds)["sample"]
    runs["_files"] = (onnx, xml)
    return runs


def openvino_load_times(onnx: Path, xml: Path, threads: int, precision: str) -> dict:
    """How long a load takes: ONNX read+compiled at load, the IR compiled, the IR from a warm cache."""
    import openvino as ov

    from asymvq.engines.openvino_engine import _HINT

    config = {"INFERENCE_PRECISION_HINT": _HINT[precision], "PERFORMANCE_HINT": "LATENCY",
              "INFERENCE_NUM_THREADS": str(threads)}
    core = ov.Core()
    out = {}
    for name, path in (("onnx_read_s", onnx), ("ir_read_s", xml)):
        t = time.perf_counter()
        model = core.read_model(str(path))
        out[name] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    core.compile_model(model, "CPU", config)
    out["compile_s"] = round(time.perf_counter() - t, 2)
    cache = xml.parent / f"cache-probe-{precision}"
    shutil.rmtree(cache, ignore_errors=True)
    for name in ("cold_cache_compile_s", "warm_cache_load_s"):
        t = time.perf_counter()
        core.compile_model(str(xml), "CPU", {**config, "CACHE_DIR": str(cache)})
        out[name] = round(time.perf_counter() - t, 2)
    shutil.rmtree(cache, ignore_errors=True)
    return out


def matmul_peak(dtype: torch.dtype) -> float:
    """Best achieved FLOP/s of a 1024^3 and a 2048^3 matmul at ``dtype``, about 3 s each: a probe, not a spec."""
    return probe_peak("cpu", dtype, seconds=3.0)["flops_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_cpu_comparison_args(ap, None)
    ap.add_argument("--preset", default="x1.5")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--only", default=None, help="comma list of backends to run (the peer always runs; ASUKA's "
                                                 f"rows are named '{ASUKA}<backend>')")
    args = ap.parse_args()
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    torch.set_num_threads(args.threads)
    load_before = loadavg()
    if args.out is None:
        args.out = RESULTS if args.preset == "x1.5" else RESULTS.with_name(f"decoder_cpu_{args.preset}_{args.size}.json")

    from asymvq.models import preset_config

    config = preset_config(args.preset)
    asuka = config.condition == "asuka"
    openvino = _have_openvino()
    skipped = {} if openvino else {n: "openvino is not installed (the openvino extra)"
                                   for n in ("openvino fp32", "openvino bf16", "openvino bf16 static")}
    only = None if not args.only else {n.strip() for n in args.only.split(",")}
    reference = diffusers_decoder(args.preset, args.seed)
    ours = our_decoder(args.preset, reference)
    g = torch.Generator().manual_seed(args.seed + 1)
    b, s = args.batch, args.size
    space = config.latent_space  # diffusion-space draws, brought to the VAE's space by its scale and shift
    latent = space.to_vae(torch.randn(b, space.channels, s // space.vae_scale_factor, s // space.vae_scale_factor,
                                      generator=g))
    image = torch.rand(b, 3, s, s, generator=g) * 2 - 1
    mask = (torch.rand(b, 1, s, s, generator=g) > 0.5).float()
    feeds = dict(latent=latent, image=image, mask=mask)
    plain_peer = reference.__class__.__name__ == "AutoencoderKL"
    peer = ((lambda: reference.decode(latent).sample) if plain_peer
            else (lambda: reference.decode(latent, image=image, mask=mask).sample))

    loads, export_s, files = {}, {}, {}
    runs = {PEER: peer}
    mine = backends(ours, feeds, args.threads, openvino, log, loads, export_s, only)
    files["main"] = mine.pop("_files", None)
    runs |= mine
    if asuka:
        asuka_names = {n for n in ASUKA_BACKENDS if only is None or ASUKA + n in only}
        asuka_export_s: dict = {}
        theirs = backends(our_asuka(args.preset, ours, args.seed), feeds, args.threads, openvino, log,
                          {}, asuka_export_s, asuka_names)
        export_s |= {ASUKA + k: v for k, v in asuka_export_s.items()}
        theirs.pop("_files", None)
        runs |= {ASUKA + n: f for n, f in theirs.items()}
    precision = {n: ("bf16" if "bf16" in n else "fp32") for n in runs}
    log("probing the matmul peak (fp32, bf16)")
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    flops = int(count_decoder(args.preset, s, s, b, condition=False if asuka else None)["flops"])
    flops_asuka = int(count_decoder(args.preset, s, s, b)["flops"]) if asuka else None
    # the cast to fp32 of the bf16 outputs is part of each timed call, as a user would need it
    times, outputs_ = interleaved({n: (lambda f=f: f().float()) for n, f in runs.items()}, args.warmup, args.repeats, log)
    # probed again after the runs, the best kept: one probe on a loaded machine can land in a slow moment
    peaks = {k: max(v, matmul_peak(getattr(torch, {"fp32": "float32", "bf16": "bfloat16"}[k]))) for k, v in peaks.items()}
    med = {n: statistics.median(v) for n, v in times.items()}
    mn = {n: min(v) for n, v in times.items()}
    rows = {}
    for n in runs:
        is_asuka = n.startswith(ASUKA)
        ref_name = ASUKA + "asymvq torch fp32" if is_asuka else PEER
        ref = outputs_.get(ref_name)
        f = flops_asuka if is_asuka else flops
        rows[n] = {
            "precision": precision[n], "min_s": mn[n], "median_s": med[n], "all_s": times[n],
            "speedup_vs_diffusers_median": med[PEER] / med[n], "speedup_vs_diffusers_min": mn[PEER] / mn[n],
            "finite": bool(torch.isfinite(outputs_[n]).all()), "flops": f,
            "gflop_per_s_median": f / med[n] / 1e9,
            "percent_of_peak_median": 100 * f / med[n] / peaks[precision[n]],
        }
        if ref is not None:
            key = "reference" if is_asuka else "diffusers_fp32"
            rows[n] |= {f"psnr_db_vs_{key}": psnr(outputs_[n], ref, 2.0),
                        f"max_abs_vs_{key}": float((outputs_[n] - ref).abs().max())}
            if is_asuka:
                rows[n]["reference"] = ref_name
    what = (f"{args.preset} decoder and its plain counterpart (diffusers AutoencoderKL)" if asuka else
            f"{args.preset} decoder ({reference.__class__.__name__} as the peer)")
    result = {
        "what": (f"{what}, {s}x{s}, batch {b}, {space.channels}-channel latents"
                 f"{', with image+mask' if config.has_condition else ''}, CPU, --threads {args.threads}"),
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "native_bf16": _native_bf16(openvino), "amx": "amx_bf16" in _flags(), "avx512_bf16": "avx512_bf16" in _flags(),
                    "python": platform.python_version(), "features": cpu_record()},
        "load_average_1_5_15": {"before": load_before, "after": loadavg()},
        "versions": versions("torch", "onnxruntime", "openvino", "diffusers"),
        "preset": args.preset, "latent_space": space.to_dict(),
        "warmup": args.warmup, "repeats": args.repeats,
        "flops_per_decode": flops,
        "matmul_peak_gflop_per_s": {k: v / 1e9 for k, v in peaks.items()},
        "export_s": export_s,
        "openvino_engine_load_s": loads,
        "backends": rows,
        "skipped": skipped,
        "notes": ("PSNR of images in [-1, 1] (peak-to-peak 2) against diffusers fp32; % of peak against the matmul "
                  "probe at the backend's precision (torch/oneDNN 1024^3 and 2048^3, best of ~6 s before and ~6 s after "
                  "the runs); 'openvino bf16 static' = the "
                  f"IR reshaped to {s}x{s} before compiling (static_shapes=True); everything else dynamic 256..1024"),
    }
    if asuka:
        result["flops_per_decode_asuka"] = flops_asuka
        result["asuka_vs_plain"] = {
            n: {"time_median": med[ASUKA + n] / med[n], "time_min": mn[ASUKA + n] / mn[n], "flops": flops_asuka / flops}
            for n in ASUKA_BACKENDS if ASUKA + n in med and n in med}
        result["notes"] += ("; ASUKA's rows ('asuka ...'): the plain decoder's weights plus a seeded branch, PSNR "
                            "against our ASUKA fp32 (diffusers has no ASUKA class); asuka_vs_plain: ASUKA's time and "
                            "FLOPs over the plain FLUX decoder's on the same backend")
    if openvino and files["main"] is not None:
        log("measuring OpenVINO load times (ONNX vs IR, cold vs warm cache)")
        onnx, xml = files["main"]
        # the precisions the run's OpenVINO rows had (a capped run's bf16 compile fails: models/cpu_features.py)
        ran = sorted({precision[n] for n in runs if "openvino" in n}) or ["fp32"]
        result["openvino_load_s"] = {p: openvino_load_times(onnx, xml, args.threads, p) for p in ran}
    _print(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    chart = args.out.with_suffix(".png")
    _chart(result, chart)
    log(f"wrote {args.out} and {chart}")


def _flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    except OSError:
        return set()


def _native_bf16(openvino: bool) -> bool:
    if openvino:
        from asymvq.engines.openvino_engine import native_bf16

        return native_bf16()
    return bool({"avx512_bf16", "amx_bf16"} & _flags())


def _print(result: dict) -> None:
    print(result["what"], f"({result['warmup']} warm-up, {result['repeats']} measured, interleaved)")
    print(f"{'backend':<30}{'min s':>8}{'median s':>10}{'speed-up':>10}{'PSNR dB':>9}{'max abs':>10}{'GFLOP/s':>9}{'% peak':>8}")
    for n, r in result["backends"].items():
        key = "reference" if "reference" in r else "diffusers_fp32"
        p, m = r.get(f"psnr_db_vs_{key}", float("nan")), r.get(f"max_abs_vs_{key}", float("nan"))
        print(f"{n:<30}{r['min_s']:>8.2f}{r['median_s']:>10.2f}{r['speedup_vs_diffusers_median']:>9.2f}x"
              f"{p:>9.1f}{m:>10.1e}{r['gflop_per_s_median']:>9.0f}{r['percent_of_peak_median']:>8.0f}")
    for n, r in result.get("asuka_vs_plain", {}).items():
        print(f"ASUKA / plain on {n}: time x{r['time_median']:.2f} (median), x{r['time_min']:.2f} (min), "
              f"FLOPs x{r['flops']:.3f}")
    print("matmul peak GFLOP/s:", {k: round(v) for k, v in result["matmul_peak_gflop_per_s"].items()},
          " load average before / after:", result["load_average_1_5_15"])


def _chart(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["backends"]
    names = list(rows)
    med = [rows[n]["median_s"] for n in names]
    lo = [rows[n]["median_s"] - rows[n]["min_s"] for n in names]
    fig, ax = plt.subplots(figsize=(8, 1.6 + 0.3 * len(names)))
    colors = ["#888888" if n == PEER else ("#d62728" if "bf16" in n else "#1f77b4") for n in names]
    ax.barh(names, med, xerr=[lo, [0] * len(names)], color=colors)
    for i, n in enumerate(names):
        r = rows[n]
        db = r.get("psnr_db_vs_reference", r.get("psnr_db_vs_diffusers_fp32"))
        psnr_txt = "" if n == PEER or db is None or r.get("reference") == n else f", {db:.0f} dB"
        ax.text(med[i], i, f" {r['speedup_vs_diffusers_median']:.2f}x{psnr_txt}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("median seconds per decode (bar: median, whisker: min)")
    la = result["load_average_1_5_15"]
    ax.set_title(f"{result['what']}\nload average before {la['before'][0]}, after {la['after'][0]}", fontsize=8)
    ax.set_xlim(0, max(med) * 1.35)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
