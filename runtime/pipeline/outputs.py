"""What a pipeline call returns, and what its diffusion half hands to its decoder (every family's)."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class InpaintOutput:
    images: object  # list of PIL images, numpy (B, H, W, 3), torch (B, 3, H, W) or latents
    latents: torch.Tensor  # diffusion-space latents the decoder was fed (before spec.latent_space.to_vae)


@dataclass
class Denoised:
    """What the diffusion half hands to a decoder: latents plus the decoder's condition."""

    latents: torch.Tensor  # diffusion space, (B, latent channels, h, w)
    image: torch.Tensor | None  # unmasked source in [-1, 1], (B or 1, 3, 8h, 8w); None for text-to-image
    mask: torch.Tensor | None  # 0/1, 1 = hole, (B or 1, 1, 8h, 8w)
