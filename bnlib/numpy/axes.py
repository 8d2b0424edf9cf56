"""The two idioms of per-channel normalization: reduce over every axis but 1, broadcast along 1."""

from __future__ import annotations

import numpy as np


def reduction_axes(x: np.ndarray) -> tuple[int, ...]:
    """Every axis but the channel axis 1: ``(0,)`` for (N, C), ``(0, 2, 3)`` for (N, C, H, W)."""
    return (0, *range(2, x.ndim))


def channel_view(v: np.ndarray, ndim: int) -> np.ndarray:
    """Reshape a (C,) vector so it broadcasts along axis 1 of an ``ndim``-D array."""
    return np.asarray(v).reshape((1, -1) + (1,) * (ndim - 2))
