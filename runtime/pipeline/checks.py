"""Argument checks shared by the pipeline and the front ends, each written once.

``check_int`` is the one integer check of the runtime: a Python int, never a bool (``True`` is an
``int`` to Python, and ``steps=True`` is a mistake, not one step).
"""
from __future__ import annotations


def check_int(value, name: str, *, minimum: int | None = None) -> int:
    """``value`` when it is an int (not a bool) >= ``minimum`` (default 1, "a positive integer"); a
    ValueError naming ``name`` otherwise."""
    lowest = 1 if minimum is None else minimum
    if not isinstance(value, int) or isinstance(value, bool) or value < lowest:
        expected = "a positive integer" if minimum is None else f"an integer >= {minimum}"
        raise ValueError(f"{name}: expected {expected}, got {value!r}")
    return value
