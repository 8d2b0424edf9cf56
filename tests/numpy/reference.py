"""Float64 reference maths for the NumPy tests, written straight from the formulas."""

import numpy as np


def reference_batchnorm(x, gamma, beta, eps=1e-5):
    """Batch norm in float64 straight from the four equations (axes: all but 1)."""
    x = np.asarray(x, np.float64)
    axes = (0, *range(2, x.ndim))
    view = (1, -1) + (1,) * (x.ndim - 2)
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    xhat = (x - mean) / np.sqrt(var + eps)
    return gamma.reshape(view) * xhat + beta.reshape(view)
