"""Peak CPU memory of one decode, full against tiled, each case in a fresh process.

What is measured: the peak resident set (VmHWM of /proc/self/status) of a new Python process that
builds the decoder (seeded random weights) and its inputs, reads its resident set (VmRSS: weights,
inputs, the libraries), runs one decode under ``torch.inference_mode`` and reads the high-water mark.
``added_bytes`` = peak - before: the decode's own working set, what tiling is meant to bound. A fresh
process per case, because a process's high-water mark and its allocator's cached pages would carry
one case's peak into the next. RSS, not a count of torch's allocations: it is what the machine has to
have, allocator slack and oneDNN scratch included. One decode per case: its seconds (``one_decode_s``)
are for orientation, not a speed claim (bench/decoder_tiled.py times).

Methods: ``full`` (``decode_core``), ``tiled`` (ours: ``decoder(..., tile=N)``, image-wide GroupNorm
statistics; on the CPU the values between segments stay in the same memory, counted as
``host_state_bytes``), ``diffusers_full`` / ``diffusers_tiled`` (``AutoencoderKL.decode`` without and
with ``enable_tiling()``, tiles of N latent pixels, on the plain decoder of the preset's shape; fp32
only). With a condition branch (asuka-flux, base, ...) ``full`` and ``tiled`` get the image and mask.

The record for issue 19 (the FLUX decoder, 1024 and 2048), one command on a quiet machine:

    .venv/bin/python bench/decoder_memory.py --presets flux --sizes 1024 2048 --dtype bf16 \
        --out bench/results/decoder_memory_flux.json

bf16, channels-last (this CPU's default precision with AMX / avx512_bf16): fp32 doubles every figure
and takes ~4x longer (a 2048 fp32 decode is ~40 TFLOP, ~4 min on two cores). Estimate on the 2-core
Xeon (AMX), quiet: ~5 min (4 cases; 2048 tiled the longest, ~2 min). ``--presets flux asuka-flux``
adds ASUKA's (the branch's full-resolution features held for the blends): ~5 min more.
A check at a tiny size, seconds:

    .venv/bin/python bench/decoder_memory.py --presets tiny-flux tiny-asuka --sizes 128 --tile 8
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from bench_common import cpu_record, diffusers_vae, loadavg, package_versions

METHODS = ("full", "tiled", "diffusers_full", "diffusers_tiled")


def _status_bytes(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {key}: the RSS peak needs Linux")


def run_case(preset: str, size: int, tile: int, method: str, dtype: str, seed: int = 0) -> dict:
    """In this (fresh) process: build, read the RSS, decode once, read the peak."""
    from asymvq.models.config import preset_config
    from asymvq.models.sources import random_decoder
    from asymvq.models.tiled_decode import TileState, check_tiling

    config = preset_config(preset)
    tile, overlap = check_tiling(tile, None, config)
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    space = config.latent_space
    h = size // space.vae_scale_factor
    g = torch.Generator().manual_seed(seed + 1)
    latent = space.to_vae(torch.randn(1, space.channels, h, h, generator=g))
    image = mask = None
    if method.startswith("diffusers"):
        if dtype != "fp32":
            raise SystemExit("--dtype: the diffusers methods run fp32 only (diffusers' CPU path in bf16 is not its use)")
        vae = diffusers_vae(dataclasses.replace(config, condition=None, gate_conv=False), seed)
        if method == "diffusers_tiled":
            vae.enable_tiling()
            vae.tile_latent_min_size, vae.tile_sample_min_size = tile, space.vae_scale_factor * tile
        decode = lambda: vae.decode(latent, return_dict=False)[0]  # noqa: E731
        state = None
    else:
        if config.has_condition:
            image = torch.rand(1, 3, size, size, generator=g) * 2 - 1
            mask = torch.zeros(1, 1, size, size)
            mask[..., size // 4: 3 * size // 4, size // 3: 5 * size // 6] = 1
            image, mask = image.to(torch_dtype), mask.to(torch_dtype)
        # bf16: cast and channels-last (oneDNN's fast bf16 layout: NCHW bf16 runs slower than fp32), but
        # conv_out left a plain conv (cpu_bf16 makes it an fp32 one, which the tiled decode's tracer does not
        # take yet); both methods get the same module
        dec = random_decoder(preset, seed=seed).to(torch_dtype)
        if dtype == "bf16":
            dec = dec.to(memory_format=torch.channels_last)
        latent = latent.to(torch_dtype)
        state = TileState("cpu")
        if method == "full":
            decode = lambda: dec.decode_core(latent, image, mask)  # noqa: E731
        else:
            from asymvq.models.tiled_decode import tiled_decode

            decode = lambda: tiled_decode(dec, latent, image, mask, tile, overlap, state=state)  # noqa: E731
    before = _status_bytes("VmRSS:")
    Path("/proc/self/clear_refs").write_text("5")  # the high-water mark from here on
    t = time.perf_counter()
    with torch.inference_mode():
        out = decode()
    seconds = time.perf_counter() - t
    peak = _status_bytes("VmHWM:")
    row = {"peak_bytes": peak, "before_bytes": before, "added_bytes": peak - before,
           "output_bytes": out.numel() * out.element_size(), "memory_kind": "cpu_peak_rss_fresh_process",
           "one_decode_s": round(seconds, 2), "finite": bool(torch.isfinite(out).all()), "tile": tile,
           "overlap": overlap}
    if state is not None and method == "tiled":
        row["host_state_bytes"] = state.peak_bytes
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["flux"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[1024, 2048])
    ap.add_argument("--tile", type=int, default=64, help="latent pixels (8x image pixels)")
    ap.add_argument("--methods", nargs="+", default=["full", "tiled"], choices=METHODS)
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timeout", type=int, default=900, help="seconds per case")
    ap.add_argument("--out", type=Path, default=None, help="write the JSON here (default: print it)")
    ap.add_argument("--case", nargs=4, metavar=("PRESET", "SIZE", "TILE", "METHOD"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.case:
        preset, size, tile, method = args.case
        print(json.dumps(run_case(preset, int(size), int(tile), method, args.dtype)))
        return 0
    report = {"device": "cpu", "dtype": args.dtype, "cpu": cpu_record(), "loadavg_before": loadavg(),
              "versions": package_versions(("torch", "diffusers")), "threads": args.threads,
              "memory_kind": "cpu_peak_rss_fresh_process", "points": []}
    for preset in args.presets:
        for size in args.sizes:
            point = {"preset": preset, "size": size, "tile": args.tile, "methods": {}}
            for method in args.methods:
                cmd = [sys.executable, __file__, "--case", preset, str(size), str(args.tile), method,
                       "--dtype", args.dtype, "--threads", str(args.threads)]
                t = time.perf_counter()
                try:
                    r = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
                    row = (json.loads(r.stdout.splitlines()[-1]) if r.returncode == 0 else
                           {"error": f"exit {r.returncode}: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ''}"})
                except subprocess.TimeoutExpired:
                    row = {"error": f"over --timeout {args.timeout} s"}
                row["process_s"] = round(time.perf_counter() - t, 1)
                point["methods"][method] = row
                print(f"{preset} {size} {method}: " + (f"peak {row['peak_bytes'] / 2**30:.2f} GiB, added "
                      f"{row['added_bytes'] / 2**30:.2f} GiB, {row['one_decode_s']} s" if "error" not in row
                      else row["error"]), file=sys.stderr, flush=True)
            full = point["methods"].get("full", {})
            for method, row in point["methods"].items():
                if method != "full" and "added_bytes" in row and full.get("added_bytes"):
                    row["added_bytes_vs_full"] = row["added_bytes"] / full["added_bytes"]
                    row["peak_bytes_vs_full"] = row["peak_bytes"] / full["peak_bytes"]
            report["points"].append(point)
    report["loadavg_after"] = loadavg()
    text = json.dumps(report, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
