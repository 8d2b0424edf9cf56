"""Fixtures shared by the bnlib.numpy tests: seeded inputs and float64 reference maths."""

import numpy as np
import pytest

# (N, C) and (N, C, *spatial): from 2 values per channel to 600, and a 1 x 1 image.
SHAPES = [(2, 3), (8, 5), (4, 3, 5), (4, 3, 5, 6), (3, 2, 2, 2, 2), (2, 4, 1, 1), (600, 7)]


@pytest.fixture(params=SHAPES, ids=lambda shape: "x".join(map(str, shape)))
def shape(request):
    """Each input shape of :data:`SHAPES` in turn (a test may parametrize its own)."""
    return request.param


@pytest.fixture
def gamma_beta(shape, rng):
    """Random (C,) gamma and beta for ``shape``."""
    return rng.normal(size=shape[1]), rng.normal(size=shape[1])


@pytest.fixture
def rng():
    """A seeded generator, so every run draws the same inputs."""
    return np.random.default_rng(1234)


def float64_batchnorm(x, gamma, beta, eps=1e-5):
    """Batch norm in float64 straight from the four equations (axes: all but 1).

    Returns ``(out, mean, var)``: out like x, mean and biased var of shape (C,).
    """
    x = np.asarray(x, np.float64)
    axes = (0, *range(2, x.ndim))
    view = (1, -1) + (1,) * (x.ndim - 2)
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    xhat = (x - mean) / np.sqrt(var + eps)
    out = np.asarray(gamma, np.float64).reshape(view) * xhat + np.asarray(beta).reshape(view)
    return out, mean.reshape(-1), var.reshape(-1)


@pytest.fixture
def reference():
    """:func:`float64_batchnorm`, the maths every NumPy batch norm is compared with."""
    return float64_batchnorm
