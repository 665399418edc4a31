"""The partial-convolution ratio (NVIDIA PartialConv2d, single-channel mask), in plain torch.

The one definition, shared by the kernels' reference and the decoder's partial-conv branch
(``asymvq.models.condition``): ``ratio = kh*kw / (sum(M) + 1e-8) * clamp(sum(M), 0, 1)`` and the
updated mask ``clamp(sum(M), 0, 1)``, in fp32 because the 1e-8 guard underflows in fp16
(inf * 0 = NaN). Needs only torch, so the base install can import it without Triton.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def partial_conv_ratio(valid: torch.Tensor, kernel: int, stride: int, padding: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ratio, updated_mask) in fp32 for a (B, 1, H, W) 0/1 valid mask (1 = pixel to use)."""
    ones = torch.ones(1, 1, kernel, kernel, dtype=torch.float32, device=valid.device)
    window_sum = F.conv2d(valid.float(), ones, stride=stride, padding=padding)
    updated = torch.clamp(window_sum, 0.0, 1.0)
    return (kernel * kernel) / (window_sum + 1e-8) * updated, updated
