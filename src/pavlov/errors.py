"""User-facing errors.

Anything raised as a :class:`PavlovError` is bad input, not a bug: the CLI prints its message as
one line and exits with code 2 (no traceback unless ``--debug``).
"""

from __future__ import annotations


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
