"""What both exporters trace: the module in its precision, example inputs at the opt shapes,
and ``torch.export`` dynamic dims derived from the specs' symbolic names.

Shared by the ONNX and AOTInductor exporters (and any format built on ``torch.export``), so
every format accepts exactly the shape ranges recorded in the manifest.
"""
from __future__ import annotations

import torch
from torch import nn

from asymvq.engines.contract import TensorSpec, split_dim

from .precision import to_fp16
from .specs import example_inputs


def example_specs(inputs: list[TensorSpec]) -> list[TensorSpec]:
    """``inputs`` with ``opt`` set to the shapes to trace: opt, except that no dynamic dim is
    traced at 1 (torch.export would specialise it); derived dims (``8*h``) follow their base."""
    example: dict[str, int] = {}
    for s in inputs:
        for d, lo, opt, hi in zip(s.dims, s.min, s.opt, s.max):
            if isinstance(d, str):
                k, base = split_dim(d)
                value = opt // k
                if hi > lo and value < 2 <= hi // k:
                    value = 2
                example.setdefault(base, value)
    return [TensorSpec(s.name, s.dtype, s.dims, s.min,
                       tuple(split_dim(d)[0] * example[split_dim(d)[1]] if isinstance(d, str) else o
                             for d, o in zip(s.dims, s.opt)), s.max)
            for s in inputs]


def dynamic_shapes(inputs: list[TensorSpec], multiple: int = 1) -> dict[str, dict]:
    """torch.export dims from the symbolic names of ``inputs``; static where min == max.

    ``multiple``: the latent ``h``/``w`` are declared as ``multiple * unit`` so that the
    exported graph is only valid where the network is (UNet down-sampling).
    """
    bounds: dict[str, tuple[int, int]] = {}
    for s in inputs:
        for d, lo, hi in zip(s.dims, s.min, s.max):
            if isinstance(d, str):
                k, d = split_dim(d)
                lo_, hi_ = bounds.get(d, (lo // k, hi // k))
                bounds[d] = (min(lo_, lo // k), max(hi_, hi // k))
    dims = {}
    for name, (lo, hi) in bounds.items():
        if lo == hi:
            dims[name] = None
        elif name in ("h", "w") and multiple > 1:
            dims[name] = multiple * torch.export.Dim(f"{name}_units", min=max(lo // multiple, 1), max=hi // multiple)
        else:
            dims[name] = torch.export.Dim(name, min=max(lo, 1), max=hi)
    out = {}
    for s in inputs:
        axes = {}
        for i, d in enumerate(s.dims):
            if not isinstance(d, str):
                continue
            k, base = split_dim(d)
            if dims[base] is not None:
                axes[i] = dims[base] if k == 1 else k * dims[base]
        out[s.name] = axes
    return out


def prepare_trace(module: nn.Module, inputs: list[TensorSpec], precision: str, multiple: int = 1):
    """(module in ``precision``, example args at the opt shapes, dynamic shapes), both exporters' input.

    fp16 keeps the overflow-prone GroupNorms in fp32 (``precision.to_fp16``).
    """
    if precision not in ("fp32", "fp16"):
        raise ValueError(f"precision must be 'fp32' or 'fp16', got {precision!r}")
    module = to_fp16(module) if precision == "fp16" else module.float()
    example = example_inputs(example_specs(inputs), "opt")
    axes = dynamic_shapes(inputs, multiple)
    return module.eval(), tuple(example[s.name] for s in inputs), tuple(axes[s.name] for s in inputs)
