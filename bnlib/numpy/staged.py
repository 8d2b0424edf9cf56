"""Batch normalization written node by node, as the computational graph draws it.

The forward keeps every intermediate of the graph

    x -> mu -> xmu = x - mu -> sq = xmu**2 -> var -> veps = var + eps -> std = sqrt(veps)
      -> istd = 1/std -> xhat = xmu * istd -> gx = gamma * xhat -> y = gx + beta

and the backward visits the nodes in reverse, applying one local derivative at a time. It is
slower than :func:`bnlib.numpy.batchnorm_backward` (more passes over memory) and exists to be
read: every line is one step of the chain rule.
"""

from __future__ import annotations

import numpy as np

from bnlib.numpy._checks import (
    require_batch_values,
    require_eps,
    require_input,
    require_vector,
)
from bnlib.numpy.axes import channel_view, reduction_axes
from bnlib.numpy.batchnorm import BatchNormCache


def batchnorm_forward_textbook(x, gamma, beta, eps=1e-5):
    """Training-mode BN computed node by node with full-size temporaries.

    Same arguments and result as :func:`bnlib.numpy.batchnorm_forward`; the benchmark's
    baseline and the reading version of the algorithm.
    """
    where = "batchnorm_forward_textbook"
    require_input(x, where)
    require_vector(gamma, "gamma", x.shape[1], where)
    require_vector(beta, "beta", x.shape[1], where)
    eps = require_eps(eps, where)
    require_batch_values(x)
    axes = reduction_axes(x)
    mu = x.mean(axis=axes, keepdims=True)
    xmu = x - mu
    var = (xmu**2).mean(axis=axes, keepdims=True)
    istd = 1.0 / np.sqrt(var + eps)
    xhat = xmu * istd
    out = channel_view(gamma, x.ndim) * xhat + channel_view(beta, x.ndim)
    cache = BatchNormCache(x, mu.reshape(-1), istd.reshape(-1), gamma)
    return out.astype(x.dtype, copy=False), cache


def batchnorm_backward_textbook(dout, cache):
    """Closed-form BN gradient written with full-size temporaries (xhat, products).

    The formula of :func:`bnlib.numpy.batchnorm_backward` in its most direct form; the
    benchmark's baseline.
    """
    x = cache.x
    axes, ndim = reduction_axes(x), x.ndim
    count = x.size // x.shape[1]
    istd = channel_view(cache.invstd, ndim)
    xhat = (x - channel_view(cache.mean, ndim)) * istd
    dbeta = dout.sum(axis=axes)
    dgamma = (dout * xhat).sum(axis=axes)
    scale = channel_view(cache.gamma, ndim) * istd / count
    dx = scale * (count * dout - channel_view(dbeta, ndim) - xhat * channel_view(dgamma, ndim))
    return dx.astype(x.dtype, copy=False), dgamma, dbeta


def batchnorm_backward_staged(dout, cache):
    """Gradient of BN by walking the graph backwards, one node at a time.

    Takes the cache of :func:`bnlib.numpy.batchnorm_forward` (or of the textbook forward) and
    returns ``(dx, dgamma, dbeta)``, equal to :func:`bnlib.numpy.batchnorm_backward`.
    """
    if not isinstance(cache, BatchNormCache):
        raise TypeError(
            "batchnorm_backward_staged: cache must come from batchnorm_forward, "
            f"got {type(cache).__name__}"
        )
    x = cache.x
    require_input(dout, "batchnorm_backward_staged")
    if dout.shape != x.shape:
        raise ValueError(
            f"batchnorm_backward_staged: dout must have the input's shape {x.shape}, "
            f"got {dout.shape}"
        )
    axes, ndim = reduction_axes(x), x.ndim
    count = x.size // x.shape[1]
    # Forward nodes, rebuilt from the cache (std = sqrt(var + eps) = 1 / invstd).
    mu = channel_view(cache.mean, ndim)
    istd = channel_view(cache.invstd, ndim)
    gamma = channel_view(cache.gamma, ndim)
    std = 1.0 / istd
    xmu = x - mu
    xhat = xmu * istd
    # y = gx + beta
    dbeta = dout.sum(axis=axes)
    dgx = dout
    # gx = gamma * xhat
    dgamma = (dgx * xhat).sum(axis=axes)
    dxhat = dgx * gamma
    # xhat = xmu * istd: xmu gets one path here, istd collects a sum
    dxmu_direct = dxhat * istd
    distd = (dxhat * xmu).sum(axis=axes, keepdims=True)
    # istd = 1 / std
    dstd = -distd / std**2
    # std = sqrt(veps)
    dveps = dstd * 0.5 / std
    # veps = var + eps
    dvar = dveps
    # var = mean(sq)
    dsq = np.broadcast_to(dvar / count, x.shape)
    # sq = xmu**2: the second path into xmu
    dxmu_square = 2.0 * xmu * dsq
    dxmu = dxmu_direct + dxmu_square
    # xmu = x - mu: x gets one path, mu collects a sum
    dmu = -dxmu.sum(axis=axes, keepdims=True)
    # mu = mean(x): the second path into x
    dx = dxmu + np.broadcast_to(dmu / count, x.shape)
    return dx.astype(x.dtype, copy=False), dgamma, dbeta
