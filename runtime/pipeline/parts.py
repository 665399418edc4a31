"""What an ``InpaintPipeline`` is built from, assembled from each kind of source.

One place turns a source into the pipeline's keyword arguments (engines, scheduler, spec,
tokenizer): seeded random presets (``preset_parts``: "tiny" for tests and the CPU demo,
"sd15" with the real SD 1.5 shapes), a local diffusers SD folder (``folder_parts``), a live
diffusers pipeline (``diffusers_parts``) and an engines directory (``engines_dir_parts``).
It never imports the pipeline class; the pipeline's constructors call it.
"""
from __future__ import annotations

import torch

from ..engines.contract import COMPONENT_IO, DECODER_COMPONENTS, TEXT_ENCODER, UNET, VAE_ENCODER, precision_dtype
from ..engines.loader import load_engine_dir, load_scheduler_config, load_tokenizer
from ..engines.manifest import ManifestError, manifest_latent_space, read_manifest
from ..engines.torch_engine import torch_decoder_engines, torch_engines
from ..models import AsymmetricDecoder
from ..models import sd_networks as sd
from ..models.checkpoints import decoder_from_vae, load_decoder
from ..models.devices import parse_device, parse_dtype
from ..models.latent_space import LatentSpace
from ..models.sources import load_sd_networks, random_decoder
from .schedulers import copy_scheduler, make_scheduler, switch_scheduler
from .stages import PipelineSpec


def preset_parts(preset: str = "tiny", *, decoder: str | AsymmetricDecoder | None = None, in_channels: int = 9,
                 dtype="fp32", device="cpu", seed: int = 0, scheduler: str = "ddim", compile: bool = False,
                 kernels: str = "torch", components=None) -> dict:
    """A random ``preset`` ("tiny" or "sd15"). ``in_channels`` 9 builds the inpainting UNet, 4 a
    text-to-image one. ``decoder``: a preset name or a decoder; default: the preset's own width.
    ``components``: build only these (each network has its own seed: the same weights as in a whole one)."""
    if preset not in sd.SD_PRESETS:
        raise ValueError(f"preset must be one of {list(sd.SD_PRESETS)}, got {preset!r}")
    device = parse_device(device)
    dtype = parse_dtype(dtype, device)
    shapes = sd.PRESET_SHAPES[preset]
    wanted = set(COMPONENT_IO if components is None else components)
    if decoder is None or isinstance(decoder, str):
        decoder = random_decoder(decoder or shapes["decoder_preset"], seed=seed, dtype=dtype, device=device,
                                 kernels=kernels) if wanted & set(DECODER_COMPONENTS) else None

    def ready(module):
        # diffusers warns on any .to(dtype=...), even a no-op: cast only when it changes something
        module = module.to(device)
        return (module if next(module.parameters()).dtype == dtype else module.to(dtype=dtype)).eval()

    if UNET in wanted:
        vae = sd.build_vae(preset, seed=seed)
        vae.decoder = None  # only the encoder runs here; the asymmetric decoder replaces this one
        engines = torch_engines(
            unet=ready(sd.build_unet(preset, in_channels=in_channels, seed=seed)),
            vae_encoder_source=ready(vae) if in_channels == 9 and VAE_ENCODER in wanted else None,
            text_encoder=ready(sd.build_text_encoder(preset, seed=seed)) if TEXT_ENCODER in wanted else None,
            decoder=decoder,
            compile=compile,
        )
    else:  # a decoding subset: no UNet, no encoders built
        engines = torch_decoder_engines(decoder, compile=compile) if decoder is not None else {}
    spec = PipelineSpec(
        unet_in_channels=in_channels, latent_space=shapes["latent_space"],
        sample_size=shapes["latent_size"], dtype=dtype, device=device,
    )
    return dict(engines=engines, scheduler=make_scheduler(scheduler, sd.SCHEDULER_CONFIG), spec=spec,
                tokenizer=sd.build_tokenizer(preset) if TEXT_ENCODER in wanted else None)


def random_decoder_engines(names, *, seed: int = 0, dtype="fp32", device="cpu", compile: bool = False,
                           kernels: str = "torch") -> dict[str, dict]:
    """``{name: {"decoder"/"decoder-plain": Engine}}`` for several random decoder presets."""
    return {
        name: torch_decoder_engines(random_decoder(name, seed=seed, dtype=dtype, device=device, kernels=kernels),
                                    compile=compile)
        for name in names
    }


def _resolve_decoder(decoder, *, dtype, device) -> AsymmetricDecoder | None:
    if decoder is None:
        return None
    if isinstance(decoder, AsymmetricDecoder):
        return decoder.to(device=device, dtype=dtype).eval()
    return load_decoder(decoder, dtype=dtype, device=device)


def _spec(unet, vae_config, dtype, device) -> PipelineSpec:
    return PipelineSpec(
        unet_in_channels=unet.config.in_channels, latent_space=LatentSpace.from_vae_config(vae_config),
        sample_size=unet.config.sample_size, dtype=dtype, device=device,
    )


def diffusers_parts(pipe, *, decoder=None, scheduler: str | None = None, compile: bool = False) -> dict:
    """A live diffusers SD / SD inpainting pipeline's networks, shared (not copied).

    The decoder is the pipeline's VAE decoder unless ``decoder`` (a path ``load_decoder``
    reads, or an ``AsymmetricDecoder``) replaces it. The scheduler keeps every config value the
    pipeline's has, including values patched after construction (see ``asymvq.pipeline.schedulers``).
    """
    for name in ("unet", "vae", "scheduler"):
        if getattr(pipe, name, None) is None:
            raise ValueError(f"pipe: expected a diffusers Stable Diffusion pipeline with a {name}, got {type(pipe).__name__}")
    unet, vae = pipe.unet, pipe.vae
    p = next(unet.parameters())
    dtype, device = p.dtype, p.device
    dec = _resolve_decoder(decoder, dtype=dtype, device=device) or decoder_from_vae(vae)
    text_encoder = getattr(pipe, "text_encoder", None)
    engines = torch_engines(unet=unet, vae_encoder_source=vae, text_encoder=text_encoder, decoder=dec, compile=compile)
    sched = switch_scheduler(scheduler, pipe.scheduler) if scheduler else copy_scheduler(pipe.scheduler)
    return dict(engines=engines, scheduler=sched, spec=_spec(unet, dict(vae.config), dtype, device),
                tokenizer=getattr(pipe, "tokenizer", None))


def folder_parts(sd_dir, *, decoder=None, dtype="fp32", device="cpu", scheduler: str = "ddim",
                 compile: bool = False, kernels: str = "torch") -> dict:
    """A local diffusers-format SD (inpainting) folder: unet/, vae/ (its encoder; its decoder too
    unless ``decoder`` is given), text_encoder/ and tokenizer/ (optional), scheduler/ (optional).
    ``kernels``: the decoder's, torch or triton."""
    device = parse_device(device)
    dtype = parse_dtype(dtype, device)
    nets = load_sd_networks(sd_dir, dtype=dtype)
    unet, vae, text_encoder = nets["unet"], nets["vae"], nets["text_encoder"]
    dec = _resolve_decoder(decoder, dtype=dtype, device=device) if decoder is not None else decoder_from_vae(vae)
    if kernels != "torch":
        dec.set_kernels(kernels)
    vae.decoder = None  # ours decodes; keep only the encoder's memory
    engines = torch_engines(unet=unet.to(device), vae_encoder_source=vae.to(device),
                            text_encoder=None if text_encoder is None else text_encoder.to(device),
                            decoder=dec.to(device), compile=compile)
    return dict(engines=engines, scheduler=make_scheduler(scheduler, nets["scheduler_config"]),
                spec=_spec(unet, dict(vae.config), dtype, device), tokenizer=nets["tokenizer"])


def engines_dir_parts(path, *, device="cpu", backend: str | None = None, scheduler: str = "ddim",
                      components=None, **engine_options) -> dict:
    """An engines directory written by ``asymvq export`` (any backend ``load_engine_dir`` knows);
    ``components``: load only these engines."""
    manifest = read_manifest(path)  # once: the loaders below take it
    unet = manifest["components"].get(UNET)
    if unet is None:
        raise ManifestError(f"engines: {path} has no 'unet' engine; export with --component all")
    names = None if components is None else [c for c in manifest["components"] if c in components]
    engines = load_engine_dir(path, device=device, backend=backend, components=names, manifest=manifest,
                              **engine_options)
    sample = unet["inputs"][0]  # COMPONENT_IO order, checked on load
    spec = PipelineSpec(unet_in_channels=sample["opt"][1], latent_space=manifest_latent_space(manifest),
                        sample_size=sample["opt"][2], dtype=precision_dtype(manifest["precision"]),
                        device=torch.device(device))
    return dict(engines=engines, scheduler=make_scheduler(scheduler, load_scheduler_config(path, manifest=manifest)),
                spec=spec, tokenizer=load_tokenizer(path, manifest=manifest))

