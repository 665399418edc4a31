"""What the newer families' pipelines (FLUX.1 Fill, SDXL inpainting) share with each other and with SD's:
every network behind ``Engine`` (``stages.Stages``, so plain and conditional decoders, tiled and region
decoding and the timing spans are the SD pipeline's), built from live torch networks (``torch_family_engines``)
or loaded from an engines directory (``family_engines_dir``) the same way, the posterior sample drawn with
the caller's generator, and the decode call.

The components are the vocabulary's (``asymvq.models.components.FAMILY_COMPONENTS``): the VAE encoder and
decoders of every family, SDXL's UNet and two text encoders, FLUX.1 Fill's transformer, CLIP and T5.
"""
from __future__ import annotations

import copy
import logging

import torch

from ..engines.contract import DECODER_COMPONENTS, VAE_ENCODER, capabilities, precision_dtype
from ..engines.loader import load_engine_dir, load_scheduler_config, load_tokenizer
from ..engines.manifest import ManifestError, manifest_family, manifest_latent_space, read_manifest
from ..engines.torch_engine import TorchEngine, torch_decoder_engines
from ..models import PRESETS, AsymmetricDecoder
from ..models.checkpoints import decoder_from_vae, load_decoder
from ..models.component_modules import WRAPPERS, VaeEncoderComponent
from ..models.components import DENOISERS, FAMILY_COMPONENTS
from ..models.devices import parse_device
from ..models.latent_space import LatentSpace
from ..models.sources import random_decoder
from ..profiling.timing import NULL_TIMER
from .checks import is_number
from .decode_modes import check_decode_options, run_decoder_with_modes
from .stages import SPAN_TEXT, Stages, check_decoder_engines, run_decoder

# The decoder of a float16 pipeline runs in float32 where float16 gives non-finite values (SDXL's VAE: its
# activations pass float16's 65504). float32, not bfloat16: bfloat16 has the range too, but its 8-bit mantissa
# moves the image away from diffusers' (which upcasts to float32), and CPUs without native bf16 run it slower.
UPCAST_DTYPE = torch.float32
log = logging.getLogger("asymvq.pipeline")


def upcast_dtype(vae) -> torch.dtype | None:
    """``UPCAST_DTYPE`` for a float16 VAE whose config says ``force_upcast`` (SDXL's: its decoder overflows to
    non-finite values in fp16, so diffusers decodes in fp32 and so does asymvq); None otherwise (then a
    float16 decode that still gives non-finite values is redone in float32: ``FamilyBase.decode``)."""
    p = next(vae.parameters())
    return UPCAST_DTYPE if p.dtype == torch.float16 and vae.config.get("force_upcast", False) else None


def family_decoder(vae, decoder=None) -> AsymmetricDecoder:
    """The decoder a family pipeline runs: ``decoder`` (an ``AsymmetricDecoder``, e.g. ASUKA's, a decoder
    preset name for a seeded random one such as "tiny-asuka", or a path ``load_decoder`` reads) or, by
    default, asymvq's plain decoder with the weights of the pipeline's VAE."""
    p = next(vae.parameters())
    dtype = upcast_dtype(vae) or p.dtype
    if decoder is None:
        return decoder_from_vae(vae).to(dtype)
    if isinstance(decoder, str) and decoder in PRESETS:
        return random_decoder(decoder, dtype=dtype, device=p.device)
    if isinstance(decoder, AsymmetricDecoder):
        return decoder.to(device=p.device, dtype=dtype).eval()
    return load_decoder(decoder, dtype=dtype, device=p.device)


def check_decoder_latents(engines: dict, latent_space: LatentSpace, family: str) -> None:
    """Refuse decoder engines bound to another latent space than the pipeline's."""
    for name in DECODER_COMPONENTS:
        channels = capabilities(engines[name]).static_dims.get("latent_channels") if name in engines else None
        if channels is not None and channels != latent_space.channels:
            raise ValueError(f"decoder: {family} makes {latent_space.channels}-channel latents, this decoder takes "
                             f"{channels} (a decoder of another latent space)")


def torch_family_engines(vae, decoder: AsymmetricDecoder, networks: dict, *, compile: bool = False) -> dict:
    """``{component: TorchEngine}``: the VAE's encoder, ``decoder``'s entries and ``networks`` (component ->
    a torch network, or a component wrapper already built, e.g. SDXL's UNet with its time ids), each through
    its vocabulary wrapper, as an exported directory holds them."""
    engines = {VAE_ENCODER: TorchEngine(VAE_ENCODER, VaeEncoderComponent(vae), compile=compile),
               **torch_decoder_engines(decoder, compile=compile)}
    for name, network in networks.items():
        if network is None:
            continue
        module = network if isinstance(network, WRAPPERS[name]) else WRAPPERS[name](network)
        engines[name] = TorchEngine(name, module.eval(), compile=compile)
    return engines


def family_engines_dir(path, family: str, *, device="cpu", backend: str | None = None, **engine_options) -> dict:
    """What a family pipeline takes from an engines directory of ``family``: its engines, latent space, dtype,
    device, scheduler config and tokenizers (``tokenizer``, ``tokenizer_2``; None where not exported)."""
    manifest = read_manifest(path)  # once: the loaders below take it
    if manifest_family(manifest) != family:
        raise ManifestError(f"engines: {path} is a {manifest_family(manifest)} directory, not {family}")
    denoiser = DENOISERS[family]
    if denoiser not in manifest["components"]:
        raise ManifestError(f"engines: {path} has no {denoiser!r} engine; export with --component all "
                            f"({list(FAMILY_COMPONENTS[family])})")
    engines = load_engine_dir(path, device=device, backend=backend, manifest=manifest, **engine_options)
    tokenizers = {k: load_tokenizer(path, manifest=manifest, key=k) if k in manifest else None
                  for k in ("tokenizer", "tokenizer_2")}
    return dict(engines=engines, latent_space=manifest_latent_space(manifest),
                dtype=precision_dtype(manifest["precision"]), device=parse_device(device),
                scheduler_config=load_scheduler_config(path, manifest=manifest), **tokenizers)


class FamilyBase:
    """The engines of one pipeline (every component of its family's, behind ``Stages``), its latent space,
    dtype and device; ``decode_dtype``: the decoders', when they run above the pipeline's precision."""

    family = ""
    denoises = True  # False once keep_decoder_only() let go of the denoising networks

    def __init__(self, *, engines: dict, scheduler, latent_space: LatentSpace, dtype: torch.dtype,
                 device: torch.device, decode_dtype: torch.dtype | None = None,
                 decoder_module: AsymmetricDecoder | None = None):
        if scheduler is None or not hasattr(scheduler, "config"):
            raise ValueError(f"scheduler: expected a diffusers scheduler, got {type(scheduler).__name__}")
        self.dtype, self.device = dtype, device
        self.latent_space = latent_space
        self.decode_dtype = decode_dtype
        check_decoder_latents(engines, self.latent_space, self.family)
        self.stages = Stages(engines)
        self.scheduler = scheduler
        self.decoder_module = decoder_module  # what an fp16 overflow's float32 copy is made from (torch only)

    def static_dim(self, component: str, name: str) -> int | None:
        """A size the ``component`` engine is bound to (``Capabilities.static_dims``), None where it is free."""
        return capabilities(self.stages.engines[component]).static_dims.get(name) if self.stages.has(component) else None

    def run(self, component: str, span: str, timer, **feeds) -> tuple[torch.Tensor, ...]:
        """The outputs of one engine call in the vocabulary's order, timed in ``span``."""
        engine = self.stages.engines.get(component)
        if engine is None:
            raise ValueError(f"this pipeline has no {component!r} engine")
        with timer.span(span), torch.inference_mode():
            out = engine(**feeds)
        return tuple(out[name] for name in engine.output_names)

    def keep_decoder_only(self) -> None:
        """Let go of the denoising network, the text encoders and the VAE encoder: what a Ray Serve decode stage
        keeps (``PipelineSource.build(DECODER_COMPONENTS)``); ``decode`` runs, ``denoise`` is refused."""
        self.stages = Stages(self.stages.decoders())
        self.denoises = False

    def check_denoises(self) -> None:
        if not self.denoises:
            raise ValueError(f"denoise: this {self.family} pipeline keeps only its decoder (a decode stage's); build "
                             "it whole to denoise")

    # -- VAE posterior, drawn as diffusers draws it -------------------------------------------------
    def vae_latents(self, pixels: torch.Tensor, generator, timer) -> torch.Tensor:
        """Sample the VAE posterior with the caller's generator, in diffusion space."""
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        moments = self.stages.vae_encode(pixels.to(device=self.device, dtype=self.dtype), timer)
        return self.latent_space.to_diffusion(DiagonalGaussianDistribution(moments).sample(generator))

    def skip_vae_draw(self, pixels: torch.Tensor, generator) -> None:
        """Consume the draws of a posterior sample diffusers takes and then discards (its encode of the
        source at strength 1, multiplied by 0): the same noise follows, without the encoder's work."""
        from diffusers.utils.torch_utils import randn_tensor

        h, w = (s // self.latent_space.vae_scale_factor for s in pixels.shape[-2:])
        randn_tensor((pixels.shape[0], self.latent_space.channels, h, w), generator=generator, device=self.device,
                     dtype=self.dtype)

    # -- text --------------------------------------------------------------------------------------
    @staticmethod
    def prompts(prompt, arg: str = "prompt") -> list[str]:
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"{arg}: expected a string or a non-empty list of strings, got {prompt!r}")
        return prompts

    @staticmethod
    def tokens(tokenizer, prompts: list[str], max_length: int, arg: str) -> torch.Tensor:
        """Token ids padded to ``max_length``; a prompt longer than that is an error (diffusers truncates it
        with a warning, which silently drops the end of a prompt)."""
        if tokenizer is None:
            raise ValueError(f"{arg}: this pipeline has no tokenizer/text encoder; pass prompt_embeds instead")
        longest = max(len(ids) for ids in tokenizer(prompts).input_ids)
        if longest > max_length:
            raise ValueError(f"{arg}: a prompt is {longest} tokens long, past the text encoder's limit of "
                             f"{max_length}; shorten it")
        return tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True,
                         return_tensors="pt").input_ids

    def run_text(self, component: str, ids: torch.Tensor, timer) -> tuple[torch.Tensor, ...]:
        """A text encoder's outputs for token ``ids`` (the span the SD pipeline times its encoder in)."""
        return self.run(component, SPAN_TEXT, timer, input_ids=ids)

    @staticmethod
    def check_embeds(embeds, arg: str, ndim: int, dim: int | None = None) -> torch.Tensor:
        want = "(B, tokens, dim)" if ndim == 3 else "(B, dim)"
        if not isinstance(embeds, torch.Tensor) or embeds.ndim != ndim or not embeds.is_floating_point() \
                or 0 in embeds.shape or (dim is not None and embeds.shape[-1] != dim):
            got = f"shape {tuple(embeds.shape)}" if isinstance(embeds, torch.Tensor) else type(embeds).__name__
            width = "" if dim is None else f" with dim {dim}"
            raise ValueError(f"{arg}: expected a float tensor {want}{width}, got {got}")
        if embeds.device.type == "meta" or not bool(torch.isfinite(embeds).all()):
            raise ValueError(f"{arg}: expected finite values on a real device")
        return embeds

    @staticmethod
    def check_strength(strength) -> float:
        if not is_number(strength) or not 0.0 < strength <= 1.0:
            raise ValueError(f"strength: expected a value in (0, 1], got {strength!r}")
        return float(strength)

    # -- the decoder half --------------------------------------------------------------------------
    def decode(self, denoised, decoder: dict | None = None, timer=None, decode_options: dict | None = None):
        """Diffusion-space latents -> image in [-1, 1]; a conditional decoder (ASUKA's) gets image and mask. The
        pipeline's own decoder runs in ``decode_dtype`` where set (float32 for SDXL's fp16 VAE), and a float16
        decode with non-finite values is redone, and every later one run, in float32 (``UPCAST_DTYPE``)."""
        options = check_decode_options(decode_options)
        sample = self._decode(denoised, decoder, timer, options)
        if decoder is None and sample.dtype == torch.float16 and not bool(torch.isfinite(sample).all()):
            # float16 overflowed (a VAE without force_upcast, e.g. an fp16 "fix" that does not hold for these
            # latents): this decode again, and every later one, in float32
            log.warning("%s decoder: float16 gave non-finite values; decoding in float32 from now on", self.family)
            self.upcast_decoder()
            sample = self._decode(denoised, None, timer, options)
        return sample

    def upcast_decoder(self) -> None:
        """Run the pipeline's own decoder in ``UPCAST_DTYPE`` from now on (a float32 copy; ``decode_dtype`` says so)."""
        if self.decoder_module is None:  # an exported engine: no weights here to make a float32 copy of
            raise ValueError(f"decoder: the {self.family} decoder engine gave non-finite values in float16; export "
                             "the decoder in fp32 or bf16 (asymvq export --precision)")
        module = copy.deepcopy(self.decoder_module).to(UPCAST_DTYPE)
        self.stages = Stages({**self.stages.engines, **torch_decoder_engines(module)})
        self.decoder_module, self.decode_dtype = module, UPCAST_DTYPE

    def _decode(self, denoised, decoder, timer, options):
        engines = check_decoder_engines(decoder) if decoder is not None else self.stages.decoders()
        latent, image, mask = self.latent_space.to_vae(denoised.latents), denoised.image, denoised.mask
        if self.decode_dtype is not None and decoder is None:
            latent, image, mask = (None if x is None else x.to(self.decode_dtype) for x in (latent, image, mask))
        if options:
            return run_decoder_with_modes(engines, timer or NULL_TIMER, latent, image, mask, options)
        return run_decoder(engines, timer or NULL_TIMER, latent, image, mask)
