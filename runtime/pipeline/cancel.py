"""Stopping a denoising loop between steps: ``JobCancelled`` and the step iterator every family's loop runs.

A server cancels a job (``DELETE /v1/jobs/{id}``, its client gone, its deadline) by setting an event; the
pipeline's ``denoise(cancel=event.is_set)`` asks it before each step and raises ``JobCancelled`` there. One
rule, here, for SD's, SDXL's and FLUX.1 Fill's loops: a step that started runs to its end (the networks are
not interrupted mid-call), and a run that is never cancelled is unchanged.
"""
from __future__ import annotations

from tqdm.auto import tqdm


class JobCancelled(Exception):
    """``denoise``'s ``cancel()`` said stop: raised at the step boundary after it did (a server's cancelled job)."""


def loop_steps(timesteps, cancel=None, progress: bool = False):
    """``(i, t)`` over ``timesteps`` with the progress bar; ``cancel()`` (a no-argument callable, or None) is
    asked before each step, and ``JobCancelled`` raised when it returns true."""
    n = len(timesteps)
    for i, t in enumerate(tqdm(timesteps, desc="denoising", disable=not progress, leave=False)):
        if cancel is not None and cancel():
            raise JobCancelled(f"cancelled before denoising step {i + 1} of {n}")
        yield i, t
