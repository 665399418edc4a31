"""Argument checks shared by the pipeline and the front ends, each written once (integers, numbers,
guidance scales, generators).

``check_int`` is the one integer check of the runtime: a Python int, never a bool (``True`` is an
``int`` to Python, and ``steps=True`` is a mistake, not one step).
"""
from __future__ import annotations

import math

import numpy as np
import torch


def check_int(value, name: str, *, minimum: int | None = None) -> int:
    """``value`` when it is an int (not a bool) >= ``minimum`` (default 1, "a positive integer"); a
    ValueError naming ``name`` otherwise."""
    lowest = 1 if minimum is None else minimum
    if not isinstance(value, int) or isinstance(value, bool) or value < lowest:
        expected = "a positive integer" if minimum is None else f"an integer >= {minimum}"
        raise ValueError(f"{name}: expected {expected}, got {value!r}")
    return value


def is_number(x) -> bool:
    """A finite real number (Python or numpy scalar), not a bool."""
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_)) and math.isfinite(x)


def check_guidance(guidance_scale):
    """(scale or list of scales, guidance on?); a batch shares on/off: the UNet batch doubles for all or none."""
    if not isinstance(guidance_scale, (list, tuple)):
        if not is_number(guidance_scale) or guidance_scale < 0:
            raise ValueError(f"guidance_scale: expected a finite number >= 0 (or one per prompt), got {guidance_scale!r}")
        return float(guidance_scale), guidance_scale > 1.0
    values = list(guidance_scale)
    if not values or not all(is_number(g) and g >= 0 for g in values):
        raise ValueError(f"guidance_scale: expected a finite number >= 0 or a non-empty list of them, got {guidance_scale!r}")
    if len({g > 1.0 for g in values}) > 1:
        raise ValueError(f"guidance_scale: expected all values > 1 (guidance on) or all <= 1 (off) in one batch, "
                         f"got {values}")
    return [float(g) for g in values], values[0] > 1.0


def check_generators(generator, batch: int, device: torch.device | None = None):
    """None, one generator, or a list with one per image (diffusers' convention); each on the CPU
    (noise drawn there and moved: the same on every machine) or on the pipeline's device."""
    gens = list(generator) if isinstance(generator, (list, tuple)) else [] if generator is None else [generator]
    if isinstance(generator, (list, tuple)) and len(gens) != batch or not all(isinstance(g, torch.Generator) for g in gens):
        kinds = f"{len(gens)} items" if isinstance(generator, (list, tuple)) else type(generator).__name__
        raise ValueError(f"generator: expected a torch.Generator or a list of {batch} (one per image), got {kinds}")
    for g in gens:
        if device is not None and g.device.type != "cpu" and g.device != device:
            raise ValueError(f"generator: expected a generator on the CPU or on the pipeline's device {device}, "
                             f"got one on {g.device}")
    return gens if isinstance(generator, (list, tuple)) else generator
