"""Pipelines and decoders with seeded random weights: no files, no downloads.

"tiny" is for tests and the CPU demo; "sd15" has the real SD 1.5 inpainting UNet, CLIP
ViT-L/14 text encoder and SD VAE shapes, so real costs can be profiled without weights.
The networks come from ``asymvq.models.sd_components``; this file only assembles them.
"""
from __future__ import annotations

import torch

from .models import AsymmetricDecoder, preset_config
from .models.sd_components import PRESET_SHAPES, SCHEDULER_CONFIG, SD_PRESETS
from .stages import PipelineSpec, torch_decoder_engines, torch_engines

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def parse_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def parse_device(device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' was asked for but torch sees no CUDA device (use --device cpu)")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    return dev


def random_decoder(name: str, *, seed: int = 0, dtype=torch.float32, device="cpu", kernels: str = "torch") -> AsymmetricDecoder:
    """A seeded random ``AsymmetricDecoder`` of preset ``name`` (vanilla, base, x1.5, x2, tiny)."""
    config = preset_config(name)
    torch.manual_seed(seed)
    decoder = AsymmetricDecoder(config).set_kernels(kernels)
    return decoder.to(device=parse_device(device), dtype=parse_dtype(dtype)).eval()


def build_preset(
    preset: str = "tiny",
    *,
    decoder: str | AsymmetricDecoder | None = None,
    in_channels: int = 9,
    dtype="fp32",
    device="cpu",
    seed: int = 0,
    scheduler: str = "ddim",
    compile: bool = False,
) -> dict:
    """Keyword arguments of ``InpaintPipeline`` for a random ``preset`` ("tiny" or "sd15").

    ``in_channels`` 9 builds the inpainting UNet, 4 a text-to-image one. ``decoder``: a preset
    name or a decoder; default: the preset's own width (tiny -> "tiny", sd15 -> "base").
    """
    from .models import sd_components as sd
    from .pipeline import make_scheduler

    if preset not in SD_PRESETS:
        raise ValueError(f"preset must be one of {list(SD_PRESETS)}, got {preset!r}")
    dtype, device = parse_dtype(dtype), parse_device(device)
    shapes = PRESET_SHAPES[preset]
    if decoder is None or isinstance(decoder, str):
        decoder = random_decoder(decoder or shapes["decoder_preset"], seed=seed, dtype=dtype, device=device)

    def ready(module):
        # diffusers warns on any .to(dtype=...), even a no-op: cast only when it changes something
        module = module.to(device)
        return (module if next(module.parameters()).dtype == dtype else module.to(dtype=dtype)).eval()

    vae = sd.build_vae(preset, seed=seed)
    vae.decoder = None  # only the encoder runs here; the asymmetric decoder replaces this one
    engines = torch_engines(
        unet=ready(sd.build_unet(preset, in_channels=in_channels, seed=seed)),
        vae_encoder_source=ready(vae) if in_channels == 9 else None,
        text_encoder=ready(sd.build_text_encoder(preset, seed=seed)),
        decoder=decoder,
        compile=compile,
    )
    spec = PipelineSpec(
        unet_in_channels=in_channels, latent_channels=shapes["latent_channels"],
        vae_scale_factor=shapes["vae_scale_factor"], scaling_factor=shapes["scaling_factor"],
        sample_size=shapes["latent_size"], dtype=dtype, device=device,
    )
    return dict(engines=engines, scheduler=make_scheduler(scheduler, SCHEDULER_CONFIG), spec=spec,
                tokenizer=sd.build_tokenizer(preset))


def random_decoder_engines(names, *, seed: int = 0, dtype="fp32", device="cpu", compile: bool = False) -> dict[str, dict]:
    """``{name: {"decoder"/"decoder-plain": Engine}}`` for several random decoder presets."""
    return {
        name: torch_decoder_engines(random_decoder(name, seed=seed, dtype=dtype, device=device), compile=compile)
        for name in names
    }
