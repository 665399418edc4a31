"""The handful of operations the decoder routes through a swappable table.

``TorchOps`` is the reference path (plain PyTorch, what diffusers computes).
The Triton path (``asymvq.models.triton_ops``) overrides the same methods with fused
kernels; the decoder's module tree and weights stay the same, so both load one checkpoint.
``asymvq.models.op_select`` picks the table by name.

``ops_override(table)`` swaps the table for the calls made inside a ``with`` block, in this
thread / context only (a ``ContextVar``): the tiled decode runs the decoder's one forward under
a table of its own without mutating the live decoder, so a concurrent decode is unaffected.
Compiled and exported graphs never see an override (``torch.compiler.is_compiling()``): they
trace the decoder's own table.
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch import nn

from .condition import LAYER_STRIDE


class TorchOps:
    name = "torch"

    def group_norm_silu(self, x: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
        return F.silu(norm(x))

    def blend(self, h: torch.Tensor, f: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """Mask-guided blend ``h*m + f*(1-m)`` for a 0/1 mask ``m`` already at h's size.

        Written as the reference formula (not ``where``) so that it is bit-exact with
        the official code and exports to plain Mul/Add.
        """
        return h * m + f * (1 - m)

    def condition_features(self, encoder, masked_image: torch.Tensor, valid: torch.Tensor) -> list[torch.Tensor]:
        """The five pre-ReLU condition features L0..L4 (see ``ConditionEncoder``)."""
        return encoder.reference_forward(masked_image, valid)

    def condition_blend(self, encoder, image: torch.Tensor, mask: torch.Tensor, h: torch.Tensor):
        """Run the condition branch on ``image`` under the hole ``mask`` and blend L4 into ``h``.

        ``h`` is the decoder at H/8 (the input of the first up level). Returns ``(h, feats)``
        with ``feats`` the pre-ReLU features L0..L3 still to blend. One op, so that a fused
        path can blend L4 in its last conv's epilogue and mask the image as it loads it.
        """
        x, valid = encoder.branch_input(image, mask)
        feats = self.condition_features(encoder, x, valid)
        return self.blend(h, feats[-1], encoder.level_mask(mask, LAYER_STRIDE[-1])), feats[:-1]

    def blend_group_norm_silu(self, h: torch.Tensor, f: torch.Tensor, m: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
        """``group_norm_silu(blend(h, f, m), norm)`` for a blend used by nothing but the norm."""
        return self.group_norm_silu(self.blend(h, f, m), norm)


TORCH_OPS = TorchOps()

_OVERRIDE: ContextVar["TorchOps | None"] = ContextVar("asymvq_ops_override", default=None)


@contextmanager
def ops_override(ops: TorchOps):
    """Route every ``_UsesOps`` module's ops through ``ops`` inside the block (this context only)."""
    token = _OVERRIDE.set(ops)
    try:
        yield ops
    finally:
        _OVERRIDE.reset(token)


def active_ops(own: TorchOps) -> TorchOps:
    """The table a module with ``own`` uses now: the context's override, else its own."""
    if torch.compiler.is_compiling():  # dynamo cannot read a ContextVar; graphs take the own table
        return own
    override = _OVERRIDE.get()
    return own if override is None else override
