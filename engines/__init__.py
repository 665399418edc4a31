"""Engine formats behind one interface (see ``base.Engine``).

``load_engine_dir`` turns a directory written by ``asymvq export`` into ``{component: Engine}``
(ONNX Runtime, TensorRT, AOTInductor, or torch rebuilt from the recorded source).
"""
from .base import COMPONENT_IO, Engine
from .directory import BACKENDS, load_engine_dir, load_scheduler_config, load_tokenizer

__all__ = ["BACKENDS", "COMPONENT_IO", "Engine", "load_engine_dir", "load_scheduler_config", "load_tokenizer"]
