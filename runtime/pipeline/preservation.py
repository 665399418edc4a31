"""Quality metrics the paper reports.

``preservation_error`` is the paper's Pre_error: the mean squared error between the output
and the source image on the region that was meant to be kept (mask = 0), in 8-bit pixel
units so that numbers compare with the paper (SD's decoder 588, asymmetric base 1.37 on COCOEE).
"""
from __future__ import annotations

import torch

from ..models.inputs import check_condition


def preservation_error(output: torch.Tensor, source: torch.Tensor, mask: torch.Tensor,
                       *, value_range: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    """Per-image MSE on unmasked pixels, in 0..255 units. Shape (B,).

    output, source: (B, 3, H, W) (source may have batch 1) in ``value_range``.
    mask: binary, 1 = hole (same rules as the decoder's mask). An image whose mask is all
    hole has no preserved region: its entry is NaN.
    """
    if output.shape[-2] % 8 or output.shape[-1] % 8:
        raise ValueError(f"output: expected H and W divisible by 8, got {tuple(output.shape)}")
    lo, hi = value_range
    if hi <= lo:
        raise ValueError(f"value_range: expected (low, high) with high > low, got {value_range}")
    # Reuse the decoder's image/mask validation (shapes, batch broadcast, binary mask).
    dummy_latents = output.new_zeros(output.shape[0], 4, output.shape[-2] // 8, output.shape[-1] // 8)
    to_unit = 2.0 / (hi - lo)
    src, m = check_condition(dummy_latents, ((source - lo) * to_unit - 1).clamp(-1, 1), mask)
    out = (output.float() - lo) * to_unit - 1
    keep = (1 - m.float()).expand(out.shape[0], 1, *out.shape[-2:])
    sq = (out - src.float()) ** 2 * keep  # (B, 3, H, W)
    n = keep.sum(dim=(1, 2, 3)) * out.shape[1]
    mse_unit = sq.sum(dim=(1, 2, 3)) / n  # in [-1, 1] units; NaN where nothing is kept
    return mse_unit * 127.5**2
