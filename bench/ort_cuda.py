"""ONNX Runtime's CUDA execution provider against torch, on the decoder and the UNet, in one run.

For each component: `asymvq export` into its own engines directory (fixed shapes at --size,
--precision), then the same directory loaded twice through `asymvq.engines.load_engine_dir`:
backend="onnxruntime" (CUDAExecutionProvider on CUDA; the CPU provider with --device cpu) and
backend="torch" (the module rebuilt from the manifest's source, checked against its weights hash).
Same feeds; max |diff|, timings (CUDA events, one sync per measurement), the providers ORT really
used. The JSON is rewritten after every component, so a run cut short keeps what it measured.

    python bench/ort_cuda.py --out bench/results/gpu/ort-cuda.json                  # CUDA: x1.5 decoder + SD 1.5 UNet, 512, fp16
    python bench/ort_cuda.py --device cpu --preset tiny --size 32 --precision fp32 \\
        --warmup 0 --repeats 1 --out out/ort-cpu.json                                 # CPU smoke run (CPU provider)
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from bench_common import time_ms

COMPONENTS = ("decoder", "unet")


def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="sd15", help="SD preset of the UNet (tiny or sd15)")
    p.add_argument("--decoder", default=None, help="decoder preset (default: x1.5 for sd15, tiny for tiny)")
    p.add_argument("--components", default=",".join(COMPONENTS))
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--precision", default="fp16", choices=("fp32", "fp16"))
    p.add_argument("--device", default="cuda")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--workdir", type=Path, default=None, help="where the engines directories go (default: a temp dir)")
    p.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = p.parse_args(argv)
    args.components = [c.strip() for c in args.components.split(",") if c.strip()]
    if any(c not in COMPONENTS for c in args.components):
        p.error(f"--components: expected among {COMPONENTS}, got {args.components}")
    args.decoder = args.decoder or ("tiny" if args.preset == "tiny" else "x1.5")
    return args


def _one(component: str, args, workdir: Path, device) -> dict:
    import torch

    from asymvq.engines import load_engine_dir
    from asymvq.engines.contract import TensorSpec
    from asymvq.engines.manifest import read_manifest
    from asymvq.export.build import export_directory
    from asymvq.export.specs import Shapes, example_inputs
    from asymvq.models.sources import Source

    row: dict = {}
    s = args.size
    out = workdir / component
    t0 = time.perf_counter()
    export_directory(out, [component], Source(preset=args.preset, decoder=args.decoder),
                     precision=args.precision, shapes=Shapes((1, 1, 1), (s, s, s), (s, s, s)))
    row["export_s"] = time.perf_counter() - t0
    manifest = read_manifest(out)
    specs = [TensorSpec.from_dict(d) for d in manifest["components"][component]["inputs"]]
    feeds = {k: v.to(device) for k, v in example_inputs(specs, "opt").items()}
    row["inputs"] = {k: list(v.shape) for k, v in feeds.items()}
    results = {}
    for backend in ("onnxruntime", "torch"):
        t0 = time.perf_counter()
        engine = load_engine_dir(out, device=device, backend=backend)[component]
        row[f"{backend}_load_s"] = time.perf_counter() - t0
        if backend == "onnxruntime":
            row["providers"] = engine.session.get_providers()
        name = engine.output_names[0]
        with torch.inference_mode():
            results[backend] = engine(**feeds)[name].float()
            row[backend] = time_ms(lambda e=engine: e(**feeds), device, args.warmup, args.repeats)
        del engine
    ort_out, ref = results["onnxruntime"], results["torch"]
    row["max_abs_diff"] = float((ort_out - ref).abs().max())
    row["ref_max_abs"] = float(ref.abs().max())
    row["finite"] = bool(torch.isfinite(ort_out).all())
    row["ort_over_torch"] = row["onnxruntime"]["median"] / row["torch"]["median"]
    row["cuda_provider_used"] = "CUDAExecutionProvider" in row["providers"]
    return row


def main(argv=None) -> int:
    args = _args(argv)
    import json

    import onnxruntime as ort

    from asymvq.models.devices import parse_device

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from decoder_gpu import environment

    device = parse_device(args.device)
    result = {"bench": "ort_cuda", "preset": args.preset, "decoder": args.decoder, "size": args.size,
              "precision": args.precision, "environment": environment(device) | {
                  "onnxruntime": ort.__version__, "available_providers": ort.get_available_providers()},
              "components": {}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    ok = True
    if device.type == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        result["error"] = ("onnxruntime has no CUDAExecutionProvider (the CPU build, or onnxruntime-gpu missing): "
                           "carry the onnxruntime-gpu wheel (bench/gpu_check.sh says how)")
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(result["error"], file=sys.stderr)
        return 3
    with tempfile.TemporaryDirectory(prefix="asymvq-ort-") as tmp:
        workdir = args.workdir or Path(tmp)
        for component in args.components:
            t0 = time.perf_counter()
            try:
                row = _one(component, args, workdir, device)
                row["status"] = "ok"
            except Exception as exc:  # noqa: BLE001 - record and go on to the next component
                row, ok = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:2000]}, False
            row["wall_s"] = time.perf_counter() - t0
            result["components"][component] = row
            args.out.write_text(json.dumps(result, indent=2) + "\n")
            if row["status"] == "ok":
                print(f"{component} {args.size} {args.precision}: ORT {row['onnxruntime']['median']:.2f} ms "
                      f"({', '.join(row['providers'])}), torch {row['torch']['median']:.2f} ms, "
                      f"max |diff| {row['max_abs_diff']:.3g}", flush=True)
            else:
                print(f"{component}: {row['error']}", flush=True)
    print(f"wrote {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
