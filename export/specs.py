"""Each component's export signature: dtypes, symbolic dims and shape ranges, as ``TensorSpec``s.

Shape ranges are given in image pixels (batch, height, width) and turned into per-input
min/opt/max shapes here, once, for the manifest, the ONNX dynamic axes and TensorRT's
optimization profiles alike. They bind only the formats compiled for them (TensorRT, AOTInductor);
ONNX Runtime and OpenVINO run any size (``asymvq.engines.feeds``). The names, dtype kinds and dims come from the component vocabulary
(``asymvq.models.components.VOCABULARY``, re-exported by ``asymvq.engines.contract``); only the sizes
are bound here.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from asymvq.engines.contract import UNET, VOCABULARY, TensorSpec, check_component, check_io, split_dim
from asymvq.models.components import (
    BINARY,
    CFG_DENOISERS,
    FLUX_TRANSFORMER,
    REAL,
    SDXL_UNET,
    SIGNED_UNIT,
    TIMESTEPS,
    TOKEN_IDS,
)
from asymvq.models.flux_packing import PATCH
from asymvq.models.latent_space import VAE_SCALE_FACTOR, LatentSpace

TEXT_LEN = 77  # CLIP's tokens a prompt (the tokenizer pads to it)
# Each input name's value domain: one per name across the components ("image" is [-1, 1] wherever it is
# an input; tests/models/test_components.py checks it).
_DOMAINS = {t.name: t.domain for c in VOCABULARY.values() for t in c.inputs}
DEFAULT_OPSET = 18  # ONNX opset: >= 17 for LayerNorm/GroupNorm; ONNX Runtime 1.31 and TensorRT 10 both run 18


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
            if any(v % VAE_SCALE_FACTOR for v in getattr(self, name)):
                raise ValueError(f"shapes: {name} values must be multiples of {VAE_SCALE_FACTOR} (the VAE factor), "
                                 f"got {getattr(self, name)}")


# The smallest default height and width: one latent pixel (the UNet's spec rounds it up to its multiple,
# ``io_specs``), so a crop, a region decode or a tile of any size fits the formats that bind a range
# (TensorRT profiles, AOTInductor's dims). ONNX Runtime and OpenVINO take any size (engines/feeds.py).
MIN_SIDE = VAE_SCALE_FACTOR
DEFAULT_SHAPES = {
    "tiny": Shapes((1, 2, 4), (MIN_SIDE, 64, 128), (MIN_SIDE, 64, 128)),
    "sd15": Shapes((1, 1, 4), (MIN_SIDE, 512, 1024), (MIN_SIDE, 512, 1024)),
}


def parse_shapes(text: str | None, preset: str) -> Shapes:
    """``"batch=1:1:4,height=256:512:768,width=256:512:768"``; missing keys keep the preset's."""
    base = DEFAULT_SHAPES["tiny" if preset and preset.startswith("tiny") else "sd15"]  # tiny, tiny-flux, tiny-asuka
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


def spatial_multiple(component: str, module: nn.Module) -> int:
    """The latent size must be a multiple of this for the graph to be valid (UNet down-sampling)."""
    if component in (UNET, SDXL_UNET):
        return 2 ** (len(module.unet.config.block_out_channels) - 1)
    if component == FLUX_TRANSFORMER:
        return PATCH  # 2x2 latent pixels a token
    return 1


def io_specs(component: str, module: nn.Module, shapes: Shapes, precision: str,
             latent_space: LatentSpace | None = None) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Input and output specs of ``component`` for ``shapes`` (pixels) at ``precision``: the vocabulary's
    tensors with their fixed dims bound from ``module`` (``static_dims``) and ``latent_space`` (the
    directory's; None: the module's own channel count), the varying ones ranged over ``shapes``."""
    check_component(component)
    batch = shapes.batch
    if component in CFG_DENOISERS:  # classifier-free guidance runs the UNet on twice the batch
        batch = (batch[0], 2 * batch[1], 2 * batch[2])
    m = spatial_multiple(component, module)
    # min is a lower bound: rounded up to the network's multiple (the smallest latent its down-sampling takes)
    lat = [(-(-lo // VAE_SCALE_FACTOR // m) * m, opt // VAE_SCALE_FACTOR, hi // VAE_SCALE_FACTOR)
           for lo, opt, hi in (shapes.height, shapes.width)]
    if any(v % m for v in lat[0][1:] + lat[1][1:]):
        raise ValueError(f"shapes: the {component} needs opt and max height and width multiples of "
                         f"{VAE_SCALE_FACTOR * m}, got {shapes}")
    sizes = static_dims(component, module, latent_space)
    float_name = "float16" if precision == "fp16" else "float32"
    varying = [{"batch": batch[i], "h": lat[0][i], "w": lat[1][i]} for i in range(3)]

    def spec(tensor) -> TensorSpec:
        dims = tensor.bind_dims(sizes)
        rng = [tuple(d if isinstance(d, int) else split_dim(d)[0] * varying[i][split_dim(d)[1]] for d in dims)
               for i in range(3)]
        return TensorSpec(tensor.name, tensor.dtype(float_name), dims, *rng)

    io = VOCABULARY[component]
    inputs, outputs = [spec(t) for t in io.inputs], [spec(t) for t in io.outputs]
    check_io(component, inputs, outputs, "export")
    return inputs, outputs


def static_dims(component: str, module: nn.Module, latent_space: LatentSpace | None = None) -> dict[str, int]:
    """The sizes of the vocabulary's fixed dims for ``module``: its own (``static_dims()``), the text length,
    and the latent channels of ``latent_space``, which the module must share."""
    sizes = {"text_len": TEXT_LEN, **module.static_dims()}
    if latent_space is not None:
        own = sizes.setdefault("latent_channels", latent_space.channels)
        if own != latent_space.channels:
            raise ValueError(f"latent_space: the {component} has {own} latent channels, the directory's latent space "
                             f"{latent_space.channels}")
    return sizes


def example_inputs(specs: list[TensorSpec], level: str = "opt", *, seed: int = 0) -> dict[str, torch.Tensor]:
    """Valid random inputs at the ``level`` (min/opt/max) shapes of ``specs``, drawn from each tensor's domain."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for s in specs:
        shape = getattr(s, level)
        domain = _DOMAINS.get(s.name, REAL)
        if domain == TOKEN_IDS:
            t = torch.randint(0, 100, shape, generator=g)
        elif domain == BINARY:
            t = (torch.rand(shape, generator=g) > 0.5).float()
        elif domain == TIMESTEPS:
            t = torch.randint(0, 1000, shape, generator=g).float()
        elif domain == SIGNED_UNIT:
            t = torch.rand(shape, generator=g) * 2 - 1
        else:
            t = torch.randn(shape, generator=g)
        out[s.name] = t.to(getattr(torch, s.dtype))
    return out
