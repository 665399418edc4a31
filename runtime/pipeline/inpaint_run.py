"""One inpainting run, from PIL source and mask to output images and Pre_error.

Shared by ``asymvq inpaint``, the HTTP server (``asymvq.serve.server``) and the Ray Serve decode stage
so that all give the same pixels and the same Pre_error for the same inputs and seed: the seeded CPU
generator, the decoded image's way to PIL and the Pre_error live here and nowhere else. Each request's
source is prepared once (by ``denoise``: ``Denoised.image`` and ``.mask`` are what Pre_error compares
with) and the image goes from the decoder's [-1, 1] to PIL directly, with no [0, 1] round trip.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .images import postprocess
from .job_rules import check_negative_prompt, check_scheduler
from .preservation import preservation_error


@dataclass
class InpaintRun:
    images: list  # PIL images, one per output
    pre_error: float  # the paper's Pre_error, mean over the outputs, 0-255 units; NaN when the mask keeps nothing


def check_same_size(source, hole, mask_arg: str = "mask") -> None:
    """A mask of another size would be resized silently by diffusers' processing: refuse it instead."""
    if source.size != hole.size:
        raise ValueError(f"{mask_arg}: expected the image's size {source.size[0]}x{source.size[1]} (WxH), "
                         f"got {hole.size[0]}x{hole.size[1]}")


def denoise_job(pipe, prompt, image, mask, *, negative_prompt=None, steps: int = 50, guidance=None,
                strength: float = 1.0, generator=None, scheduler: str | None = None, timer=None, progress: bool = False,
                cancel=None, on_step=None):
    """``pipe.denoise`` with a job's values, the one call for every family's pipeline (SD's ``InpaintPipeline``,
    SDXL's, FLUX.1 Fill's; what each takes: ``pipe.rules``, ``asymvq.pipeline.family_rules``). ``prompt``,
    ``image``, ``mask`` and ``negative_prompt`` may be lists (a batch); ``guidance`` a list, one per prompt,
    where the family takes that (else one value); None is the family's default guidance."""
    rules = pipe.rules
    guidance = rules.default_guidance if guidance is None else guidance
    if isinstance(guidance, list) and not rules.guidance_per_prompt:
        if len(set(guidance)) > 1:
            raise ValueError(f"guidance: expected one value per call for {rules.label}, got {sorted(set(guidance))}")
        guidance = guidance[0]
    negatives = negative_prompt if isinstance(negative_prompt, list) else [negative_prompt]
    if all(n is None or (n == "" and not rules.negative_prompt) for n in negatives):
        negative_prompt = None  # SDXL: none at all is zeros, not the empty prompt's embedding (diffusers' rule)
    else:
        for n in negatives:
            check_negative_prompt(n, family=rules.name)  # FLUX.1 Fill: none (it has no classifier-free guidance)
        if isinstance(negative_prompt, list):
            negative_prompt = [n or "" for n in negative_prompt]
    kwargs = dict(prompt=prompt, image=image, mask_image=mask, num_inference_steps=steps, guidance_scale=guidance,
                  strength=strength, generator=generator, timer=timer, progress=progress, cancel=cancel,
                  on_step=on_step)
    if rules.negative_prompt:
        kwargs["negative_prompt"] = negative_prompt
    check_scheduler(scheduler, family=rules.name)  # FLUX.1 Fill: its own only
    if rules.schedulers:
        kwargs["scheduler"] = scheduler
    return pipe.denoise(**kwargs)


def run_inpaint(pipe, source, hole, prompt: str, *, negative_prompt=None, steps: int = 50, guidance=None,
                strength: float = 1.0, seed: int = 0, scheduler: str | None = None, timer=None, progress: bool = False,
                mask_arg: str = "mask", decode_options: dict | None = None, cancel=None,
                on_step=None) -> InpaintRun:
    """Inpaint PIL ``source`` where PIL ``hole`` is white; noise from ``torch.Generator().manual_seed(seed)``.

    The generator is a CPU one whatever the device, so a seed gives the same noise on every machine
    (what ``InpaintPipeline`` callers get when they pass the same generator). The source is prepared
    once (by ``denoise``) and the decoded image stays in [-1, 1] until it becomes PIL. Any family's pipeline
    (``denoise_job``); ``guidance`` None is the family's default.
    """
    check_same_size(source, hole, mask_arg)
    denoised = denoise_job(pipe, prompt, source, hole, negative_prompt=negative_prompt, steps=steps, guidance=guidance,
                           strength=strength, generator=torch.Generator().manual_seed(seed), scheduler=scheduler,
                           timer=timer, progress=progress, cancel=cancel, on_step=on_step)
    return finish_run(pipe.decode(denoised, timer=timer, decode_options=decode_options), denoised)


def finish_run(sample: torch.Tensor, denoised) -> InpaintRun:
    """The decoder's output (B, 3, H, W) in [-1, 1] -> PIL images and Pre_error against the source and mask
    the pipeline prepared (``denoised.image`` / ``.mask``; also what the Ray Serve decode stage does with
    each job of a batch)."""
    pil = postprocess(sample, "pil")
    # Pre_error on the pixels the images hold (clamped to [-1, 1], before 8-bit rounding): how well the
    # kept region survived decoding.
    output = sample.float().cpu().clamp(-1.0, 1.0)
    errors = preservation_error(output, denoised.image.float().cpu(), denoised.mask.float().cpu())
    pre_error = float(errors.mean()) if errors.numel() else math.nan
    return InpaintRun(images=pil, pre_error=pre_error)
