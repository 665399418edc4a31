"""The contract every engine format meets: component names and I/O, tensor specs, precisions.

This is the bottom of the engines layer and needs only torch and the component vocabulary of
``asymvq.models.components`` (each component's inputs and outputs as typed data, written once
there so the models below can read it too), and the region options' (``asymvq.models.region``).
Export writes artifacts that meet it, the engines check artifacts against it, and the runtime calls
engines through it; the names are imported from here (or from the vocabulary), never spelled again.

An engine maps named input tensors to named output tensors: the pipeline only ever calls
``engine(**feeds)``, so torch modules, ONNX Runtime sessions, OpenVINO compiled models,
TensorRT plans and AOTInductor packages all look the same from there.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch

from asymvq.models.components import (  # noqa: F401 (split_dim and VOCABULARY are re-exported)
    DECODER,
    DECODER_COMPONENTS,
    DECODER_PLAIN,
    STATIC_DIMS,
    TEXT_ENCODER,
    UNET,
    VAE_ENCODER,
    VOCABULARY,
    split_dim,
)
from asymvq.models.region import DEFAULT_REGION_STATS, check_region_stats

# component -> (input names, output names), in pipeline order; dims and dtypes in VOCABULARY.
COMPONENT_IO: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    name: (c.input_names, c.output_names) for name, c in VOCABULARY.items()
}
COMPONENTS = tuple(COMPONENT_IO)

# Engine precisions as written in manifests and on the command line, and their torch dtypes.
PRECISION_DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16}


def precision_dtype(precision: str) -> torch.dtype:
    if precision not in PRECISION_DTYPES:
        raise ValueError(f"precision must be one of {list(PRECISION_DTYPES)}, got {precision!r}")
    return PRECISION_DTYPES[precision]


def check_component(component: str) -> str:
    if component not in COMPONENT_IO:
        raise ValueError(f"component must be one of {list(COMPONENTS)}, got {component!r}")
    return component


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: name, dtype, symbolic dims and the min/opt/max shapes an engine accepts."""

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


def check_io(component: str, inputs: list[TensorSpec], outputs: list[TensorSpec], where: str) -> None:
    """Refuse specs that do not name ``component``'s inputs and outputs in COMPONENT_IO order, so
    an artifact can never be bound under another network's name."""
    check_component(component)
    got = (tuple(s.name for s in inputs), tuple(s.name for s in outputs))
    if got != COMPONENT_IO[component]:
        expected = COMPONENT_IO[component]
        raise ValueError(f"{where}: {component} has I/O {list(got[0])} -> {list(got[1])}, "
                         f"expected {list(expected[0])} -> {list(expected[1])}")


@runtime_checkable
class Engine(Protocol):
    """A compiled or wrapped network: ``engine(**feeds) -> {output_name: tensor}``.

    Optionally it states its ``capabilities`` (a ``Capabilities``) and, when they say tiles or regions,
    runs ``decode_with_modes``; ``EngineBase`` gives every asymvq engine both, and ``capabilities(engine)``
    reads them with the defaults for an engine that states none."""

    component: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]

    def __call__(self, **feeds: torch.Tensor) -> dict[str, torch.Tensor]: ...


@dataclass(frozen=True)
class Capabilities:
    """What an engine states about itself beyond ``engine(**feeds)``, so that callers ask instead of probing
    its insides. An engine that states nothing (any object meeting ``Engine``) has ``Capabilities.of(component)``."""

    condition: bool = False  # a decoder that takes the source image and mask (the "decoder" component)
    tiles: bool = False  # decodes tile by tile: ``engine.decode_with_modes(options, **feeds)`` takes tile/overlap
    regions: bool = False  # decodes only the mask's box: ``decode_with_modes`` takes region/margin
    # the latent crops it decodes, ((min_h, max_h), (min_w, max_w)); None: any size (asymvq.models.region.snap_box)
    region_sizes: tuple | None = None
    # the GroupNorm statistics it normalises a region with (region_stats, asymvq.models.region): a crop decoded
    # alone has its own ("box"); "lowres" needs the torch decoder's passes over the whole image
    region_stats: tuple[str, ...] = (DEFAULT_REGION_STATS,)
    static_dims: dict[str, int] = field(default_factory=dict)  # the vocabulary's STATIC_DIMS it is bound to
    parameters: int | None = None  # how many weights it holds, where it knows (torch modules)

    @classmethod
    def of(cls, component: str, **stated) -> "Capabilities":
        return cls(condition=component == DECODER, **stated)

    def check_region_stats(self, stats, where: str) -> str:
        """``stats`` (checked; None: the default) where this engine runs it, else a ValueError naming the option."""
        stats = check_region_stats(stats)
        if stats not in self.region_stats:
            raise ValueError(f"region_stats: {stats!r} runs on the torch backend only; {where} normalises a region "
                             f"with {' or '.join(map(repr, self.region_stats))} statistics (drop it, or decode with a "
                             "torch decoder: a pipeline from a model folder or a preset, or --backend torch)")
        return stats


def capabilities(engine) -> Capabilities:
    """What ``engine`` states (``engine.capabilities``), or its component's defaults when it states nothing."""
    stated = getattr(engine, "capabilities", None)  # optional in the Engine protocol: foreign engines may omit it
    return stated if isinstance(stated, Capabilities) else Capabilities.of(engine.component)


class EngineBase:
    """What every asymvq engine shares: its component's I/O names and its ``capabilities``.
    Subclasses set ``backend`` and implement ``__call__``."""

    backend = "base"

    def __init__(self, component: str):
        self.component = check_component(component)
        self.input_names, self.output_names = COMPONENT_IO[component]

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities.of(self.component)

    def decode_with_modes(self, options: dict, **feeds: torch.Tensor) -> dict[str, torch.Tensor]:
        """Tiled / region decoding (``capabilities.tiles`` / ``.regions``); engines that state neither refuse it."""
        raise ValueError(f"decode_options: the {self.component} engine ({self.backend}) decodes the whole image only")


def bound_static_dims(component: str, inputs: dict[str, TensorSpec], outputs: list[TensorSpec]) -> dict[str, int]:
    """The vocabulary's static dims (``STATIC_DIMS``) that exported I/O specs bind to a number."""
    specs = {**inputs, **{s.name: s for s in outputs}}
    dims: dict[str, int] = {}
    c = VOCABULARY[component]
    for tensor in c.inputs + c.outputs:
        spec = specs.get(tensor.name)
        for name, size in zip(tensor.dims, spec.dims if spec is not None else ()):
            if name in STATIC_DIMS and isinstance(size, int):
                dims[name] = size
    return dims
