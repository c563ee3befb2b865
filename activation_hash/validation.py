"""Parameter checks shared by every public function (the lowest layer: imports nothing of ours).

Each check returns the value in its canonical Python type or raises ``TypeError`` (wrong
kind) / ``ValueError`` (right kind, out of range) with a message naming the parameter, what
was given and what was expected. ``bool`` is never accepted as a number.
"""
from __future__ import annotations

import math
import numbers
from typing import Iterable

__all__ = ["check_int", "check_float", "check_bool", "check_choice"]


def _bounds(lo, hi) -> str:
    if lo is not None and hi is not None:
        return f" in [{lo}, {hi}]"
    if lo is not None:
        return f" >= {lo}"
    if hi is not None:
        return f" <= {hi}"
    return ""


def check_int(value, name: str, *, min: int | None = None, max: int | None = None) -> int:
    """An integer (Python int or NumPy integer; not bool) within ``[min, max]`` -> ``int``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer{_bounds(min, max)}, "
                        f"got {type(value).__name__} {value!r}")
    value = int(value)
    if (min is not None and value < min) or (max is not None and value > max):
        raise ValueError(f"{name} must be an integer{_bounds(min, max)}, got {value}")
    return value


def check_float(value, name: str, *, min: float | None = None, max: float | None = None,
                min_open: bool = False, max_open: bool = False) -> float:
    """A finite real number (not bool) within the bounds -> ``float``.

    ``min_open`` / ``max_open`` exclude the bound itself (``min=0, min_open=True``: positive).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    lo = None if min is None else ("(" if min_open else "[") + f"{min}"
    hi = None if max is None else f"{max}" + (")" if max_open else "]")
    want = f"a finite number{' in ' + (lo or '(-inf') + ', ' + (hi or 'inf)') if lo or hi else ''}"
    if not math.isfinite(value):
        raise ValueError(f"{name} must be {want}, got {value}")
    if min is not None and (value < min or (min_open and value == min)):
        raise ValueError(f"{name} must be {want}, got {value}")
    if max is not None and (value > max or (max_open and value == max)):
        raise ValueError(f"{name} must be {want}, got {value}")
    return value


def check_bool(value, name: str) -> bool:
    """A real bool (``True``/``False``; not 0/1, not the string "false")."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return value


def check_choice(value, name: str, choices: Iterable):
    """One of ``choices`` (compared with ==, so strings must match exactly)."""
    choices = tuple(choices)
    if isinstance(value, bool) and not any(isinstance(c, bool) for c in choices):
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    try:
        ok = value in choices
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value
