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
