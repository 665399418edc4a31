"""What gets exported: each component's module, built from a preset or from local weights,
and its export signature (names, dtypes, symbolic dims, shape ranges for profiles).

The modules are the wrappers of ``asymvq.models.components`` so every backend sees the
I/O names of ``asymvq.engines.COMPONENT_IO``. Shape ranges are given in image pixels
(batch, height, width) and turned into per-input min/opt/max shapes here, once, for the
manifest, the ONNX dynamic axes and TensorRT's optimization profiles alike.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from asymvq.models import PRESETS as DECODER_PRESETS
from asymvq.models import AsymmetricDecoder, preset_config
from asymvq.models import components as wrappers
from asymvq.models.sd_components import PRESET_SHAPES, SD_PRESETS, build_text_encoder, build_unet, build_vae

# The I/O names are asymvq.engines.COMPONENT_IO's (tests hold the two together); export sits
# below engines in the data flow, so it does not import them.
COMPONENTS = ("decoder", "decoder-plain", "unet", "vae-encoder", "text-encoder")
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16}
TEXT_LEN = 77


@dataclass(frozen=True)
class Shapes:
    """min/opt/max of the image batch, height and width the engines must accept."""

    batch: tuple[int, int, int]
    height: tuple[int, int, int]
    width: tuple[int, int, int]

    def __post_init__(self):
        for name in ("batch", "height", "width"):
            lo, opt, hi = getattr(self, name)
            if not 1 <= lo <= opt <= hi:
                raise ValueError(f"shapes: {name} must satisfy 1 <= min <= opt <= max, got {lo}:{opt}:{hi}")
        for name in ("height", "width"):
            if any(v % 8 for v in getattr(self, name)):
                raise ValueError(f"shapes: {name} values must be multiples of 8 (the VAE factor), got {getattr(self, name)}")


DEFAULT_SHAPES = {
    "tiny": Shapes((1, 2, 4), (32, 64, 128), (32, 64, 128)),
    "sd15": Shapes((1, 1, 4), (256, 512, 1024), (256, 512, 1024)),
}


def parse_shapes(text: str | None, preset: str) -> Shapes:
    """``"batch=1:1:4,height=256:512:768,width=256:512:768"``; missing keys keep the preset's."""
    base = DEFAULT_SHAPES["tiny" if preset == "tiny" else "sd15"]
    if not text:
        return base
    values = {"batch": base.batch, "height": base.height, "width": base.width}
    for item in text.split(","):
        key, _, rng = item.partition("=")
        key = key.strip()
        if key not in values:
            raise ValueError(f"--shapes: keys are batch, height, width (as key=min:opt:max), got {item!r}")
        try:
            parts = tuple(int(v) for v in rng.split(":"))
        except ValueError:
            raise ValueError(f"--shapes: {key} must be min:opt:max integers, got {rng!r}") from None
        if len(parts) == 1:
            parts = parts * 3
        if len(parts) != 3:
            raise ValueError(f"--shapes: {key} must be N or min:opt:max, got {rng!r}")
        values[key] = parts
    return Shapes(**values)


@dataclass(frozen=True)
class Source:
    """Where the weights come from: seeded random ``preset`` and/or local paths.

    ``preset``: an SD preset (tiny, sd15) or, for the decoders alone, a decoder preset
    (vanilla, base, x1.5, x2, tiny). ``model``: a local diffusers SD folder (unet/,
    text_encoder/, vae/). ``decoder``: a decoder checkpoint path or a decoder preset name.
    """

    preset: str | None = None
    model: str | None = None
    decoder: str | None = None
    unet_in_channels: int = 9
    seed: int = 0

    def __post_init__(self):
        if self.preset is None and self.model is None and self.decoder is None:
            raise ValueError("source: give a preset, a --model PATH or a --decoder PATH")
        known = set(SD_PRESETS) | set(DECODER_PRESETS)
        if self.preset is not None and self.preset not in known:
            raise ValueError(f"preset must be one of {sorted(known)}, got {self.preset!r}")
        if self.model is not None and not Path(self.model).is_dir():
            raise ValueError(f"model: expected a local diffusers SD folder (unet/, vae/, text_encoder/), got {self.model!r}")

    @property
    def sd_preset(self) -> str:
        """The SD preset whose shapes apply (tiny for the tiny decoder, sd15 otherwise)."""
        return "tiny" if self.preset == "tiny" else "sd15"

    def to_dict(self) -> dict:
        return {"preset": self.preset, "model": self.model, "decoder": self.decoder,
                "unet_in_channels": self.unet_in_channels, "seed": self.seed}


def _decoder(source: Source) -> AsymmetricDecoder:
    name = source.decoder
    if name is None and source.model is not None:
        name = str(Path(source.model) / "vae")  # the SD folder's own (plain) decoder
    if name is not None and name not in DECODER_PRESETS:
        from asymvq.models.checkpoints import load_decoder

        return load_decoder(name)
    if name is None:
        name = PRESET_SHAPES[source.preset]["decoder_preset"] if source.preset in SD_PRESETS else source.preset
    if name is None:
        raise ValueError("decoder: give --decoder PATH|PRESET or a --preset")
    torch.manual_seed(source.seed)
    return AsymmetricDecoder(preset_config(name))


def _sd_part(source: Source, part: str):
    if source.model is not None:
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel

        cls = {"unet": UNet2DConditionModel, "vae": AutoencoderKL, "text_encoder": CLIPTextModel}[part]
        return cls.from_pretrained(source.model, subfolder=part, local_files_only=True).eval()
    if source.preset not in SD_PRESETS:
        raise ValueError(f"preset: the {part} needs an SD preset {list(SD_PRESETS)} or --model PATH, got {source.preset!r}")
    if part == "unet":
        return build_unet(source.preset, in_channels=source.unet_in_channels, seed=source.seed)
    return {"vae": build_vae, "text_encoder": build_text_encoder}[part](source.preset, seed=source.seed)


def build_module(component: str, source: Source) -> nn.Module:
    """The fp32 wrapper module of ``component`` (eval mode) with the I/O of COMPONENT_IO."""
    if component == "decoder":
        decoder = _decoder(source)
        if decoder.condition_encoder is None:
            raise ValueError("decoder: this decoder has no condition branch (a plain SD VAE decoder); export "
                             "'decoder-plain', or give an asymmetric decoder with --decoder PATH|PRESET")
        return wrappers.DecoderComponent(decoder).eval()
    if component == "decoder-plain":
        return wrappers.PlainDecoderComponent(_decoder(source)).eval()
    if component == "unet":
        return wrappers.UNetComponent(_sd_part(source, "unet")).eval()
    if component == "vae-encoder":
        return wrappers.VaeEncoderComponent(_sd_part(source, "vae")).eval()
    if component == "text-encoder":
        return wrappers.TextEncoderComponent(_sd_part(source, "text_encoder")).eval()
    raise ValueError(f"component must be one of {list(COMPONENTS)}, got {component!r}")


def weights_sha256(module: nn.Module) -> str:
    """Hash of the state dict (names, dtypes, shapes, bytes): identifies the source weights."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # raw bytes, any dtype, no copy
    return h.hexdigest()


_DERIVED = re.compile(r"^(\d+)\*(\w+)$")


def split_dim(dim: str) -> tuple[int, str]:
    """A symbolic dim as (factor, base): ``"8*h"`` -> (8, "h"); ``"h"`` -> (1, "h")."""
    m = _DERIVED.match(dim)
    return (int(m.group(1)), m.group(2)) if m else (1, dim)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # torch dtype name without the prefix: float32, float16, int64
    dims: tuple  # ints and symbolic names ("batch", "h", "8*h")
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "dims": list(self.dims),
                "min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_dict(cls, d: dict) -> "TensorSpec":
        return cls(d["name"], d["dtype"], tuple(d["dims"]), tuple(d["min"]), tuple(d["opt"]), tuple(d["max"]))


def spatial_multiple(component: str, module: nn.Module) -> int:
    """The latent size must be a multiple of this for the graph to be valid (UNet down-sampling)."""
    if component == "unet":
        return 2 ** (len(module.unet.config.block_out_channels) - 1)
    return 1


def io_specs(component: str, module: nn.Module, shapes: Shapes, precision: str) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Input and output specs of ``component`` for ``shapes`` (pixels) at ``precision``."""
    float_name = "float16" if precision == "fp16" else "float32"
    batch = shapes.batch
    if component == "unet":  # classifier-free guidance runs the UNet on twice the batch
        batch = (batch[0], 2 * batch[1], 2 * batch[2])
    lat = [tuple(v // 8 for v in shapes.height), tuple(v // 8 for v in shapes.width)]
    m = spatial_multiple(component, module)
    if any(v % m for v in lat[0] + lat[1]):
        raise ValueError(f"shapes: the {component} needs height and width multiples of {8 * m}, got {shapes}")

    def spec(name, dims, per_level, dtype=float_name):
        rng = [tuple(f(i) for f in per_level) for i in range(3)]
        return TensorSpec(name, dtype, tuple(dims), *rng)

    b = lambda i: batch[i]  # noqa: E731 - tiny per-level accessors keep the table readable
    h = lambda i: lat[0][i]  # noqa: E731
    w = lambda i: lat[1][i]  # noqa: E731
    c = lambda n: (lambda i: n)  # noqa: E731
    latent = spec("latent", ("batch", 4, "h", "w"), (b, c(4), h, w))
    image3 = lambda name: spec(name, ("batch", 3, "8*h", "8*w"), (b, c(3), lambda i: 8 * h(i), lambda i: 8 * w(i)))  # noqa: E731
    if component == "decoder":
        mask = spec("mask", ("batch", 1, "8*h", "8*w"), (b, c(1), lambda i: 8 * h(i), lambda i: 8 * w(i)))
        return [latent, image3("image"), mask], [image3("sample")]
    if component == "decoder-plain":
        return [latent], [image3("sample")]
    if component == "unet":
        cin = module.unet.config.in_channels
        dim = module.unet.config.cross_attention_dim
        return (
            [spec("sample", ("batch", cin, "h", "w"), (b, c(cin), h, w)),
             spec("timestep", ("batch",), (b,), "float32"),
             spec("encoder_hidden_states", ("batch", TEXT_LEN, dim), (b, c(TEXT_LEN), c(dim)))],
            [spec("noise_pred", ("batch", 4, "h", "w"), (b, c(4), h, w))],
        )
    if component == "vae-encoder":
        return [image3("image")], [spec("moments", ("batch", 8, "h", "w"), (b, c(8), h, w))]
    if component == "text-encoder":
        dim = module.text_encoder.config.hidden_size
        return (
            [spec("input_ids", ("batch", TEXT_LEN), (b, c(TEXT_LEN)), "int64")],
            [spec("last_hidden_state", ("batch", TEXT_LEN, dim), (b, c(TEXT_LEN), c(dim)))],
        )
    raise ValueError(f"component must be one of {list(COMPONENTS)}, got {component!r}")


def example_inputs(specs: list[TensorSpec], level: str = "opt", *, seed: int = 0) -> dict[str, torch.Tensor]:
    """Valid random inputs at the ``level`` (min/opt/max) shapes of ``specs``."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for s in specs:
        shape = getattr(s, level)
        dtype = getattr(torch, s.dtype)
        if s.name == "input_ids":
            t = torch.randint(0, 100, shape, generator=g)
        elif s.name == "mask":
            t = (torch.rand(shape, generator=g) > 0.5).float()
        elif s.name == "timestep":
            t = torch.randint(0, 1000, shape, generator=g).float()
        elif s.name == "image":
            t = torch.rand(shape, generator=g) * 2 - 1
        else:
            t = torch.randn(shape, generator=g)
        out[s.name] = t.to(dtype)
    return out
