"""FLOPs of every stage of a FLUX.1 Fill or SDXL inpainting job, counted on the meta device (no weights).

The same method and the same job dict as ``asymvq.profiling.flops.count_job`` (so the report, the GPU
floor and the profiler read both), for the family presets of ``asymvq.models.family_networks``; the
real ones (``flux-fill``: a 12B transformer and T5-XXL; ``sdxl``) count in seconds without allocating.
What a stage is matches what ``FluxFillInpaintPipeline`` / ``SDXLInpaintPipeline`` run at strength 1:

- FLUX.1 Fill: ``CLIP`` (pooled, 77 tokens) and ``T5`` (512 tokens) once per prompt, no CFG;
  ``VAE-Enc`` the masked image (the source's encode is skipped at strength 1); ``Transformer step`` one
  call on ``batch`` token sequences of (H/16)*(W/16) image tokens and 512 text tokens;
- SDXL: ``CLIP`` and ``CLIP-G`` once (the negative prompt is zeros, SDXL's
  ``force_zeros_for_empty_prompt``), ``VAE-Enc`` the masked image, ``UNet step (CFG)`` on 2 x batch;
- ``Decoder <name>``: one decode of ``batch`` latents (with source and mask for a conditional decoder).

``shares_at_steps``: each decoder's share of the whole job at 4, 20, 28 and 50 steps (FLUX schnell's,
FLUX dev's and SDXL's usual counts), from the per-step counts.
"""
from __future__ import annotations

import copy
import functools
import time

import torch

from ..models import family_networks as fam
from ..models.component_modules import VaeEncoderComponent
from ..models.latent_space import VAE_SCALE_FACTOR
from .flops import METHOD, _meta, _Pointwise, count, count_decoder, count_scheduler, scheduler_label, unet_label

SHARE_STEPS = (4, 20, 28, 50)
FAMILY_DECODERS = {"tiny-flux-fill": ("tiny-flux", "tiny-asuka"), "flux-fill": ("flux", "asuka-flux"),
                   "tiny-sdxl": ("tiny",), "sdxl": ("sdxl",)}
# what the profiler measures for a tiny family preset, counted at the real one's size
REAL_PRESET = {"tiny-flux-fill": "flux-fill", "flux-fill": "flux-fill", "tiny-sdxl": "sdxl", "sdxl": "sdxl"}
REAL_DECODERS = {"flux-fill": ("flux", "asuka-flux"), "sdxl": ("sdxl", "base", "x1.5")}


def is_flux(preset: str) -> bool:
    return "flux" in preset


def denoiser_labels(preset: str, steps: int, cfg: bool) -> tuple[str, str]:
    """The labels of one denoiser call and of all of them."""
    if is_flux(preset):
        return "Transformer step", f"Transformer x {steps}"
    return unet_label(steps, cfg)


def count_text(preset: str, *, attention: bool = True) -> dict[str, dict]:
    """The text encoders of one prompt: {label: count}."""
    with _meta():
        encoders = fam.text_encoders_of(preset)
        t5 = fam.build_t5(preset) if is_flux(preset) else None
        clip_ids = torch.zeros(1, 77, dtype=torch.long)
    out = {"CLIP": count(encoders["text_encoder"], clip_ids, attention=attention)}
    if t5 is not None:
        with _meta():
            ids = torch.zeros(1, fam.flux_text_len(preset), dtype=torch.long)
        out["T5"] = count(t5, ids, attention=attention)
    else:
        out["CLIP-G"] = count(encoders["text_encoder_2"], clip_ids, output_hidden_states=True, attention=attention)
    return out


def count_vae_encode(preset: str, height: int, width: int, *, attention: bool = True) -> dict:
    with _meta():
        enc = VaeEncoderComponent(fam.family_vae(preset))
        image = torch.empty(1, 3, height, width)
    return count(enc, image, attention=attention)


def count_flux_transformer(preset: str, height: int, width: int, batch: int, *, attention: bool = True) -> dict:
    with _meta():
        tr = fam.build_flux_transformer(preset)
        cfg = tr.config
        tokens = (height // (2 * VAE_SCALE_FACTOR)) * (width // (2 * VAE_SCALE_FACTOR))
        text = fam.flux_text_len(preset)
        feeds = dict(hidden_states=torch.empty(batch, tokens, cfg.in_channels), timestep=torch.empty(batch),
                     guidance=torch.empty(batch), pooled_projections=torch.empty(batch, cfg.pooled_projection_dim),
                     encoder_hidden_states=torch.empty(batch, text, cfg.joint_attention_dim),
                     txt_ids=torch.zeros(text, 3), img_ids=torch.zeros(tokens, 3))
    return count(tr, return_dict=False, attention=attention, **feeds)


def count_sdxl_unet(preset: str, height: int, width: int, unet_batch: int, *, attention: bool = True) -> dict:
    with _meta():
        unet = fam.build_sdxl_unet(preset)
        pooled = unet.add_embedding.linear_1.in_features - 6 * unet.config.addition_time_embed_dim
        sample = torch.empty(unet_batch, 9, height // VAE_SCALE_FACTOR, width // VAE_SCALE_FACTOR)
        text = torch.empty(unet_batch, 77, unet.config.cross_attention_dim)
        cond = dict(text_embeds=torch.empty(unet_batch, pooled), time_ids=torch.empty(unet_batch, 6))
        t = torch.empty(unet_batch)
    return count(unet, sample, t, text, added_cond_kwargs=cond, return_dict=False, attention=attention)


def count_flow_match_step(height: int, width: int, batch: int, steps: int) -> int:
    """Elementwise FLOPs of one ``FlowMatchEulerDiscreteScheduler.step`` on the packed latents (median)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(**fam.FLUX_SCHEDULER_CONFIG)
    tokens = (height // (2 * VAE_SCALE_FACTOR)) * (width // (2 * VAE_SCALE_FACTOR))
    sched.set_timesteps(steps, mu=1.0)
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(batch, tokens, 64, generator=g)
    per_step = []
    for t in sched.timesteps:
        mode = _Pointwise()
        with torch.no_grad(), mode:
            latents = sched.step(torch.randn(latents.shape, generator=g), t, latents, return_dict=False)[0]
        per_step.append(mode.flops)
    return sorted(per_step)[len(per_step) // 2]


def count_family_job(preset: str, height: int = 1024, width: int = 1024, *, batch: int = 1, steps: int = 28,
                     decoders=None, guidance_scale: float = 7.5, scheduler: str = "euler") -> dict:
    """Every stage of a family preset's job, counted once per process (a fresh copy each time)."""
    decoders = tuple(FAMILY_DECODERS[preset] if decoders is None else decoders)
    return copy.deepcopy(_cached(preset, int(height), int(width), int(batch), int(steps), decoders,
                                 float(guidance_scale), str(scheduler)))


@functools.lru_cache(maxsize=8)
def _cached(preset, height, width, batch, steps, decoders, guidance_scale, scheduler) -> dict:
    if preset not in FAMILY_DECODERS:
        raise ValueError(f"preset must be one of {list(FAMILY_DECODERS)}, got {preset!r}")
    factor = 2 * VAE_SCALE_FACTOR if is_flux(preset) else VAE_SCALE_FACTOR
    if height % factor or width % factor or height <= 0 or width <= 0:
        raise ValueError(f"size: expected positive multiples of {factor}, got {height}x{width}")
    t0 = time.perf_counter()
    flux = is_flux(preset)
    cfg = not flux and guidance_scale > 1
    denoiser_batch = batch * (2 if cfg else 1)
    one, every = denoiser_labels(preset, steps, cfg)
    one_sched, all_sched = scheduler_label(steps)
    parts = dict(count_text(preset))
    parts["VAE-Enc"] = count_vae_encode(preset, height, width)
    parts[one] = (count_flux_transformer(preset, height, width, batch) if flux
                  else count_sdxl_unet(preset, height, width, denoiser_batch))
    flops = {k: v["flops"] for k, v in parts.items()}
    attention = {k: v["attention_flops"] for k, v in parts.items()}
    flops[every], attention[every] = steps * flops[one], steps * attention[one]
    sched = count_flow_match_step(height, width, batch, steps) if flux else count_scheduler(
        scheduler, height, width, batch, steps)
    flops[one_sched], flops[all_sched] = sched, steps * sched
    attention[one_sched] = attention[all_sched] = 0
    fixed = sum(flops[k] for k in parts if k != one)
    per_step = flops[one] + sched
    diffusion = fixed + steps * per_step
    summary, shares = {}, {}
    for name in decoders:
        d = count_decoder(name, height, width, batch)
        flops[f"Decoder {name}"], attention[f"Decoder {name}"] = d["flops"], d["attention_flops"]
        summary[name] = {"flops": d["flops"], "job_flops": diffusion + d["flops"],
                         "share_of_job": d["flops"] / (diffusion + d["flops"]), "vs_unet_total": d["flops"] / flops[every]}
        shares[name] = {str(n): d["flops"] / (fixed + n * per_step + d["flops"]) for n in SHARE_STEPS}
    return {
        "preset": preset, "height": height, "width": width, "batch": batch, "steps": steps,
        "unet_batch": denoiser_batch, "scheduler": "flow-match euler" if flux else scheduler, "method": METHOD,
        "denoiser_labels": [one, every], "flops": flops, "attention_flops": attention, "diffusion_flops": diffusion,
        "decoders": summary, "shares_at_steps": shares, "count_s": round(time.perf_counter() - t0, 2),
    }
