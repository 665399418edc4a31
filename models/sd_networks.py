"""Seeded, randomly initialised SD 1.5 networks (UNet, CLIP text encoder, VAE, tokenizer).

Nothing here downloads: the architectures are diffusers/transformers classes built from
configs written out below, and the weights are drawn from a seeded generator. ``tiny`` is
small enough for CPU tests; ``sd15`` has the real SD 1.5 (inpainting) shapes, for export,
profiling and benchmarks. Load real weights on top with ``load_state_dict`` when you have them.

These builders live with the models, below engines, export and the runtime, which all use them.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from .latent_space import SD as SD_LATENTS

SD_PRESETS = ("tiny", "sd15")

# Per preset: what the other components must agree on. ``decoder_preset`` is the
# AsymmetricDecoder preset whose width matches the VAE (see config.PRESETS); ``latent_space``
# the VAE's (SD 1.5's: 4 channels, 0.18215, no shift; 8 image pixels a latent pixel).
PRESET_SHAPES: dict[str, dict] = {
    "tiny": dict(
        latent_space=SD_LATENTS, image_size=64, latent_size=8,
        text_len=77, text_dim=32, vocab_size=1000, decoder_preset="tiny",
    ),
    "sd15": dict(
        latent_space=SD_LATENTS, image_size=512, latent_size=64,
        text_len=77, text_dim=768, vocab_size=49408, decoder_preset="base",
    ),
}

_UNET_CONFIGS = {
    "tiny": dict(
        block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32, attention_head_dim=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), norm_num_groups=8,
    ),
    # SD 1.5 (runwayml/stable-diffusion-inpainting unet/config.json), minus in_channels.
    "sd15": dict(
        block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=768,
        attention_head_dim=8, norm_num_groups=32,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    ),
}

_TEXT_CONFIGS = {
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, projection_dim=32),
    "sd15": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, projection_dim=768),
}

_VAE_CONFIGS = {
    "tiny": dict(block_out_channels=(16, 32, 64, 64), layers_per_block=1, norm_num_groups=8),
    "sd15": dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32),
}

SCHEDULER_FILE = "scheduler_config.json"  # diffusers' name for a scheduler's config, in a scheduler/ folder
# SD 1.5's scheduler_config.json (PNDM there; every diffusers scheduler accepts these keys).
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
)


def _check_preset(preset: str) -> dict:
    if preset not in PRESET_SHAPES:
        raise ValueError(f"preset must be one of {list(SD_PRESETS)}, got {preset!r}")
    return PRESET_SHAPES[preset]


def build_unet(preset: str, *, in_channels: int = 9, seed: int = 0):
    """diffusers UNet2DConditionModel; ``in_channels`` 9 = inpainting, 4 = text-to-image."""
    from diffusers import UNet2DConditionModel

    shapes = _check_preset(preset)
    if in_channels not in (4, 9):
        raise ValueError(f"in_channels must be 9 (inpainting) or 4 (text-to-image), got {in_channels!r}")
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=shapes["latent_size"], in_channels=in_channels, out_channels=shapes["latent_space"].channels,
        **_UNET_CONFIGS[preset],
    ).eval()


def build_text_encoder(preset: str, seed: int = 0):
    """transformers CLIPTextModel with the preset's width and vocabulary."""
    from transformers import CLIPTextConfig, CLIPTextModel

    shapes = _check_preset(preset)
    vocab = shapes["vocab_size"]
    config = CLIPTextConfig(
        vocab_size=vocab, max_position_embeddings=shapes["text_len"], hidden_act="quick_gelu",
        bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1, **_TEXT_CONFIGS[preset],
    )
    torch.manual_seed(seed)
    return CLIPTextModel(config).eval()


def build_vae(preset: str, seed: int = 0):
    """diffusers AutoencoderKL (SD layout: 4 levels, 8x down-sampling, 4 latent channels)."""
    from diffusers import AutoencoderKL

    shapes = _check_preset(preset)
    latents = shapes["latent_space"]
    n = len(_VAE_CONFIGS[preset]["block_out_channels"])
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latents.channels,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        sample_size=shapes["image_size"], scaling_factor=latents.scaling_factor, **_VAE_CONFIGS[preset],
    ).eval()


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP's printable stand-in for each of the 256 bytes, in byte order."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    extra = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


def tokenizer_files(preset: str) -> tuple[dict[str, int], list[str]]:
    """A byte-level CLIP vocabulary of exactly ``vocab_size`` entries and its merges.

    Every byte and every word-final byte is a token, so any text tokenizes; pair merges fill
    the vocabulary up to the text encoder's size, and the two special tokens take the last
    two ids (as in the real CLIP vocabulary: 49406 start, 49407 end).
    """
    size = _check_preset(preset)["vocab_size"]
    chars = _bytes_to_unicode()
    tokens = chars + [c + "</w>" for c in chars]
    merges: list[str] = []
    pairs = ((a, b) for a in chars for b in chars)
    while len(tokens) < size - 2:
        a, b = next(pairs)
        merges.append(f"{a} {b}")
        tokens.append(a + b)
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def build_tokenizer(preset: str):
    """transformers CLIPTokenizer over ``tokenizer_files(preset)``; 77 tokens, padded with end."""
    from transformers import CLIPTokenizer

    vocab, merges = tokenizer_files(preset)
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file, merges_file = Path(tmp, "vocab.json"), Path(tmp, "merges.txt")
        vocab_file.write_text(json.dumps(vocab), encoding="utf-8")
        merges_file.write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
        return CLIPTokenizer(
            vocab=str(vocab_file), merges=str(merges_file), model_max_length=PRESET_SHAPES[preset]["text_len"]
        )
