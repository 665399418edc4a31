"""torch -> ONNX for one component, with dynamic batch/height/width.

Exporter: ``torch.onnx.export(dynamo=True)`` (torch.export + onnxscript), the default and
maintained path since torch 2.9. Both it and the legacy TorchScript exporter (still in
torch 2.13, deprecated) give dynamic B/H/W and 1e-5 parity on our decoder and the tiny
UNet; we use the dynamo one because the TorchScript tracer bakes diffusers' Python-level
shape checks (``Converting a tensor to a Python boolean``) into the graph as constants,
while torch.export records them as guards, and it names derived dims (image = ``8*h``),
which the runtime's shape checks and TensorRT's profiles use. Its cost: tracing is
slower (about 20 s for the tiny decoder, 40 s for the tiny UNet on 2 CPU cores).
"""
from __future__ import annotations

import logging
from pathlib import Path

import onnx
import torch
from torch import nn

from .cleanup import clean_graph, cleanup
from .components import TensorSpec, example_inputs, split_dim
from .precision import to_fp16

log = logging.getLogger(__name__)

DEFAULT_OPSET = 18  # >= 17 as asked; ONNX Runtime 1.31 and TensorRT 10 both run opset 18
# Weights at or above this go to external data: the graph itself needs room under protobuf's 2 GB.
EXTERNAL_DATA_BYTES = 1_900_000_000


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


def export_onnx(
    module: nn.Module,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    path: str | Path,
    *,
    precision: str = "fp32",
    multiple: int = 1,
    opset: int = DEFAULT_OPSET,
) -> list[Path]:
    """Export ``module`` to ``path`` (cleaned, constants folded); returns the files written.

    Models over 2 GB (the fp32 SD UNet) are written with their weights in external data next
    to the graph, cleaned but not constant-folded.
    """
    if opset < 17:
        raise ValueError(f"opset must be 17 or newer, got {opset}")
    path = Path(path)
    module, args, axes = prepare_trace(module, inputs, precision, multiple)
    program = torch.onnx.export(
        module,
        args,
        input_names=[s.name for s in inputs],
        output_names=[s.name for s in outputs],
        dynamic_shapes=axes,  # positional: any forward arg names
        opset_version=opset,
        dynamo=True,
        verbose=False,
    )
    data = path.with_name(path.name + ".data")
    for stale in (path, data):
        stale.unlink(missing_ok=True)
    if _weights_bytes(module) < EXTERNAL_DATA_BYTES:
        model = cleanup(program.model_proto)
        _name_dims(model, inputs + outputs)
        onnx.save_model(model, str(path))
        files = [path]
    else:
        # Over protobuf's 2 GB: the exporter writes the weights to <name>.data; the graph is
        # then cleaned with the weights left on disk (folding would need them in one proto).
        program.save(str(path), external_data=True)
        model = clean_graph(onnx.load(str(path), load_external_data=False))
        _name_dims(model, inputs + outputs)
        onnx.save_model(model, str(path))
        files = [path] + sorted({path.with_name(loc) for loc in _external_locations(model)})
        log.warning("%s: over 2 GB, weights in %s, constant folding skipped", path.name, [f.name for f in files[1:]])
    log.info("exported %s (%s)", path, precision)
    return files


def _weights_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def _external_locations(model: onnx.ModelProto) -> set[str]:
    return {entry.value for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
            for entry in t.external_data if entry.key == "location"}


def _name_dims(model: onnx.ModelProto, specs: list[TensorSpec]) -> None:
    """Give graph inputs/outputs our symbolic dim names (the exporter's may be s0, s1...)."""
    by_name = {s.name: s for s in specs}
    for vi in list(model.graph.input) + list(model.graph.output):
        s = by_name.get(vi.name)
        if s is None:
            continue
        for d, dim in zip(s.dims, vi.type.tensor_type.shape.dim):
            if isinstance(d, str) and not dim.HasField("dim_value"):
                dim.dim_param = d
