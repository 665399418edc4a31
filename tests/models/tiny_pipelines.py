"""Tiny seeded diffusers pipelines of the newer families (FLUX.1 Fill, SDXL inpainting), CPU-sized.

Their VAEs have our tiny decoder presets' topology (``tiny-flux``: 16 channels, FLUX's scale and
shift, no quant convs; the 4-channel one SDXL's scale), so asymvq decodes their latents. No text
encoders or tokenizers: the tests pass prompt embeddings, which both pipelines accept.
"""
from __future__ import annotations

import numpy as np
import PIL.Image
import torch
from diffusers import (
    AutoencoderKL, EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler, FluxFillPipeline, FluxTransformer2DModel,
    StableDiffusionXLInpaintPipeline, UNet2DConditionModel,
)

from asymvq import PRESETS

TEXT_LEN, FLUX_TEXT_DIM, POOLED_DIM, SDXL_TEXT_DIM = 8, 32, 32, 64


def _vae(preset: str, scaling_factor: float | None = None) -> AutoencoderKL:
    cfg = PRESETS[preset]
    return AutoencoderKL(
        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=list(cfg.block_out_channels), layers_per_block=cfg.layers_per_block,
        norm_num_groups=cfg.norm_num_groups, latent_channels=cfg.latent_channels,
        scaling_factor=scaling_factor or cfg.scaling_factor, shift_factor=cfg.shift_factor or None,
        use_quant_conv=cfg.post_quant_conv, use_post_quant_conv=cfg.post_quant_conv,
    ).eval()


def flux_fill_pipeline(seed: int = 0) -> FluxFillPipeline:
    torch.manual_seed(seed)
    # FLUX.1 Fill's transformer input: packed latents (64) + packed masked-image latents (64) + the mask
    # folded 8x8 per latent cell and 2x2 packed (256)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=384, out_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=FLUX_TEXT_DIM, pooled_projection_dim=POOLED_DIM, axes_dims_rope=[4, 4, 8],
        guidance_embeds=True,  # FLUX.1 Fill [dev] is guidance-distilled
    ).eval()
    return FluxFillPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=_vae("tiny-flux"), text_encoder=None,
                            tokenizer=None, text_encoder_2=None, tokenizer_2=None, transformer=transformer)


def sdxl_inpaint_pipeline(seed: int = 0, in_channels: int = 9) -> StableDiffusionXLInpaintPipeline:
    """``in_channels`` 9: SDXL's inpainting UNet; 4: the base UNet (diffusers blends masked latents)."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=in_channels, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=6 * 8 + POOLED_DIM, cross_attention_dim=SDXL_TEXT_DIM, norm_num_groups=8,
    ).eval()
    return StableDiffusionXLInpaintPipeline(
        vae=_vae("tiny", scaling_factor=PRESETS["sdxl"].scaling_factor), text_encoder=None, text_encoder_2=None,
        tokenizer=None, tokenizer_2=None, unet=unet, scheduler=EulerDiscreteScheduler(),
        requires_aesthetics_score=False, force_zeros_for_empty_prompt=True,
    )


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
