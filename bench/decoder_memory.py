"""Peak CPU memory of one decode, full against tiled: counted on the meta device, and measured, each
measured case in a fresh process.

Two figures per case:
- counted (``counted_peak_bytes``, every ``--sizes``; ``count_case``): the decode runs on the meta device
  (shapes only, seconds at any size, the same at any load) under a dispatch mode that adds up the bytes of
  every tensor storage an op creates and takes them off when the storage is freed; its peak is what torch
  allocates for the decode beyond the weights and inputs (activations, the tiled state, the image). Not
  in it: what kernels allocate inside themselves (oneDNN scratch and weight reorders, attention's blocks),
  allocator slack, the libraries.
- measured (``peak_bytes`` / ``added_bytes``, at ``--rss-sizes``; ``run_case``): the peak resident set
  (VmHWM of /proc/self/status, reset through /proc/self/clear_refs) of a new Python process that built the
  decoder (seeded random weights) and its inputs, read its resident set (VmRSS), and ran one decode under
  ``torch.inference_mode``; ``added_bytes`` = peak - before. A fresh process per case, because a
  process's high-water mark and its allocator's cached pages would carry one case's peak into the next.
  One decode per case: its seconds (``one_decode_s``) are for orientation, not a speed claim.

Methods: ``full`` (``decode_core``), ``tiled`` (ours: ``decoder(..., tile=N)``, image-wide GroupNorm
statistics; on the CPU the values between segments stay in the same memory, ``counted_state_bytes`` /
``host_state_bytes``), ``diffusers_full`` / ``diffusers_tiled`` (``AutoencoderKL.decode`` without and with
``enable_tiling()``, tiles of N latent pixels, per-tile statistics, on the plain decoder of the preset's
shape; measured in fp32 only). With a condition branch (asuka-flux, base, ...) ours get the image and mask.

The record for issue 19 (the FLUX decoder and ASUKA's, 1024 and 2048), one command on a quiet machine:

    .venv/bin/python bench/decoder_memory.py --presets flux asuka-flux --sizes 1024 2048 --rss-sizes 1024 \\
        --methods full tiled diffusers_full diffusers_tiled --dtype bf16 --out bench/results/decoder_memory_flux.json

Counted at 1024 and 2048 (all methods, ~2 min of meta-device tracing), measured at 1024 (ours full and tiled
per preset; the diffusers rows only counted, as they run fp32): estimate on the 2-core Xeon (AMX), quiet,
~5 min: four decodes of 13-20 s (the bf16 full decode at ~0.8 TFLOP/s, bench/results/decoder_cpu_asuka-flux_512.json;
the tiled one now at 1.0-1.3x it, one thread, measured at 256-512; it ran ~5x before its layout fix) plus a
process start each. bf16 as ``--dtype bf16`` prepares it (``cpu_bf16``: channels-last, ``conv_out`` in fp32,
the image fp32); ``--dtype fp32`` doubles every activation. ``--rss-sizes 1024 2048`` also measures 2048
(~6-10 min more: 4.6x the FLOPs). A check at a tiny size, seconds:

    .venv/bin/python bench/decoder_memory.py --presets tiny-flux tiny-asuka --sizes 256 --tile 20
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
import weakref
from pathlib import Path

import torch
from bench_common import cpu_record, diffusers_vae, loadavg, package_versions
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

METHODS = ("full", "tiled", "diffusers_full", "diffusers_tiled")


def _status_bytes(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {key}: the RSS peak needs Linux")


def build_case(preset: str, size: int, tile: int, method: str, dtype: str, seed: int = 0, meta: bool = False):
    """(decode(), TileState or None, tile, overlap) of one case: seeded weights and inputs on the CPU, or
    shapes only on the meta device (``meta``: nothing computed, what ``count_case`` counts)."""
    from asymvq.models import AsymmetricDecoder
    from asymvq.models.config import preset_config
    from asymvq.models.cpu_bf16 import to_cpu_bf16
    from asymvq.models.tiled_decode import TileState, check_tiling, tiled_decode

    config = preset_config(preset)
    tile, overlap = check_tiling(tile, None, config)
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    space = config.latent_space
    h = size // space.vae_scale_factor
    g = torch.Generator().manual_seed(seed + 1)
    draw = (lambda *shape: torch.empty(*shape, device="meta")) if meta else (
        lambda *shape: torch.randn(*shape, generator=g))
    latent = space.to_vae(draw(1, space.channels, h, h))
    device = torch.device("meta") if meta else torch.device("cpu")
    if method.startswith("diffusers"):
        if dtype != "fp32" and not meta:
            raise SystemExit("--dtype: the diffusers methods run fp32 only (diffusers' CPU path in bf16 is not its use)")
        with device:
            vae = diffusers_vae(dataclasses.replace(config, condition=None, gate_conv=False), seed).to(torch_dtype)
        if method == "diffusers_tiled":
            vae.enable_tiling()
            vae.tile_latent_min_size, vae.tile_sample_min_size = tile, space.vae_scale_factor * tile
        latent = latent.to(torch_dtype)
        return (lambda: vae.decode(latent, return_dict=False)[0]), None, tile, overlap
    image = mask = None
    if config.has_condition:
        image = (draw(1, 3, size, size).clamp(0, 1) * 2 - 1).to(torch_dtype)
        mask = torch.zeros(1, 1, size, size, device=device)
        mask[..., size // 4: 3 * size // 4, size // 3: 5 * size // 6] = 1
        mask = mask.to(torch_dtype)
    # bf16: what --dtype bf16 gives on the CPU (cpu_bf16: channels-last bf16, conv_out in fp32, so the image
    # comes out fp32); both methods get the same module
    torch.manual_seed(seed)
    with device:
        dec = AsymmetricDecoder(config).eval().to(torch_dtype)
    if dtype == "bf16":
        dec = to_cpu_bf16(dec)
    latent = latent.to(torch_dtype)
    state = TileState(device)
    if method == "full":
        return (lambda: dec.decode_core(latent, image, mask)), state, tile, overlap
    return (lambda: tiled_decode(dec, latent, image, mask, tile, overlap, state=state)), state, tile, overlap


def run_case(preset: str, size: int, tile: int, method: str, dtype: str, seed: int = 0) -> dict:
    """In this (fresh) process: build, read the RSS, decode once, read the peak."""
    decode, state, tile, overlap = build_case(preset, size, tile, method, dtype, seed)
    # the high-water mark from here on, then the RSS it starts from (in this order: the RSS can drop between
    # two reads, and a mark reset after the read could end below it)
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_bytes("VmRSS:")
    t = time.perf_counter()
    with torch.inference_mode():
        out = decode()
    seconds = time.perf_counter() - t
    # the kernel folds RSS into VmHWM lazily (its per-thread counters are synced in batches), so the mark can
    # trail a VmRSS read by a few pages (20 KB seen): the peak is at least either
    peak = max(_status_bytes("VmHWM:"), _status_bytes("VmRSS:"), before)
    row = {"peak_bytes": peak, "before_bytes": before, "added_bytes": peak - before,
           "output_bytes": out.numel() * out.element_size(), "memory_kind": "cpu_peak_rss_fresh_process",
           "one_decode_s": round(seconds, 2), "finite": bool(torch.isfinite(out).all()), "tile": tile,
           "overlap": overlap}
    if state is not None and method == "tiled":
        row["host_state_bytes"] = state.peak_bytes
    return row


class _LiveBytes(TorchDispatchMode):
    """The bytes of the tensor storages every op creates, alive at once: their peak. A storage is counted
    when an op first returns it and uncounted when it is freed (its Python object is preserved as long as
    it lives, so a weak reference sees the free); views and in-place results add nothing."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self.seen: dict[int, int] = {}

    def _free(self, key: int, n: int) -> None:
        self.live -= n
        self.seen.pop(key, None)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = id(storage)
                if key not in self.seen:
                    self.seen[key] = n = storage.nbytes()
                    self.live += n
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._free, key, n)
        return out


def count_case(preset: str, size: int, tile: int, method: str, dtype: str) -> dict:
    """On the meta device, in this process, in a moment: the peak of the bytes torch allocates for one
    decode (activations, tiled state, the image), beyond the weights and the inputs. Not counted: what
    kernels allocate inside themselves (oneDNN scratch and weight reorders, attention's blocks), allocator
    slack, the libraries: the RSS figure has those."""
    decode, state, _, _ = build_case(preset, size, tile, method, dtype, meta=True)
    mode = _LiveBytes()
    with torch.inference_mode(), mode:
        out = decode()
    row = {"counted_peak_bytes": mode.peak, "counted_output_bytes": out.numel() * out.element_size()}
    if state is not None and method == "tiled":
        row["counted_state_bytes"] = state.peak_bytes
    return row


def _rss_case(args, preset: str, size: int, method: str) -> dict:
    cmd = [sys.executable, __file__, "--case", preset, str(size), str(args.tile), method,
           "--dtype", args.dtype, "--threads", str(args.threads)]
    t = time.perf_counter()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        last = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""
        row = json.loads(r.stdout.splitlines()[-1]) if r.returncode == 0 else {"error": f"exit {r.returncode}: {last}"}
    except subprocess.TimeoutExpired:
        row = {"error": f"over --timeout {args.timeout} s"}
    row["process_s"] = round(time.perf_counter() - t, 1)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["flux"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[1024, 2048], help="counted at each (meta device)")
    ap.add_argument("--rss-sizes", nargs="*", type=int, default=None,
                    help="measured (peak RSS, a process per case) at these (default: every --sizes; none: only counted)")
    ap.add_argument("--tile", type=int, default=64, help="latent pixels (8x image pixels)")
    ap.add_argument("--methods", nargs="+", default=["full", "tiled"], choices=METHODS)
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timeout", type=int, default=900, help="seconds per measured case")
    ap.add_argument("--out", type=Path, default=None, help="write the JSON here (default: print it)")
    ap.add_argument("--case", nargs=4, metavar=("PRESET", "SIZE", "TILE", "METHOD"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.case:
        preset, size, tile, method = args.case
        print(json.dumps(run_case(preset, int(size), int(tile), method, args.dtype)))
        return 0
    from asymvq.models.config import preset_config

    rss_sizes = args.sizes if args.rss_sizes is None else args.rss_sizes
    report = {"device": "cpu", "dtype": args.dtype, "cpu": cpu_record(), "loadavg_before": loadavg(),
              "versions": package_versions(("torch", "diffusers")), "threads": args.threads,
              "memory_kind": {"counted_*": "torch allocations counted on the meta device (count_case)",
                              "peak_bytes / added_bytes": "cpu_peak_rss_fresh_process (run_case)"},
              "points": []}
    for preset in args.presets:
        diffusers_ok = preset_config(preset).condition in (None, "conv", "asuka")
        for size in sorted(set(args.sizes) | set(rss_sizes)):
            point = {"preset": preset, "size": size, "tile": args.tile, "methods": {}}
            for method in args.methods:
                if method.startswith("diffusers") and not diffusers_ok:
                    continue
                row = count_case(preset, size, args.tile, method, args.dtype) if size in args.sizes else {}
                if size in rss_sizes and not (method.startswith("diffusers") and args.dtype != "fp32"):
                    row |= _rss_case(args, preset, size, method)
                point["methods"][method] = row
                gib = {k: round(v / 2**30, 2) for k, v in row.items()
                       if k in ("counted_peak_bytes", "counted_state_bytes", "peak_bytes", "added_bytes")}
                print(f"{preset} {size} {method}: GiB {gib}" + (f", {row['one_decode_s']} s" if "one_decode_s" in row
                      else "") + (f" {row['error']}" if "error" in row else ""), file=sys.stderr, flush=True)
            full = point["methods"].get("full", {})
            for method, row in point["methods"].items():
                for key in ("added_bytes", "peak_bytes", "counted_peak_bytes"):
                    if method != "full" and key in row and full.get(key):
                        row[f"{key}_vs_full"] = row[key] / full[key]
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
