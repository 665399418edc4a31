"""``FluxFillInpaintPipeline``: FLUX.1 Fill inpainting, diffusers' ``FluxFillPipeline`` step for step, then
FLUX's plain decoder or a conditional one (ASUKA's) fed with the source image and the mask.

CLIP pooled + T5 text embeddings (or given ``prompt_embeds`` / ``pooled_prompt_embeds``) -> the source
and the masked image through the VAE encoder -> flow matching (``FlowMatchEulerDiscreteScheduler`` with
its resolution-shifted sigmas, the distilled guidance embedding, no CFG) over packed 2x2 tokens with the
masked-image latents and the folded mask as extra channels -> decoder. Random draws come in diffusers'
order (source posterior, noise, masked-image posterior), so a seeded run gives diffusers' image; at
strength 1 the source's encode, which diffusers multiplies by 0, is skipped and only its draws are taken.
"""
from __future__ import annotations

import numpy as np
import torch

from ..models.flux_packing import PATCH, flux_image_ids, pack_flux_latents, pack_flux_mask, unpack_flux_latents
from ..profiling.timing import NULL_TIMER
from .cancel import loop_steps
from .checks import check_generators, check_int, is_number
from .family_base import FamilyBase, family_decoder
from .family_rules import FLUX_FILL, RULES
from .images import postprocess, prepare_image_and_mask
from .outputs import Denoised, InpaintOutput
from .schedulers import copy_scheduler
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
    """FLUX.1 Fill over a ``FluxTransformer2DModel``; build it with ``from_diffusers(pipe, decoder=...)``."""

    family = "FLUX.1 Fill"
    rules = RULES[FLUX_FILL]

    def __init__(self, *, transformer, vae, scheduler, decoder=None, text_encoder=None, tokenizer=None,
                 text_encoder_2=None, tokenizer_2=None, compile: bool = False):
        super().__init__(vae=vae, decoder=family_decoder(vae, decoder), scheduler=scheduler, compile=compile)
        self.transformer = transformer
        self.text_encoder, self.tokenizer = text_encoder, tokenizer
        self.text_encoder_2, self.tokenizer_2 = text_encoder_2, tokenizer_2

    @classmethod
    def from_diffusers(cls, pipe, decoder=None, *, compile: bool = False) -> "FluxFillInpaintPipeline":
        """Take over a diffusers ``FluxFillPipeline``'s networks (shared, not copied); ``decoder``: ASUKA's
        (an ``AsymmetricDecoder`` or a checkpoint path) replaces FLUX's plain decoder."""
        return cls(transformer=pipe.transformer, vae=pipe.vae, scheduler=copy_scheduler(pipe.scheduler),
                   decoder=decoder, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
                   text_encoder_2=pipe.text_encoder_2, tokenizer_2=pipe.tokenizer_2, compile=compile)

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
            clip_len = self.tokenizer.model_max_length if self.tokenizer is not None else 77
            ids = self.tokens(self.tokenizer, prompts, clip_len, "prompt")
            pooled = self.run_text(self.text_encoder, ids, timer, output_hidden_states=False).pooler_output
            ids_2 = self.tokens(self.tokenizer_2, prompts_2, max_sequence_length, "prompt_2")
            embeds = self.run_text(self.text_encoder_2, ids_2, timer, output_hidden_states=False)[0]
        else:
            if pooled_prompt_embeds is None:
                raise ValueError("pooled_prompt_embeds: required with prompt_embeds (FLUX takes CLIP's pooled "
                                 "embedding as well as T5's hidden states)")
            cfg = self.transformer.config
            embeds = self.check_embeds(prompt_embeds, "prompt_embeds", 3, cfg.joint_attention_dim)
            pooled = self.check_embeds(pooled_prompt_embeds, "pooled_prompt_embeds", 2, cfg.pooled_projection_dim)
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
        latents = pack_flux_latents(scheduler.scale_noise(source, timesteps[:1].repeat(batch), noise))

        # the masked image's latents and the folded mask: the transformer's extra input channels
        masked = self.vae_latents(pixels * (1 - mask), generator, timer)
        masked = masked.repeat(batch // masked.shape[0], 1, 1, 1)
        mask_b = mask.repeat(batch // mask.shape[0], 1, 1, 1).to(device=self.device, dtype=self.dtype)
        condition = torch.cat([pack_flux_latents(masked), pack_flux_mask(mask_b)], dim=-1)

        report = None if on_step is None else (
            lambda i, n, packed: report_step(on_step, i, n, unpack_flux_latents(packed, height, width)))
        latents = self._loop(scheduler, timesteps, latents, condition, embeds, pooled, guidance_scale, h, w,
                             timer, progress, cancel, report)
        cond = [x.to(device=self.device, dtype=self.dtype) for x in (pixels, mask)]
        return Denoised(unpack_flux_latents(latents, height, width), *(
            x if x.shape[0] in (1, batch) else x.repeat(batch // x.shape[0], 1, 1, 1) for x in cond))

    def _loop(self, scheduler, timesteps, latents, condition, embeds, pooled, guidance_scale, h, w, timer, progress,
              cancel=None, report=None):
        transformer = self.transformer
        batch = latents.shape[0]
        guidance = (torch.full([batch], guidance_scale, device=self.device, dtype=torch.float32)
                    if transformer.config.guidance_embeds else None)
        text_dtype = self.text_encoder.dtype if self.text_encoder is not None else transformer.dtype
        text_ids = torch.zeros(embeds.shape[1], 3, device=self.device, dtype=text_dtype)
        img_ids = flux_image_ids(h, w, device=self.device, dtype=embeds.dtype)
        for i, t in loop_steps(timesteps, cancel, progress):
            with timer.span(SPAN_UNET), torch.inference_mode():
                timestep = t.expand(batch).to(latents.dtype)
                noise_pred = transformer(hidden_states=torch.cat([latents, condition], dim=2), timestep=timestep / 1000,
                                         guidance=guidance, pooled_projections=pooled, encoder_hidden_states=embeds,
                                         txt_ids=text_ids, img_ids=img_ids, return_dict=False)[0]
            with timer.span(SPAN_SCHEDULER):
                latents = scheduler.step(noise_pred, t, latents, return_dict=False)[0]
            if report is not None:  # the caller's progress hook, outside the spans
                report(i + 1, len(timesteps), latents)
        return latents
