"""``FluxFillInpaintPipeline``: FLUX.1 Fill inpainting, diffusers' ``FluxFillPipeline`` step for step, then
FLUX's plain decoder or a conditional one (ASUKA's) fed with the source image and the mask.

CLIP pooled + T5 text embeddings (or given ``prompt_embeds`` / ``pooled_prompt_embeds``) -> the source
and the masked image through the VAE encoder -> flow matching (``FlowMatchEulerDiscreteScheduler`` with
its resolution-shifted sigmas, the distilled guidance embedding, no CFG) over packed 2x2 tokens with the
masked-image latents and the folded mask as extra channels -> decoder. Random draws come in diffusers'
order (source posterior, noise, masked-image posterior), so a seeded run gives diffusers' image; at
strength 1 the source's encode, which diffusers multiplies by 0, is skipped and only its draws are taken.

Every network is an engine of the vocabulary (``flux-text-encoder``, ``t5-encoder``, ``flux-transformer``, the
VAE encoder and decoders): diffusers' modules wrapped (``from_diffusers``) or an exported directory
(``from_engines``), one code path. The transformer's engine packs the tokens and makes the RoPE ids itself,
so the latents stay (B, 16, h, w) through the loop (the flow-matching step is elementwise).
"""
from __future__ import annotations

import numpy as np
import torch

from ..models.components import FLUX_FILL, FLUX_TEXT_ENCODER, FLUX_TRANSFORMER, T5_ENCODER
from ..models.flux_packing import PATCH, pack_flux_latents
from ..models.latent_space import LatentSpace
from ..profiling.timing import NULL_TIMER
from .cancel import loop_steps
from .checks import check_generators, check_int, is_number
from .family_base import FamilyBase, family_decoder, family_engines_dir, torch_family_engines, upcast_dtype
from .family_rules import RULES
from .images import postprocess, prepare_image_and_mask
from .outputs import Denoised, InpaintOutput
from .schedulers import copy_scheduler, make_family_scheduler
from .stages import SPAN_SCHEDULER, SPAN_UNET
from .steps import report_step

SIZE_MULTIPLE = RULES[FLUX_FILL].size_multiple  # 8 (the VAE) x 2 (the 2x2 token packing)
# the distilled guidance embedding was trained on 1..~10 (Fill: 30); past 100 is a mistake
MAX_GUIDANCE = RULES[FLUX_FILL].guidance_range[1]


def check_flux_size(height, width) -> None:
    for name, v in (("height", height), ("width", width)):
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0 or v % SIZE_MULTIPLE:
            raise ValueError(f"{name}: expected a positive multiple of {SIZE_MULTIPLE} for FLUX (8 for the VAE x 2 "
                             f"for the token packing), got {v!r}")


class FluxFillInpaintPipeline(FamilyBase):
    """FLUX.1 Fill over a ``FluxTransformer2DModel``'s engine; build it with ``from_diffusers(pipe, decoder=...)``
    (torch networks) or ``from_engines(dir)`` (an ``asymvq export`` of the flux-fill family)."""

    family = "FLUX.1 Fill"
    rules = RULES[FLUX_FILL]

    def __init__(self, *, engines: dict, scheduler, latent_space, dtype, device, tokenizer=None, tokenizer_2=None,
                 decode_dtype=None, decoder_module=None):
        super().__init__(engines=engines, scheduler=scheduler, latent_space=latent_space, dtype=dtype, device=device,
                         decode_dtype=decode_dtype, decoder_module=decoder_module)
        if not self.stages.has(FLUX_TRANSFORMER):
            raise ValueError(f"engines: a FLUX.1 Fill pipeline needs a {FLUX_TRANSFORMER!r} engine")
        self.tokenizer, self.tokenizer_2 = tokenizer, tokenizer_2

    @classmethod
    def from_diffusers(cls, pipe, decoder=None, *, compile: bool = False) -> "FluxFillInpaintPipeline":
        """Take over a diffusers ``FluxFillPipeline``'s networks (shared, not copied); ``decoder``: ASUKA's
        (an ``AsymmetricDecoder`` or a checkpoint path) replaces FLUX's plain decoder."""
        vae = pipe.vae
        p = next(vae.parameters())
        networks = {FLUX_TRANSFORMER: pipe.transformer, FLUX_TEXT_ENCODER: pipe.text_encoder,
                    T5_ENCODER: pipe.text_encoder_2}
        dec = family_decoder(vae, decoder)
        engines = torch_family_engines(vae, dec, networks, compile=compile)
        return cls(engines=engines, scheduler=copy_scheduler(pipe.scheduler),
                   latent_space=LatentSpace.from_vae_config(dict(vae.config)), dtype=p.dtype, device=p.device,
                   tokenizer=pipe.tokenizer, tokenizer_2=pipe.tokenizer_2, decode_dtype=upcast_dtype(vae),
                   decoder_module=dec)

    @classmethod
    def from_engines(cls, engines_dir, *, device="cpu", backend: str | None = None,
                     **engine_options) -> "FluxFillInpaintPipeline":
        """An engines directory of the flux-fill family (``asymvq export --preset tiny-flux-fill``), any backend
        ``load_engine_dir`` knows; the scheduler is the directory's (FLUX's flow matching)."""
        parts = family_engines_dir(engines_dir, FLUX_FILL, device=device, backend=backend, **engine_options)
        scheduler = make_family_scheduler(parts.pop("scheduler_config"))
        return cls(scheduler=scheduler, **parts)

    def __call__(self, prompt=None, prompt_2=None, image=None, mask_image=None, *, height: int | None = None,
                 width: int | None = None, strength: float = 1.0, num_inference_steps: int = 50, sigmas=None,
                 guidance_scale: float = 30.0, num_images_per_prompt: int = 1, generator=None,
                 prompt_embeds: torch.Tensor | None = None, pooled_prompt_embeds: torch.Tensor | None = None,
                 output_type: str = "pil", max_sequence_length: int = 512, decoder: dict | None = None,
                 timer=None, progress: bool = False, decode_options: dict | None = None) -> InpaintOutput:
        """Arguments and defaults as diffusers' ``FluxFillPipeline``, plus ``decoder`` / ``timer`` /
        ``decode_options`` for this call, as ``InpaintPipeline``'s. ``output_type="latent"`` gives the packed
        latents as diffusers does (``.latents`` holds them unpacked, (B, 16, h, w)). One default differs:
        ``height`` / ``width`` default to the image's size (diffusers': 1024, resizing the image to it)."""
        denoised = self.denoise(prompt, prompt_2, image, mask_image, height=height, width=width, strength=strength,
                                num_inference_steps=num_inference_steps, sigmas=sigmas, guidance_scale=guidance_scale,
                                num_images_per_prompt=num_images_per_prompt, generator=generator,
                                prompt_embeds=prompt_embeds, pooled_prompt_embeds=pooled_prompt_embeds,
                                max_sequence_length=max_sequence_length, timer=timer, progress=progress)
        if output_type == "latent":
            return InpaintOutput(images=pack_flux_latents(denoised.latents), latents=denoised.latents)
        sample = self.decode(denoised, decoder=decoder, timer=timer, decode_options=decode_options)
        return InpaintOutput(images=postprocess(sample, output_type), latents=denoised.latents)

    # -- text --------------------------------------------------------------------------------------
    def encode_prompt(self, prompt, prompt_2, prompt_embeds, pooled_prompt_embeds, num_images_per_prompt: int,
                      max_sequence_length: int, timer=NULL_TIMER):
        """(T5 hidden states (B, tokens, dim), CLIP pooled (B, dim)), each prompt repeated in place."""
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError("prompt / prompt_embeds: pass exactly one of them")
        if prompt is not None:
            prompts = self.prompts(prompt)
            prompts_2 = self.prompts(prompt_2 or prompt, "prompt_2")
            if len(prompts_2) != len(prompts):
                raise ValueError(f"prompt_2: expected {len(prompts)} prompts (one per prompt), got {len(prompts_2)}")
            check_int(max_sequence_length, "max_sequence_length")
            bound = self.static_dim(T5_ENCODER, "text_len")
            if bound is not None and max_sequence_length != bound:
                raise ValueError(f"max_sequence_length: the T5 engine was exported for {bound} tokens, got "
                                 f"{max_sequence_length}; pass {bound} (or re-export)")
            if not (self.stages.has(FLUX_TEXT_ENCODER) and self.stages.has(T5_ENCODER)):
                raise ValueError("prompt: this pipeline has no tokenizer/text encoder; pass prompt_embeds instead")
            clip_len = self.tokenizer.model_max_length if self.tokenizer is not None else 77
            ids = self.tokens(self.tokenizer, prompts, clip_len, "prompt")
            (pooled,) = self.run_text(FLUX_TEXT_ENCODER, ids, timer)
            ids_2 = self.tokens(self.tokenizer_2, prompts_2, max_sequence_length, "prompt_2")
            (embeds,) = self.run_text(T5_ENCODER, ids_2, timer)
        else:
            if pooled_prompt_embeds is None:
                raise ValueError("pooled_prompt_embeds: required with prompt_embeds (FLUX takes CLIP's pooled "
                                 "embedding as well as T5's hidden states)")
            embeds = self.check_embeds(prompt_embeds, "prompt_embeds", 3, self.static_dim(FLUX_TRANSFORMER, "text_dim"))
            pooled = self.check_embeds(pooled_prompt_embeds, "pooled_prompt_embeds", 2,
                                       self.static_dim(FLUX_TRANSFORMER, "pooled_dim"))
            if pooled.shape[0] != embeds.shape[0]:
                raise ValueError(f"pooled_prompt_embeds: expected batch {embeds.shape[0]} (prompt_embeds'), "
                                 f"got {pooled.shape[0]}")
        cast = dict(device=self.device, dtype=self.dtype)
        return (embeds.to(**cast).repeat_interleave(num_images_per_prompt, 0),
                pooled.to(**cast).repeat_interleave(num_images_per_prompt, 0))

    # -- the diffusion half ------------------------------------------------------------------------
    def timesteps(self, scheduler, num_inference_steps: int, sigmas, seq_len: int, strength: float):
        """diffusers' FLUX schedule: sigmas 1 .. 1/n, shifted by ``mu`` for the image's token count, cut by
        ``strength``."""
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps) if sigmas is None else sigmas
        cfg = scheduler.config
        mu = calculate_shift(seq_len, cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                             cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))
        scheduler.set_timesteps(sigmas=sigmas, device=self.device, mu=mu)
        n = len(scheduler.timesteps)
        t_start = int(max(n - min(n * strength, n), 0))
        timesteps = scheduler.timesteps[t_start * scheduler.order:]
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(t_start * scheduler.order)
        if n - t_start < 1:
            raise ValueError(f"strength: {strength} leaves no denoising step out of {n}; raise it")
        return timesteps

    def denoise(self, prompt=None, prompt_2=None, image=None, mask_image=None, *, height=None, width=None,
                strength: float = 1.0, num_inference_steps: int = 50, sigmas=None, guidance_scale: float = 30.0,
                num_images_per_prompt: int = 1, generator=None, prompt_embeds=None, pooled_prompt_embeds=None,
                max_sequence_length: int = 512, timer=None, progress: bool = False, cancel=None,
                on_step=None) -> Denoised:
        """Everything before the decoder; the latents come back unpacked, (B, 16, h, w), diffusion space.
        ``cancel``: asked before each transformer step, as ``InpaintPipeline.denoise``'s (``asymvq.pipeline.cancel``);
        ``on_step``: told after each step, the latents unpacked (``asymvq.pipeline.steps``)."""
        from diffusers.utils.torch_utils import randn_tensor

        self.check_denoises()
        timer = timer or NULL_TIMER
        check_int(num_inference_steps, "num_inference_steps")
        check_int(num_images_per_prompt, "num_images_per_prompt")
        strength = self.check_strength(strength)
        if not is_number(guidance_scale) or not 0.0 <= guidance_scale <= MAX_GUIDANCE:
            raise ValueError(f"guidance_scale: expected a number in [0, {MAX_GUIDANCE:g}] (FLUX's distilled guidance; "
                             f"Fill's default is 30), got {guidance_scale!r}")
        if image is None or mask_image is None:
            raise ValueError(f"{'image' if image is None else 'mask_image'}: required, FLUX.1 Fill inpaints")
        if height is not None or width is not None:
            check_flux_size(height if height is not None else SIZE_MULTIPLE, width if width is not None else SIZE_MULTIPLE)
        pixels, mask, height, width = prepare_image_and_mask(image, mask_image, height, width)
        check_flux_size(height, width)

        embeds, pooled = self.encode_prompt(prompt, prompt_2, prompt_embeds, pooled_prompt_embeds,
                                            num_images_per_prompt, max_sequence_length, timer)
        batch = embeds.shape[0]
        for name, x in (("image", pixels), ("mask_image", mask)):
            if x.shape[0] not in (1, batch) and batch % x.shape[0]:
                raise ValueError(f"{name}: expected batch 1 or a divisor of {batch} (prompts x images per prompt), "
                                 f"got batch {x.shape[0]}")
        generator = check_generators(generator, batch, self.device)
        h, w = height // self.latent_space.vae_scale_factor, width // self.latent_space.vae_scale_factor

        scheduler = copy_scheduler(self.scheduler)  # a fresh one per call: no step state shared between calls
        timesteps = self.timesteps(scheduler, num_inference_steps, sigmas, (h // PATCH) * (w // PATCH), strength)

        # initial latents: source posterior (diffusers draws it even at strength 1), then the noise
        if strength < 1.0:
            source = self.vae_latents(pixels, generator, timer)
            source = source.repeat(batch // source.shape[0], 1, 1, 1)
        else:
            self.skip_vae_draw(pixels, generator)
            source = torch.zeros((batch, self.latent_space.channels, h, w), device=self.device, dtype=self.dtype)
        noise = randn_tensor((batch, self.latent_space.channels, h, w), generator=generator, device=self.device,
                             dtype=self.dtype)
        # flow matching is elementwise: the latents stay on their (h, w) grid, and the transformer's engine packs
        # them into tokens with the masked image's latents and the folded mask (its extra input channels)
        latents = scheduler.scale_noise(source, timesteps[:1].repeat(batch), noise)
        masked = self.vae_latents(pixels * (1 - mask), generator, timer)
        masked = masked.repeat(batch // masked.shape[0], 1, 1, 1)
        mask_b = mask.repeat(batch // mask.shape[0], 1, 1, 1).to(device=self.device, dtype=self.dtype)

        latents = self._loop(scheduler, timesteps, latents, masked, mask_b, embeds, pooled, guidance_scale, timer,
                             progress, cancel, on_step)
        cond = [x.to(device=self.device, dtype=self.dtype) for x in (pixels, mask)]
        return Denoised(latents, *(x if x.shape[0] in (1, batch) else x.repeat(batch // x.shape[0], 1, 1, 1)
                                   for x in cond))

    def _loop(self, scheduler, timesteps, latents, masked, mask, embeds, pooled, guidance_scale, timer, progress,
              cancel=None, on_step=None):
        batch = latents.shape[0]
        guidance = torch.full([batch], guidance_scale, device=self.device, dtype=torch.float32)
        for i, t in loop_steps(timesteps, cancel, progress):
            (noise_pred,) = self.run(FLUX_TRANSFORMER, SPAN_UNET, timer, sample=latents, masked_latent=masked,
                                     mask=mask, timestep=t.expand(batch).to(torch.float32), guidance=guidance,
                                     encoder_hidden_states=embeds, pooled_projections=pooled)
            with timer.span(SPAN_SCHEDULER):
                latents = scheduler.step(noise_pred.to(latents.dtype), t, latents, return_dict=False)[0]
            report_step(on_step, i + 1, len(timesteps), latents)  # the caller's progress hook, outside the spans
        return latents
