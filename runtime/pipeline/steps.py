"""What a pipeline's step loop tells its caller after each denoising step: the progress hook every family takes.

A front end (the servers' progress streams, ``asymvq.serve.progress``) passes ``on_step``, a callable taking one
``Step``, next to ``cancel``; the loop calls it after each scheduler step, outside the timed spans, on the thread
that runs the loop. It must be cheap (it holds up the next step) and must not keep the tensors past the call
unless it copies them (the loop reuses nothing today, but an engine may). Raising from it stops the run there.

Every family's loop reports through ``report_step`` with its latents unpacked to (B, C, h, w) diffusion space
(FLUX's packed sequence through ``unpack_flux_latents`` first), so a preview needs nothing but the latent space's
``RGBProjection`` (``asymvq.models.latent_space``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Step:
    index: int  # denoising steps done so far, 1..total
    total: int  # the loop's steps in this run (after strength)
    latents: torch.Tensor  # the scheduler's sample after this step: (B, C, h, w), diffusion space
    estimate: torch.Tensor  # its prediction of the clean latents where the scheduler gives one (DDIM, Euler), else latents


def report_step(on_step, index: int, total: int, latents: torch.Tensor, step_out=None) -> None:
    """Call ``on_step`` (if any) for step ``index`` (1-based) of ``total``; ``step_out``: the scheduler's
    ``step(..., return_dict=False)`` tuple, whose second item, where there is one, is the clean-latent estimate."""
    if on_step is None:
        return
    estimate = step_out[1] if step_out is not None and len(step_out) > 1 and step_out[1] is not None else latents
    on_step(Step(index, total, latents, estimate))
