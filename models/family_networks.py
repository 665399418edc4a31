"""Seeded, randomly initialised diffusers pipelines of the newer families: FLUX.1 Fill and SDXL inpainting.

As ``sd_networks`` does for SD 1.5: nothing downloads, architectures are diffusers/transformers classes
built from configs written out here, weights come from a seeded generator. ``tiny-flux-fill`` and
``tiny-sdxl`` are CPU-test sized, with text encoders and tokenizers built in memory (CLIP's byte-level
vocabulary from ``sd_networks``, a T5 unigram vocabulary from the ``tokenizers`` library: no hub, no
sentencepiece). ``flux-fill`` and ``sdxl`` have the real shapes (FLUX.1-Fill-dev's transformer,
SDXL 1.0 inpainting's UNet); build them under ``torch.device("meta")`` to count without allocating.
Their VAEs have the decoder presets' topology (``tiny-flux`` / ``flux``, ``tiny`` / ``sdxl``), so
asymvq's decoders of those presets read their latents.
"""
from __future__ import annotations

import string

import torch

from .components import FLUX_FILL, SDXL
from .config import PRESETS
from .latent_space import VAE_SCALE_FACTOR
from .sd_networks import SCHEDULER_CONFIG
from .sd_networks import build_text_encoder as build_clip_text_encoder
from .sd_networks import build_tokenizer as build_clip_tokenizer

FAMILY_PRESETS = ("tiny-flux-fill", "flux-fill", "tiny-sdxl", "sdxl")
TINY_TEXT_LEN = 8  # T5 tokens in the tiny FLUX preset (FLUX.1: 512)

# Per preset: the decoder preset of its VAE, its image size and the networks' configs.
_FLUX = {
    "tiny-flux-fill": dict(vae="tiny-flux", image_size=64, transformer=dict(
        num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
        pooled_projection_dim=32, axes_dims_rope=(4, 4, 8)), t5=dict(d_model=32, d_ff=64, d_kv=8, num_heads=4,
                                                                      num_layers=2), text_len=TINY_TEXT_LEN),
    # black-forest-labs/FLUX.1-Fill-dev transformer/config.json
    "flux-fill": dict(vae="flux", image_size=1024, transformer=dict(
        num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
        joint_attention_dim=4096, pooled_projection_dim=768, axes_dims_rope=(16, 56, 56)),
        t5=dict(d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24, feed_forward_proj="gated-gelu"),
        text_len=512),
}
_SDXL = {
    "tiny-sdxl": dict(vae="tiny", image_size=64, unet=dict(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, attention_head_dim=(2, 4),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1), addition_time_embed_dim=8, cross_attention_dim=64, norm_num_groups=8,
        projection_class_embeddings_input_dim=6 * 8 + 32)),
    # diffusers/stable-diffusion-xl-1.0-inpainting-0.1 unet/config.json
    "sdxl": dict(vae="sdxl", image_size=1024, unet=dict(
        block_out_channels=(320, 640, 1280), layers_per_block=2, sample_size=128, attention_head_dim=(5, 10, 20),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10), addition_time_embed_dim=256, cross_attention_dim=2048,
        norm_num_groups=32, projection_class_embeddings_input_dim=2816)),
}
# CLIP ViT-L (both families' first encoder) and OpenCLIP ViT-bigG (SDXL's second), as transformers configs.
_CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
               projection_dim=768, vocab_size=49408, max_position_embeddings=77, hidden_act="quick_gelu")
_CLIP_G = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
               projection_dim=1280, vocab_size=49408, max_position_embeddings=77, hidden_act="gelu")
# FLUX's scheduler_config.json (FlowMatchEulerDiscreteScheduler with the resolution shift)
FLUX_SCHEDULER_CONFIG = dict(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096, max_shift=1.15,
                             num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True)


def _check(preset: str) -> None:
    if preset not in FAMILY_PRESETS:
        raise ValueError(f"preset must be one of {list(FAMILY_PRESETS)}, got {preset!r}")


def build_family_vae(decoder_preset: str, *, seed: int = 0):
    """diffusers AutoencoderKL with the topology, latent space and scale of a decoder preset."""
    from diffusers import AutoencoderKL

    cfg = PRESETS[decoder_preset]
    n = len(cfg.block_out_channels)
    torch.manual_seed(seed)
    return AutoencoderKL(
        down_block_types=["DownEncoderBlock2D"] * n, up_block_types=["UpDecoderBlock2D"] * n,
        block_out_channels=list(cfg.block_out_channels), layers_per_block=cfg.layers_per_block,
        norm_num_groups=cfg.norm_num_groups, latent_channels=cfg.latent_channels,
        scaling_factor=cfg.scaling_factor, shift_factor=cfg.shift_factor or None,
        use_quant_conv=cfg.post_quant_conv, use_post_quant_conv=cfg.post_quant_conv,
    ).eval()


def build_t5_tokenizer(max_length: int = TINY_TEXT_LEN):
    """A T5TokenizerFast over a small unigram vocabulary built in memory (every printable character and
    word-initial letter), ids 0/1/2 pad, end, unknown as T5's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -3.0) for c in string.printable if not c.isspace()]
    pieces += [("\u2581" + c, -2.5) for c in string.ascii_letters]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                           extra_ids=0, model_max_length=max_length)


def _clip(config: dict, projection: bool, seed: int):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    vocab = config["vocab_size"]
    torch.manual_seed(seed)
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return cls(CLIPTextConfig(bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1,
                              **config)).eval()


def text_encoders_of(preset: str, seed: int = 0) -> dict:
    """The CLIP encoder(s) and tokenizer(s) of the preset; tiny ones share sd_networks' tiny CLIP vocabulary."""
    tiny = preset.startswith("tiny")
    tokenizer = build_clip_tokenizer("tiny" if tiny else "sd15")
    clip_l = build_clip_text_encoder("tiny", seed=seed) if tiny else _clip(_CLIP_L, False, seed)
    if preset in _FLUX:
        return dict(text_encoder=clip_l, tokenizer=tokenizer)
    tiny_g = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  projection_dim=32, vocab_size=1000, max_position_embeddings=77, hidden_act="gelu")
    return dict(text_encoder=clip_l, tokenizer=tokenizer, tokenizer_2=tokenizer,
                text_encoder_2=_clip(tiny_g if tiny else _CLIP_G, True, seed + 1))


def build_flux_transformer(preset: str = "tiny-flux-fill", *, seed: int = 0):
    """FLUX.1 Fill's ``FluxTransformer2DModel``. Its input: packed latents (4*16), packed masked-image
    latents (4*16) and the mask folded 8x8 per latent cell then packed (4*64)."""
    from diffusers import FluxTransformer2DModel

    _check(preset)
    spec = _FLUX[preset]
    c = PRESETS[spec["vae"]].latent_channels
    torch.manual_seed(seed)
    return FluxTransformer2DModel(
        patch_size=1, in_channels=4 * (2 * c + VAE_SCALE_FACTOR ** 2), out_channels=4 * c,
        guidance_embeds=True, **spec["transformer"]).eval()  # FLUX.1 Fill [dev] is guidance-distilled


def build_t5(preset: str = "tiny-flux-fill", *, seed: int = 0):
    """FLUX's T5 encoder (T5-XXL's shapes for ``flux-fill``)."""
    from transformers import T5Config, T5EncoderModel

    _check(preset)
    torch.manual_seed(seed + 2)
    return T5EncoderModel(T5Config(vocab_size=32128 if preset == "flux-fill" else 160, **_FLUX[preset]["t5"])).eval()


def flux_text_len(preset: str) -> int:
    """T5 tokens of the preset (FLUX.1: 512)."""
    _check(preset)
    return _FLUX[preset]["text_len"]


def flux_fill_pipeline(preset: str = "tiny-flux-fill", *, seed: int = 0, text_encoders: bool = True):
    """A diffusers ``FluxFillPipeline`` of the preset (``build_flux_transformer``, its VAE, the text encoders)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxFillPipeline

    _check(preset)
    spec = _FLUX[preset]
    transformer = build_flux_transformer(preset, seed=seed)
    texts = dict(text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None)
    if text_encoders:
        texts.update(text_encoders_of(preset, seed))
        texts["text_encoder_2"] = build_t5(preset, seed=seed)
        texts["tokenizer_2"] = build_t5_tokenizer(spec["text_len"])
    return FluxFillPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER_CONFIG),
                            vae=family_vae(preset, seed=seed), transformer=transformer, **texts)


def build_sdxl_unet(preset: str = "tiny-sdxl", *, seed: int = 0, in_channels: int = 9):
    """SDXL's UNet: ``in_channels`` 9, the inpainting one; 4, the base one."""
    from diffusers import UNet2DConditionModel

    _check(preset)
    if in_channels not in (4, 9):
        raise ValueError(f"in_channels must be 9 (inpainting UNet) or 4 (base UNet), got {in_channels!r}")
    torch.manual_seed(seed)
    return UNet2DConditionModel(in_channels=in_channels, out_channels=4, use_linear_projection=True,
                                addition_embed_type="text_time", **_SDXL[preset]["unet"]).eval()


def family_vae(preset: str, *, seed: int = 0):
    """The preset's VAE (SDXL's with SDXL's scaling factor)."""
    _check(preset)
    vae = build_family_vae((_FLUX.get(preset) or _SDXL[preset])["vae"], seed=seed)
    if preset in _SDXL:
        vae.register_to_config(scaling_factor=PRESETS["sdxl"].scaling_factor)
    return vae


def sdxl_inpaint_pipeline(preset: str = "tiny-sdxl", *, seed: int = 0, in_channels: int = 9,
                          text_encoders: bool = True):
    """A diffusers ``StableDiffusionXLInpaintPipeline``; ``in_channels`` 9: the inpainting UNet, 4: the base
    one (diffusers then blends masked latents)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLInpaintPipeline

    unet = build_sdxl_unet(preset, seed=seed, in_channels=in_channels)
    texts = text_encoders_of(preset, seed) if text_encoders else dict(
        text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None)
    return StableDiffusionXLInpaintPipeline(
        vae=family_vae(preset, seed=seed), unet=unet, scheduler=EulerDiscreteScheduler(**SCHEDULER_CONFIG_SDXL),
        requires_aesthetics_score=False, force_zeros_for_empty_prompt=True, **texts)


# SDXL's scheduler_config.json: SD's noise schedule, Euler, "leading" spacing
SCHEDULER_CONFIG_SDXL = {**{k: v for k, v in SCHEDULER_CONFIG.items() if k not in ("clip_sample", "set_alpha_to_one")},
                         "timestep_spacing": "leading", "interpolation_type": "linear", "use_karras_sigmas": False}


def preset_family(preset: str) -> str:
    """The family of a preset of ``FAMILY_PRESETS``: "flux-fill" or "sdxl" (``components.FAMILIES``)."""
    _check(preset)
    return FLUX_FILL if preset in _FLUX else SDXL


def family_scheduler_config(preset: str) -> dict:
    """The preset's scheduler config as diffusers writes it (``_class_name`` and its keys)."""
    _check(preset)
    if preset in _FLUX:
        return {"_class_name": "FlowMatchEulerDiscreteScheduler", **FLUX_SCHEDULER_CONFIG}
    return {"_class_name": "EulerDiscreteScheduler", **SCHEDULER_CONFIG_SDXL}


def family_tokenizers(preset: str) -> dict:
    """``tokenizer`` (CLIP) and ``tokenizer_2`` (SDXL: CLIP again; FLUX: T5) of the preset."""
    _check(preset)
    clip = build_clip_tokenizer("tiny" if preset.startswith("tiny") else "sd15")
    return dict(tokenizer=clip, tokenizer_2=build_t5_tokenizer(_FLUX[preset]["text_len"]) if preset in _FLUX else clip)


def family_network(preset: str, part: str, *, seed: int = 0, in_channels: int = 9):
    """One network of the preset's pipeline, with the weights ``flux_fill_pipeline`` / ``sdxl_inpaint_pipeline``
    give it: ``part`` is the diffusers attribute (transformer, unet, vae, text_encoder, text_encoder_2)."""
    _check(preset)
    if part == "vae":
        return family_vae(preset, seed=seed)
    if part == "transformer" and preset in _FLUX:
        return build_flux_transformer(preset, seed=seed)
    if part == "unet" and preset in _SDXL:
        return build_sdxl_unet(preset, seed=seed, in_channels=in_channels)
    if part == "text_encoder_2" and preset in _FLUX:
        return build_t5(preset, seed=seed)
    if part in ("text_encoder", "text_encoder_2"):
        return text_encoders_of(preset, seed)[part]
    raise ValueError(f"part: {preset} has no {part!r} network")
