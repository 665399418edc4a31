"""Whole inpainting jobs on a GPU, diffusers against asymvq, beside the published timings (gpu_anchors.py).

SDXL inpainting (``--family sdxl``; the anchor: 30 steps at 1024x1024 on an H100, 1471 ms with TensorRT,
2496 ms in PyTorch) and FLUX.1 Fill (``--family flux-fill``), at the real sizes (``--preset sdxl`` /
``flux-fill``: SDXL 1.0 inpainting's UNet, CLIP ViT-L + bigG; FLUX.1-Fill-dev's 12B transformer, T5-XXL,
CLIP ViT-L) with seeded random weights, built directly on the device (no download, no host copy) and
cast to ``--dtype``; or the tiny presets for a check on the CPU. The VAE decodes in fp32 where its
config says ``force_upcast`` (SDXL's: fp16 overflows), in diffusers and in asymvq alike.

Timed: the whole call (prompt -> image tensor), CUDA-synchronised, min / median of ``--repeats`` after
``--warmup``; asymvq's per-stage split from its own timer (text, VAE encode, denoise, decode). The JSON
is rewritten after each contender, so a run cut short keeps what it measured.

    python bench/pipeline_gpu.py --family sdxl --preset sdxl --size 1024 --steps 30 --dtype fp16 --out sdxl.json
    python bench/pipeline_gpu.py --family flux-fill --preset flux-fill --size 1024 --steps 28 --dtype bf16 --out flux.json
    python bench/pipeline_gpu.py --family sdxl --preset tiny-sdxl --size 64 --steps 2 --device cpu --dtype fp32 \\
        --warmup 0 --repeats 1 --out out/sdxl-tiny.json                                   # a check (needs diffusers)
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from bench_common import versions
from gpu_anchors import pipeline_anchors

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def build(family: str, preset: str, device, dtype):
    """The diffusers pipeline of a family preset, its networks created on ``device`` (random init there)."""
    from asymvq.models import family_networks as fn

    with torch.device(device):
        pipe = (fn.flux_fill_pipeline(preset) if family == "flux-fill" else fn.sdxl_inpaint_pipeline(preset))
    pipe.to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", choices=("sdxl", "flux-fill"), default="sdxl")
    ap.add_argument("--preset", default=None, help="sdxl, tiny-sdxl, flux-fill, tiny-flux-fill (default: the family's real one)")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    preset = args.preset or args.family
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    cuda = device.type == "cuda"
    result = {"bench": "pipeline_gpu", "family": args.family, "preset": preset, "size": args.size, "steps": args.steps,
              "dtype": args.dtype, "versions": versions("torch", "diffusers", "transformers"),
              "device": torch.cuda.get_device_name(device) if cuda else "cpu", "contenders": {},
              "anchors": pipeline_anchors(args.family)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save = lambda: args.out.write_text(json.dumps(result, indent=2) + "\n")  # noqa: E731

    t = time.perf_counter()
    pipe = build(args.family, preset, device, dtype)
    from asymvq.pipeline import InpaintPipeline
    from asymvq.profiling.timing import StageTimer

    ours = InpaintPipeline.from_diffusers(pipe)
    result["build_s"] = round(time.perf_counter() - t, 1)
    s = args.size
    g = torch.Generator().manual_seed(1)
    image = torch.rand(1, 3, s, s, generator=g)
    mask = torch.zeros(1, 1, s, s)
    mask[..., s // 4: 3 * s // 4, s // 4: 3 * s // 4] = 1
    prompt = "a sofa" if preset.startswith("tiny") else "a red sofa in a sunlit room"
    call = dict(prompt=prompt, image=image, mask_image=mask, height=s, width=s, num_inference_steps=args.steps,
                strength=1.0, output_type="pt")
    if args.family == "flux-fill":
        call["max_sequence_length"] = 8 if preset.startswith("tiny") else 512
    timer_box = {}

    def run_ours():
        timer_box["t"] = StageTimer(device)
        return ours(**call, generator=torch.Generator(device).manual_seed(0), timer=timer_box["t"]).images

    runs = {"diffusers": lambda: pipe(**call, generator=torch.Generator(device).manual_seed(0)).images,
            "asymvq": run_ours}
    outs = {}
    for name, fn in runs.items():
        row = {}
        try:
            with torch.inference_mode():
                ms = []
                for i in range(args.warmup + args.repeats):
                    if cuda:
                        torch.cuda.synchronize(device)
                    t0 = time.perf_counter()
                    outs[name] = fn()
                    if cuda:
                        torch.cuda.synchronize(device)
                    if i >= args.warmup:
                        ms.append(1e3 * (time.perf_counter() - t0))
            row = {"min_ms": min(ms), "median_ms": statistics.median(ms), "all_ms": ms, "status": "ok"}
            if name == "asymvq":  # the last job's spans, summed per name
                stages: dict[str, float] = {}
                for span, span_ms in timer_box["t"].collect():
                    stages[span] = stages.get(span, 0.0) + span_ms
                row["stages_ms"] = stages
            if cuda:
                row["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        except Exception as exc:  # noqa: BLE001 - record and go on
            row = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:2000]}
        result["contenders"][name] = row
        save()
        print(f"{args.family} {preset} {s}x{s} {args.steps} steps {args.dtype} {name}: "
              f"{row.get('median_ms', float('nan')):.1f} ms median ({row['status']})", flush=True)
    if len(outs) == 2:
        result["max_abs_asymvq_vs_diffusers"] = float((outs["asymvq"].float() - outs["diffusers"].float()).abs().max())
    for a in result["anchors"]:
        if a.get("steps") == args.steps and a.get("size") == s:
            a["ours_ms"] = {n: r.get("median_ms") for n, r in result["contenders"].items()}
        print(f"  anchor: {a['what']} [{a['source']}]: {a['variants']} ms; ours "
              f"{ {n: round(r['median_ms'], 1) for n, r in result['contenders'].items() if 'median_ms' in r} } ms"
              + ("" if a.get("steps") in (None, args.steps) else f" (anchor at {a['steps']} steps)"), flush=True)
    save()
    print(f"wrote {args.out}")
    return 0 if all(r["status"] == "ok" for r in result["contenders"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
