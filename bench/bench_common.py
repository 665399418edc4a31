"""What the benchmarks share: the PSNR they report, the load average they record, their timing
loops (CUDA events or perf_counter; round-robin for CPU comparisons), the common arguments of the
CPU comparisons, the package versions and the CPU they write down.

Imported by the scripts in this folder (``python bench/<name>.py`` puts it on the path). Importing
it prints the CPU's model and the features that decide its default precision (``cpu_record``), so
every benchmark's log says which CPU made its numbers (the CPU changes between sessions).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import torch

from asymvq.models.cpu_features import cpu_features
from asymvq.models.environment import package_versions


def psnr(a: torch.Tensor, b: torch.Tensor, peak_to_peak: float) -> float:
    """PSNR in dB of ``a`` against ``b`` for signals spanning ``peak_to_peak`` (2 for [-1, 1], 1 for [0, 1])."""
    mse = float(((a.double() - b.double()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(peak_to_peak ** 2 / mse)


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages: other work on the machine, recorded beside each timing."""
    return [round(v, 2) for v in os.getloadavg()]


def time_ms(fn, device, warmup: int, repeats: int) -> dict:
    """min/median/p90 milliseconds of ``fn()`` after ``warmup`` calls: CUDA events on a GPU (one
    synchronisation per call), perf_counter on the CPU."""
    cuda = torch.device(device).type == "cuda"
    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize()
    ms = []
    for _ in range(max(repeats, 1)):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            ms.append(start.elapsed_time(end))
        else:
            t = time.perf_counter()
            fn()
            ms.append(1e3 * (time.perf_counter() - t))
    ms.sort()
    return {"min": ms[0], "median": ms[len(ms) // 2], "p90": ms[min(len(ms) - 1, int(0.9 * len(ms)))], "n": len(ms)}


def add_cpu_comparison_args(ap: argparse.ArgumentParser, out: Path) -> None:
    """The arguments every side-by-side CPU comparison takes (decoder_cpu.py, pipeline_cpu.py)."""
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=out)


def interleaved(runs: dict, warmup: int, repeats: int, log, *, before=None, measured=None) -> tuple[dict, dict]:
    """Time every ``runs[name]()`` round-robin under ``torch.inference_mode``, so that drift of a shared
    machine hits them alike: ``warmup`` rounds, then ``repeats`` measured ones.

    ``before(name)`` runs just before each timed call, ``measured(name, seconds)`` after each measured
    one (per-call bookkeeping such as a stage clock). Returns ``(seconds, outputs)``: the measured
    seconds per name and each run's last output.
    """
    times: dict[str, list[float]] = {n: [] for n in runs}
    outputs: dict = {}
    with torch.inference_mode():
        for i in range(warmup + repeats):
            for name, fn in runs.items():
                if before is not None:
                    before(name)
                t = time.perf_counter()
                outputs[name] = fn()
                dt = time.perf_counter() - t
                if i >= warmup:
                    times[name].append(dt)
                    if measured is not None:
                        measured(name, dt)
                log(f"{'warm-up' if i < warmup else 'run'} {i}: {name:<22} {dt:7.2f} s  (load {loadavg()[0]})")
    return times, outputs


def versions(*distributions: str) -> dict:
    """Installed versions of ``distributions`` (None for one not installed), for the result JSON."""
    return package_versions(distributions)


def diffusers_vae(config, seed: int):
    """The diffusers VAE whose decoder has ``config``'s shape and latent space, seeded: ``AsymmetricAutoencoderKL``
    for the Asymmetric VQGAN's branch (condition "conv"), else ``AutoencoderKL`` with ``config``'s channels,
    scale, shift and quant convs (the decoder without its branch: diffusers has no class for ASUKA's or the
    partial-conv one). Its encoder is minimal where decoding is all that runs."""
    from diffusers import AsymmetricAutoencoderKL, AutoencoderKL

    n = len(config.block_out_channels)
    torch.manual_seed(seed)
    if config.condition == "conv":
        return AsymmetricAutoencoderKL(
            down_block_types=["DownEncoderBlock2D"] * n, layers_per_down_block=1,
            down_block_out_channels=[config.norm_num_groups] * n, up_block_types=["UpDecoderBlock2D"] * n,
            up_block_out_channels=list(config.block_out_channels), layers_per_up_block=config.layers_per_block,
            norm_num_groups=config.norm_num_groups, latent_channels=config.latent_channels,
            scaling_factor=config.scaling_factor,
        ).eval()
    return AutoencoderKL(
        down_block_types=["DownEncoderBlock2D"] * n, up_block_types=["UpDecoderBlock2D"] * n,
        block_out_channels=list(config.block_out_channels), layers_per_block=config.layers_per_block,
        norm_num_groups=config.norm_num_groups, latent_channels=config.latent_channels,
        scaling_factor=config.scaling_factor, shift_factor=config.shift_factor or None,
        use_quant_conv=config.post_quant_conv, use_post_quant_conv=config.post_quant_conv,
    ).eval()


def cpu_record() -> dict:
    """This CPU for a result JSON: model, avx2/avx512f/avx512_bf16/amx_bf16/vnni, torch's capability and
    the default CPU dtype those features give (bf16 only with avx512_bf16 or AMX)."""
    return cpu_features().to_dict()


print(f"cpu: {cpu_features().describe()}", file=sys.stderr, flush=True)
