"""Torch pipelines from what users already have: a local diffusers SD folder, or a live diffusers pipeline.

Never downloads: folders are read with ``local_files_only``. A folder without tokenizer files
still loads; its pipeline then takes ``prompt_embeds`` instead of prompts.
"""
from __future__ import annotations

import json
from pathlib import Path

from .models import AsymmetricDecoder
from .presets import parse_device, parse_dtype
from .stages import PipelineSpec, torch_engines

VAE_CLASSES = ("AutoencoderKL", "AsymmetricAutoencoderKL")


def decoder_from_vae(vae) -> AsymmetricDecoder:
    """Our decoder with the weights of a diffusers ``AutoencoderKL`` / ``AsymmetricAutoencoderKL``."""
    # The lead's checkpoint reader already maps diffusers configs and keys; reuse it.
    from .models.checkpoints import decoder_config_from_diffusers, convert_diffusers_state_dict, load_state_dict_strict

    cls = type(vae).__name__
    if cls not in VAE_CLASSES:
        raise ValueError(f"vae: expected one of {VAE_CLASSES}, got {cls}")
    config = decoder_config_from_diffusers({**dict(vae.config), "_class_name": cls})
    decoder = AsymmetricDecoder(config)
    load_state_dict_strict(decoder, convert_diffusers_state_dict(vae.state_dict()), source=f"{cls} decoder")
    p = next(vae.parameters())
    return decoder.to(device=p.device, dtype=p.dtype).eval()


def _resolve_decoder(decoder, *, dtype, device) -> AsymmetricDecoder | None:
    if decoder is None or isinstance(decoder, AsymmetricDecoder):
        return decoder.to(device=device, dtype=dtype).eval() if decoder is not None else None
    from .models.checkpoints import load_decoder

    return load_decoder(decoder, dtype=dtype, device=device)


def _spec(unet, vae_config, dtype, device) -> PipelineSpec:
    return PipelineSpec(
        unet_in_channels=unet.config.in_channels, latent_channels=vae_config.get("latent_channels", 4),
        scaling_factor=vae_config.get("scaling_factor", 0.18215), sample_size=unet.config.sample_size,
        dtype=dtype, device=device,
    )


def take_over_diffusers(pipe, *, decoder=None, scheduler: str | None = None, compile: bool = False) -> dict:
    """``InpaintPipeline`` keyword arguments from a diffusers SD / SD inpainting pipeline.

    The networks are shared (not copied). The decoder is the pipeline's VAE decoder unless
    ``decoder`` (a path ``load_decoder`` reads, or an ``AsymmetricDecoder``) replaces it.
    """
    from .pipeline import make_scheduler, make_scheduler_like

    for name in ("unet", "vae", "scheduler"):
        if getattr(pipe, name, None) is None:
            raise ValueError(f"pipe: expected a diffusers Stable Diffusion pipeline with a {name}, got {type(pipe).__name__}")
    unet, vae = pipe.unet, pipe.vae
    p = next(unet.parameters())
    dtype, device = p.dtype, p.device
    dec = _resolve_decoder(decoder, dtype=dtype, device=device) or decoder_from_vae(vae)
    text_encoder = getattr(pipe, "text_encoder", None)
    engines = torch_engines(unet=unet, vae_encoder_source=vae, text_encoder=text_encoder, decoder=dec, compile=compile)
    sched = make_scheduler(scheduler, pipe.scheduler.config) if scheduler else make_scheduler_like(pipe.scheduler)
    return dict(engines=engines, scheduler=sched, spec=_spec(unet, dict(vae.config), dtype, device),
                tokenizer=getattr(pipe, "tokenizer", None))


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def load_sd_folder(sd_dir, *, decoder=None, dtype="fp32", device="cpu", scheduler: str = "ddim",
                   compile: bool = False) -> dict:
    """``InpaintPipeline`` keyword arguments from a local diffusers-format SD (inpainting) folder.

    Reads unet/, vae/ (its encoder; its decoder too unless ``decoder`` is given), text_encoder/,
    tokenizer/ (optional) and scheduler/ (optional: SD 1.5's schedule otherwise).
    """
    from diffusers import AsymmetricAutoencoderKL, AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from .models.sd_components import SCHEDULER_CONFIG
    from .pipeline import make_scheduler

    root = Path(sd_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"SD model folder not found: {root}")
    dtype, device = parse_dtype(dtype), parse_device(device)
    local = dict(local_files_only=True)

    unet = UNet2DConditionModel.from_pretrained(_need(root / "unet", "unet folder"), torch_dtype=dtype, **local)
    vae_dir = _need(root / "vae" / "config.json", "vae config").parent
    vae_cls = json.loads((vae_dir / "config.json").read_text()).get("_class_name", "AutoencoderKL")
    if vae_cls not in VAE_CLASSES:
        raise ValueError(f"{vae_dir}/config.json: expected _class_name among {VAE_CLASSES}, got {vae_cls!r}")
    vae_type = AsymmetricAutoencoderKL if vae_cls == "AsymmetricAutoencoderKL" else AutoencoderKL
    vae = vae_type.from_pretrained(vae_dir, torch_dtype=dtype, **local)

    text_encoder = tokenizer = None
    if (root / "text_encoder").is_dir():
        text_encoder = CLIPTextModel.from_pretrained(root / "text_encoder", dtype=dtype, **local)
    if (root / "tokenizer").is_dir():
        tokenizer = CLIPTokenizer.from_pretrained(root / "tokenizer", **local)
    sched_cfg = root / "scheduler" / "scheduler_config.json"
    config = json.loads(sched_cfg.read_text()) if sched_cfg.is_file() else SCHEDULER_CONFIG

    dec = _resolve_decoder(decoder, dtype=dtype, device=device) if decoder is not None else decoder_from_vae(vae)
    vae.decoder = None  # ours decodes; keep only the encoder's memory
    ready = [m.to(device).eval() for m in (unet, vae)]
    if text_encoder is not None:
        text_encoder = text_encoder.to(device).eval()
    engines = torch_engines(unet=ready[0], vae_encoder_source=ready[1], text_encoder=text_encoder,
                            decoder=dec.to(device), compile=compile)
    return dict(engines=engines, scheduler=make_scheduler(scheduler, config), spec=_spec(unet, dict(vae.config), dtype, device),
                tokenizer=tokenizer)
