"""The backend seam: the pipeline runs each network as an ``Engine`` and nothing else.

A pipeline is built from ``{component: Engine}`` keyed by ``asymvq.engines.COMPONENT_IO``
names plus a tokenizer, a scheduler and a ``PipelineSpec``. Torch modules, ONNX Runtime
sessions, OpenVINO models, TensorRT plans and AOTInductor packages all plug in here without
the orchestration changing. ``Stages`` adds the one thing the orchestration needs around
each call: a named timing span on the timer the caller passes (state of the call, not of
the pipeline, so concurrent calls never share one).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..engines.contract import (
    COMPONENT_IO,
    DECODER,
    DECODER_COMPONENTS,
    DECODER_PLAIN,
    TEXT_ENCODER,
    UNET,
    VAE_ENCODER,
    Engine,
)
from ..models.components import FAMILY_COMPONENTS
from ..models.components import SD as SD_FAMILY
from ..models.latent_space import SD as SD_LATENTS
from ..models.latent_space import LatentSpace
from ..profiling.timing import NULL_TIMER

# The components of each half of SD's pipeline: a pipeline built from one of these runs denoise() or decode() only
# (the other families' halves: FAMILY_COMPONENTS less the decoders).
DENOISE_COMPONENTS = tuple(c for c in FAMILY_COMPONENTS[SD_FAMILY] if c not in DECODER_COMPONENTS)

# Span names, shared by the pipeline, the profiler and the JSON report.
SPAN_TEXT, SPAN_VAE_ENCODE, SPAN_UNET, SPAN_SCHEDULER, SPAN_DECODE = (
    "text_encode", "vae_encode", "unet_step", "scheduler_step", "decode",
)


@dataclass(frozen=True)
class PipelineSpec:
    """What the orchestration must know about the networks, whichever backend runs them."""

    unet_in_channels: int  # 2c+1 (9 for SD): inpainting UNet (noise, mask, masked-image latents); c: text-to-image
    latent_space: LatentSpace = SD_LATENTS  # the VAE's channels, scaling and shift factors
    sample_size: int = 64  # the UNet's native latent size; default image size = 8x this
    dtype: torch.dtype = torch.float32
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def __post_init__(self):
        if not isinstance(self.latent_space, LatentSpace):
            raise ValueError(f"latent_space: expected an asymvq LatentSpace, got {type(self.latent_space).__name__}")
        c = self.latent_channels
        if self.unet_in_channels not in (c, 2 * c + 1):
            raise ValueError(f"unet_in_channels must be {2 * c + 1} (inpainting) or {c} (text-to-image), "
                             f"got {self.unet_in_channels}")
        object.__setattr__(self, "device", torch.device(self.device))

    @property
    def inpainting(self) -> bool:
        return self.unet_in_channels == 2 * self.latent_channels + 1

    @property
    def latent_channels(self) -> int:
        return self.latent_space.channels

    @property
    def vae_scale_factor(self) -> int:
        return self.latent_space.vae_scale_factor


def _check_engine(name: str, engine) -> None:
    if not callable(engine) or getattr(engine, "component", None) != name:
        raise ValueError(
            f"engines[{name!r}]: expected an asymvq Engine for component {name!r}, "
            f"got {type(engine).__name__} (component={getattr(engine, 'component', None)!r})"
        )


def check_decoder_engines(engines: dict) -> dict[str, Engine]:
    """A decoder is one or both of "decoder" (image + mask condition) and "decoder-plain"."""
    if not isinstance(engines, dict) or not any(k in engines for k in DECODER_COMPONENTS):
        raise ValueError(f"decoder engines: expected a dict with {DECODER!r} and/or {DECODER_PLAIN!r}, got {engines!r}")
    for k, e in engines.items():
        if k not in DECODER_COMPONENTS:
            raise ValueError(f"decoder engines: unexpected key {k!r}, expected {DECODER_COMPONENTS}")
        _check_engine(k, e)
    return dict(engines)


class Stages:
    """The pipeline's networks behind ``Engine``, each call wrapped in a timing span."""

    def __init__(self, engines: dict[str, Engine]):
        unknown = sorted(set(engines) - set(COMPONENT_IO))
        if unknown:
            raise ValueError(f"engines: unknown components {unknown}, expected keys among {sorted(COMPONENT_IO)}")
        for name, engine in engines.items():
            _check_engine(name, engine)
        self.engines = dict(engines)

    def has(self, component: str) -> bool:
        return component in self.engines

    def _run(self, component: str, span: str, timer, **feeds: torch.Tensor) -> torch.Tensor:
        engine = self.engines.get(component)
        if engine is None:
            raise ValueError(f"this pipeline has no {component!r} engine")
        with timer.span(span):
            out = engine(**feeds)
        return out[engine.output_names[0]]

    def text_encode(self, input_ids: torch.Tensor, timer=NULL_TIMER) -> torch.Tensor:
        return self._run(TEXT_ENCODER, SPAN_TEXT, timer, input_ids=input_ids)

    def vae_encode(self, image: torch.Tensor, timer=NULL_TIMER) -> torch.Tensor:
        """image in [-1, 1] -> moments (mean, logvar) of the latent distribution."""
        return self._run(VAE_ENCODER, SPAN_VAE_ENCODE, timer, image=image)

    def unet(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        # No span here: the pipeline times the UNet together with the guidance mix.
        engine = self.engines.get(UNET)
        if engine is None:
            raise ValueError(f"this pipeline has no {UNET!r} engine")
        out = engine(sample=sample, timestep=timestep, encoder_hidden_states=encoder_hidden_states)
        return out[engine.output_names[0]]

    def decoders(self) -> dict[str, Engine]:
        return {k: self.engines[k] for k in DECODER_COMPONENTS if k in self.engines}


def pick_decoder(engines: dict[str, Engine], image) -> str:
    """Which decoder engine decodes: "decoder" when there is an image (inpainting) and the decoder has a
    condition branch, "decoder-plain" otherwise. A decoder without a "decoder" engine (the plain SD
    one) ignores image and mask, which is what diffusers does with an ``AutoencoderKL``."""
    if image is not None and DECODER in engines:
        return DECODER
    if DECODER_PLAIN in engines:
        return DECODER_PLAIN
    raise ValueError(
        "decoder: this decoder has only a conditioned engine ('decoder'), which needs image and mask; "
        "text-to-image needs a 'decoder-plain' engine"
    )


def run_decoder(engines: dict[str, Engine], timer, latent: torch.Tensor, image=None, mask=None) -> torch.Tensor:
    """VAE-space latents -> image in [-1, 1]; with image and mask when the decoder has a condition branch."""
    name = pick_decoder(engines, image)
    engine = engines[name]
    feeds = dict(latent=latent, image=image, mask=mask) if name == DECODER else dict(latent=latent)
    with timer.span(SPAN_DECODE):
        out = engine(**feeds)
    return out[engine.output_names[0]]
