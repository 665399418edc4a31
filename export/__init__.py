"""Export of the decoder and the SD networks to ONNX, into a self-describing engines directory.

TensorRT plans are built from these ONNX files by ``asymvq.engines.tensorrt_engine``.
"""
from .build import ALL, export_directory, parse_components
from .components import COMPONENTS, DEFAULT_SHAPES, Shapes, Source, TensorSpec, build_module, io_specs, parse_shapes
from .manifest import MANIFEST, ManifestError, read_manifest, verify_artifact
from .onnx_export import DEFAULT_OPSET, export_onnx

__all__ = [
    "ALL", "COMPONENTS", "DEFAULT_OPSET", "DEFAULT_SHAPES", "MANIFEST", "ManifestError", "Shapes", "Source",
    "TensorSpec", "build_module", "export_directory", "export_onnx", "io_specs", "parse_components",
    "parse_shapes", "read_manifest", "verify_artifact",
]
