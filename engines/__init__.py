"""The engine contract and every engine format behind it.

``contract`` names the components and their I/O; ``manifest`` reads and verifies an engines
directory; ``load_engine_dir`` turns one into ``{component: Engine}`` (ONNX Runtime,
TensorRT, AOTInductor, or torch rebuilt from the recorded source). Only torch is imported
here: each format's module is imported when a directory asks for it.
"""
from .contract import COMPONENT_IO, COMPONENTS, Engine, TensorSpec
from .loader import BACKENDS, load_engine_dir, load_scheduler_config, load_tokenizer
from .manifest import ManifestError, read_manifest, verify_artifact

__all__ = ["BACKENDS", "COMPONENTS", "COMPONENT_IO", "Engine", "ManifestError", "TensorSpec", "load_engine_dir",
           "load_scheduler_config", "load_tokenizer", "read_manifest", "verify_artifact"]
