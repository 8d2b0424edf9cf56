"""Numerical gradients by central differences, to check analytic backward passes."""

from __future__ import annotations

import numpy as np

from bnlib.numpy._checks import require_array


def numerical_gradient(f, x, dout, h=1e-5):
    """Gradient of ``sum(f(x) * dout)`` with respect to ``x`` by central differences.

        grad[i] = sum((f(x + h e_i) - f(x - h e_i)) * dout) / (2 h)

    Args:
        f: function of one array returning an array like ``dout``.
        x: float64 array (modified during the call and restored).
        dout: upstream gradient, same shape as ``f(x)``.
        h: step; the error is O(h**2) plus rounding of order eps / h.

    Returns:
        An array like ``x``.
    """
    require_array(x, "x", "numerical_gradient")
    if not h > 0:
        raise ValueError(f"numerical_gradient: h must be positive, got {h}")
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        saved = x[index]
        x[index] = saved + h
        plus = np.array(f(x), copy=True)
        x[index] = saved - h
        minus = np.array(f(x), copy=True)
        x[index] = saved
        grad[index] = np.sum((plus - minus) * dout) / (2 * h)
    return grad


def relative_error(a, b) -> float:
    """The figure gradient checks report: ``max(|a - b| / max(|a| + |b|, 1e-12))``."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(a) + np.abs(b), 1e-12)))
