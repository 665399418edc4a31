"""The decoder's op table by name: "torch" (reference) or "triton" (fused kernels)."""
from __future__ import annotations

from .ops import TORCH_OPS, TorchOps
from .triton_ops import make_triton_ops

KERNELS = ("torch", "triton")


def select_ops(kernels: str) -> TorchOps:
    """The op table for ``kernels``.

    "triton" needs the ``triton`` extra (a one-line ``MissingExtraError`` without it) and falls
    back to the reference, with a warning that says why, where Triton cannot run (no CUDA
    device and TRITON_INTERPRET unset).
    """
    if kernels not in KERNELS:
        raise ValueError(f"kernels must be one of {KERNELS}, got {kernels!r}")
    return TORCH_OPS if kernels == "torch" else make_triton_ops()
