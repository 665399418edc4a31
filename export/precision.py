"""fp16 export: half weights and activations, with the overflow-prone normalisations in fp32.

SD's VAE and decoder activations reach magnitudes whose squares overflow fp16 (black or
NaN images are the peers' most reported fp16 bug), and GroupNorm's statistics are exactly
such sums of squares. Each GroupNorm therefore upcasts its input, normalises in fp32
with fp32 affine weights, and casts back: in ONNX a Cast on each side of the norm, which
TensorRT and ONNX Runtime fuse cheaply. Everything else runs in fp16.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Fp32GroupNorm(nn.GroupNorm):
    """A GroupNorm that computes in fp32 whatever its input dtype, and returns the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, w, b, self.eps).to(x.dtype)


def to_fp16(module: nn.Module) -> nn.Module:
    """Convert ``module`` in place to fp16, GroupNorms kept fp32 (see module docstring)."""
    module.half()
    for m in module.modules():
        if type(m) is nn.GroupNorm:
            m.__class__ = Fp32GroupNorm  # same fields and state dict: only forward changes
            m.float()
    return module
