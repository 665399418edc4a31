"""Graph clean-up after export: onnx-graphsurgeon dead-node removal and topological sort,
then polygraphy constant folding (ONNX Runtime evaluates the constant sub-graphs).

Folding needs the whole model serialised once, which protobuf caps at 2 GB; a larger
model (the fp32 SD UNet, 3.4 GB) is cleaned with its weights left in external data and is
not folded (``onnx_export`` decides; the exporter's own optimizer has folded most constants).
"""
from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs


def clean_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    graph = gs.import_onnx(model)
    graph.cleanup().toposort()
    return gs.export_onnx(graph, do_type_check=False)


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    from polygraphy.backend.onnx import fold_constants as polygraphy_fold
    from polygraphy.logger import G_LOGGER

    with G_LOGGER.verbosity(G_LOGGER.WARNING):  # its per-pass node counts are noise in a CLI
        return polygraphy_fold(model, allow_onnxruntime_shape_inference=True, error_ok=False)


def cleanup(model: onnx.ModelProto) -> onnx.ModelProto:
    return clean_graph(fold_constants(clean_graph(model)))
