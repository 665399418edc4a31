"""Tiny SD pieces for the runtime tests: seeded, random, no files (a unique module name: conftest.py is not importable)."""
from __future__ import annotations

import numpy as np
import torch

TINY_VAE = dict(
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    down_block_out_channels=(16, 32, 64, 64), up_block_out_channels=(16, 32, 64, 64),
    layers_per_down_block=1, layers_per_up_block=1, norm_num_groups=8,
)


def tiny_asymmetric_vae(seed: int = 1):
    from diffusers import AsymmetricAutoencoderKL

    torch.manual_seed(seed)
    return AsymmetricAutoencoderKL(**TINY_VAE).eval()


def diffusers_pipeline(kind: str = "inpaint", seed: int = 0):
    """diffusers' own SD (inpainting) pipeline over tiny random networks and an asymmetric VAE: the oracle."""
    from diffusers import DDIMScheduler, StableDiffusionInpaintPipeline, StableDiffusionPipeline

    from asymvq.models import sd_networks as sd

    cls = StableDiffusionInpaintPipeline if kind == "inpaint" else StableDiffusionPipeline
    pipe = cls(
        vae=tiny_asymmetric_vae(), text_encoder=sd.build_text_encoder("tiny", seed=seed),
        tokenizer=sd.build_tokenizer("tiny"),
        unet=sd.build_unet("tiny", in_channels=9 if kind == "inpaint" else 4, seed=seed),
        scheduler=DDIMScheduler.from_config(sd.SCHEDULER_CONFIG), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def image_and_mask(size: int = 64, seed: int = 0, batch: int | None = None):
    """float numpy image in [0, 1] (H, W, 3) and a binary float mask (H, W) with a random hole pattern."""
    rs = np.random.RandomState(seed)
    lead = () if batch is None else (batch,)
    image = rs.rand(*lead, size, size, 3).astype(np.float32)
    mask = (rs.rand(*lead, size, size) > 0.5).astype(np.float32)
    return image, mask
