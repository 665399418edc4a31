"""What the CPU benchmarks share: the PSNR they report and the load average they record.

Imported by the scripts in this folder (``python bench/<name>.py`` puts it on the path).
"""
from __future__ import annotations

import math
import os

import torch


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
    import time

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
