"""The x1.5 asymmetric decoder on this CPU: every backend and precision side by side, in one run.

diffusers' ``AsymmetricAutoencoderKL.decode`` eager fp32 (the peer) against asymvq's torch fp32,
torch bf16 (``asymvq.models.cpu_bf16``), ONNX Runtime fp32, OpenVINO fp32 and OpenVINO bf16
(inference-precision hint), all with the same seeded weights and inputs (diffusers' module is
the source; ours loads its state dict; the ONNX file and the IR are exported from ours with the
default dynamic ranges a user's export gets, 256..1024). Backends run interleaved round-robin
so that drift of a shared machine hits them alike. Reported: min and median after warm-up,
speed-up against diffusers, PSNR (images in [-1, 1], peak-to-peak 2) and max abs against
diffusers fp32, achieved GFLOP/s (FLOPs counted on the meta device) and its share of the
machine's matmul peak at that precision (a short probe at start-up: a measurement, not a spec).
Writes bench/results/decoder_cpu.json and decoder_cpu.png, with the load average before and after.

Exports are cached under out/bench-cache/ (keyed by the weights' hash), so reruns skip them.
Without OpenVINO (the openvino extra) its rows are left out and listed under "skipped"; the
other rows run (diffusers is needed: it is the peer).

    .venv/bin/python bench/decoder_cpu.py [--threads 2] [--preset x1.5] [--size 256] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import time
from pathlib import Path

import torch
from bench_common import add_cpu_comparison_args, interleaved, loadavg, psnr, versions

from asymvq.profiling.flops import count_decoder, probe_peak
from asymvq.profiling.profiler import cpu_name

HERE = Path(__file__).parent
RESULTS = HERE / "results" / "decoder_cpu.json"
CACHE = HERE.parent / "out" / "bench-cache"
PEER = "diffusers eager fp32"


def diffusers_decoder(preset: str, seed: int):
    """diffusers AsymmetricAutoencoderKL with the preset's decoder (encoder minimal: decode never uses it)."""
    from diffusers import AsymmetricAutoencoderKL

    from asymvq.models import preset_config

    cfg = preset_config(preset)
    torch.manual_seed(seed)
    return AsymmetricAutoencoderKL(
        down_block_types=["DownEncoderBlock2D"] * 4, layers_per_down_block=1,
        down_block_out_channels=[cfg.norm_num_groups] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
        up_block_out_channels=list(cfg.block_out_channels), layers_per_up_block=cfg.layers_per_block,
        norm_num_groups=cfg.norm_num_groups,
    ).eval()


def our_decoder(preset: str, reference) -> torch.nn.Module:
    from asymvq.models import AsymmetricDecoder
    from asymvq.models.checkpoints import convert_diffusers_state_dict, load_state_dict_strict

    decoder = AsymmetricDecoder(preset).eval()
    load_state_dict_strict(decoder, convert_diffusers_state_dict(reference.state_dict()), "diffusers")
    return decoder


def _have_openvino() -> bool:
    try:
        import openvino  # noqa: F401  (defers the openvino extra)
    except ImportError:
        return False
    return True


def exported(decoder, log, openvino: bool = True) -> tuple[Path, Path, list, list, dict]:
    """(decoder.onnx, decoder.xml, input specs, output specs, export seconds), cached by weights hash."""
    from asymvq.engines.manifest import weights_sha256
    from asymvq.export import DEFAULT_SHAPES, io_specs
    from asymvq.models.component_modules import DecoderComponent

    module = DecoderComponent(decoder)
    shapes = DEFAULT_SHAPES["sd15"]  # the default dynamic ranges a user's export gets (256..1024)
    inputs, outputs = io_specs("decoder", module, shapes, "fp32")
    folder = CACHE / f"decoder-{weights_sha256(module)[:16]}"
    onnx, xml = folder / "decoder.onnx", folder / "decoder.xml"
    seconds = {}
    if not onnx.is_file():
        from asymvq.export.onnx_export import export_onnx

        log(f"exporting the decoder to ONNX (cached in {folder})")
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
    return onnx, xml, inputs, outputs, seconds


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
    add_cpu_comparison_args(ap, RESULTS)
    ap.add_argument("--preset", default="x1.5")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--only", default=None, help="comma list of backends to run (the peer always runs)")
    args = ap.parse_args()
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    torch.set_num_threads(args.threads)
    load_before = loadavg()

    from asymvq.engines.onnxruntime_engine import OnnxRuntimeEngine
    from asymvq.models.cpu_bf16 import to_cpu_bf16

    openvino = _have_openvino()
    skipped = {} if openvino else {n: "openvino is not installed (the openvino extra)"
                                   for n in ("openvino fp32", "openvino bf16", "openvino bf16 static")}
    reference = diffusers_decoder(args.preset, args.seed)
    ours = our_decoder(args.preset, reference)
    onnx, xml, inputs, outputs, export_s = exported(ours, log, openvino)
    ours_bf16 = to_cpu_bf16(our_decoder(args.preset, reference))
    g = torch.Generator().manual_seed(args.seed + 1)
    b, s = args.batch, args.size
    latent = torch.randn(b, 4, s // 8, s // 8, generator=g)
    image = torch.rand(b, 3, s, s, generator=g) * 2 - 1
    mask = (torch.rand(b, 1, s, s, generator=g) > 0.5).float()
    latent_bf16 = latent.bfloat16()
    feeds = dict(latent=latent, image=image, mask=mask)

    ort = OnnxRuntimeEngine("decoder", onnx, inputs, outputs, threads=args.threads)
    loads = {}
    runs = {
        PEER: lambda: reference.decode(latent, image=image, mask=mask).sample,
        "asymvq torch fp32": lambda: ours(latent, image, mask),
        "asymvq torch bf16": lambda: ours_bf16(latent_bf16, image, mask),
        "onnxruntime fp32": lambda: ort(**feeds)["sample"],
    }
    if openvino:
        from asymvq.engines.openvino_engine import OpenVINOEngine

        t = time.perf_counter()
        ov32 = OpenVINOEngine("decoder", xml, inputs, outputs, precision="fp32", threads=args.threads, cache_dir=False)
        loads["openvino fp32"] = round(time.perf_counter() - t, 2)
        t = time.perf_counter()
        ov16 = OpenVINOEngine("decoder", xml, inputs, outputs, precision="bf16", threads=args.threads, cache_dir=False)
        loads["openvino bf16"] = round(time.perf_counter() - t, 2)
        ov16_static = OpenVINOEngine("decoder", xml, inputs, outputs, precision="bf16", threads=args.threads,
                                     cache_dir=False, static_shapes=True)
        runs |= {
            "openvino fp32": lambda: ov32(**feeds)["sample"],
            "openvino bf16": lambda: ov16(**feeds)["sample"],
            "openvino bf16 static": lambda: ov16_static(**feeds)["sample"],
        }
    if args.only:
        keep = {PEER, *(n.strip() for n in args.only.split(","))}
        runs = {n: f for n, f in runs.items() if n in keep}
    precision = {n: ("bf16" if "bf16" in n else "fp32") for n in runs}
    log("probing the matmul peak (fp32, bf16)")
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    flops = int(count_decoder(args.preset, s, s, b)["flops"])
    # the cast to fp32 of the bf16 outputs is part of each timed call, as a user would need it
    times, outputs_ = interleaved({n: (lambda f=f: f().float()) for n, f in runs.items()}, args.warmup, args.repeats, log)
    # probed again after the runs, the best kept: one probe on a loaded machine can land in a slow moment
    peaks = {k: max(v, matmul_peak(getattr(torch, {"fp32": "float32", "bf16": "bfloat16"}[k]))) for k, v in peaks.items()}
    ref = outputs_[PEER]
    med = {n: statistics.median(v) for n, v in times.items()}
    mn = {n: min(v) for n, v in times.items()}
    rows = {}
    for n in runs:
        rows[n] = {
            "precision": precision[n], "min_s": mn[n], "median_s": med[n], "all_s": times[n],
            "speedup_vs_diffusers_median": med[PEER] / med[n], "speedup_vs_diffusers_min": mn[PEER] / mn[n],
            "psnr_db_vs_diffusers_fp32": psnr(outputs_[n], ref, 2.0),
            "max_abs_vs_diffusers_fp32": float((outputs_[n] - ref).abs().max()),
            "finite": bool(torch.isfinite(outputs_[n]).all()),
            "gflop_per_s_median": flops / med[n] / 1e9,
            "percent_of_peak_median": 100 * flops / med[n] / peaks[precision[n]],
        }
    result = {
        "what": f"{args.preset} decoder, {s}x{s}, batch {b}, with image+mask, CPU, --threads {args.threads}",
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "native_bf16": _native_bf16(openvino), "amx": "amx_bf16" in _flags(), "avx512_bf16": "avx512_bf16" in _flags(),
                    "python": platform.python_version()},
        "load_average_1_5_15": {"before": load_before, "after": loadavg()},
        "versions": versions("torch", "onnxruntime", "openvino", "diffusers"),
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
                  "IR reshaped to 256x256 before compiling (static_shapes=True); everything else dynamic 256..1024"),
    }
    if openvino:
        log("measuring OpenVINO load times (ONNX vs IR, cold vs warm cache)")
        result["openvino_load_s"] = {p: openvino_load_times(onnx, xml, args.threads, p) for p in ("fp32", "bf16")}
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
    print(f"{'backend':<24}{'min s':>8}{'median s':>10}{'speed-up':>10}{'PSNR dB':>9}{'max abs':>10}{'GFLOP/s':>9}{'% peak':>8}")
    for n, r in result["backends"].items():
        print(f"{n:<24}{r['min_s']:>8.2f}{r['median_s']:>10.2f}{r['speedup_vs_diffusers_median']:>9.2f}x"
              f"{r['psnr_db_vs_diffusers_fp32']:>9.1f}{r['max_abs_vs_diffusers_fp32']:>10.1e}"
              f"{r['gflop_per_s_median']:>9.0f}{r['percent_of_peak_median']:>8.0f}")
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
    fig, ax = plt.subplots(figsize=(8, 3.6))
    colors = ["#888888" if n == PEER else ("#d62728" if "bf16" in n else "#1f77b4") for n in names]
    ax.barh(names, med, xerr=[lo, [0] * len(names)], color=colors)
    for i, n in enumerate(names):
        r = rows[n]
        psnr_txt = "" if n == PEER else f", {r['psnr_db_vs_diffusers_fp32']:.0f} dB"
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
