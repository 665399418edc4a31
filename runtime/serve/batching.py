"""Independent inpainting jobs run as one batch, each with its own seed: what a batching server needs.

A *job* is the dict ``asymvq.serve.http_form.parse_job`` returns (PIL ``source`` and ``hole``, ``prompt``,
``negative_prompt``, ``steps``, ``guidance``, ``seed``, ``strength``, ``scheduler``). Jobs share a batch
when ``batch_key`` says so: same size, steps, scheduler, guidance on/off, strength and decoder (what
fixes the tensor shapes and the timesteps). Prompt, negative prompt, guidance value, seed, image and
mask may differ. Each job gets ``torch.Generator().manual_seed(seed)`` (the pipeline takes a list,
one per image), so its image equals the one it gets alone and from ``asymvq inpaint``.

The two halves are separate so that a server can run them in separate stages (Ray Serve's denoise
and decode deployments): ``denoise_jobs`` -> one ``Denoised`` per job -> ``decode_jobs`` (any
grouping of equally sized items, images in [-1, 1]) -> ``finish_job`` (PIL image and Pre_error against
the source and mask the ``Denoised`` carries: the request's images are prepared once). With a region
(``decode_options``), a decode call decodes one box, so ``decode_key`` groups items by their mask's box.
"""
from __future__ import annotations

from collections import defaultdict

import torch

from ..models.region import SCALE, check_region, mask_box
from ..pipeline.family_rules import SD
from ..pipeline.inpaint_pipeline import Denoised
from ..pipeline.inpaint_run import InpaintRun, denoise_job, finish_run

BATCH_FIELDS = ("size", "steps", "scheduler", "guidance on", "strength", "decoder")


def batch_key(job: dict) -> tuple:
    """What must match for jobs to share a batch (``BATCH_FIELDS``, in that order)."""
    return (tuple(job["source"].size), job["steps"], job["scheduler"], job["guidance"] > 1.0, float(job["strength"]),
            job.get("decoder"))


def group(items: list, key) -> list[list[int]]:
    """Indices of ``items`` grouped by ``key(item)``, groups in order of first appearance."""
    groups: dict = defaultdict(list)
    for i, item in enumerate(items):
        groups[key(item)].append(i)
    return list(groups.values())


def _one(x: torch.Tensor, i: int) -> torch.Tensor:
    # clone: a pickled view would carry the whole batch's storage to the next stage
    return (x if x.shape[0] == 1 else x[i:i + 1]).clone()


def call_key(job: dict, rules) -> tuple:
    """What jobs of one ``batch_key`` must also share to run in one call of a family's pipeline (``pipe.rules``):
    the guidance value where the family takes one per call (SDXL, FLUX.1 Fill), and whether a negative prompt
    is given where none at all is not the empty prompt (SDXL's zero embeddings)."""
    return (None if rules.guidance_per_prompt else job["guidance"],
            None if rules.name == SD else job["negative_prompt"] is None)


def denoise_jobs(pipe, jobs: list[dict], timer=None, on_step=None, cancel=None) -> list[Denoised]:
    """Text, VAE encode and the UNet loop for jobs that share a ``batch_key``, in as few calls as the pipeline's
    family allows (one for SD; ``call_key`` for the others); one ``Denoised`` each, in the jobs' order.
    ``on_step`` / ``cancel``: the pipeline's hooks for the whole batch (``InpaintPipeline.denoise``)."""
    if len({batch_key(j) for j in jobs}) != 1:
        raise ValueError(f"jobs: expected one batch key ({', '.join(BATCH_FIELDS)}), got {len({batch_key(j) for j in jobs})}")
    out: list = [None] * len(jobs)
    for idx in group(jobs, lambda j: call_key(j, pipe.rules)):
        part = [jobs[i] for i in idx]
        first = part[0]
        den = denoise_job(
            pipe, [j["prompt"] for j in part], [j["source"] for j in part], [j["hole"] for j in part],
            negative_prompt=[j["negative_prompt"] for j in part], steps=first["steps"],
            guidance=[j["guidance"] for j in part], strength=first["strength"],
            generator=[torch.Generator().manual_seed(j["seed"]) for j in part], scheduler=first["scheduler"],
            timer=timer, cancel=cancel, on_step=on_step,
        )
        for k, i in enumerate(idx):
            out[i] = Denoised(_one(den.latents, k), _one(den.image, k), _one(den.mask, k))
    return out


def decode_key(item: Denoised, decode_options: dict | None = None) -> tuple:
    """What ``Denoised`` items must share to be decoded in one call (``decode_jobs``): the latent shape and, with a
    region in ``decode_options``, the mask's box before snapping (``mask_box``; None for an empty mask). A region
    decode of a batch decodes the union of its masks' boxes, so only items of one box share a call; they then get
    the box, the snapped crop and the "auto" choice each gets alone. Without a region: the shape only."""
    shape = tuple(item.latents.shape)
    if not decode_options or decode_options.get("region") is None:
        return shape, None
    _, margin = check_region(decode_options["region"], decode_options.get("margin"))
    h, w = item.mask.shape[-2] // SCALE, item.mask.shape[-1] // SCALE
    return shape, mask_box(item.mask, margin, h, w)


def decode_jobs(pipe, items: list[Denoised], timer=None, decoder: dict | None = None,
                decode_options: dict | None = None) -> list[torch.Tensor]:
    """Equally sized ``Denoised`` items decoded in one batch -> one (1, 3, H, W) image in [-1, 1] each
    (the decoder's output, as ``finish_job`` takes it). ``decode_options``: the pipeline's (a region: items of one
    ``decode_key``; the region it took is noted on ``timer``)."""
    if len({tuple(d.latents.shape[1:]) for d in items}) != 1:
        raise ValueError("items: expected latents of one shape in a decode batch")
    if decode_options and len({decode_key(d, decode_options) for d in items}) != 1:
        raise ValueError("items: expected one decode_key (one mask box) in a region decode batch")
    batch = Denoised(*(torch.cat([getattr(d, f).expand(d.latents.shape[0], *getattr(d, f).shape[1:]) for d in items])
                       for f in ("latents", "image", "mask")))
    samples = pipe.decode(batch, decoder=decoder, timer=timer, decode_options=decode_options)
    return [samples[i:i + 1].clone() for i in range(len(items))]


def finish_job(sample: torch.Tensor, denoised: Denoised) -> InpaintRun:
    """One job's decoded image -> PIL and Pre_error, exactly as ``asymvq inpaint`` and ``asymvq serve`` finish it."""
    return finish_run(sample, denoised)
