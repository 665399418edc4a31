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

import math
from dataclasses import dataclass
from typing import ClassVar

# Image pixels per latent pixel: fixed by the decoder's topology (four levels, three 2x
# upsamples), the same for every VAE of this family (SD, SDXL, SD3, FLUX).
VAE_SCALE_FACTOR = 8
FIELDS = ("channels", "scaling_factor", "shift_factor")


def _is_real(value) -> bool:
    return type(value) in (int, float) and math.isfinite(value)  # bool is refused: type(True) is bool


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
        if not _is_real(self.scaling_factor) or not self.scaling_factor > 0:
            raise ValueError(f"scaling_factor must be a positive finite number, got {self.scaling_factor!r}")
        if not _is_real(self.shift_factor):
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
        if not isinstance(d, dict) or set(d) != set(FIELDS):
            got = sorted(d) if isinstance(d, dict) else d
            shown = repr(got)
            raise ValueError(f"{key} must be an object with exactly the keys {list(FIELDS)}, "
                             f"got {shown[:80] + '...' if len(shown) > 80 else shown}")
        try:
            return cls(**d)
        except ValueError as e:
            raise ValueError(f"{key}.{e}") from None

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
