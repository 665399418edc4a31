"""Tiled decoding, ours against diffusers' own, against the full decode: time, peak memory, FLOPs, PSNR.

For each preset and size, in one process and one run:

- ``full``: our full decode (``decode_core``), the reference every PSNR is taken against;
- ``tiled``: ours (``decoder(..., tile=N)``: each up-path layer once per tile, image-wide GroupNorm
  statistics; the values between segments in host memory on CUDA, reported as ``host_state_bytes``,
  with the PCIe traffic they cost, ``host_traffic_bytes_per_decode``); on CUDA also
  ``tiled_device_state``: the same with the state kept on the GPU (no traffic, more device memory),
  and ``tiled_budget``: state on the GPU up to ``--state-budget`` x the full decode's peak, the rest
  in host memory;
- ``diffusers_full`` / ``diffusers_tiled``: diffusers ``AutoencoderKL.decode`` without and with
  ``enable_tiling()`` (tiles of N latent pixels, its default 25 % overlap, per-tile GroupNorm
  statistics, seams cross-faded), on the same weights: the plain (no condition branch) decoder of
  the preset's size, which is the one diffusers can tile;
- with a condition branch (``base``, ``x1.5``, ``x2``, ``tiny``): ``cond_full`` / ``cond_tiled``,
  ours with image and mask (diffusers' AsymmetricAutoencoderKL does not tile).

Time: min / median of ``--repeats`` after ``--warmup`` (CUDA events on a GPU; the first warm-up call's
output is the one compared). Peak memory: CUDA max allocated (or the process's peak RSS on the CPU, reset
per method, which then includes the host state). FLOPs: counted on the meta device. Random seeded weights,
random latents; PSNR over [-1, 1]: ``psnr_db_vs_full`` against our full decode (ours and diffusers' rows),
``psnr_db_vs_diffusers_full`` diffusers' tiling against its own full decode, and where ours run bf16 and
diffusers fp32, ``psnr_db_vs_fp32_full`` ours against diffusers' fp32 full decode (the same weights; equal
to ours in fp32 to 1e-5): what bf16 costs, beside what tiling costs.

``--dtype bf16`` on the CPU: ours as ``--dtype bf16`` prepares them there (``cpu_bf16``: channels-last bf16,
``conv_out`` in fp32), diffusers in fp32 (``--diffusers-dtype``; its bf16 on the CPU is NCHW, slower than
its fp32), both labelled in each point (``dtype``, ``diffusers_dtype``); ``ms_vs_full`` of diffusers' rows is
then against our bf16 full decode, ``ms_vs_diffusers_full`` against its own.

The CPU record for issue 22 item 6 (ours tiled against full against diffusers' ``enable_tiling``, time,
memory, PSNR, FLOPs, one run), on a quiet machine:

    .venv/bin/python bench/decoder_tiled.py --device cpu --dtype bf16 --presets flux x1.5 --sizes 1024 --tile 64 \
        --warmup 1 --repeats 3 --out bench/results/decoder_tiled_cpu_bf16.json

Measured: 32 min (2026-12-04, bench/results/decoder_tiled_cpu_bf16.json).
Estimate on the 2-core Xeon (AMX), quiet, 2 threads: ~50 min (4 calls per method; the decodes at the quiet
rates of bench/results/decoder_cpu_asuka-flux_512.json, bf16 ~0.8 TFLOP/s, fp32 ~0.19, ours tiled at
~1.1x its full decode): flux ~11 min (ours full ~13 s, tiled ~15 s, diffusers full ~56 s, tiled ~84 s a
call), x1.5 ~37 min (ours plain full ~35 s, tiled ~40 s, with image and mask ~45 / ~50 s, diffusers full
~150 s, tiled ~225 s a call; 9 tiles at tile=64); FLOP counting ~15 s. ``--repeats 2`` takes ~3/4 of it.
Memory: the largest decodes (diffusers' fp32 x1.5 full, ours bf16 x1.5 full with image and mask)
count 4.5-4.6 GiB of torch allocations (bench/decoder_memory.py), so ~8 GB of RSS at most with weights and scratch.

    python bench/decoder_tiled.py --device cuda --presets vanilla base --sizes 1024 2048 --tile 64
    python bench/decoder_tiled.py --device cpu --presets tiny --sizes 256 --tile 20 --warmup 0 --repeats 1  # a check

Timings are only meaningful on a quiet machine (the load average is recorded). ``--out`` writes JSON.
On the CPU the peak RSS here is of one process across methods; bench/decoder_memory.py measures each
case in a fresh process (the FLUX decoder at 1024 and 2048, full against tiled).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch
from bench_common import cpu_record, diffusers_vae, loadavg, package_versions, psnr, time_ms

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def plain_vae(config, seed: int):
    """diffusers AutoencoderKL whose decoder has ``config``'s shape and latent space and no condition branch
    (no quant convs for FLUX / SD3, as theirs)."""
    return diffusers_vae(dataclasses.replace(config, condition=None, gate_conv=False), seed)


def diffusers_tiling(vae, tile: int, on: bool) -> None:
    if on:
        vae.enable_tiling()
        vae.tile_latent_min_size, vae.tile_sample_min_size = tile, 8 * tile
    else:
        vae.disable_tiling()


def ours(decoder, device, dtype):
    """Our decoder in ``dtype`` on ``device`` as ``--dtype`` prepares it (bf16 on the CPU: ``cpu_bf16``'s
    channels-last bf16 with an fp32 ``conv_out``)."""
    from asymvq.models.cpu_bf16 import is_cpu_bf16, to_cpu_bf16

    decoder = decoder.to(device, dtype).eval()
    return to_cpu_bf16(decoder) if is_cpu_bf16(decoder) else decoder


def measure(fn, device, warmup: int, repeats: int) -> dict:
    from asymvq.profiling.timing import PeakMemory

    mem = PeakMemory(device)
    try:
        mem.reset()
        with torch.inference_mode():
            y = fn()  # the first warm-up call gives the output (a 1024 decode on the CPU is seconds to minutes)
            ms = time_ms(fn, device, max(warmup - 1, 0), repeats)
        return {"ms": ms, **mem.measure(), "memory_kind": mem.kind, "out": y}
    except torch.cuda.OutOfMemoryError as e:  # a full decode that does not fit is a result, not a crash
        torch.cuda.empty_cache()
        return {"error": f"out of memory: {str(e).splitlines()[0]}"}


def flops(fn) -> int:
    from asymvq.profiling.flops import count

    return count(fn)["flops"]


def run_point(preset: str, size: int, tile: int, device, dtype, warmup: int, repeats: int,
              state_budget: float = 0.0, diffusers_dtype=None) -> dict:
    from asymvq.models.checkpoints import decoder_from_vae
    from asymvq.models.config import preset_config
    from asymvq.models.decoder import AsymmetricDecoder
    from asymvq.models.sources import random_decoder
    from asymvq.models.tiled_decode import TileState, check_tiling, spans, tiled_decode

    diffusers_dtype = diffusers_dtype or dtype
    config = preset_config(preset)
    tile, overlap = check_tiling(tile, None, config)
    h = size // 8
    g = torch.Generator().manual_seed(1)
    lat32 = torch.randn(1, config.latent_channels, h, h, generator=g).to(device)
    lat, dlat = lat32.to(dtype), lat32.to(diffusers_dtype)
    point = {"preset": preset, "size": size, "tile": tile, "overlap": overlap, "dtype": str(dtype),
             "diffusers_dtype": str(diffusers_dtype), "tiles": len(spans(h, tile, overlap)) ** 2, "methods": {}}

    vae = plain_vae(config, seed=0).to(device)
    plain = ours(decoder_from_vae(vae), device, dtype)  # the same weights, read before vae is cast
    vae = vae.to(diffusers_dtype)
    state = TileState("cpu" if torch.device(device).type == "cuda" else device, pin=torch.device(device).type == "cuda")

    def diffusers_decode(on):
        diffusers_tiling(vae, tile, on)
        # diffusers' tiled decode can overshoot the image when the tile does not fit its 25 % overlap
        # (e.g. 32 latent pixels in tiles of 19: 260 pixels wide): cropped to the image
        return lambda: vae.decode(dlat, return_dict=False)[0][..., :size, :size]

    methods = {
        "full": lambda: plain.decode_core(lat, None, None),
        "tiled": lambda: tiled_decode(plain, lat, None, None, tile, overlap, state=state),
        "diffusers_full": diffusers_decode(False),
    }
    dstate = None
    if torch.device(device).type == "cuda":  # the other side of the trade: state on the GPU, no PCIe traffic
        dstate = TileState(device)
        methods["tiled_device_state"] = lambda: tiled_decode(plain, lat, None, None, tile, overlap, state=dstate)
    results = point["methods"]
    for name, fn in methods.items():
        results[name] = measure(fn, device, warmup, repeats)
    if dstate is not None and state_budget and "peak_bytes" in results["full"]:
        # in between: as much state on the GPU as --state-budget x the full decode's peak, the rest in host memory
        bstate = TileState("cpu", pin=True, device_bytes=int(state_budget * results["full"]["peak_bytes"]))
        results["tiled_budget"] = measure(lambda: tiled_decode(plain, lat, None, None, tile, overlap, state=bstate),
                                          device, warmup, repeats)
        results["tiled_budget"].update(state_budget=state_budget, host_state_bytes=bstate.peak_bytes,
                                       device_state_bytes=bstate.device_peak_bytes,
                                       host_traffic_bytes_per_decode=bstate.moved_bytes // max(warmup + repeats + 1, 1))
    results["diffusers_tiled"] = measure(diffusers_decode(True), device, warmup, repeats)
    results["tiled"]["host_state_bytes"] = state.peak_bytes
    results["tiled"]["host_traffic_bytes_per_decode"] = state.moved_bytes // max(warmup + repeats + 1, 1)

    if config.has_condition:
        dec = ours(random_decoder(preset), device, dtype)
        image = (torch.rand(1, 3, size, size, generator=g) * 2 - 1).to(device, dtype)
        mask = torch.zeros(1, 1, size, size)
        mask[..., size // 4 + 3: size * 3 // 4 - 5, size // 3 + 1: size * 5 // 6] = 1
        mask = mask.to(device, dtype)
        cstate = TileState(state.device, pin=state.pin)
        results["cond_full"] = measure(lambda: dec.decode_core(lat, image, mask), device, warmup, repeats)
        results["cond_tiled"] = measure(lambda: tiled_decode(dec, lat, image, mask, tile, overlap, state=cstate),
                                        device, warmup, repeats)
        results["cond_tiled"]["host_state_bytes"] = cstate.peak_bytes

    ours_rows = ("tiled", "tiled_device_state", "tiled_budget")
    comparisons = [("full", "vs_full", (*ours_rows, "diffusers_full", "diffusers_tiled")),
                   ("cond_full", "vs_full", ("cond_tiled",)),
                   # diffusers' tiling against its own full decode: its seams and tone, at its own precision
                   ("diffusers_full", "vs_diffusers_full", ("diffusers_tiled",))]
    if diffusers_dtype == torch.float32 and dtype != torch.float32:
        # the same weights in fp32 (diffusers' full decode equals ours in fp32 to 1e-5): what ours lose to bf16
        comparisons.append(("diffusers_full", "vs_fp32_full", ("full", *ours_rows)))
    for ref, suffix, names in comparisons:
        base = results.get(ref, {}).get("out")
        for n in names:
            y = results.get(n, {}).get("out")
            if base is not None and y is not None:
                results[n][f"psnr_db_{suffix}"] = psnr(y.float(), base.float(), 2.0)
                results[n][f"max_abs_{suffix}"] = float((y.float() - base.float()).abs().max())

    # FLOPs on the meta device (no weights, no memory): ours counted through the same code paths
    with torch.device("meta"):
        meta_plain = AsymmetricDecoder(plain.config).eval()
        meta_vae = plain_vae(config, seed=0)
        mlat = torch.empty(1, config.latent_channels, h, h)
    counted = {"full": flops(lambda: meta_plain.decode_core(mlat, None, None)),
               "tiled": flops(lambda: tiled_decode(meta_plain, mlat, None, None, tile, overlap))}
    diffusers_tiling(meta_vae, tile, True)
    counted["diffusers_tiled"] = flops(lambda: meta_vae.decode(mlat, return_dict=False))
    if config.has_condition:
        with torch.device("meta"):
            meta_dec = AsymmetricDecoder(config).eval()
            mimg, mmask = torch.empty(1, 3, size, size), torch.empty(1, 1, size, size)
        counted["cond_full"] = flops(lambda: meta_dec.decode_core(mlat, mimg, mmask))
        counted["cond_tiled"] = flops(lambda: tiled_decode(meta_dec, mlat, mimg, mmask, tile, overlap))
    for n, f in counted.items():
        results.setdefault(n, {})["flops"] = f
    counted_as = {"tiled_device_state": "tiled", "tiled_budget": "tiled"}
    for n, ref in (("tiled", "full"), ("tiled_device_state", "full"), ("tiled_budget", "full"), ("diffusers_tiled", "full"),
                   ("cond_tiled", "cond_full")):
        if n in results and counted_as.get(n, n) in counted:
            results[n]["flops"] = counted[counted_as.get(n, n)]
            results[n]["flops_vs_full"] = counted[counted_as.get(n, n)] / counted[ref]
            for key in ("ms", "peak_bytes"):
                a, b = results[n].get(key), results[ref].get(key)
                if a is not None and b is not None:
                    results[n][f"{key}_vs_full"] = (a["median"] / b["median"]) if key == "ms" else a / b
    for key in ("ms", "peak_bytes"):  # diffusers' tiling against its own full decode (its dtype may not be ours)
        a, b = results["diffusers_tiled"].get(key), results["diffusers_full"].get(key)
        if a is not None and b is not None:
            results["diffusers_tiled"][f"{key}_vs_diffusers_full"] = (a["median"] / b["median"]) if key == "ms" else a / b
    for r in results.values():
        r.pop("out", None)
    return point


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                    help="ours; default: fp16 on CUDA, fp32 on the CPU (bf16 on the CPU: cpu_bf16's channels-last decoder)")
    ap.add_argument("--diffusers-dtype", choices=sorted(DTYPES), default=None,
                    help="diffusers' AutoencoderKL; default: --dtype, but fp32 where --dtype bf16 runs on the CPU "
                         "(diffusers' bf16 there is NCHW, slower than its fp32: not its use)")
    ap.add_argument("--presets", nargs="+", default=["vanilla", "base"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[1024, 2048])
    ap.add_argument("--tile", type=int, default=64, help="latent pixels (8x image pixels)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--state-budget", type=float, default=0.15,
                    help="CUDA: also run the tiled decode with state on the GPU up to this fraction of the full "
                         "decode's peak, the rest in host memory (0: skip)")
    ap.add_argument("--out", type=Path, default=None, help="write the JSON here (default: print it)")
    args = ap.parse_args(argv)
    cuda = torch.device(args.device).type == "cuda"
    name = args.dtype or ("fp16" if cuda else "fp32")
    dtype = DTYPES[name]
    diffusers_dtype = DTYPES[args.diffusers_dtype or ("fp32" if name == "bf16" and not cuda else name)]
    report = {"device": args.device, "dtype": str(dtype), "diffusers_dtype": str(diffusers_dtype), "cpu": cpu_record(),
              "threads": torch.get_num_threads(), "loadavg_before": loadavg(),
              "versions": package_versions(("torch", "diffusers")), "points": []}
    if torch.device(args.device).type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(args.device)
    for preset in args.presets:
        for size in args.sizes:
            point = run_point(preset, size, args.tile, args.device, dtype, args.warmup, args.repeats, args.state_budget,
                              diffusers_dtype)
            report["points"].append(point)
            summary = {n: {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()
                           if k in ("psnr_db_vs_full", "psnr_db_vs_diffusers_full", "psnr_db_vs_fp32_full", "flops_vs_full",
                                    "ms_vs_full", "ms_vs_diffusers_full", "peak_bytes_vs_full", "error")}
                       for n, r in point["methods"].items()}
            print(f"{preset} {size}: {json.dumps(summary)}", file=sys.stderr, flush=True)
    report["loadavg_after"] = loadavg()
    text = json.dumps(report, indent=1, default=str)
    if args.out:
        args.out.write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
