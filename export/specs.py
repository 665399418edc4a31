"""Each component's export signature: dtypes, symbolic dims and shape ranges, as ``TensorSpec``s.

Shape ranges are given in image pixels (batch, height, width) and turned into per-input
min/opt/max shapes here, once, for the manifest, the ONNX dynamic axes and TensorRT's
optimization profiles alike. The names come from ``asymvq.engines.contract.COMPONENT_IO``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from asymvq.engines.contract import COMPONENT_IO, TensorSpec, check_io

TEXT_LEN = 77
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


def spatial_multiple(component: str, module: nn.Module) -> int:
    """The latent size must be a multiple of this for the graph to be valid (UNet down-sampling)."""
    if component == "unet":
        return 2 ** (len(module.unet.config.block_out_channels) - 1)
    return 1


def io_specs(component: str, module: nn.Module, shapes: Shapes, precision: str) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Input and output specs of ``component`` for ``shapes`` (pixels) at ``precision``, named as COMPONENT_IO."""
    inputs, outputs = _io_specs(component, module, shapes, precision)
    check_io(component, inputs, outputs, "export")
    return inputs, outputs


def _io_specs(component, module, shapes, precision):
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
    raise ValueError(f"component must be one of {list(COMPONENT_IO)}, got {component!r}")


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
