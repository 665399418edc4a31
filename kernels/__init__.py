"""Triton kernels: fused (partial) convolution with mask-guided blending, GroupNorm+SiLU.

One op per file: the Triton kernel(s), a host wrapper that validates its arguments, and the
plain-torch reference it is tested against. Kernels are defined at import for Triton's
compiler, or for its CPU interpreter when TRITON_INTERPRET=1 is set *before* this import.
"""
from ._common import can_run, interpreting
from .blend import blend, blend_reference
from .conv import ConvResult, conv2d_fused, conv2d_fused_reference
from .group_norm import group_norm_silu, group_norm_silu_reference

__all__ = [
    "ConvResult",
    "blend",
    "blend_reference",
    "can_run",
    "conv2d_fused",
    "conv2d_fused_reference",
    "group_norm_silu",
    "group_norm_silu_reference",
    "interpreting",
]
