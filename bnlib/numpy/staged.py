"""Batch normalization written with NumPy's full-size temporaries, and node by node.

The textbook forward and backward are the formulas of :mod:`bnlib.numpy.batchnorm` written
with one NumPy call per term, each writing a full-size array: the same numbers, without the
chunked engine. They are the benchmark's baseline (``make bench``), the version whose memory
traffic :mod:`bnlib.numpy.engine` avoids.

The staged backward visits the nodes of the computational graph

    x -> mu = mean(x) -> xmu = x - mu -> q = xmu**2 -> var = mean(q) -> v = var + eps
      -> std = sqrt(v) -> invstd = 1 / std -> xhat = xmu * invstd -> gx = gamma * xhat
      -> y = gx + beta

in reverse, applying one local derivative at a time. It is slower than
:func:`bnlib.numpy.batchnorm_backward` (more passes over memory) and exists to be read: every
line is one step of the chain rule.
"""

from __future__ import annotations

import numpy as np

from bnlib.numpy._checks import require_batchnorm_inputs, require_cache, require_dout
from bnlib.numpy.axes import channel_view, reduction_axes
from bnlib.numpy.batchnorm import BatchNormCache


def batchnorm_forward_textbook(x, gamma, beta, eps=1e-5):
    """Training-mode BN with full-size temporaries, in x's dtype.

    Same arguments and result as :func:`bnlib.numpy.batchnorm_forward` (x: (N, C, *spatial),
    gamma and beta: (C,)), with the cache's vectors in x's dtype; the benchmark's baseline.
    """
    eps = require_batchnorm_inputs(x, gamma, beta, eps, "batchnorm_forward_textbook")
    axes, ndim = reduction_axes(x), x.ndim
    mean = x.mean(axis=axes)
    xmu = x - channel_view(mean, ndim)
    var = (xmu**2).mean(axis=axes)
    invstd = 1.0 / np.sqrt(var + eps)
    xhat = xmu * channel_view(invstd, ndim)
    out = channel_view(gamma, ndim) * xhat + channel_view(beta, ndim)
    return out.astype(x.dtype, copy=False), BatchNormCache(x, gamma, mean, var, invstd)


def batchnorm_backward_textbook(dout, cache):
    """Closed-form BN gradient with full-size temporaries (xhat, products).

    The formula of :func:`bnlib.numpy.batchnorm_backward` in its most direct form; the
    benchmark's baseline. dout, dx: x's shape (N, C, *spatial); dgamma, dbeta: (C,).
    """
    where = "batchnorm_backward_textbook"
    require_cache(cache, BatchNormCache, "batchnorm_forward", where)
    x = cache.x
    require_dout(dout, x.shape, where)
    axes, ndim = reduction_axes(x), x.ndim
    count = x.size // x.shape[1]
    xhat = cache.xhat
    dbeta = dout.sum(axis=axes)
    dgamma = (dout * xhat).sum(axis=axes)
    dx = channel_view(cache.gamma * cache.invstd / count, ndim) * (
        count * dout - channel_view(dbeta, ndim) - xhat * channel_view(dgamma, ndim))
    return dx.astype(x.dtype, copy=False), dgamma, dbeta


def batchnorm_backward_staged(dout, cache):
    """Gradient of BN by walking the graph backwards, one line per node (the table of
    chapter 4, with ``v = var + eps`` and ``q = xmu**2``).

    Takes the cache of :func:`bnlib.numpy.batchnorm_forward` (or of the textbook forward) and
    returns ``(dx, dgamma, dbeta)``, equal to :func:`bnlib.numpy.batchnorm_backward`; dout
    and dx have x's shape (N, C, *spatial), dgamma and dbeta are (C,).
    """
    where = "batchnorm_backward_staged"
    require_cache(cache, BatchNormCache, "batchnorm_forward", where)
    x = cache.x
    require_dout(dout, x.shape, where)
    axes, count = reduction_axes(x), x.size // x.shape[1]
    mu, invstd, gamma = (channel_view(v, x.ndim) for v in (cache.mean, cache.invstd, cache.gamma))
    xmu = x - mu  # the forward nodes, rebuilt from the cache
    std, xhat = 1.0 / invstd, xmu * invstd
    dbeta, dgx = dout.sum(axis=axes), dout  # y = gx + beta
    dgamma, dxhat = (dgx * xhat).sum(axis=axes), dgx * gamma  # gx = gamma * xhat
    dxmu_1, dinvstd = dxhat * invstd, (dxhat * xmu).sum(axis=axes, keepdims=True)  # xhat
    dstd = -dinvstd / std**2  # invstd = 1 / std
    dv = dstd / (2.0 * std)  # std = sqrt(v)
    dvar = dv  # v = var + eps
    dq = dvar / count  # var = mean(q), the same for every q
    dxmu_2 = 2.0 * xmu * dq  # q = xmu**2
    dxmu = dxmu_1 + dxmu_2  # xmu feeds two nodes: its gradient is the sum of both
    dx_1, dmu = dxmu, -dxmu.sum(axis=axes, keepdims=True)  # xmu = x - mu
    dx_2 = dmu / count  # mu = mean(x), the same for every x
    dx = dx_1 + dx_2  # x feeds two nodes too
    return dx.astype(x.dtype, copy=False), dgamma, dbeta
