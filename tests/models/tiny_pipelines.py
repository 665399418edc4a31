"""Tiny seeded diffusers pipelines of the newer families (FLUX.1 Fill, SDXL inpainting), CPU-sized.

The builders are asymvq's presets (``asymvq.models.family_networks``: ``tiny-flux-fill``, ``tiny-sdxl``);
here they come without text encoders by default (the tests pass prompt embeddings, which both pipelines
accept), or with them (``text_encoders=True``: tiny CLIP / CLIP with projection / T5 and in-memory
tokenizers). Their VAEs have our tiny decoder presets' topology (``tiny-flux``: 16 channels, FLUX's scale
and shift, no quant convs; the 4-channel one SDXL's scale), so asymvq decodes their latents.
"""
from __future__ import annotations

import numpy as np
import PIL.Image
import torch
from diffusers import FluxFillPipeline, StableDiffusionXLInpaintPipeline

from asymvq.models import family_networks

TEXT_LEN, FLUX_TEXT_DIM, POOLED_DIM, SDXL_TEXT_DIM = 8, 32, 32, 64


def flux_fill_pipeline(seed: int = 0, *, text_encoders: bool = False) -> FluxFillPipeline:
    return family_networks.flux_fill_pipeline("tiny-flux-fill", seed=seed, text_encoders=text_encoders)


def sdxl_inpaint_pipeline(seed: int = 0, in_channels: int = 9, *,
                          text_encoders: bool = False) -> StableDiffusionXLInpaintPipeline:
    """``in_channels`` 9: SDXL's inpainting UNet; 4: the base UNet (diffusers blends masked latents)."""
    return family_networks.sdxl_inpaint_pipeline("tiny-sdxl", seed=seed, in_channels=in_channels,
                                                 text_encoders=text_encoders)


def prompt_embeddings(text_dim: int, seed: int = 2, batch: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(prompt_embeds=torch.randn(batch, TEXT_LEN, text_dim, generator=g),
                pooled_prompt_embeds=torch.randn(batch, POOLED_DIM, generator=g))


def image_and_mask(size: int | tuple[int, int] = 64, seed: int = 3):
    """(PIL image, PIL mask with white = repaint, image tensor in [-1, 1], mask tensor 1 = hole);
    ``size``: one side, or (height, width)."""
    hh, ww = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (hh, ww, 3), dtype=np.uint8)
    hole = np.zeros((hh, ww), dtype=np.uint8)
    hole[hh // 4: 3 * hh // 4, ww // 8: ww // 2] = 255
    image = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 127.5 - 1
    mask = torch.from_numpy(hole)[None, None].float() / 255
    return PIL.Image.fromarray(pixels), PIL.Image.fromarray(hole), image, mask
