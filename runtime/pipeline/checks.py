"""Argument checks shared by the pipeline and the front ends, each written once.

``check_int`` is the one integer check of the runtime: a Python int, never a bool (``True`` is an
``int`` to Python, and ``steps=True`` is a mistake, not one step).
"""
from __future__ import annotations


def check_int(value, name: str, *, minimum: int = 1) -> int:
    """``value`` when it is an int (not a bool) >= ``minimum``; a ValueError naming ``name`` otherwise."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        expected = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name}: expected {expected}, got {value!r}")
    return value
