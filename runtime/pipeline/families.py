"""Which pipeline family a diffusers pipeline or model folder is (SD 1.x, SDXL, FLUX.1 Fill), read from its
components, and the family's pipeline built from it. ``InpaintPipeline.from_diffusers`` / ``from_pretrained``
/ ``from_preset`` call these, so one entry point takes any of the three.

The rule, written once: a ``transformer`` that is a ``FluxTransformer2DModel`` taking the packed latents,
masked-image latents and folded mask (4 * (2 * 16 + 64) = 384 channels) is FLUX.1 Fill; a UNet with
``text_time`` added conditions (pooled text + size ids) is SDXL; a UNet with none is SD 1.x. Anything
else (FLUX text-to-image, SD3, SDXL with an LCM UNet) is refused by name.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..engines.manifest import manifest_family, read_manifest
from ..models.devices import parse_device, parse_dtype
from ..models.family_networks import FAMILY_PRESETS, flux_fill_pipeline, sdxl_inpaint_pipeline
from ..models.latent_space import VAE_SCALE_FACTOR
from .family_rules import FAMILIES, FLUX_FILL, SD, SDXL  # noqa: F401 (FAMILIES is re-exported)
from .flux_fill import FluxFillInpaintPipeline
from .sdxl_inpaint import SDXLInpaintPipeline

_DIFFUSERS_CLASSES = {FLUX_FILL: "FluxFillPipeline", SDXL: "StableDiffusionXLInpaintPipeline"}


def _flux_fill_channels(latent_channels: int) -> int:
    return 4 * (2 * latent_channels + VAE_SCALE_FACTOR ** 2)


def family_of(transformer_config: dict | None, unet_config: dict | None, latent_channels: int,
              where: str = "pipe") -> str:
    """The family of a pipeline with these networks' configs (either may be None)."""
    if transformer_config is not None:
        cls = transformer_config.get("_class_name", "")
        n = transformer_config.get("in_channels")
        if cls == "FluxTransformer2DModel" and n == _flux_fill_channels(latent_channels):
            return FLUX_FILL
        raise ValueError(f"{where}: a {cls or 'transformer'} with {n} input channels is not FLUX.1 Fill "
                         f"({_flux_fill_channels(latent_channels)} channels: latents, masked-image latents, mask); "
                         "asymvq runs FLUX.1 Fill, SDXL and SD 1.x inpainting")
    if unet_config is None:
        raise ValueError(f"{where}: expected a diffusers SD 1.x, SDXL or FLUX.1 Fill pipeline (a unet or a "
                         "transformer), found neither")
    added = unet_config.get("addition_embed_type")
    if added == "text_time":
        return SDXL
    if added is None:
        return SD
    raise ValueError(f"{where}: a UNet with {added!r} added conditions is neither SD 1.x nor SDXL")


def diffusers_family(pipe) -> str:
    """The family of a live diffusers pipeline, from its components."""
    transformer, unet, vae = (getattr(pipe, n, None) for n in ("transformer", "unet", "vae"))
    if vae is None:
        raise ValueError(f"pipe: expected a diffusers pipeline with a vae, got {type(pipe).__name__}")
    config = lambda m: None if m is None else {**dict(m.config), "_class_name": type(m).__name__}  # noqa: E731
    return family_of(config(transformer), config(unet), vae.config.latent_channels)


def folder_family(folder) -> str:
    """The family of a local diffusers folder, from its component folders' configs."""
    root = Path(folder)
    read = lambda name: json.loads((root / name / "config.json").read_text()) \
        if (root / name / "config.json").is_file() else None  # noqa: E731
    vae = read("vae")
    if vae is None:  # not a folder of any family: SD's loader names what is missing
        return SD
    return family_of(read("transformer"), read("unet"), vae.get("latent_channels", 4), where=f"sd_dir ({root})")


def family_from_diffusers(pipe, family: str, *, decoder=None, scheduler: str | None = None,
                          compile: bool = False):
    """The FLUX.1 Fill or SDXL pipeline over a live diffusers pipeline's networks."""
    if family == FLUX_FILL:
        if scheduler is not None:
            raise ValueError("scheduler: FLUX.1 Fill runs its flow-matching scheduler only; leave it unset")
        return FluxFillInpaintPipeline.from_diffusers(pipe, decoder=decoder, compile=compile)
    return SDXLInpaintPipeline.from_diffusers(pipe, decoder=decoder, scheduler=scheduler, compile=compile)


def family_from_folder(folder, family: str, *, decoder=None, dtype="fp32", device="cpu", scheduler=None,
                       compile: bool = False, kernels: str = "torch"):
    """Load a local FLUX.1 Fill / SDXL folder with diffusers (no network), then take it over."""
    import diffusers

    if kernels != "torch":
        raise ValueError(f"kernels: the {family} pipelines run the torch decoder kernels only, got {kernels!r}")

    cls = getattr(diffusers, _DIFFUSERS_CLASSES[family])
    pipe = cls.from_pretrained(str(folder), torch_dtype=parse_dtype(dtype, device), local_files_only=True)
    return family_from_diffusers(pipe.to(parse_device(device)), family, decoder=decoder, scheduler=scheduler,
                                 compile=compile)


def family_from_preset(preset: str, *, decoder=None, seed: int = 0, scheduler: str | None = None, dtype="fp32",
                       device="cpu", compile: bool = False, text_encoders: bool = True):
    """A seeded FLUX.1 Fill / SDXL pipeline of ``FAMILY_PRESETS`` (the real-size ones allocate every weight:
    count them with ``asymvq.profiling.family_flops`` instead)."""
    if preset not in FAMILY_PRESETS:
        raise ValueError(f"preset must be one of {list(FAMILY_PRESETS)}, got {preset!r}")
    flux = "flux" in preset
    build = flux_fill_pipeline if flux else sdxl_inpaint_pipeline
    pipe = build(preset, seed=seed, text_encoders=text_encoders).to(parse_device(device), parse_dtype(dtype, device))
    return family_from_diffusers(pipe, FLUX_FILL if flux else SDXL, decoder=decoder, scheduler=scheduler,
                                 compile=compile)


def engines_family(path) -> str:
    """The family of an engines directory: its manifest's ``family`` (SD for directories that name none)."""
    return manifest_family(read_manifest(path))


def family_from_engines(path, family: str, *, device="cpu", backend: str | None = None, scheduler: str | None = None,
                        **engine_options):
    """The FLUX.1 Fill or SDXL pipeline over an engines directory of that family."""
    if family == FLUX_FILL:
        if scheduler is not None:
            raise ValueError("scheduler: FLUX.1 Fill runs its flow-matching scheduler only; leave it unset")
        return FluxFillInpaintPipeline.from_engines(path, device=device, backend=backend, **engine_options)
    return SDXLInpaintPipeline.from_engines(path, device=device, backend=backend, scheduler=scheduler,
                                            **engine_options)
