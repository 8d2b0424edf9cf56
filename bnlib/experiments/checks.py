"""The argument error every experiment raises for a name it does not know."""

from __future__ import annotations


def not_one_of(name: str, value, choices) -> ValueError:
    """The error for argument ``name`` given ``value``, which is none of ``choices``."""
    return ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
