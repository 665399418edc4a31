"""Seeded diffusers reference VAEs matching our decoder presets (the parity oracle)."""
from __future__ import annotations

import re

import torch
from diffusers import AsymmetricAutoencoderKL, AutoencoderKL

from asymvq import PRESETS

# Encoder side of the reference models: never exercised by decode, so keep it minimal.
_TINY_ENCODER = dict(down_block_types=["DownEncoderBlock2D"] * 4, layers_per_down_block=1)


def diffusers_reference(preset: str, seed: int = 0):
    """A diffusers VAE whose decoder has the preset's architecture, seeded random weights, eval mode.

    For ASUKA's presets (no diffusers class) it is the plain FLUX-style AutoencoderKL its main path is."""
    cfg = PRESETS[preset]
    torch.manual_seed(seed)
    ch = list(cfg.block_out_channels)
    if cfg.condition in (None, "asuka"):
        model = AutoencoderKL(
            down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
            block_out_channels=ch, layers_per_block=cfg.layers_per_block, norm_num_groups=cfg.norm_num_groups,
            latent_channels=cfg.latent_channels, scaling_factor=cfg.scaling_factor,
            shift_factor=cfg.shift_factor or None, use_quant_conv=cfg.post_quant_conv,
            use_post_quant_conv=cfg.post_quant_conv,
        )
    else:
        model = AsymmetricAutoencoderKL(
            **_TINY_ENCODER, down_block_out_channels=[cfg.norm_num_groups] * 4,
            up_block_types=["UpDecoderBlock2D"] * 4, up_block_out_channels=ch,
            layers_per_up_block=cfg.layers_per_block, norm_num_groups=cfg.norm_num_groups,
        )
    return model.eval()


def random_inputs(batch: int = 2, h: int = 3, w: int = 5, seed: int = 1, hole_fraction: float = 0.5,
                  channels: int = 4):
    """latents (VAE space), unmasked image in [-1, 1], binary mask (1 = hole) at a non-square size."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, channels, h, w, generator=g)
    image = torch.rand(batch, 3, 8 * h, 8 * w, generator=g) * 2 - 1
    mask = (torch.rand(batch, 1, 8 * h, 8 * w, generator=g) < hole_fraction).float()
    return z, image, mask


def to_official_layout(diffusers_sd: dict) -> dict:
    """Invert diffusers' convert_asymmetric_vqgan_to_diffusers.py mapping (decoder side)."""
    rules = [
        (r"^decoder\.condition_encoder\.", "decoder.encoder."),
        (r"\.conv_norm_out\.", ".norm_out."),
        (r"\.up_blocks\.(\d)\.", lambda m: f".up.{3 - int(m.group(1))}."),
        (r"\.upsamplers\.0\.", ".upsample."),
        (r"\.conv_shortcut\.", ".nin_shortcut."),
        (r"mid_block\.resnets\.0\.", "mid.block_1."),
        (r"mid_block\.resnets\.1\.", "mid.block_2."),
        (r"\.resnets\.", ".block."),
        (r"mid_block\.attentions\.0\.to_q\.", "mid.attn_1.q."),
        (r"mid_block\.attentions\.0\.to_k\.", "mid.attn_1.k."),
        (r"mid_block\.attentions\.0\.to_v\.", "mid.attn_1.v."),
        (r"mid_block\.attentions\.0\.to_out\.0\.", "mid.attn_1.proj_out."),
        (r"mid_block\.attentions\.0\.group_norm\.", "mid.attn_1.norm."),
    ]
    out = {}
    for k, v in diffusers_sd.items():
        if not k.startswith("decoder."):
            out[k] = v  # encoder.* and quant convs: kept, a real checkpoint has them
            continue
        new = k
        for pattern, repl in rules:
            new = re.sub(pattern, repl, new)
        if ".attn_1." in new and new.endswith(".weight") and v.ndim == 2:
            v = v[:, :, None, None]  # LDM stores q/k/v/proj_out as 1x1 convs
        out[new] = v
    return out
