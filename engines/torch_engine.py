"""The torch engine: a component module run eagerly or through torch.compile, and the
factories that wrap live torch networks (a decoder, a diffusers UNet, ...) as engines."""
from __future__ import annotations

import torch
from torch import nn

from asymvq.models.component_modules import (
    WRAPPERS,
    DecoderComponent,
    PlainDecoderComponent,
    TextEncoderComponent,
    UNetComponent,
    VaeEncoderComponent,
)
from asymvq.models.cpu_bf16 import is_cpu_bf16, to_cpu_bf16
from asymvq.models.region import REGION_STATS

from .contract import DECODER, DECODER_PLAIN, TEXT_ENCODER, UNET, VAE_ENCODER, Capabilities, Engine, EngineBase

_DECODER_WRAPPERS = (DecoderComponent, PlainDecoderComponent)


class TorchEngine(EngineBase):
    """Runs a component wrapper (``asymvq.models.component_modules``) behind the ``Engine`` interface.

    ``compile=True`` wraps the module in ``torch.compile`` (the diffusers recipe); the
    first call then pays the compilation, which a profiler counts as warm-up.
    """

    backend = "torch"

    def __init__(self, component: str, module: nn.Module, *, compile: bool = False, compile_mode: str | None = None):
        super().__init__(component)
        self.module = module.eval()
        self._run = torch.compile(self.module, mode=compile_mode, fullgraph=True) if compile else self.module
        if compile:
            self.backend = "torch-compile"

    @property
    def device(self) -> torch.device:
        p = next(self.module.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        p = next(self.module.parameters(), None)
        return p.dtype if p is not None else torch.float32

    @property
    def capabilities(self) -> Capabilities:
        """A wrapped ``AsymmetricDecoder`` tiles and decodes regions with every ``region_stats`` (Python around its
        modules, so a torch-compile engine runs them eagerly); a component wrapper names its static dims."""
        modes = isinstance(self.module, _DECODER_WRAPPERS)
        wrapper = isinstance(self.module, tuple(WRAPPERS.values()))  # a bare module names no static dims
        return Capabilities.of(self.component, tiles=modes, regions=modes,
                               **({"region_stats": REGION_STATS} if modes else {}),
                               static_dims=self.module.static_dims() if wrapper else {},
                               parameters=sum(p.numel() for p in self.module.parameters()))

    def decode_with_modes(self, options: dict, **feeds: torch.Tensor) -> dict[str, torch.Tensor]:
        """The decoder's own call with tile / region ``options`` (``asymvq.models.tiled_decode``)."""
        if not isinstance(self.module, _DECODER_WRAPPERS):
            return super().decode_with_modes(options, **feeds)
        latent, *condition = (feeds[n] for n in self.input_names)
        image, mask = condition or (None, None)  # the plain decoder: no condition branch
        with torch.inference_mode():
            return {self.output_names[0]: self.module.decoder(latent, image, mask, **options)}

    def __call__(self, **feeds: torch.Tensor) -> dict[str, torch.Tensor]:
        missing = [n for n in self.input_names if n not in feeds]
        extra = [n for n in feeds if n not in self.input_names]
        if missing or extra:
            raise ValueError(
                f"{self.component} engine: expected inputs {list(self.input_names)}, "
                f"missing {missing}, unexpected {extra}"
            )
        with torch.inference_mode():
            out = self._run(*(feeds[n] for n in self.input_names))
        return dict(zip(self.output_names, out)) if isinstance(out, tuple) else {self.output_names[0]: out}


def torch_decoder_engines(decoder, *, compile: bool = False) -> dict[str, Engine]:
    """Both entry points of an ``AsymmetricDecoder`` (only the plain one for a vanilla decoder).

    A bf16 decoder on the CPU is prepared as ``asymvq.models.cpu_bf16`` says (channels-last, fp32 conv_out)."""
    if is_cpu_bf16(decoder):
        to_cpu_bf16(decoder)
    engines = {DECODER_PLAIN: TorchEngine(DECODER_PLAIN, PlainDecoderComponent(decoder), compile=compile)}
    if decoder.config.has_condition:
        engines[DECODER] = TorchEngine(DECODER, DecoderComponent(decoder), compile=compile)
    return engines


def torch_engines(*, unet, vae_encoder_source=None, text_encoder=None, decoder=None, compile: bool = False) -> dict[str, Engine]:
    """Wrap torch networks (diffusers UNet, a VAE with ``.encoder``, CLIPTextModel, AsymmetricDecoder)."""
    engines: dict[str, Engine] = {UNET: TorchEngine(UNET, UNetComponent(unet), compile=compile)}
    if vae_encoder_source is not None:
        engines[VAE_ENCODER] = TorchEngine(VAE_ENCODER, VaeEncoderComponent(vae_encoder_source), compile=compile)
    if text_encoder is not None:
        engines[TEXT_ENCODER] = TorchEngine(TEXT_ENCODER, TextEncoderComponent(text_encoder), compile=compile)
    if decoder is not None:
        engines.update(torch_decoder_engines(decoder, compile=compile))
    return engines
