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


def layout(t: torch.Tensor) -> torch.memory_format:
    """The memory format ``t`` (or the tensor it is a window of) is in on the CPU: channels-last for a bf16
    decoder there (``cpu_bf16``). Every tensor the tiled decode makes keeps it: a window in another layout
    costs oneDNN a reorder at every conv, and a GroupNorm a transposing copy. Elsewhere: contiguous (the
    layout the other devices' GroupNorm kernels take)."""
    cl = t.device.type in ("cpu", "meta") and t.dim() == 4 and t.shape[1] > 1 and t.stride(1) == 1
    return torch.channels_last if cl else torch.contiguous_format


def dense(t: torch.Tensor) -> torch.Tensor:
    """``t`` with the strides of its layout, exactly (a size-1 batch's stride too: GroupNorm checks them)."""
    fmt = layout(t)
    sizes = t.shape if fmt == torch.contiguous_format else (t.shape[0], *t.shape[2:], t.shape[1])
    strides, step = [], 1
    for n in reversed(sizes):
        strides.insert(0, step)
        step *= n
    if fmt == torch.channels_last:  # (N, H, W, C) strides back in (N, C, H, W) order
        strides = [strides[0], strides[3], strides[1], strides[2]]
    return t if t.stride() == tuple(strides) else t.clone(memory_format=fmt)


def group_moments(x: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, biased variance) per (batch, group), float32 for half types (as torch's GroupNorm)."""
    b, c = x.shape[:2]
    dt = compute_dtype(x)
    if x.device.type in ("cpu", "meta") and x.dim() >= 3:
        # torch's own GroupNorm kernel: one pass in x's layout, accumulated in float32 for half types (a
        # float32 weight makes its CPU kernel return float32 mean and rstd, as the full decode computes
        # them); with eps 0, rstd is 1/sqrt(var). Its normalised output is not used.
        one = torch.ones(c, dtype=dt, device=x.device)
        _, mean, rstd = torch.native_group_norm(dense(x), one, None, b, c, x[0, 0].numel(), groups, 0.0)
        return mean, rstd.to(dt).pow(-2)
    # elsewhere a float32 copy (not every device's GroupNorm kernel takes a float32 weight with half input)
    var, mean = torch.var_mean(x.reshape(b, groups, -1).to(dt), dim=-1, correction=0)
    return mean, var


class Moments:
    """One norm input's (count, mean, M2) per (batch, group) in float64, merged part by part with Chan's formula."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, None, None

    def add(self, x: torch.Tensor, groups: int) -> None:
        """Merge in the elements of ``x`` (B, C, ...), C split into ``groups``."""
        n = x[0, : x.shape[1] // groups].numel() if x.shape[0] else 0
        if n == 0:
            return
        mean, var = group_moments(x, groups)
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
    """GroupNorm + SiLU of ``x`` with given (mean, var) per (batch, group); None: x's own.

    Per image an inference batch norm with each channel's group statistics: the same arithmetic as torch's
    GroupNorm kernel (per channel ``a = weight * rstd``, ``b = bias - mean * a``, then ``x * a + b`` in
    float32 for half types, rounded once), in x's layout, without a float32 copy of the window."""
    x = dense(x)
    if stats is None:
        own = Moments()
        own.add(x, norm.num_groups)
        stats = own.finish()
    b, c = x.shape[:2]
    dt = compute_dtype(x)
    mean, var = (t.to(x.device, dt).repeat_interleave(c // norm.num_groups, dim=1) for t in stats)
    weight = norm.weight.to(dt) if norm.weight is not None else None
    bias = norm.bias.to(dt) if norm.bias is not None else None
    y = [F.batch_norm(x[i:i + 1], mean[i], var[i], weight, bias, False, 0.0, norm.eps) for i in range(b)]
    return F.silu(y[0] if b == 1 else torch.cat(y), inplace=True)
