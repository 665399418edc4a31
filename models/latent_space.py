"""The latent space a VAE defines: channel count, scaling factor and shift, written once.

Diffusion models run on *diffusion-space* latents; a VAE's decoder takes and its encoder
yields *VAE-space* latents. diffusers converts between them as
``vae_space = z / scaling_factor + shift_factor`` (before ``vae.decode``) and
``z = (vae_space - shift_factor) * scaling_factor`` (after ``vae.encode``); SD 1.x/2.x and
SDXL have no shift (0.0), SD3 and FLUX do. Every layer reads these numbers from a
``LatentSpace``: the decoder's config, the pipeline's spec, the engines manifest (key
``latent_space``) and, through that manifest, the C++ host.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .json_values import from_exact_dict, is_real

# Image pixels per latent pixel: fixed by the decoder's topology (four levels, three 2x
# upsamples), the same for every VAE of this family (SD, SDXL, SD3, FLUX).
VAE_SCALE_FACTOR = 8
FIELDS = ("channels", "scaling_factor", "shift_factor")


@dataclass(frozen=True)
class LatentSpace:
    """``channels`` (4 for SD/SDXL, 16 for SD3/FLUX), ``scaling_factor`` (> 0) and ``shift_factor``."""

    channels: int = 4
    scaling_factor: float = 0.18215
    shift_factor: float = 0.0
    vae_scale_factor: ClassVar[int] = VAE_SCALE_FACTOR

    def __post_init__(self):
        if type(self.channels) is not int or self.channels < 1:
            raise ValueError(f"channels must be a positive integer, got {self.channels!r}")
        if not is_real(self.scaling_factor) or not self.scaling_factor > 0:
            raise ValueError(f"scaling_factor must be a positive finite number, got {self.scaling_factor!r}")
        if not is_real(self.shift_factor):
            raise ValueError(f"shift_factor must be a finite number, got {self.shift_factor!r}")
        object.__setattr__(self, "scaling_factor", float(self.scaling_factor))
        object.__setattr__(self, "shift_factor", float(self.shift_factor))

    def to_vae(self, latents):
        """Diffusion space -> VAE space (the decoder's input): ``z / scaling_factor + shift_factor``.
        Without a shift nothing is added, so SD's result is bit for bit ``z / scaling_factor``."""
        x = latents / self.scaling_factor
        return x + self.shift_factor if self.shift_factor else x

    def to_diffusion(self, latents):
        """VAE space (the encoder's output) -> diffusion space: ``(x - shift_factor) * scaling_factor``."""
        x = latents - self.shift_factor if self.shift_factor else latents
        return x * self.scaling_factor

    def to_dict(self) -> dict:
        """The manifest's ``latent_space`` object."""
        return {"channels": self.channels, "scaling_factor": self.scaling_factor, "shift_factor": self.shift_factor}

    @classmethod
    def from_dict(cls, d, key: str = "latent_space") -> "LatentSpace":
        """From ``to_dict``'s form; a ValueError names ``key.field`` and the expected form otherwise."""
        return from_exact_dict(cls, d, key, FIELDS)

    @classmethod
    def from_vae_config(cls, config) -> "LatentSpace":
        """A diffusers ``AutoencoderKL``/``AsymmetricAutoencoderKL`` config (dict-like); the
        defaults are diffusers' (4 channels, 0.18215), a missing or null shift is 0.0."""
        shift = config.get("shift_factor")
        return cls(config.get("latent_channels", 4), config.get("scaling_factor", 0.18215),
                   0.0 if shift is None else shift)


# The latent spaces of the VAEs users decode (diffusers configs of each model's VAE).
SD = LatentSpace(4, 0.18215)
SDXL = LatentSpace(4, 0.13025)
SD3 = LatentSpace(16, 1.5305, 0.0609)
FLUX = LatentSpace(16, 0.3611, 0.1159)


# -- previews: a linear map from diffusion-space latents to approximate RGB ------------------------
@dataclass(frozen=True)
class RGBProjection:
    """``rgb = factors^T z + bias`` per latent pixel, roughly in [-1, 1]: a preview of diffusion-space latents
    ``z`` (B, channels, h, w) at latent resolution without running a decoder (what ComfyUI's "latent2rgb"
    previews do). ``factors``: one (R, G, B) row per latent channel."""

    factors: tuple
    bias: tuple = (0.0, 0.0, 0.0)

    def __post_init__(self):
        if not self.factors or any(len(row) != 3 or not all(is_real(v) for v in row) for row in self.factors) \
                or len(self.bias) != 3 or not all(is_real(v) for v in self.bias):
            raise ValueError("factors: expected one (R, G, B) row of finite numbers per channel and a 3-number bias")

    @property
    def channels(self) -> int:
        return len(self.factors)

    def apply(self, latents):
        """(B, channels, h, w) torch latents -> (B, 3, h, w) float32 approximate RGB (clamp to [-1, 1] to show)."""
        import torch  # here only: the manifest readers import this module without torch

        if latents.ndim != 4 or latents.shape[1] != self.channels:
            raise ValueError(f"latents: expected (B, {self.channels}, h, w), got shape {tuple(latents.shape)}")
        weight = torch.tensor(self.factors, dtype=torch.float32, device=latents.device)
        bias = torch.tensor(self.bias, dtype=torch.float32, device=latents.device)
        return torch.einsum("bchw,cr->brhw", latents.float(), weight) + bias.view(1, 3, 1, 1)


# Published factors, fitted by ComfyUI to each VAE's decodes of diffusion-space latents (the x0 its samplers
# preview): comfyanonymous/ComfyUI comfy/latent_formats.py (classes SD15, SDXL, SD3, Flux; read at commit
# 040a3243468ecefd1f2802592d90458f1ce4d65f). Only the numbers come from there.
SD_RGB = RGBProjection(((0.3512, 0.2297, 0.3227), (0.3250, 0.4974, 0.2350), (-0.2829, 0.1762, 0.2721),
                        (-0.2120, -0.2616, -0.7177)))
SDXL_RGB = RGBProjection(((0.3651, 0.4232, 0.4341), (-0.2533, -0.0042, 0.1068), (0.1076, 0.1111, -0.0362),
                          (-0.3165, -0.2492, -0.2188)), (0.1084, -0.0175, -0.0011))
SD3_RGB = RGBProjection((
    (-0.0922, -0.0175, 0.0749), (0.0311, 0.0633, 0.0954), (0.1994, 0.0927, 0.0458), (0.0856, 0.0339, 0.0902),
    (0.0587, 0.0272, -0.0496), (-0.0006, 0.1104, 0.0309), (0.0978, 0.0306, 0.0427), (-0.0042, 0.1038, 0.1358),
    (-0.0194, 0.0020, 0.0669), (-0.0488, 0.0130, -0.0268), (0.0922, 0.0988, 0.0951), (-0.0278, 0.0524, -0.0542),
    (0.0332, 0.0456, 0.0895), (-0.0069, -0.0030, -0.0810), (-0.0596, -0.0465, -0.0293), (-0.1448, -0.1463, -0.1189)),
    (0.2394, 0.2135, 0.1925))
FLUX_RGB = RGBProjection((
    (-0.0346, 0.0244, 0.0681), (0.0034, 0.0210, 0.0687), (0.0275, -0.0668, -0.0433), (-0.0174, 0.0160, 0.0617),
    (0.0859, 0.0721, 0.0329), (0.0004, 0.0383, 0.0115), (0.0405, 0.0861, 0.0915), (-0.0236, -0.0185, -0.0259),
    (-0.0245, 0.0250, 0.1180), (0.1008, 0.0755, -0.0421), (-0.0515, 0.0201, 0.0011), (0.0428, -0.0012, -0.0036),
    (0.0817, 0.0765, 0.0749), (-0.1264, -0.0522, -0.1103), (-0.0280, -0.0881, -0.0499), (-0.1262, -0.0982, -0.0778)),
    (-0.0329, -0.0718, -0.0851))
RGB_PROJECTIONS = {SD: SD_RGB, SDXL: SDXL_RGB, SD3: SD3_RGB, FLUX: FLUX_RGB}


def rgb_projection(space: LatentSpace) -> RGBProjection | None:
    """The preview projection of a known latent space (equal channels, scaling and shift), else None: factors
    fitted to one VAE say nothing about another's latents, so an unknown space gets no preview rather than noise."""
    return RGB_PROJECTIONS.get(space)
