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

from asymvq.engines.contract import TensorSpec

from .cleanup import clean_graph, cleanup
from .specs import DEFAULT_OPSET
from .trace import prepare_trace

log = logging.getLogger(__name__)

# Weights at or above this go to external data: the graph itself needs room under protobuf's 2 GB.
EXTERNAL_DATA_BYTES = 1_900_000_000


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
