"""Seeded diffusers reference VAEs matching our decoder presets (the parity oracle)."""
from __future__ import annotations

import torch
from diffusers import AsymmetricAutoencoderKL, AutoencoderKL

from asymvq import PRESETS

# Encoder side of the reference models: never exercised by decode, so keep it minimal.
_TINY_ENCODER = dict(down_block_types=["DownEncoderBlock2D"] * 4, layers_per_down_block=1)


def diffusers_reference(preset: str, seed: int = 0):
    """A diffusers VAE whose decoder has the preset's architecture, seeded random weights, eval mode."""
    cfg = PRESETS[preset]
    torch.manual_seed(seed)
    ch = list(cfg.block_out_channels)
    if cfg.condition is None:
        model = AutoencoderKL(
            down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
            block_out_channels=ch, layers_per_block=cfg.layers_per_block, norm_num_groups=cfg.norm_num_groups,
        )
    else:
        model = AsymmetricAutoencoderKL(
            **_TINY_ENCODER, down_block_out_channels=[cfg.norm_num_groups] * 4,
            up_block_types=["UpDecoderBlock2D"] * 4, up_block_out_channels=ch,
            layers_per_up_block=cfg.layers_per_block, norm_num_groups=cfg.norm_num_groups,
        )
    return model.eval()


def random_inputs(batch: int = 2, h: int = 3, w: int = 5, seed: int = 1, hole_fraction: float = 0.5):
    """latents (VAE space), unmasked image in [-1, 1], binary mask (1 = hole) at a non-square size."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, 4, h, w, generator=g)
    image = torch.rand(batch, 3, 8 * h, 8 * w, generator=g) * 2 - 1
    mask = (torch.rand(batch, 1, 8 * h, 8 * w, generator=g) < hole_fraction).float()
    return z, image, mask
