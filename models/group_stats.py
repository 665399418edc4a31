"""GroupNorm statistics apart from the norm: moments merged over parts of an image, and the norm that takes them.

The decoder's GroupNorms normalise each (image, group) by its mean and variance over the whole image. The
tiled decode sees the image tile by tile and the region decode sees only a box, so both gather the
statistics themselves (``Moments``: count, mean and M2 per (batch, group) in float64, merged with Chan's
formula) and normalise with them (``norm_silu``): the tiled decode over a partition of the image (exact),
the region decode's ``region_stats="lowres"`` from the box and an estimate of the rest (``region_stats``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float32 for half types and float32 (as torch's GroupNorm), float64 for float64."""
    return torch.promote_types(x.dtype, torch.float32)


class Moments:
    """One norm input's (count, mean, M2) per (batch, group) in float64, merged part by part with Chan's formula."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, None, None

    def add(self, x: torch.Tensor, groups: int) -> None:
        """Merge in the elements of ``x`` (B, C, ...), C split into ``groups``."""
        xg = x.reshape(x.shape[0], groups, -1)
        n = xg.shape[-1]
        if n == 0:
            return
        var, mean = torch.var_mean(xg.to(compute_dtype(x)), dim=-1, correction=0)
        self.add_moments(n, mean.double(), var.double() * n)

    def add_moments(self, n, mean: torch.Tensor, m2: torch.Tensor) -> None:
        """Merge in ``n`` elements per (batch, group) of the given mean and M2 (sum of squared deviations)."""
        if n <= 0:
            return
        if self.mean is None:
            self.n, self.mean, self.m2 = n, mean, m2
            return
        na, tot = self.n, self.n + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / tot)
        self.m2 = self.m2 + m2 + delta * delta * (na * n / tot)
        self.n = tot

    def finish(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, biased variance), float64, (B, groups): what torch's GroupNorm computes."""
        return self.mean, self.m2 / self.n


def norm_silu(x: torch.Tensor, norm: torch.nn.GroupNorm, stats) -> torch.Tensor:
    """GroupNorm + SiLU of ``x`` with given (mean, var) per (batch, group); None: x's own."""
    b, c = x.shape[:2]
    xg = x.reshape(b, norm.num_groups, -1).to(compute_dtype(x))
    if stats is None:
        var, mean = torch.var_mean(xg, dim=-1, correction=0)
    else:
        mean, var = (t.to(x.device, xg.dtype) for t in stats)
    rstd = torch.rsqrt(var + norm.eps)
    y = ((xg - mean[..., None]) * rstd[..., None]).to(x.dtype).reshape(x.shape)
    y = y * norm.weight.view(1, c, 1, 1) + norm.bias.view(1, c, 1, 1)
    return F.silu(y)
