"""Decoder configuration and the named presets.

Channel lists follow diffusers' order (full resolution first): level channels are
``block_out_channels`` and the decoder walks them in reverse, from H/8 up to H.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .latent_space import LatentSpace

CONDITIONS = (None, "conv", "partial", "asuka")


@dataclass(frozen=True)
class DecoderConfig:
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    out_channels: int = 3
    norm_num_groups: int = 32
    # None: plain decoder; "conv": the released Asymmetric VQGAN branch (plain Conv2d over the masked
    # image, level masks resized nearest); "partial": the paper's PConv2d branch (NVIDIA partial-conv
    # semantics); "asuka": ASUKA's branch (the mask concatenated as a 4th input channel, level masks
    # area-averaged with every covered cell a hole).
    condition: str | None = "conv"
    scaling_factor: float = 0.18215
    shift_factor: float = 0.0  # SD3 / FLUX VAEs shift their latents; SD's do not
    post_quant_conv: bool = True  # SD/SDXL VAEs run a 1x1 conv first; SD3 / FLUX VAEs have none
    gate_conv: bool = False  # ASUKA's optional gated branch convs (off in its release)

    def __post_init__(self):
        chans = self.block_out_channels
        if not isinstance(chans, (list, tuple)) or not all(type(c) is int and c >= 1 for c in chans):
            raise ValueError(f"block_out_channels must be a list of positive integers, got {chans!r}")
        for name in ("layers_per_block", "latent_channels", "out_channels", "norm_num_groups"):
            v = getattr(self, name)
            if type(v) is not int or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        LatentSpace(self.latent_channels, self.scaling_factor, self.shift_factor)  # refuses a bad scale or shift
        object.__setattr__(self, "block_out_channels", tuple(chans))
        if self.condition not in CONDITIONS:
            raise ValueError(f"condition must be one of {CONDITIONS}, got {self.condition!r}")
        for name in ("post_quant_conv", "gate_conv"):
            if type(getattr(self, name)) is not bool:
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.gate_conv and self.condition != "asuka":
            raise ValueError(f"gate_conv: only ASUKA's branch (condition='asuka') has gated convs, "
                             f"got condition={self.condition!r}")
        if len(self.block_out_channels) != 4:
            raise ValueError(
                "block_out_channels must list 4 levels (full resolution first), "
                f"got {self.block_out_channels}"
            )
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise ValueError(
                    f"every channel count must be divisible by norm_num_groups={self.norm_num_groups}, "
                    f"got block_out_channels={self.block_out_channels}"
                )
        c = self.block_out_channels[0]
        if self.has_condition and self.block_out_channels != (c, 2 * c, 4 * c, 4 * c):
            # The condition encoder's widths are hard-wired to (c, 2c, 4c, 4c, 4c) (official
            # code and diffusers), so the decoder levels must match them to be blended.
            raise ValueError(
                "block_out_channels must be (c, 2c, 4c, 4c) for a decoder with a condition branch, "
                f"got {self.block_out_channels}"
            )
        if self.layers_per_block < 1:
            raise ValueError(f"layers_per_block must be >= 1, got {self.layers_per_block}")

    @property
    def latent_space(self) -> LatentSpace:
        """The latents this decoder takes: ``latent_channels``, ``scaling_factor``, ``shift_factor``."""
        return LatentSpace(self.latent_channels, self.scaling_factor, self.shift_factor)

    @property
    def has_condition(self) -> bool:
        return self.condition is not None

    @property
    def condition_in_channels(self) -> int:
        """The branch's input: the masked image, plus the mask as one more channel for ASUKA's."""
        return self.out_channels + (self.condition == "asuka")

    @property
    def condition_channels(self) -> tuple[int, ...]:
        """Output channels of the five condition-encoder layers L0..L4 (c, 2c, 4c, 4c, 4c)."""
        c, top = self.block_out_channels[0], self.block_out_channels[-1]
        return (c, 2 * c, top, top, top)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["block_out_channels"] = list(self.block_out_channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DecoderConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown DecoderConfig fields: {sorted(unknown)}")
        return cls(**d)


_SD = (128, 256, 512, 512)
_TINY = dict(block_out_channels=(16, 32, 64, 64), layers_per_block=1, norm_num_groups=8)
# The VAEs of SD3 and FLUX.1: 16 latent channels, no quant convs, shifted latents; the decoder
# topology is SD's otherwise (diffusers AutoencoderKL, black-forest-labs ae.safetensors).
_SD3 = dict(latent_channels=16, post_quant_conv=False, scaling_factor=1.5305, shift_factor=0.0609)
_FLUX = dict(latent_channels=16, post_quant_conv=False, scaling_factor=0.3611, shift_factor=0.1159)

PRESETS: dict[str, DecoderConfig] = {
    "vanilla": DecoderConfig(_SD, 2, condition=None),
    "base": DecoderConfig(_SD, 2),
    "x1.5": DecoderConfig((192, 384, 768, 768), 3),
    "x2": DecoderConfig((256, 512, 1024, 1024), 5),
    "sdxl": DecoderConfig(_SD, 2, condition=None, scaling_factor=0.13025),
    # Order matters where shapes repeat: a checkpoint's weights cannot tell SD from SDXL or FLUX from
    # SD3, and shape inference takes the first preset that fits (checkpoints.infer_ldm_config).
    "flux": DecoderConfig(_SD, 2, condition=None, **_FLUX),
    "sd3": DecoderConfig(_SD, 2, condition=None, **_SD3),
    # ASUKA (Wang et al., CVPR 2025): FLUX.1-Fill's decoder with a conditional branch, as released.
    "asuka-flux": DecoderConfig(_SD, 2, condition="asuka", **_FLUX),
    # Small enough for CPU tests and demos; same topology as the real presets.
    "tiny": DecoderConfig(**_TINY),
    "tiny-flux": DecoderConfig(**_TINY, condition=None, **_FLUX),
    "tiny-asuka": DecoderConfig(**_TINY, condition="asuka", **_FLUX),
}
PRESET_ALIASES = {"larger1.5": "x1.5", "larger2": "x2", "sd": "vanilla", "x1_5": "x1.5", "asuka": "asuka-flux"}


def preset_config(name: str) -> DecoderConfig:
    key = PRESET_ALIASES.get(name, name)
    if key not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
    return PRESETS[key]
