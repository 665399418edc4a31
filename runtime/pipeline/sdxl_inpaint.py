"""``SDXLInpaintPipeline``: SDXL inpainting, diffusers' ``StableDiffusionXLInpaintPipeline`` step for step,
then asymvq's decoder (SDXL's own VAE decoder, or a conditional one of its latent space).

Two CLIP text encoders (penultimate hidden states concatenated, pooled from the second; either may be
replaced by given embeddings), the added time ids (original size, crop, target size; or the refiner's
aesthetic score when the pipeline's config asks for it), classifier-free guidance with optional
rescale, ``strength``, and either UNet: the 9-channel inpainting one (mask and masked-image latents as
extra channels) or the 4-channel base with diffusers' masked latent blending after each step. Random
draws come in diffusers' order (source posterior when diffusers takes it, noise, masked-image
posterior); a posterior diffusers computes and never uses (the masked image's, for a 4-channel UNet)
is skipped and only its draws are taken.

Every network is an engine of the vocabulary (``sdxl-text-encoder``, ``sdxl-text-encoder-2``, ``sdxl-unet``, the
VAE encoder and decoders): diffusers' modules wrapped (``from_diffusers``) or an exported directory
(``from_engines``), one code path.
"""
from __future__ import annotations

import torch

from ..engines.contract import capabilities
from ..models.component_modules import SDXLUNetComponent
from ..models.components import SDXL, SDXL_TEXT_ENCODER, SDXL_TEXT_ENCODER_2, SDXL_UNET
from ..models.latent_space import LatentSpace
from ..profiling.timing import NULL_TIMER
from .cancel import loop_steps
from .checks import check_generators, check_guidance, check_int, is_number
from .family_base import FamilyBase, family_decoder, family_engines_dir, torch_family_engines, upcast_dtype
from .family_rules import RULES
from .images import postprocess, prepare_image_and_mask
from .outputs import Denoised, InpaintOutput
from .schedulers import copy_scheduler, make_family_scheduler, make_scheduler, step_kwargs, switch_scheduler
from .stages import SPAN_SCHEDULER, SPAN_UNET
from .steps import report_step


class SDXLInpaintPipeline(FamilyBase):
    """SDXL inpainting over a diffusers ``UNet2DConditionModel`` with ``text_time`` added conditions, as an
    engine; build it with ``from_diffusers(pipe, decoder=...)`` (torch networks) or ``from_engines(dir)`` (an
    ``asymvq export`` of the sdxl family)."""

    family = "SDXL"
    rules = RULES[SDXL]

    def __init__(self, *, engines: dict, scheduler, latent_space, dtype, device, tokenizer=None, tokenizer_2=None,
                 requires_aesthetics_score: bool = False, force_zeros_for_empty_prompt: bool = True,
                 decode_dtype=None, decoder_module=None):
        super().__init__(engines=engines, scheduler=scheduler, latent_space=latent_space, dtype=dtype, device=device,
                         decode_dtype=decode_dtype, decoder_module=decoder_module)
        if not self.stages.has(SDXL_UNET):
            raise ValueError(f"engines: an SDXL pipeline needs a {SDXL_UNET!r} engine")
        channels = self.static_dim(SDXL_UNET, "unet_in_channels")
        if channels not in (4, 9):
            raise ValueError(f"engines: the {SDXL_UNET} takes {channels} input channels, expected 9 (inpainting) or 4")
        self.tokenizer, self.tokenizer_2 = tokenizer, tokenizer_2
        self.requires_aesthetics_score = bool(requires_aesthetics_score)
        self.force_zeros_for_empty_prompt = bool(force_zeros_for_empty_prompt)
        time_ids = self.static_dim(SDXL_UNET, "time_ids_dim")
        if time_ids != (5 if self.requires_aesthetics_score else 6):
            raise ValueError(f"requires_aesthetics_score: {self.requires_aesthetics_score} needs "
                             f"{5 if self.requires_aesthetics_score else 6} time ids, the {SDXL_UNET} takes {time_ids}")

    @classmethod
    def from_diffusers(cls, pipe, decoder=None, *, scheduler: str | None = None,
                       compile: bool = False) -> "SDXLInpaintPipeline":
        """Take over a diffusers ``StableDiffusionXLInpaintPipeline``'s networks (shared, not copied);
        ``scheduler``: a name of ``SCHEDULERS`` to run instead of the pipeline's, with its noise schedule."""
        unet, vae = pipe.unet, pipe.vae
        if unet.config.in_channels not in (4, 9) or unet.config.addition_embed_type != "text_time":
            raise ValueError(f"unet: expected an SDXL UNet (4 or 9 input channels, 'text_time' added conditions), got "
                             f"{unet.config.in_channels} channels and addition_embed_type "
                             f"{unet.config.addition_embed_type!r}")
        if unet.config.time_cond_proj_dim is not None:
            raise ValueError("unet: a guidance-embedding (LCM) UNet is not supported; use a plain SDXL UNet")
        aesthetics = pipe.config.get("requires_aesthetics_score", False)
        sched = copy_scheduler(pipe.scheduler) if scheduler is None else switch_scheduler(scheduler, pipe.scheduler)
        networks = {SDXL_UNET: SDXLUNetComponent(unet, time_ids=5 if aesthetics else 6),
                    SDXL_TEXT_ENCODER: pipe.text_encoder, SDXL_TEXT_ENCODER_2: pipe.text_encoder_2}
        p = next(vae.parameters())
        dec = family_decoder(vae, decoder)
        return cls(engines=torch_family_engines(vae, dec, networks, compile=compile),
                   scheduler=sched, latent_space=LatentSpace.from_vae_config(dict(vae.config)), dtype=p.dtype,
                   device=p.device, tokenizer=pipe.tokenizer, tokenizer_2=pipe.tokenizer_2,
                   requires_aesthetics_score=aesthetics,
                   force_zeros_for_empty_prompt=pipe.config.get("force_zeros_for_empty_prompt", True),
                   decode_dtype=upcast_dtype(vae), decoder_module=dec)

    @classmethod
    def from_engines(cls, engines_dir, *, device="cpu", backend: str | None = None, scheduler: str | None = None,
                     **engine_options) -> "SDXLInpaintPipeline":
        """An engines directory of the sdxl family (``asymvq export --preset tiny-sdxl``), any backend
        ``load_engine_dir`` knows; ``scheduler``: a name of ``SCHEDULERS``, or None for the directory's own."""
        parts = family_engines_dir(engines_dir, SDXL, device=device, backend=backend, **engine_options)
        config = parts.pop("scheduler_config")
        sched = make_family_scheduler(config) if scheduler is None else make_scheduler(scheduler, config)
        unet = parts["engines"][SDXL_UNET]
        aesthetics = capabilities(unet).static_dims.get("time_ids_dim") == 5  # the refiner's ids
        return cls(scheduler=sched, requires_aesthetics_score=aesthetics, **parts)

    def __call__(self, prompt=None, prompt_2=None, image=None, mask_image=None, *, height=None, width=None,
                 strength: float = 0.9999, num_inference_steps: int = 50, guidance_scale: float = 7.5,
                 negative_prompt=None, negative_prompt_2=None, num_images_per_prompt: int = 1, eta: float = 0.0,
                 generator=None, prompt_embeds=None, negative_prompt_embeds=None, pooled_prompt_embeds=None,
                 negative_pooled_prompt_embeds=None, output_type: str = "pil", guidance_rescale: float = 0.0,
                 original_size=None, crops_coords_top_left=(0, 0), target_size=None, negative_original_size=None,
                 negative_crops_coords_top_left=(0, 0), negative_target_size=None, aesthetic_score: float = 6.0,
                 negative_aesthetic_score: float = 2.5, decoder: dict | None = None, scheduler: str | None = None,
                 timer=None, progress: bool = False, decode_options: dict | None = None) -> InpaintOutput:
        """Arguments and defaults as diffusers' ``StableDiffusionXLInpaintPipeline`` (``strength`` 0.9999
        included), plus ``decoder`` / ``scheduler`` / ``timer`` / ``decode_options`` for this call, as
        ``InpaintPipeline``'s. ``height`` / ``width`` default to the image's size (diffusers': the UNet's)."""
        denoised = self.denoise(
            prompt, prompt_2, image, mask_image, height=height, width=width, strength=strength,
            num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, negative_prompt=negative_prompt,
            negative_prompt_2=negative_prompt_2, num_images_per_prompt=num_images_per_prompt, eta=eta,
            generator=generator, prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds, negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
            guidance_rescale=guidance_rescale, time_ids=dict(
                original_size=original_size, crops_coords_top_left=crops_coords_top_left, target_size=target_size,
                negative_original_size=negative_original_size,
                negative_crops_coords_top_left=negative_crops_coords_top_left,
                negative_target_size=negative_target_size, aesthetic_score=aesthetic_score,
                negative_aesthetic_score=negative_aesthetic_score),
            scheduler=scheduler, timer=timer, progress=progress)
        if output_type == "latent":
            return InpaintOutput(images=denoised.latents, latents=denoised.latents)
        sample = self.decode(denoised, decoder=decoder, timer=timer, decode_options=decode_options)
        return InpaintOutput(images=postprocess(sample, output_type), latents=denoised.latents)

    # -- text --------------------------------------------------------------------------------------
    def _encode(self, prompts: list[str], prompts_2: list[str], arg: str, timer, length=None):
        """(hidden states of the encoders' penultimate layers, concatenated; pooled of the last encoder)."""
        pairs = [(self.tokenizer, SDXL_TEXT_ENCODER, prompts)] if self.stages.has(SDXL_TEXT_ENCODER) else []
        pairs.append((self.tokenizer_2, SDXL_TEXT_ENCODER_2, prompts_2))
        hidden, pooled = [], None
        for tokenizer, encoder, texts in pairs:
            if not self.stages.has(encoder) or tokenizer is None:
                raise ValueError(f"{arg}: this pipeline has no tokenizer/text encoder; pass prompt_embeds instead")
            ids = self.tokens(tokenizer, texts, length or tokenizer.model_max_length, arg)
            states, *projection = self.run_text(encoder, ids, timer)
            pooled = projection[0] if projection else pooled  # the second encoder's: the pooled embedding
            hidden.append(states)
        return torch.cat(hidden, dim=-1), pooled

    def encode_prompt(self, prompt, prompt_2, negative_prompt, negative_prompt_2, prompt_embeds,
                      negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds, do_cfg: bool,
                      num_images_per_prompt: int, timer=NULL_TIMER):
        """(embeds, pooled), each (negative; positive) stacked under guidance, each prompt repeated in place."""
        text_dim, pooled_dim = self.static_dim(SDXL_UNET, "text_dim"), self.static_dim(SDXL_UNET, "pooled_dim")
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError("prompt / prompt_embeds: pass exactly one of them")
        if prompt is not None:
            prompts = self.prompts(prompt)
            embeds, pooled = self._encode(prompts, self.prompts(prompt_2 or prompt, "prompt_2"), "prompt", timer)
        else:
            if pooled_prompt_embeds is None:
                raise ValueError("pooled_prompt_embeds: required with prompt_embeds (SDXL's added conditions take "
                                 "the second text encoder's pooled embedding)")
            embeds = self.check_embeds(prompt_embeds, "prompt_embeds", 3, text_dim)
            pooled = self.check_embeds(pooled_prompt_embeds, "pooled_prompt_embeds", 2, pooled_dim)
        batch = embeds.shape[0]
        if do_cfg:
            if negative_prompt_embeds is not None:
                if negative_pooled_prompt_embeds is None:
                    raise ValueError("negative_pooled_prompt_embeds: required with negative_prompt_embeds")
                negative = self.check_embeds(negative_prompt_embeds, "negative_prompt_embeds", 3, text_dim)
                negative_pooled = self.check_embeds(negative_pooled_prompt_embeds, "negative_pooled_prompt_embeds", 2,
                                                    pooled_dim)
            elif negative_prompt is None and self.force_zeros_for_empty_prompt:
                negative, negative_pooled = torch.zeros_like(embeds), torch.zeros_like(pooled)
            else:
                negatives = [negative_prompt or ""] * batch if not isinstance(negative_prompt, list) else negative_prompt
                negatives_2 = negative_prompt_2 or negative_prompt or ""
                negatives_2 = [negatives_2] * batch if not isinstance(negatives_2, list) else negatives_2
                if len(negatives) != batch or len(negatives_2) != batch:
                    raise ValueError(f"negative_prompt: expected a string or a list of {batch} strings, "
                                     f"got {negative_prompt!r}")
                negative, negative_pooled = self._encode(self.prompts(negatives, "negative_prompt"),
                                                         self.prompts(negatives_2, "negative_prompt_2"),
                                                         "negative_prompt", timer, length=embeds.shape[1])
            if negative.shape != embeds.shape or negative_pooled.shape != pooled.shape:
                raise ValueError(f"negative_prompt_embeds: expected the shapes of the prompt's {tuple(embeds.shape)} "
                                 f"and {tuple(pooled.shape)}, got {tuple(negative.shape)} and "
                                 f"{tuple(negative_pooled.shape)}")
            embeds, pooled = torch.cat([negative, embeds]), torch.cat([negative_pooled, pooled])
        cast = dict(device=self.device, dtype=self.dtype)
        return (embeds.to(**cast).repeat_interleave(num_images_per_prompt, 0),
                pooled.to(**cast).repeat_interleave(num_images_per_prompt, 0))

    def add_time_ids(self, height: int, width: int, t: dict, batch: int, do_cfg: bool) -> torch.Tensor:
        """The added time ids, (negative; positive) under guidance: diffusers' ``_get_add_time_ids``."""
        original, target = tuple(t["original_size"] or (height, width)), tuple(t["target_size"] or (height, width))
        neg_original = tuple(t["negative_original_size"] or original)
        neg_target = tuple(t["negative_target_size"] or target)
        crops = tuple(t["crops_coords_top_left"])
        for name in ("aesthetic_score", "negative_aesthetic_score"):
            if not is_number(t[name]):
                raise ValueError(f"{name}: expected a finite number, got {t[name]!r}")
        for name, v in (("original_size", original), ("target_size", target), ("crops_coords_top_left", crops),
                        ("negative_original_size", neg_original), ("negative_target_size", neg_target)):
            if len(v) != 2 or not all(is_number(x) for x in v):
                raise ValueError(f"{name}: expected a pair of numbers (height, width), got {v!r}")
        if self.requires_aesthetics_score:
            pos = original + crops + (t["aesthetic_score"],)
            neg = neg_original + tuple(t["negative_crops_coords_top_left"]) + (t["negative_aesthetic_score"],)
        else:  # diffusers uses the positive crop here too
            pos, neg = original + crops + target, neg_original + crops + neg_target
        ids = torch.tensor([pos], dtype=self.dtype).repeat(batch, 1)
        if do_cfg:
            ids = torch.cat([torch.tensor([neg], dtype=self.dtype).repeat(batch, 1), ids])
        return ids.to(self.device)

    # -- the diffusion half ------------------------------------------------------------------------
    def denoise(self, prompt=None, prompt_2=None, image=None, mask_image=None, *, height=None, width=None,
                strength: float = 0.9999, num_inference_steps: int = 50, guidance_scale: float = 7.5,
                negative_prompt=None, negative_prompt_2=None, num_images_per_prompt: int = 1, eta: float = 0.0,
                generator=None, prompt_embeds=None, negative_prompt_embeds=None, pooled_prompt_embeds=None,
                negative_pooled_prompt_embeds=None, guidance_rescale: float = 0.0, time_ids: dict | None = None,
                scheduler: str | None = None, timer=None, progress: bool = False, cancel=None,
                on_step=None) -> Denoised:
        """Everything before the decoder: diffusion-space latents (B, 4, h, w) and the decoder's condition.
        ``cancel``: asked before each UNet step, as ``InpaintPipeline.denoise``'s (``asymvq.pipeline.cancel``);
        ``on_step``: told after each step (``asymvq.pipeline.steps``)."""
        from diffusers.utils.torch_utils import randn_tensor

        self.check_denoises()
        timer = timer or NULL_TIMER
        check_int(num_inference_steps, "num_inference_steps")
        check_int(num_images_per_prompt, "num_images_per_prompt")
        strength = self.check_strength(strength)
        if not is_number(eta) or not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta: expected a value in [0, 1], got {eta!r}")
        if not is_number(guidance_rescale) or not 0.0 <= guidance_rescale <= 1.0:
            raise ValueError(f"guidance_rescale: expected a value in [0, 1], got {guidance_rescale!r}")
        guidance, do_cfg = check_guidance(guidance_scale)
        if isinstance(guidance, list):
            raise ValueError("guidance_scale: expected one number for SDXL (a list per prompt is SD 1.5's batching)")
        if image is None or mask_image is None:
            raise ValueError(f"{'image' if image is None else 'mask_image'}: required, this pipeline inpaints")
        pixels, mask, height, width = prepare_image_and_mask(image, mask_image, height, width)

        embeds, pooled = self.encode_prompt(prompt, prompt_2, negative_prompt, negative_prompt_2, prompt_embeds,
                                            negative_prompt_embeds, pooled_prompt_embeds,
                                            negative_pooled_prompt_embeds, do_cfg, num_images_per_prompt, timer)
        batch = embeds.shape[0] // (2 if do_cfg else 1)
        for name, x in (("image", pixels), ("mask_image", mask)):
            if x.shape[0] not in (1, batch) and batch % x.shape[0]:
                raise ValueError(f"{name}: expected batch 1 or a divisor of {batch} (prompts x images per prompt), "
                                 f"got batch {x.shape[0]}")
        generator = check_generators(generator, batch, self.device)
        add_time_ids = self.add_time_ids(height, width, time_ids or dict(
            original_size=None, crops_coords_top_left=(0, 0), target_size=None, negative_original_size=None,
            negative_crops_coords_top_left=(0, 0), negative_target_size=None, aesthetic_score=6.0,
            negative_aesthetic_score=2.5), batch, do_cfg)

        sched = copy_scheduler(self.scheduler) if scheduler is None else switch_scheduler(scheduler, self.scheduler)
        sched.set_timesteps(num_inference_steps, device=self.device)
        t_start = max(num_inference_steps - min(int(num_inference_steps * strength), num_inference_steps), 0)
        if num_inference_steps - t_start < 1:
            raise ValueError(f"strength: {strength} leaves no denoising step out of {num_inference_steps}; raise it")
        timesteps = sched.timesteps[t_start * sched.order:]
        if hasattr(sched, "set_begin_index"):
            sched.set_begin_index(t_start * sched.order)

        # initial latents: the source's posterior where diffusers takes it, then the noise
        nine = self.static_dim(SDXL_UNET, "unet_in_channels") == 9
        shape = (batch, self.latent_space.channels, height // 8, width // 8)
        full = strength == 1.0
        source = None
        if not nine or not full:
            source = self.vae_latents(pixels, generator, timer)
            source = source.repeat(batch // source.shape[0], 1, 1, 1)
        noise = randn_tensor(shape, generator=generator, device=self.device, dtype=self.dtype)
        latents = noise * sched.init_noise_sigma if full else sched.add_noise(source, noise, timesteps[:1].repeat(batch))

        # the mask at latent size; the masked image's latents (9-channel UNet; a 4-channel one only blends)
        mask_latent = torch.nn.functional.interpolate(mask, size=shape[-2:]).to(device=self.device, dtype=self.dtype)
        mask_latent = mask_latent.repeat(batch // mask_latent.shape[0], 1, 1, 1)
        masked_input = pixels * (mask < 0.5)
        if nine:
            masked = self.vae_latents(masked_input, generator, timer)
            masked = masked.repeat(batch // masked.shape[0], 1, 1, 1)
            extra = [torch.cat([mask_latent] * 2) if do_cfg else mask_latent,
                     torch.cat([masked] * 2) if do_cfg else masked]
        else:
            self.skip_vae_draw(masked_input, generator)
            extra = []

        cond = dict(text_embeds=pooled, time_ids=add_time_ids)
        blend = None if nine else (source, noise, mask_latent)
        latents = self._loop(sched, timesteps, latents, embeds, cond, extra, do_cfg, guidance, guidance_rescale,
                             step_kwargs(sched, generator, eta), blend, timer, progress, cancel, on_step)
        out = [x if x.shape[0] in (1, batch) else x.repeat(batch // x.shape[0], 1, 1, 1) for x in (pixels, mask)]
        return Denoised(latents, *(x.to(device=self.device, dtype=self.dtype) for x in out))

    def _loop(self, sched, timesteps, latents, embeds, cond, extra, do_cfg, guidance, guidance_rescale, step_args,
              blend, timer, progress, cancel=None, on_step=None):
        from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_inpaint import rescale_noise_cfg

        for i, t in loop_steps(timesteps, cancel, progress):
            with timer.span(SPAN_UNET), torch.inference_mode():
                model_in = sched.scale_model_input(torch.cat([latents] * 2) if do_cfg else latents, t)
                if extra:
                    model_in = torch.cat([model_in, *extra], dim=1)
                (noise_pred,) = self.run(SDXL_UNET, SPAN_UNET, NULL_TIMER, sample=model_in, timestep=t,
                                         encoder_hidden_states=embeds, **cond)  # timed with the guidance mix
                noise_pred = noise_pred.to(model_in.dtype)
                if do_cfg:
                    uncond, text = noise_pred.chunk(2)
                    noise_pred = uncond + guidance * (text - uncond)
                    if guidance_rescale > 0.0:
                        noise_pred = rescale_noise_cfg(noise_pred, text, guidance_rescale=guidance_rescale)
            with timer.span(SPAN_SCHEDULER):
                out = sched.step(noise_pred, t, latents, **step_args, return_dict=False)
                latents = out[0]
                if blend is not None:  # 4-channel UNet: keep the known region at the next step's noise level
                    source, noise, mask_latent = blend
                    proper = source
                    if i < len(timesteps) - 1:
                        proper = sched.add_noise(source, noise, torch.tensor([timesteps[i + 1]]))
                    latents = (1 - mask_latent) * proper + mask_latent * latents
            report_step(on_step, i + 1, len(timesteps), latents, out)  # the caller's progress hook, outside the spans
        return latents
