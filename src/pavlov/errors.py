"""User-facing errors.

Anything raised as a :class:`PavlovError` is bad input, not a bug: the CLI prints its message as
one line and exits with code 2 (no traceback unless ``--debug``).
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from typing import Any


class PavlovError(Exception):
    """Bad input that the user can fix: an unknown env, a malformed map, an unreadable file."""


class ConfigError(PavlovError, ValueError):
    """A config field outside its allowed range. The message names the field and the range."""


def check_range(name: str, value: float, lo: float, hi: float) -> None:
    """Raise :class:`ConfigError` unless ``lo <= value <= hi`` (NaN fails too)."""
    if not (lo <= value <= hi):
        raise ConfigError(f"{name} must be in [{lo}, {hi}], got {value!r}")


def check_positive(name: str, value: float) -> None:
    """Raise :class:`ConfigError` unless ``value > 0``."""
    if not (value > 0):
        raise ConfigError(f"{name} must be positive, got {value!r}")


def check_count(name: str, value: Any, minimum: int = 1) -> None:
    """Raise :class:`ConfigError` unless ``value`` is an integer >= ``minimum`` (NumPy integers
    count; a bool does not). The one positive-int check of the library."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        need = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ConfigError(f"{name} must be {need}, got {value!r}")


def check_choice(name: str, value: Any, choices: Iterable[str]) -> None:
    """Raise :class:`ConfigError` unless ``value`` is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


class NonFiniteError(PavlovError):
    """A loss or gradient became NaN/inf: training stops before any weight is updated with it."""


def check_finite(name: str, value, step: int, unit: str = "step", hint: str = "") -> None:
    """Raise :class:`NonFiniteError` naming the quantity and the ``unit`` count (``"env step"``
    for RL agents, ``"step"`` for optimizer steps) unless every element of the tensor ``value``
    is finite. Call it on the loss *before* ``optimizer.step()`` so bad weights are never made.
    (Duck-typed on ``value.isfinite()``: this module does not import torch.)"""
    if not bool(value.isfinite().all()):
        raise NonFiniteError(
            f"{name} is not finite at {unit} {step}; stopped before the optimizer step "
            f"(no NaN weights written){'; ' + hint if hint else ''}"
        )
