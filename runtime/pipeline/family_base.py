"""What the newer families' pipelines (FLUX.1 Fill, SDXL inpainting) share with each other and with SD's:
the VAE encoder and the decoders behind ``Engine`` (``stages.Stages``, so plain and conditional decoders,
tiled and region decoding and the timing spans are the SD pipeline's), the posterior sample drawn with
the caller's generator, and the decode call.

The denoising networks of these families (``FluxTransformer2DModel``, SDXL's UNet with its added
conditions) and their text encoders are called as torch modules inside the same timing spans; they have
no component in the engine vocabulary yet (engines for them: issue 20 part 5).
"""
from __future__ import annotations

import copy
import logging

import torch

from ..engines.contract import VAE_ENCODER
from ..engines.torch_engine import TorchEngine, torch_decoder_engines
from ..models import PRESETS, AsymmetricDecoder
from ..models.checkpoints import decoder_from_vae, load_decoder
from ..models.component_modules import VaeEncoderComponent
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


def check_decoder_latents(decoder: AsymmetricDecoder, latent_space: LatentSpace, family: str) -> None:
    if decoder.config.latent_channels != latent_space.channels:
        raise ValueError(f"decoder: {family} makes {latent_space.channels}-channel latents, this decoder takes "
                         f"{decoder.config.latent_channels} (a decoder of another latent space)")


class FamilyBase:
    """The VAE encoder and decoder engines of one pipeline, its latent space, dtype and device."""

    family = ""
    denoises = True  # False once keep_decoder_only() let go of the denoising networks

    def __init__(self, *, vae, decoder: AsymmetricDecoder, scheduler, compile: bool = False):
        if scheduler is None or not hasattr(scheduler, "config"):
            raise ValueError(f"scheduler: expected a diffusers scheduler, got {type(scheduler).__name__}")
        p = next(vae.parameters())
        self.dtype, self.device = p.dtype, p.device
        self.latent_space = LatentSpace.from_vae_config(dict(vae.config))
        self.decode_dtype = upcast_dtype(vae)  # the decoder's, when it runs above the pipeline's precision
        check_decoder_latents(decoder, self.latent_space, self.family)
        self.decoder_module = decoder  # what an overflow's float32 copy is made from (decode)
        self.stages = Stages({VAE_ENCODER: TorchEngine(VAE_ENCODER, VaeEncoderComponent(vae), compile=compile),
                              **torch_decoder_engines(decoder, compile=compile)})
        self.scheduler = scheduler

    def keep_decoder_only(self) -> None:
        """Let go of the denoising network, the text encoders and the VAE encoder: what a Ray Serve decode stage
        keeps (``PipelineSource.build(DECODER_COMPONENTS)``); ``decode`` runs, ``denoise`` is refused."""
        for name in ("transformer", "unet", "text_encoder", "text_encoder_2"):
            if hasattr(self, name):
                setattr(self, name, None)
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

    def run_text(self, encoder, ids: torch.Tensor, timer, **kwargs):
        with timer.span(SPAN_TEXT), torch.inference_mode():
            return encoder(ids.to(encoder.device), **kwargs)

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
