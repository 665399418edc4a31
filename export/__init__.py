"""Export of the decoder and the SD networks into a self-describing engines directory.

Writes artifacts that meet ``asymvq.engines.contract`` and a ``manifest.json`` that
``asymvq.engines`` reads. ONNX needs the ``onnx`` extra (imported when used); AOTInductor
needs only torch. TensorRT plans are built from the ONNX by ``asymvq.engines.tensorrt_engine``.
"""
from asymvq.engines.contract import COMPONENTS, TensorSpec
from asymvq.engines.manifest import MANIFEST, ManifestError, read_manifest, verify_artifact
from asymvq.models.sources import Source, build_module

from .build import export_directory, parse_components
from .specs import DEFAULT_OPSET, DEFAULT_SHAPES, Shapes, io_specs, parse_shapes

__all__ = [
    "COMPONENTS", "DEFAULT_OPSET", "DEFAULT_SHAPES", "MANIFEST", "ManifestError", "Shapes", "Source",
    "TensorSpec", "build_module", "export_directory", "io_specs", "parse_components", "parse_shapes",
    "read_manifest", "verify_artifact",
]
