"""asymvq: inference runtime for SD inpainting with the Asymmetric VQGAN decoder.

Public names are imported on first use, so that ``asymvq --help`` and light imports do not
pay for torch and diffusers.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "AsymmetricDecoder": ".models",
    "DecoderConfig": ".models",
    "PRESETS": ".models",
    "preset_config": ".models",
    "prepare_mask": ".models",
    "CheckpointError": ".models.checkpoints",
    "load_decoder": ".models.checkpoints",
    "save_decoder": ".models.checkpoints",
    "MissingExtraError": ".models.extras",
    "unpack_flux_latents": ".models.flux_packing",
    "preservation_error": ".pipeline.preservation",
    "InpaintPipeline": ".pipeline.inpaint_pipeline",
}
__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value  # later look-ups skip this hook
        return value
    raise AttributeError(f"module 'asymvq' has no attribute {name!r}")


def __dir__():
    return __all__
