"""One decoder, three ways: kernels="torch" (eager, cuDNN), kernels="triton" (fused kernels) and
torch.compile of the torch path; same weights, same inputs, side by side in one run.

Any decoder preset: latents with its channels (4 or 16) in its latent space (scale, shift); a decoder
with a condition branch (x1.5, asuka-flux, ...) gets the image and mask, a plain one (flux, sdxl) not.
At 1024x1024, batch 1, the published timings of gpu_anchors.py (FLUX.1/FLUX.2 VAE on B200/H200,
SDXL VAE with TensorRT on an H100) are printed and stored beside ours (``anchors``).

Timings: CUDA events around each decode after warm-up, one synchronisation per measurement
(perf_counter on a CPU); min / median / p90 in ms, peak memory, achieved TFLOP/s from the counted
FLOPs (asymvq.profiling.flops), max |diff| of each variant against kernels="torch". The JSON is rewritten
after every variant, so a run cut short keeps what it measured.

    python bench/decoder_gpu.py --out bench/results/gpu/decoder-x1.5.json          # x1.5, 512x512, fp16, CUDA
    python bench/decoder_gpu.py --preset flux --size 1024 --dtype bf16 --out flux-1024.json   # beside the anchors
    TRITON_INTERPRET=1 python bench/decoder_gpu.py --device cpu --preset tiny --size 32 --dtype fp32 \\
        --warmup 0 --repeats 1 --out out/decoder-tiny.json                           # CPU smoke run (no timings worth reading)
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

from bench_common import time_ms, versions
from gpu_anchors import decoder_anchors, print_anchors

VARIANTS = ("torch", "triton", "compile")


def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="x1.5")
    p.add_argument("--size", type=int, default=512, help="image side in pixels")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", default="fp16", choices=("fp32", "fp16", "bf16"))
    p.add_argument("--device", default="cuda")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated among {VARIANTS}")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = p.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in args.variants if v not in VARIANTS]
    if bad:
        p.error(f"--variants: unknown {bad}; expected among {VARIANTS}")
    return args


def environment(device) -> dict:
    import torch

    env = {**versions("torch", "triton"), "python": platform.python_version(), "device_type": device.type,
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    if device.type == "cuda":
        env.update(device=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version())
    else:
        env["device"] = platform.processor() or platform.machine()
    return env


def main(argv=None) -> int:
    args = _args(argv)
    import torch

    from asymvq.models.devices import parse_device, parse_dtype
    from asymvq.models.sources import random_decoder
    from asymvq.profiling.flops import count_decoder

    device, dtype = parse_device(args.device), parse_dtype(args.dtype)
    cuda = device.type == "cuda"
    flops = count_decoder(args.preset, args.size, args.size, args.batch)["flops"]
    result = {"bench": "decoder_gpu", "preset": args.preset, "size": args.size, "batch": args.batch,
              "dtype": args.dtype, "environment": environment(device), "flops": flops, "variants": {}}
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save():
        args.out.write_text(json.dumps(result, indent=2) + "\n")

    g = torch.Generator().manual_seed(1)
    s = args.size
    dec = random_decoder(args.preset, seed=0, dtype=args.dtype, device=device)
    space = dec.config.latent_space
    f = space.vae_scale_factor
    latents = space.to_vae(torch.randn(args.batch, space.channels, s // f, s // f, generator=g)).to(device, dtype)
    image = mask = None
    if dec.config.has_condition:
        image = (torch.rand(1, 3, s, s, generator=g) * 2 - 1).to(device, dtype)
        mask = (torch.rand(1, 1, s, s, generator=g) > 0.5).to(device, dtype)
    result["latent_space"] = space.to_dict()
    if cuda:
        dec = dec.to(memory_format=torch.channels_last)
    reference = None
    for variant in args.variants:
        row: dict = {}
        t0 = time.perf_counter()
        try:
            dec.set_kernels("triton" if variant == "triton" else "torch")
            fn = dec.decode_core
            if variant == "compile":
                torch._dynamo.reset()
                fn = torch.compile(dec.decode_core)
            with torch.inference_mode():
                out = fn(latents, image, mask)  # first call: Triton JIT / compilation, not timed
                row["first_call_s"] = time.perf_counter() - t0
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                t = time_ms(lambda fn=fn: fn(latents, image, mask), device, args.warmup, args.repeats)
                row.update({f"{k}_ms": t[k] for k in ("min", "median", "p90")}, n=t["n"])
            if cuda:
                row["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
            row["tflops_per_s"] = flops / (row["median_ms"] / 1e3) / 1e12
            row["finite"] = bool(torch.isfinite(out).all())
            if reference is None and variant == "torch":
                reference = out.float()
            if reference is not None:
                row["max_abs_diff_vs_torch"] = float((out.float() - reference).abs().max())
            row["status"] = "ok"
        except Exception as exc:  # noqa: BLE001 - record and go on to the next variant
            row.update(status="failed", error=f"{type(exc).__name__}: {exc}"[:2000])
        row["wall_s"] = time.perf_counter() - t0
        result["variants"][variant] = row
        save()
        med = f"{row['median_ms']:.2f} ms" if "median_ms" in row else row.get("error", "")
        print(f"{args.preset} {s}x{s} {args.dtype} {variant}: {row['status']} {med}", flush=True)
    if "torch" in result["variants"] and result["variants"]["torch"].get("median_ms"):
        base = result["variants"]["torch"]["median_ms"]
        for row in result["variants"].values():
            if row.get("median_ms"):
                row["speedup_vs_torch"] = base / row["median_ms"]
    ours = {v: r["median_ms"] for v, r in result["variants"].items() if r.get("median_ms")}
    result["anchors"] = decoder_anchors(args.preset, s, args.batch, ours)
    print_anchors(result["anchors"], f"{args.preset} {s}x{s} {args.dtype}")
    save()
    print(f"wrote {args.out}")
    return 0 if all(r["status"] == "ok" for r in result["variants"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
