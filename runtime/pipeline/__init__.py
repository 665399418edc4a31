"""The orchestration room: an ``InpaintPipeline`` over ``{component: Engine}`` and everything it runs on.

``inpaint_pipeline`` (the pipeline: denoise, then decode), ``stages`` (the engine seam and its timing
spans), ``parts`` (what a pipeline is built from, per kind of source), ``source`` (``PipelineSource``:
the one value the front ends turn their options into), ``schedulers``, ``decode_modes`` (tiled and
region decoding), ``images`` and ``latents_io`` (inputs and outputs), ``inpaint_run`` (one run to
images and Pre_error), ``steps`` (what the step loop's ``on_step`` hook is given), ``preservation``
(Pre_error) and ``checks`` (argument checks, written once); the other
families: ``flux_fill`` (FLUX.1 Fill), ``sdxl_inpaint`` (SDXL), ``family_base`` (what they share) and ``families``
(which family a diffusers pipeline or folder is). The front ends (``asymvq.cli``,
``asymvq.serve``) use this room; nothing here imports them.

The names below are imported on first use, so ``import asymvq.pipeline.images`` stays light.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "InpaintPipeline": ".inpaint_pipeline",
    "InpaintOutput": ".inpaint_pipeline",
    "Denoised": ".inpaint_pipeline",
    "SCHEDULERS": ".schedulers",
    "SCHEDULER_ALIASES": ".schedulers",
    "make_scheduler": ".schedulers",
    "PipelineSource": ".source",
    "FluxFillInpaintPipeline": ".flux_fill",
    "SDXLInpaintPipeline": ".sdxl_inpaint",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value  # later look-ups skip this hook
        return value
    raise AttributeError(f"module 'asymvq.pipeline' has no attribute {name!r}")


def __dir__():
    return __all__
