"""Triton kernels: fused (partial) convolution with mask-guided blending, GroupNorm+SiLU.

One op per file: the Triton kernel(s), a host wrapper that validates its arguments, and the
plain-torch reference it is tested against. Kernels are defined at import for Triton's
compiler, or for its CPU interpreter when TRITON_INTERPRET=1 is set *before* that import.

The names below are imported on first use: ``asymvq.kernels.partial_ratio`` (plain torch,
used by the models) must import without Triton, which is an optional extra. No submodule is
named like an exported function: importing a submodule sets it as an attribute of this package,
which would shadow the lazily imported function of the same name (``blend`` lives in
``mask_blend.py`` for that reason).
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "can_run": "._common", "interpreting": "._common",
    "blend": ".mask_blend", "blend_reference": ".mask_blend",
    "ConvResult": ".conv", "conv2d_fused": ".conv", "conv2d_fused_reference": ".conv",
    "group_norm_silu": ".group_norm", "group_norm_silu_reference": ".group_norm",
    "partial_conv_ratio": ".partial_ratio",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'asymvq.kernels' has no attribute {name!r}")
