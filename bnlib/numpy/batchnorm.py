"""Batch normalization in NumPy: training forward, closed-form backward, inference, folding.

Statistics are taken over every axis except axis 1, so one function serves fully connected
inputs ``(N, D)`` and convolutional inputs ``(N, C, *spatial)``. With ``M = N * prod(spatial)``
values per channel:

    mean = sum(x) / M                      var = sum((x - mean)**2) / M   (biased)
    xhat = (x - mean) / sqrt(var + eps)    out = gamma * xhat + beta

Each function below is its formula, line by line. The passes over the data (the sums and the
per-channel maps) are calls into :mod:`bnlib.numpy.engine`, which computes the same quantities
in cache-sized chunks on several threads; :mod:`bnlib.numpy.staged` writes the same formulas
with NumPy's full-size temporaries.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bnlib.numpy import engine
from bnlib.numpy._checks import (
    compute_dtype,
    require_array,
    require_batchnorm_inputs,
    require_cache,
    require_dout,
    require_eps,
    require_input,
    require_vector,
)
from bnlib.numpy.axes import channel_view


@dataclass(frozen=True)
class BatchNormCache:
    """What :func:`batchnorm_backward` needs, and the batch variance.

    x: the input (N, C, *spatial), referenced, not copied. gamma: (C,) scale. mean, var: (C,)
    batch mean and biased batch variance. invstd: (C,) ``1 / sqrt(var + eps)``. The vectors
    are float64 (the textbook forward keeps x's dtype).
    """

    x: np.ndarray
    gamma: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    invstd: np.ndarray

    @property
    def xhat(self) -> np.ndarray:
        """The normalized input ``(x - mean) * invstd``, x's shape. Computed when read: the
        backward works from x, and storing xhat would cost every forward a full-size write."""
        ndim = self.x.ndim
        return (self.x - channel_view(self.mean, ndim)) * channel_view(self.invstd, ndim)


def batchnorm_forward(x, gamma, beta, eps=1e-5):
    """Training-mode batch normalization.

    Args:
        x: (N, C) or (N, C, *spatial) float array (float16, float32 or float64).
        gamma, beta: (C,) learned scale and shift.
        eps: positive constant added to the variance inside the square root.

    Returns:
        A tuple ``(out, cache)``: out has x's shape and dtype; cache is a
        :class:`BatchNormCache` for :func:`batchnorm_backward`.
    """
    eps = require_batchnorm_inputs(x, gamma, beta, eps, "batchnorm_forward")
    mean, var = engine.batch_statistics(x)  # sum(x) / M, sum((x - mean)**2) / M
    invstd = 1.0 / np.sqrt(var + eps)
    out = engine.normalize(x, mean, invstd, gamma, beta)  # gamma * (x - mean) * invstd + beta
    return out, BatchNormCache(x, gamma.astype(np.float64), mean, var, invstd)


def batchnorm_backward(dout, cache):
    """Closed-form gradient of :func:`batchnorm_forward`.

    With sums over every axis but 1 (M values per channel):

        dbeta  = sum(dout)
        dgamma = sum(dout * xhat)
        dx     = gamma * invstd / M * (M * dout - dbeta - xhat * dgamma)

    Args:
        dout: upstream gradient, x's shape.
        cache: the :class:`BatchNormCache` returned by :func:`batchnorm_forward`.

    Returns:
        A tuple ``(dx, dgamma, dbeta)``: dx has x's shape and dtype; dgamma and dbeta are
        (C,), float32 for float16 and float32 input, float64 for float64.
    """
    where = "batchnorm_backward"
    require_cache(cache, BatchNormCache, "batchnorm_forward", where)
    x, mean, invstd = cache.x, cache.mean, cache.invstd
    require_dout(dout, x.shape, where)
    dbeta, dgamma = engine.gradient_sums(dout, x, mean, invstd)  # sum(dout), sum(dout * xhat)
    dx = engine.input_gradient(dout, x, mean, invstd, cache.gamma, dbeta, dgamma)
    dtype = compute_dtype(x.dtype)
    return dx, dgamma.astype(dtype), dbeta.astype(dtype)


def batchnorm_inference(x, gamma, beta, running_mean, running_var, eps=1e-5):
    """Evaluation-mode batch normalization with stored statistics.

        out = gamma * (x - running_mean) / sqrt(running_var + eps) + beta

    Args:
        x: (N, C) or (N, C, *spatial) float array; any N, including 1.
        gamma, beta, running_mean, running_var: (C,) arrays.
        eps: non-negative constant (0 is allowed when running_var > 0, as in torch).

    Returns:
        out: x's shape and dtype.
    """
    where = "batchnorm_inference"
    require_input(x, where)
    for name, value in (("gamma", gamma), ("beta", beta), ("running_mean", running_mean),
                        ("running_var", running_var)):
        require_vector(value, name, x.shape[1], where)
    eps = require_eps(eps, where, allow_zero=True)
    invstd = 1.0 / np.sqrt(running_var.astype(np.float64) + eps)
    return engine.normalize(x, running_mean, invstd, gamma, beta)


def fold_batchnorm(weight, bias, gamma, beta, running_mean, running_var, eps=1e-5):
    """Fold an evaluation-mode BN into the linear layer before it.

    For ``z = x @ weight + bias`` followed by BN with stored statistics, returns
    ``(weight_folded, bias_folded)`` with ``x @ weight_folded + bias_folded == BN(z)``:

        slope = gamma / sqrt(running_var + eps)
        weight_folded = weight * slope            (each output column scaled)
        bias_folded   = (bias - running_mean) * slope + beta

    Args:
        weight: (D_in, D_out). bias: (D_out,) or None (no bias).
        gamma, beta, running_mean, running_var: (D_out,).
    """
    where = "fold_batchnorm"
    require_array(weight, "weight", where)
    if weight.ndim != 2:
        raise ValueError(f"{where}: weight must have shape (D_in, D_out), got {weight.shape}")
    width = weight.shape[1]
    if bias is None:
        bias = np.zeros(width, weight.dtype)
    for name, value in (("bias", bias), ("gamma", gamma), ("beta", beta),
                        ("running_mean", running_mean), ("running_var", running_var)):
        require_vector(value, name, width, where)
    eps = require_eps(eps, where, allow_zero=True)
    slope = gamma / np.sqrt(running_var + eps)
    weight_folded = (weight * slope).astype(weight.dtype)
    bias_folded = ((bias - running_mean) * slope + beta).astype(weight.dtype)
    return weight_folded, bias_folded
