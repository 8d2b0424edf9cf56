"""Layer, group and RMS normalization in NumPy, with their backward passes.

All three normalize each sample on its own, over a set of trailing axes, so they have no
running statistics and behave the same in training and evaluation. Each row of ``K`` values:

    LayerNorm:  xhat = (x - mean) / sqrt(var + eps),  out = gamma * xhat + beta
    GroupNorm:  the same over each group of C/G channels (and all spatial positions),
                then per-channel gamma and beta
    RMSNorm:    out = gamma * x / sqrt(mean(x**2) + eps)        (no centering, no beta)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bnlib.numpy._checks import (
    compute_dtype,
    require_array,
    require_cache,
    require_dout,
    require_eps,
    require_input,
    require_num_groups,
    require_shape,
    require_vector,
)


@dataclass(frozen=True)
class RowNormCache:
    """What the backward passes of layer, group and RMS norm need.

    The input is seen as R rows of K values, one row per normalized group (a sample for layer
    and RMS norm, a (sample, group) pair for group norm). xhat: the normalized input, x's
    shape, in the compute dtype. invstd: (R, 1), ``1 / sqrt(var + eps)`` (``1 / rms`` for
    RMS norm). gamma: the scale laid out to multiply one row. dtype: x's dtype. param_shape:
    gamma's shape.
    """

    xhat: np.ndarray
    invstd: np.ndarray
    gamma: np.ndarray
    dtype: np.dtype
    param_shape: tuple[int, ...]

    def as_rows(self, a: np.ndarray) -> np.ndarray:
        """View an array of x's shape as the (R, K) rows, in the compute dtype."""
        return a.reshape(len(self.invstd), -1).astype(self.xhat.dtype, copy=False)

    def like_input(self, rows: np.ndarray) -> np.ndarray:
        """Rows back in x's shape and dtype."""
        return rows.reshape(self.xhat.shape).astype(self.dtype, copy=False)


def normalize_rows(rows: np.ndarray, eps: float, center: bool = True):
    """Return ``(xhat, invstd)`` for each row of a 2-D array (two-pass, biased variance)."""
    if center:
        rows = rows - rows.mean(axis=1, keepdims=True)
        # A second pass removes the rounding error of the first mean (large means).
        rows -= rows.mean(axis=1, keepdims=True)
    invstd = 1.0 / np.sqrt(np.mean(rows * rows, axis=1, keepdims=True) + eps)
    return rows * invstd, invstd


def row_backward(g: np.ndarray, xhat: np.ndarray, invstd: np.ndarray, center: bool = True):
    """dx of a row normalization given ``g = dout * gamma`` (rows of K values).

        centered (LN/GN): dx = invstd * (g - mean(g) - xhat * mean(g * xhat))
        RMS:              dx = invstd * (g - xhat * mean(g * xhat))
    """
    projection = xhat * np.mean(g * xhat, axis=1, keepdims=True)
    if center:
        return invstd * (g - g.mean(axis=1, keepdims=True) - projection)
    return invstd * (g - projection)


def trailing_rows(x, gamma, where: str) -> np.ndarray:
    """Check x and gamma of a layer or RMS norm; return x as rows of ``gamma.size`` values
    (R, K) in the compute dtype. The trailing axes of x must equal gamma's shape (torch's
    LayerNorm wording)."""
    require_input(x, where, min_ndim=1)
    require_array(gamma, "gamma", where)
    shape = tuple(gamma.shape)
    if gamma.ndim == 0:
        raise ValueError(f"{where}: gamma must have at least one axis, got a scalar")
    if x.ndim < gamma.ndim or tuple(x.shape[x.ndim - gamma.ndim:]) != shape:
        raise ValueError(
            f"{where}: Given normalized_shape={list(shape)}, expected input with shape "
            f"[*, {', '.join(map(str, shape))}], but got input of size{list(x.shape)}"
        )
    return x.reshape(-1, gamma.size).astype(compute_dtype(x.dtype), copy=False)


def layernorm_forward(x, gamma, beta, eps=1e-5):
    """Layer normalization over the trailing ``gamma.ndim`` axes of ``x``, row by row:

        xhat = (x - mean) / sqrt(var + eps),   out = gamma * xhat + beta

    Args:
        x: (..., *normalized_shape) float array, e.g. (N, D) or (N, T, D).
        gamma, beta: arrays of shape normalized_shape.
        eps: positive constant inside the square root.

    Returns:
        A tuple ``(out, cache)``: out like x, a :class:`RowNormCache` for
        :func:`layernorm_backward`.
    """
    where = "layernorm_forward"
    rows = trailing_rows(x, gamma, where)
    require_shape(beta, "beta", gamma.shape, where)
    xhat, invstd = normalize_rows(rows, require_eps(eps, where))
    g, b = gamma.reshape(-1).astype(rows.dtype), beta.reshape(-1).astype(rows.dtype)
    cache = RowNormCache(xhat.reshape(x.shape), invstd, g, x.dtype, gamma.shape)
    return cache.like_input(xhat * g + b), cache


def layernorm_backward(dout, cache):
    """Backward of :func:`layernorm_forward`, with sums over the rows:

        dbeta = sum(dout),   dgamma = sum(dout * xhat)
        dx = invstd * (g - mean(g) - xhat * mean(g * xhat))   with g = dout * gamma

    Returns (dx, dgamma, dbeta): dx like the input; dgamma, dbeta like gamma.
    """
    dout_rows = checked_rows(dout, cache, "layernorm_backward")
    xhat = cache.as_rows(cache.xhat)
    dgamma = (dout_rows * xhat).sum(axis=0).reshape(cache.param_shape)
    dbeta = dout_rows.sum(axis=0).reshape(cache.param_shape)
    dx = row_backward(dout_rows * cache.gamma, xhat, cache.invstd)
    return cache.like_input(dx), dgamma, dbeta


def checked_rows(dout, cache, where: str) -> np.ndarray:
    """Check ``dout`` against the cache and view it as rows of the compute dtype."""
    require_cache(cache, RowNormCache, "the matching forward", where)
    require_dout(dout, cache.xhat.shape, where)
    return cache.as_rows(dout)


def groupnorm_forward(x, gamma, beta, num_groups, eps=1e-5):
    """Group normalization: channels split into ``num_groups`` groups G, each normalized over
    its C/G channels and every spatial position, per sample, then per-channel gamma and beta.

    Args:
        x: (N, C) or (N, C, *spatial). gamma, beta: (C,). num_groups: divides C.

    Returns:
        (out, cache): out like x, a :class:`RowNormCache` for :func:`groupnorm_backward`.
    """
    where = "groupnorm_forward"
    require_input(x, where)
    n, channels = x.shape[:2]
    require_vector(gamma, "gamma", channels, where)
    require_vector(beta, "beta", channels, where)
    require_num_groups(num_groups, channels, where)
    dtype = compute_dtype(x.dtype)
    rows = x.reshape(n * num_groups, -1).astype(dtype, copy=False)  # (N * G, C/G * spatial)
    xhat, invstd = normalize_rows(rows, require_eps(eps, where))
    spatial = rows.shape[1] // (channels // num_groups)
    g = per_channel_rows(gamma.astype(dtype), num_groups, spatial)  # (G, C/G * spatial)
    b = per_channel_rows(beta.astype(dtype), num_groups, spatial)
    cache = RowNormCache(xhat.reshape(x.shape), invstd, g, x.dtype, gamma.shape)
    return cache.like_input(xhat.reshape(n, num_groups, -1) * g + b), cache


def per_channel_rows(v: np.ndarray, num_groups: int, spatial: int) -> np.ndarray:
    """Lay a (C,) vector out as (G, C/G * spatial) to match the grouped rows."""
    return np.repeat(v, spatial).reshape(num_groups, -1)


def groupnorm_backward(dout, cache):
    """Backward of :func:`groupnorm_forward`: the layer norm backward on each group's row,
    with dgamma and dbeta summed per channel.

    Returns (dx, dgamma, dbeta): dx like the input, dgamma and dbeta (C,).
    """
    dout_rows = checked_rows(dout, cache, "groupnorm_backward")
    n, channels = cache.xhat.shape[:2]
    groups = cache.gamma.shape[0]
    g = (dout_rows.reshape(n, groups, -1) * cache.gamma).reshape(dout_rows.shape)
    dx = row_backward(g, cache.as_rows(cache.xhat), cache.invstd)
    per_channel = (n, channels, -1)
    dout_c, xhat_c = dout_rows.reshape(per_channel), cache.xhat.reshape(per_channel)
    dgamma = (dout_c * xhat_c).sum(axis=(0, 2))
    dbeta = dout_c.sum(axis=(0, 2))
    return cache.like_input(dx), dgamma, dbeta


def rmsnorm_forward(x, gamma, eps=1e-6):
    """RMS normalization over the trailing ``gamma.ndim`` axes, row by row; no mean
    subtraction and no beta:

        rms = sqrt(mean(x**2) + eps),   out = gamma * x / rms

    Args:
        x: (..., *normalized_shape) float array, e.g. (N, D) or (N, T, D).
        gamma: array of shape normalized_shape.
        eps: positive constant inside the square root.

    Returns:
        A tuple ``(out, cache)``: out like x, a :class:`RowNormCache` for
        :func:`rmsnorm_backward` (its invstd is ``1 / rms``).
    """
    where = "rmsnorm_forward"
    rows = trailing_rows(x, gamma, where)
    xhat, invstd = normalize_rows(rows, require_eps(eps, where), center=False)
    g = gamma.reshape(-1).astype(rows.dtype)
    cache = RowNormCache(xhat.reshape(x.shape), invstd, g, x.dtype, gamma.shape)
    return cache.like_input(xhat * g), cache


def rmsnorm_backward(dout, cache):
    """Backward of :func:`rmsnorm_forward`, with sums over the rows:

        dgamma = sum(dout * xhat),   dx = invstd * (g - xhat * mean(g * xhat)),  g = dout * gamma

    Returns (dx, dgamma): dx like the input, dgamma like gamma.
    """
    dout_rows = checked_rows(dout, cache, "rmsnorm_backward")
    xhat = cache.as_rows(cache.xhat)
    dgamma = (dout_rows * xhat).sum(axis=0).reshape(cache.param_shape)
    dx = row_backward(dout_rows * cache.gamma, xhat, cache.invstd, center=False)
    return cache.like_input(dx), dgamma
