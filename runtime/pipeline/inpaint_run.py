"""One inpainting run from decoded images to output images and Pre_error.

Shared by ``asymvq inpaint`` and the HTTP server (``asymvq.serve.server``) so that both give the
same pixels and the same Pre_error for the same inputs and seed: the seeded CPU generator,
the ``pt`` output and its conversion to PIL live here and nowhere else.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .images import postprocess, prepare_image_and_mask
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


def run_inpaint(pipe, source, hole, prompt: str, *, negative_prompt=None, steps: int = 50, guidance: float = 7.5,
                strength: float = 1.0, seed: int = 0, scheduler: str | None = None, timer=None, progress: bool = False,
                mask_arg: str = "mask", decode_options: dict | None = None) -> InpaintRun:
    """Inpaint PIL ``source`` where PIL ``hole`` is white; noise from ``torch.Generator().manual_seed(seed)``.

    The generator is a CPU one whatever the device, so a seed gives the same noise on every machine
    (what ``InpaintPipeline`` callers get when they pass the same generator).
    """
    check_same_size(source, hole, mask_arg)
    result = pipe(prompt, source, hole, negative_prompt=negative_prompt, num_inference_steps=steps,
                  guidance_scale=guidance, strength=strength, generator=torch.Generator().manual_seed(seed),
                  output_type="pt", scheduler=scheduler, timer=timer, progress=progress, decode_options=decode_options)
    return finish_run(result.images, source, hole)


def finish_run(images, source, hole) -> InpaintRun:
    """The pipeline's ``pt`` output (B, 3, H, W) in [0, 1] -> PIL images and Pre_error against PIL ``source``/``hole``
    (also what the Ray Serve decode stage does with each job of a batch)."""
    pil = postprocess(images * 2 - 1, "pil")
    # Pre_error on the exact tensor the images come from: how well the kept region survived decoding.
    pixels, hole_t, _, _ = prepare_image_and_mask(source, hole, None, None)
    errors = preservation_error(images.float().cpu() * 2 - 1, pixels, hole_t)
    pre_error = float(errors.mean()) if errors.numel() else math.nan
    return InpaintRun(images=pil, pre_error=pre_error)
