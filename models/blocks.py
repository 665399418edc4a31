"""Building blocks of the SD / asymmetric VAE decoder (diffusers' layout and names).

Parameter names match diffusers' ``Decoder`` / ``MaskConditionDecoder`` so that a diffusers
state dict loads as is; numerics match them op for op (tests/test_decoder_parity.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .ops import TORCH_OPS, TorchOps, active_ops

EPS = 1e-6  # GroupNorm eps of every decoder norm (LDM / diffusers)


class _UsesOps(nn.Module):
    """A module that calls the decoder's swappable op table (set by the decoder; a per-call
    ``ops.ops_override`` takes precedence without changing it)."""

    _ops: TorchOps = TORCH_OPS

    @property
    def ops(self) -> TorchOps:
        return active_ops(self._ops)

    @ops.setter
    def ops(self, table: TorchOps) -> None:
        self._ops = table


class ResnetBlock(_UsesOps):
    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=EPS)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, cout, eps=EPS)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.ops.group_norm_silu(x, self.norm1))
        h = self.conv2(self.ops.group_norm_silu(h, self.norm2))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return x + h


class SelfAttention(nn.Module):
    """Single-head spatial self-attention of the mid block (GroupNorm, q/k/v, out proj, residual)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, channels, eps=EPS)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = self.group_norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        q, k, v = (proj(t).unsqueeze(1) for proj in (self.to_q, self.to_k, self.to_v))
        a = F.scaled_dot_product_attention(q, k, v).squeeze(1)
        a = self.to_out[0](a)
        # Operand order as in diffusers: the sum inherits the attention output's memory layout,
        # which selects the same conv algorithms downstream (bitwise parity on the CPU).
        return a.transpose(1, 2).reshape(b, c, h, w) + x


class MidBlock(nn.Module):
    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, groups) for _ in range(2)])
        self.attentions = nn.ModuleList([SelfAttention(channels, groups)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        x = self.attentions[0](x)
        return self.resnets[1](x)


class Upsample(nn.Module):
    """Nearest 2x then 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UpBlock(nn.Module):
    def __init__(self, cin: int, cout: int, num_layers: int, groups: int, upsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock(cin if i == 0 else cout, cout, groups) for i in range(num_layers)]
        )
        self.upsamplers = nn.ModuleList([Upsample(cout)]) if upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for r in self.resnets:
            x = r(x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x
