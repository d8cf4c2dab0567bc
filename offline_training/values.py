"""Checks of configuration and command-line values: one implementation for every entry point.

A count given as ``True`` or ``"100"`` must be refused by name as ``0`` or
``-3`` is, never read as 1 or fail later as a ``TypeError``.
"""

from __future__ import annotations

import math


def is_number(value: object) -> bool:
    """Whether ``value`` is a finite real number (an int or a float, not a bool or a string)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_whole(value: object) -> bool:
    """Whether ``value`` is an integer (not a bool, which Python counts as one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_whole(name: str, value: object, low: int) -> None:
    """Refuse (``ValueError`` naming ``name``) a ``value`` that is not a whole number of at least ``low``."""
    if not (is_whole(value) and value >= low):
        raise ValueError(f"{name} must be a whole number >= {low}, got {value!r}")
