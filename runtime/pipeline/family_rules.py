"""What a job may ask of each pipeline family, written once for the pipelines, ``asymvq inpaint`` and the servers.

Standard library only (the HTTP form's fuzzers import it through ``asymvq.pipeline.job_rules``). The family
of a pipeline is ``pipe.rules`` (``InpaintPipeline``, ``SDXLInpaintPipeline``, ``FluxFillInpaintPipeline``);
of a source before anything loads, ``PipelineSource.family`` (a preset's name, a folder's configs).

Where the families differ for a job:
- image sizes: multiples of 8 (the VAE) for SD and SDXL, of 16 for FLUX.1 Fill (8 x its 2x2 token packing);
- ``guidance``: classifier-free guidance for SD and SDXL (0..50, default 7.5), FLUX's distilled guidance
  embedding for FLUX.1 Fill (0..100, default 30 as diffusers' ``FluxFillPipeline``);
- ``negative_prompt`` and ``scheduler``: FLUX.1 Fill has no classifier-free guidance and runs its
  flow-matching scheduler only, so a job naming either is refused rather than silently ignored;
- a batch of jobs with different guidance values: SD takes one value per prompt; SDXL and FLUX one per call.
"""
from __future__ import annotations

from dataclasses import dataclass

# the names of asymvq.models.components (the manifest's "family"), repeated here to keep this module free of
# torch (asymvq.models imports it); tests/test_architecture.py checks the two agree
SD, SDXL, FLUX_FILL = "sd", "sdxl", "flux-fill"
FAMILIES = (SD, SDXL, FLUX_FILL)


@dataclass(frozen=True)
class FamilyRules:
    name: str  # one of FAMILIES
    label: str  # what messages call it
    size_multiple: int  # image height and width: multiples of this
    guidance_range: tuple[float, float]
    default_guidance: float
    negative_prompt: bool  # takes a negative prompt (classifier-free guidance)
    schedulers: bool  # takes one of asymvq's scheduler names
    guidance_per_prompt: bool  # one call may mix guidance values (a list, one per prompt)


RULES = {
    SD: FamilyRules(SD, "SD 1.x", 8, (0.0, 50.0), 7.5, True, True, True),
    SDXL: FamilyRules(SDXL, "SDXL", 8, (0.0, 50.0), 7.5, True, True, False),
    FLUX_FILL: FamilyRules(FLUX_FILL, "FLUX.1 Fill", 16, (0.0, 100.0), 30.0, False, False, False),
}


def family_rules(family: str | None) -> FamilyRules:
    """The rules of ``family`` (None: SD's)."""
    if family is None:
        return RULES[SD]
    if family not in RULES:
        raise ValueError(f"family: expected one of {list(FAMILIES)}, got {family!r}")
    return RULES[family]


def preset_family(preset: str) -> str:
    """The family of a pipeline preset name (tiny, sd15, tiny-sdxl, sdxl, tiny-flux-fill, flux-fill)."""
    return FLUX_FILL if "flux" in preset else SDXL if "sdxl" in preset else SD
