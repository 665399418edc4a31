"""``InpaintPipeline``: SD inpainting (and text-to-image) orchestrated over pluggable engines.

CLIP text encoder -> VAE encoder of the masked image -> 9-channel UNet with classifier-free
guidance -> scheduler -> asymmetric decoder fed with the unmasked image and the mask. The
arithmetic between the networks is diffusers' ``StableDiffusionInpaintPipeline`` step for
step (same random draws in the same order), minus its wasted VAE encode of the unmasked
image before decoding, so a seeded run matches diffusers with ``AsymmetricAutoencoderKL``.
Every network call goes through ``stages.Stages`` (an ``Engine`` per component), so ONNX
Runtime, TensorRT or AOTInductor engines replace the torch ones without touching this file.
"""
from __future__ import annotations

import torch

from ..engines.contract import COMPONENTS, DECODER_COMPONENTS, TEXT_ENCODER, UNET, VAE_ENCODER, capabilities
from . import families
from . import parts as pipeline_parts
from .cancel import JobCancelled, loop_steps  # noqa: F401 (JobCancelled is re-exported: the servers catch it)
from .checks import check_generators, check_guidance, check_int, is_number
from .decode_modes import check_decode_options, run_decoder_with_modes
from .family_rules import RULES, SD
from .images import check_size, postprocess, prepare_image_and_mask
from .job_rules import check_strength, denoising_steps
from .outputs import Denoised, InpaintOutput
from .schedulers import (  # noqa: F401 (SCHEDULERS, SCHEDULER_ALIASES and make_scheduler are re-exported)
    SCHEDULER_ALIASES,
    SCHEDULERS,
    copy_scheduler,
    make_scheduler,
    step_kwargs,
    switch_scheduler,
)
from .stages import (  # noqa: F401 (DENOISE_COMPONENTS is re-exported)
    DENOISE_COMPONENTS,
    NULL_TIMER,
    SPAN_SCHEDULER,
    SPAN_UNET,
    PipelineSpec,
    Stages,
    check_decoder_engines,
    run_decoder,
)
from .steps import report_step


class InpaintPipeline:
    """SD inpainting / text-to-image over ``{component: Engine}``; see ``from_preset``,
    ``from_pretrained`` and ``from_diffusers`` for ready-made torch pipelines.

    ``components`` builds a pipeline of a subset: ``DENOISE_COMPONENTS`` runs ``denoise`` only,
    ``DECODER_COMPONENTS`` ``decode`` only (what the Ray Serve stages hold; each constructor takes it)."""

    rules = RULES[SD]  # what a job may ask of this family (asymvq.pipeline.family_rules)

    def __init__(self, engines: dict, *, scheduler, spec: PipelineSpec, tokenizer=None, components=None):
        """``engines``: ``{component: Engine}``; ``scheduler``: the default diffusers scheduler (a
        fresh copy runs each call); ``spec``: what the orchestration must know about the networks;
        ``components``: the component names this pipeline keeps (default: all, and it must run both halves)."""
        if components is not None:
            components = tuple(components)
            unknown = sorted(set(components) - set(COMPONENTS))
            if unknown:
                raise ValueError(f"components: unknown {unknown}, expected names among {list(COMPONENTS)}")
            engines = {k: v for k, v in engines.items() if k in components}
        self.stages = Stages(engines)
        self.spec = spec
        self.tokenizer = tokenizer
        self.whole = components is None
        self.components = tuple(self.stages.engines) if self.whole else components
        if scheduler is None or not hasattr(scheduler, "config"):
            raise ValueError(f"scheduler: expected a diffusers scheduler, got {type(scheduler).__name__}")
        self.scheduler = scheduler
        if not (self.denoises or self.decodes):
            raise ValueError(f"components: expected {UNET!r} (to denoise) and/or decoder components among them, "
                             f"got {list(self.components)}")
        if self.denoises:
            if not self.stages.has(UNET):
                raise ValueError(f"engines: a {UNET!r} engine is required")
            if spec.inpainting and not self.stages.has(VAE_ENCODER):
                raise ValueError("engines: an inpainting pipeline (9-channel UNet) needs a 'vae-encoder' engine")
        if self.decodes and not self.stages.decoders():
            raise ValueError("engines: a 'decoder' and/or 'decoder-plain' engine is required")

    @property
    def device(self) -> torch.device:
        """Where the networks run (every family's pipeline has ``device`` and ``dtype``: what the servers read)."""
        return self.spec.device

    @property
    def dtype(self) -> torch.dtype:
        return self.spec.dtype

    @property
    def latent_space(self):
        """The diffusion latents' space (``LatentSpace``; the family pipelines hold the same attribute)."""
        return self.spec.latent_space

    @property
    def denoises(self) -> bool:
        """Whether this pipeline runs the diffusion half: a whole one, or a subset with the UNet."""
        return self.whole or UNET in self.components

    @property
    def decodes(self) -> bool:
        """Whether this pipeline runs the decoder: a whole one, or a subset with a decoder."""
        return self.whole or any(c in self.components for c in DECODER_COMPONENTS)

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, preset: str = "tiny", *, components=None, **kwargs) -> "InpaintPipeline":
        """Seeded random components, no files: "tiny" (tests) or "sd15" (real SD 1.5 shapes); the other
        families' "tiny-flux-fill", "flux-fill", "tiny-sdxl", "sdxl" give their own pipeline class."""
        if preset in families.FAMILY_PRESETS:
            _whole_only(components)
            return families.family_from_preset(preset, **kwargs)
        return cls(**pipeline_parts.preset_parts(preset, components=components, **kwargs), components=components)

    @classmethod
    def from_pretrained(cls, sd_dir, decoder=None, *, components=None, **kwargs) -> "InpaintPipeline":
        """A local diffusers-format folder; ``decoder``: any checkpoint ``load_decoder`` reads. An SD 1.x folder
        gives an ``InpaintPipeline``; an SDXL or FLUX.1 Fill one (recognised by its components, as in
        ``from_diffusers``) its family's pipeline, loaded by diffusers from the folder alone."""
        family = families.folder_family(sd_dir)
        if family != families.SD:
            _whole_only(components)
            return families.family_from_folder(sd_dir, family, decoder=decoder, **kwargs)
        return cls(**pipeline_parts.folder_parts(sd_dir, decoder=decoder, **kwargs), components=components)

    @classmethod
    def from_engines(cls, engines_dir, *, device="cpu", backend=None, scheduler: str | None = None, components=None,
                     **engine_options) -> "InpaintPipeline":
        """An engines directory written by ``asymvq export`` (ONNX Runtime, OpenVINO, TensorRT, AOTInductor or torch
        engines). Its manifest's family says the pipeline, as the components do in ``from_diffusers``: SD 1.x gives
        an ``InpaintPipeline`` (``scheduler``: default "ddim"), SDXL and FLUX.1 Fill their own (default: the
        directory's scheduler)."""
        family = families.engines_family(engines_dir)
        if family != families.SD:
            _whole_only(components)
            return families.family_from_engines(engines_dir, family, device=device, backend=backend,
                                                scheduler=scheduler, **engine_options)
        return cls(**pipeline_parts.engines_dir_parts(engines_dir, device=device, backend=backend,
                                                      scheduler=scheduler or "ddim", components=components,
                                                      **engine_options),
                   components=components)

    @classmethod
    def from_diffusers(cls, pipe, decoder=None, *, components=None, **kwargs) -> "InpaintPipeline":
        """Take over a diffusers pipeline's networks; its VAE decoder becomes ours (or ``decoder`` does). The family
        is read from its components (``asymvq.pipeline.families``): SD 1.x gives an ``InpaintPipeline``, SDXL
        an ``SDXLInpaintPipeline``, FLUX.1 Fill a ``FluxFillInpaintPipeline``, each called as diffusers' is."""
        family = families.diffusers_family(pipe)
        if family != families.SD:
            _whole_only(components)
            return families.family_from_diffusers(pipe, family, decoder=decoder, **kwargs)
        return cls(**pipeline_parts.diffusers_parts(pipe, decoder=decoder, **kwargs), components=components)

    def set_scheduler(self, name: str) -> "InpaintPipeline":
        """Make "ddim", "pndm", "euler" or "dpm++" the default, with the same noise schedule.
        (To use one for a single call, pass ``scheduler=`` to the call instead.)"""
        self.scheduler = switch_scheduler(name, self.scheduler)
        return self

    def fresh_scheduler(self, name: str | None = None):
        """A new scheduler for one call: the default's kind, or ``name``'s, with the default's config."""
        return copy_scheduler(self.scheduler) if name is None else switch_scheduler(name, self.scheduler)

    # -- the call -------------------------------------------------------------------------------
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        image=None,
        mask_image=None,
        *,
        negative_prompt: str | list[str] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float | list[float] = 7.5,
        strength: float = 1.0,
        eta: float = 0.0,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        decoder: dict | None = None,
        scheduler: str | None = None,
        timer=None,
        progress: bool = False,
        decode_options: dict | None = None,
    ) -> InpaintOutput:
        """Arguments as in diffusers' ``StableDiffusionInpaintPipeline``, plus, for this call only:
        ``decoder`` (another ``{"decoder"/"decoder-plain": Engine}``), ``scheduler`` (a name from
        ``SCHEDULERS``; default: the pipeline's) and ``timer`` (a ``StageTimer`` that records every
        stage). The call changes no attribute of the pipeline. ``decode_options``: tiled and/or region
        decoding, ``{"tile": N, "overlap": M, "region": "mask" | "auto", "margin": K, "region_stats": "box" |
        "lowres"}`` (latent pixels; tiles and "lowres" on torch decoder engines only, regions on torch and exported
        conditional decoders; the region a decode took is noted on ``timer``; see ``asymvq.pipeline.decode_modes``
        and docs/decoder.md).

        A batch of independent jobs (what a server batches): ``prompt``, ``image``, ``mask_image``
        and ``negative_prompt`` as lists, ``generator`` a list with one generator per image (as in
        diffusers) and ``guidance_scale`` a list with one value per prompt (all > 1 or all <= 1).
        Each image then gets the noise its own generator draws, so it equals its run alone."""
        denoised = self.denoise(
            prompt, image, mask_image, negative_prompt=negative_prompt, prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds, height=height, width=width,
            num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, strength=strength, eta=eta,
            num_images_per_prompt=num_images_per_prompt, generator=generator, scheduler=scheduler, timer=timer,
            progress=progress,
        )
        if output_type == "latent":
            return InpaintOutput(images=denoised.latents, latents=denoised.latents)
        sample = self.decode(denoised, decoder=decoder, timer=timer, decode_options=decode_options)
        return InpaintOutput(images=postprocess(sample, output_type), latents=denoised.latents)

    def decode(self, denoised: Denoised, decoder: dict | None = None, timer=None,
               decode_options: dict | None = None) -> torch.Tensor:
        """Diffusion-space latents -> image in [-1, 1], conditioned on image and mask when there are some.
        ``decode_options``: tiled (torch decoder engines) / region decoding (torch and exported conditional decoders)."""
        if decoder is None and not self.decodes:
            raise ValueError(f"decoder: this pipeline holds only {list(self.components)}; pass decoder engines "
                             "or build it with the decoder components")
        engines = check_decoder_engines(decoder) if decoder is not None else self.stages.decoders()
        latents, image, mask = denoised.latents, denoised.image, denoised.mask
        if decoder is None:  # its own decoder: in its own dtype, whatever the denoiser ran in (a Ray decode
            # replica on another CPU: --dtype auto can differ per node)
            latents, image, mask = (None if x is None else x.to(device=self.spec.device, dtype=self.spec.dtype)
                                    for x in (latents, image, mask))
        latent = self.spec.latent_space.to_vae(latents)
        options = check_decode_options(decode_options)
        if options:
            return run_decoder_with_modes(engines, timer or NULL_TIMER, latent, image, mask, options)
        return run_decoder(engines, timer or NULL_TIMER, latent, image, mask)

    # -- the diffusion half ------------------------------------------------------------------------
    def encode_prompt(self, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds,
                      num_images_per_prompt: int, do_cfg: bool, timer=NULL_TIMER) -> torch.Tensor:
        """Text embeddings, (negative, positive) stacked on the batch under guidance."""
        spec = self.spec
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError("prompt / prompt_embeds: pass exactly one of them")
        if prompt is not None:
            prompts = [prompt] if isinstance(prompt, str) else prompt
            if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
                raise ValueError(f"prompt: expected a string or a non-empty list of strings, got {prompt!r}")
            prompt_embeds = self._embed(prompts, "prompt", timer)
        else:
            prompt_embeds = self._check_embeds(prompt_embeds, "prompt_embeds")
            dim = self._embed_dim()
            if dim is not None and prompt_embeds.shape[-1] != dim:
                raise ValueError(f"prompt_embeds: expected (B, tokens, {dim}) (the UNet's cross-attention width), "
                                 f"got shape {tuple(prompt_embeds.shape)}")
        batch = prompt_embeds.shape[0]
        if do_cfg:
            if negative_prompt_embeds is not None:
                if negative_prompt is not None:
                    raise ValueError("negative_prompt / negative_prompt_embeds: pass at most one of them")
                negative = self._check_embeds(negative_prompt_embeds, "negative_prompt_embeds")
                if negative.shape != prompt_embeds.shape:
                    raise ValueError(
                        f"negative_prompt_embeds: expected the shape of prompt_embeds {tuple(prompt_embeds.shape)}, "
                        f"got {tuple(negative.shape)}"
                    )
            else:
                negatives = [""] * batch if negative_prompt is None else (
                    [negative_prompt] if isinstance(negative_prompt, str) else negative_prompt)
                if not isinstance(negatives, list) or len(negatives) != batch or not all(isinstance(n, str) for n in negatives):
                    raise ValueError(f"negative_prompt: expected a string or a list of {batch} strings, got {negative_prompt!r}")
                negative = self._embed(negatives, "negative_prompt", timer, length=prompt_embeds.shape[1])
            prompt_embeds = torch.cat([negative, prompt_embeds])
        prompt_embeds = prompt_embeds.to(device=spec.device, dtype=spec.dtype)
        # (uncond x B, cond x B), each prompt repeated num_images_per_prompt times in place (diffusers' order)
        return prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)

    def _embed(self, prompts: list[str], arg: str, timer, length: int | None = None) -> torch.Tensor:
        if self.tokenizer is None or not self.stages.has(TEXT_ENCODER):
            raise ValueError(f"{arg}: this pipeline has no tokenizer/text encoder; pass prompt_embeds instead")
        ids = self.tokenizer(
            prompts, padding="max_length", max_length=length or self.tokenizer.model_max_length,
            truncation=True, return_tensors="pt",
        ).input_ids
        return self.stages.text_encode(ids.to(self.spec.device), timer)

    def _embed_dim(self) -> int | None:
        """The UNet's text-embedding width, where its engine states it (``capabilities().static_dims``)."""
        engine = self.stages.engines.get(UNET)
        return None if engine is None else capabilities(engine).static_dims.get("text_dim")

    def _check_embeds(self, embeds, arg: str) -> torch.Tensor:
        """Any float dtype (cast to the pipeline's later); B, tokens, dim >= 1; finite."""
        if not isinstance(embeds, torch.Tensor) or embeds.ndim != 3 or not embeds.is_floating_point() or 0 in embeds.shape:
            got = f"shape {tuple(embeds.shape)} and dtype {embeds.dtype}" if isinstance(embeds, torch.Tensor) \
                else type(embeds).__name__
            raise ValueError(f"{arg}: expected a float tensor (B, tokens, dim) with B, tokens, dim >= 1, got {got}")
        if embeds.device.type == "meta" or not bool(torch.isfinite(embeds).all()):
            raise ValueError(f"{arg}: expected finite values on a real device, got "
                             f"{'a meta tensor' if embeds.device.type == 'meta' else 'NaN or Inf'}")
        return embeds

    def _vae_latents(self, pixels: torch.Tensor, generator, timer) -> torch.Tensor:
        """Sample the VAE posterior with the caller's generator (as diffusers), in diffusion space
        (``(x - shift_factor) * scaling_factor``)."""
        # diffusers on first use, not at import (see asymvq.pipeline.schedulers): the same draws as diffusers'
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        moments = self.stages.vae_encode(pixels.to(device=self.spec.device, dtype=self.spec.dtype), timer)
        return self.spec.latent_space.to_diffusion(DiagonalGaussianDistribution(moments).sample(generator))

    def denoise(self, prompt=None, image=None, mask_image=None, *, negative_prompt=None, prompt_embeds=None,
                negative_prompt_embeds=None, height=None, width=None, num_inference_steps: int = 50,
                guidance_scale: float = 7.5, strength: float = 1.0, eta: float = 0.0, num_images_per_prompt: int = 1,
                generator=None, scheduler: str | None = None, timer=None, progress: bool = False,
                cancel=None, on_step=None) -> Denoised:
        """Everything before the decoder: text, VAE encode, the UNet loop. Returns the latents and condition.
        ``cancel``: a no-argument callable (``threading.Event.is_set``) asked before each UNet step; when it
        returns true, ``JobCancelled`` is raised there (a server frees its place; the results of runs it lets
        finish are unchanged). ``on_step``: a callable given an ``asymvq.pipeline.steps.Step`` after each UNet
        step (a server's progress events and previews); it changes no result.

        Steps: 1. check the arguments; 2. prepare image and mask; 3. encode the prompts; 4. set up a
        fresh scheduler and the timesteps; 5. draw the initial latents; 6. encode the masked image;
        7. run the UNet loop.
        """
        from diffusers.utils.torch_utils import randn_tensor  # on first use, see asymvq.pipeline.schedulers

        spec, timer = self.spec, timer or NULL_TIMER
        # 1. arguments
        inpaint = self._check_denoise(image, mask_image, num_inference_steps, num_images_per_prompt, strength, eta)

        # 2. image and mask
        if inpaint:
            pixels, mask, height, width = prepare_image_and_mask(image, mask_image, height, width)
        else:
            height = height or spec.sample_size * spec.vae_scale_factor
            width = width or spec.sample_size * spec.vae_scale_factor
            check_size(height, width)
            pixels = mask = None

        # 3. prompts
        guidance, do_cfg = check_guidance(guidance_scale)
        embeds = self.encode_prompt(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds,
                                    num_images_per_prompt, do_cfg, timer)
        batch = embeds.shape[0] // (2 if do_cfg else 1)
        if inpaint and pixels.shape[0] not in (1, batch) and batch % pixels.shape[0]:
            raise ValueError(f"image: expected batch 1 or a divisor of {batch} (prompts x images per prompt), "
                             f"got batch {pixels.shape[0]}")
        generator = check_generators(generator, batch, spec.device)
        if isinstance(guidance, list):
            if len(guidance) * num_images_per_prompt != batch:
                raise ValueError(f"guidance_scale: expected a number or one per prompt ({batch // num_images_per_prompt}), "
                                 f"got {len(guidance)}")
            guidance = torch.tensor(guidance, dtype=spec.dtype, device=spec.device)
            guidance = guidance.repeat_interleave(num_images_per_prompt).view(-1, 1, 1, 1)

        # 4. a fresh scheduler per call: its step state never leaks between calls (or threads)
        scheduler = self.fresh_scheduler(scheduler)
        scheduler.set_timesteps(num_inference_steps, device=spec.device)
        timesteps = scheduler.timesteps
        if inpaint:
            t_start = num_inference_steps - denoising_steps(num_inference_steps, strength)  # >= 1 step: checked above
            timesteps = timesteps[t_start * scheduler.order:]
            if hasattr(scheduler, "set_begin_index"):
                scheduler.set_begin_index(t_start * scheduler.order)

        # 5. initial latents
        shape = (batch, spec.latent_channels, height // spec.vae_scale_factor, width // spec.vae_scale_factor)
        full_strength = strength == 1.0
        if inpaint and not full_strength:
            # Partial strength starts from the noised source image: its encode is real work, kept.
            image_latents = self._vae_latents(pixels, generator, timer)
            image_latents = image_latents.repeat(batch // image_latents.shape[0], 1, 1, 1)
        noise = randn_tensor(shape, generator=generator, device=spec.device, dtype=spec.dtype)
        if full_strength:
            latents = noise * scheduler.init_noise_sigma
        else:
            latents = scheduler.add_noise(image_latents, noise, timesteps[:1].repeat(batch))

        # 6. the masked image and the mask, at latent size, as extra UNet channels
        extra = []
        if inpaint:
            mask_latent = torch.nn.functional.interpolate(mask, size=shape[-2:]).to(device=spec.device, dtype=spec.dtype)
            masked_latents = self._vae_latents(pixels * (mask < 0.5), generator, timer)
            mask_latent = mask_latent.repeat(batch // mask_latent.shape[0], 1, 1, 1)
            masked_latents = masked_latents.repeat(batch // masked_latents.shape[0], 1, 1, 1)
            extra = [torch.cat([mask_latent] * 2) if do_cfg else mask_latent,
                     torch.cat([masked_latents] * 2) if do_cfg else masked_latents]

        # 7. the UNet loop
        step_args = step_kwargs(scheduler, generator, eta)
        latents = self._loop(scheduler, timesteps, latents, embeds, extra, do_cfg, guidance, step_args,
                             timer, progress, cancel, on_step)
        if not inpaint:
            return Denoised(latents, None, None)
        # The decoder broadcasts a batch of 1; any other image batch is tiled like the latents were.
        cond = [x if x.shape[0] in (1, batch) else x.repeat(batch // x.shape[0], 1, 1, 1) for x in (pixels, mask)]
        return Denoised(latents, *(x.to(device=spec.device, dtype=spec.dtype) for x in cond))

    def _check_denoise(self, image, mask_image, num_inference_steps, num_images_per_prompt, strength, eta) -> bool:
        """``denoise``'s scalar arguments and the kind of run (inpainting or not) against the pipeline; returns
        whether it inpaints."""
        if not self.denoises:
            raise ValueError(f"denoise: this pipeline holds only {list(self.components)} (it decodes); build it with "
                             f"the {UNET!r} component to denoise")
        for name, value in (("num_inference_steps", num_inference_steps), ("num_images_per_prompt", num_images_per_prompt)):
            check_int(value, name)
        check_strength(strength, num_inference_steps)  # the CLI's and the servers' rule (pipeline.job_rules)
        if not is_number(eta) or not 0.0 <= eta <= 1.0:  # DDIM's variance goes negative (NaN) past 1
            raise ValueError(f"eta: expected a value in [0, 1], got {eta!r}")
        inpaint = image is not None or mask_image is not None
        if inpaint and not self.spec.inpainting:
            raise ValueError("image / mask_image: this pipeline's UNet has 4 input channels (text-to-image); "
                             "inpainting needs a 9-channel SD inpainting UNet")
        if not inpaint and self.spec.inpainting:
            raise ValueError("image / mask_image: required, this is an inpainting pipeline (9-channel UNet)")
        if not inpaint and strength != 1.0:
            raise ValueError("strength: only applies to inpainting (with image and mask_image); leave it at 1.0")
        return inpaint

    def _loop(self, scheduler, timesteps, latents, embeds, extra, do_cfg, guidance_scale, step_args, timer, progress,
              cancel=None, on_step=None):
        stages = self.stages
        for i, t in loop_steps(timesteps, cancel, progress):
            with timer.span(SPAN_UNET):
                model_in = torch.cat([latents] * 2) if do_cfg else latents
                model_in = scheduler.scale_model_input(model_in, t)
                if extra:
                    model_in = torch.cat([model_in, *extra], dim=1)
                # float32 (B,) timesteps: one signature for every scheduler and every engine format
                timestep = t.reshape(1).to(device=model_in.device, dtype=torch.float32).repeat(model_in.shape[0])
                noise_pred = stages.unet(model_in, timestep, embeds)
                if do_cfg:
                    uncond, cond = noise_pred.chunk(2)
                    noise_pred = uncond + guidance_scale * (cond - uncond)
            with timer.span(SPAN_SCHEDULER):
                out = scheduler.step(noise_pred, t, latents, **step_args, return_dict=False)
                latents = out[0]
            report_step(on_step, i + 1, len(timesteps), latents, out)  # the caller's progress hook, outside the spans
        return latents


def _whole_only(components) -> None:
    if components is not None:
        raise ValueError("components: pipelines of a subset are SD 1.x's (the Ray Serve stages); SDXL and FLUX.1 Fill "
                         "pipelines run whole, leave it unset")
