"""Checks for numbers and objects read from JSON (an engines manifest), shared by the records that live there:
``LatentSpace`` (key ``latent_space``) and ``RegionModel`` (key ``region``)."""
from __future__ import annotations

import math


def is_real(value) -> bool:
    """A finite int or float. bool is refused (type(True) is bool); an int beyond float's range is too (float()
    would overflow, math.isfinite too)."""
    return type(value) is float and math.isfinite(value) or type(value) is int and abs(value) < 1e308


def shown(value) -> str:
    """``repr(value)`` cut at 80 characters: a hostile manifest cannot make an error message huge."""
    text = repr(value)
    return text[:80] + "..." if len(text) > 80 else text


def from_exact_dict(cls, d, key: str, fields: tuple[str, ...]):
    """``cls(**d)`` for an object with exactly ``fields``; a ValueError names ``key`` (``key.field`` for a bad value,
    from ``cls``'s own checks) and the expected form otherwise."""
    if not isinstance(d, dict) or set(d) != set(fields):
        raise ValueError(f"{key} must be an object with exactly the keys {list(fields)}, "
                         f"got {shown(sorted(d) if isinstance(d, dict) else d)}")
    try:
        return cls(**d)
    except ValueError as e:
        raise ValueError(f"{key}.{e}") from None
