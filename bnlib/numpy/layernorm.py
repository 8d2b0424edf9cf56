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
    require_shape,
    require_vector,
)


@dataclass(frozen=True)
class RowNormCache:
    """What the row-wise backward passes need.

    xhat: normalized rows (R, K) in the compute dtype; invstd: (R, 1) reciprocal std (or RMS);
    gamma: the scale laid out like a row; shape and dtype of the input; param_shape: gamma's.
    """

    xhat: np.ndarray
    invstd: np.ndarray
    gamma: np.ndarray
    shape: tuple[int, ...]
    dtype: np.dtype
    param_shape: tuple[int, ...]


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


def trailing_shape_check(x, gamma, where: str):
    """The trailing axes of x must equal gamma's shape (torch's LayerNorm wording)."""
    shape = tuple(gamma.shape)
    if gamma.ndim == 0:
        raise ValueError(f"{where}: gamma must have at least one axis, got a scalar")
    if x.ndim < gamma.ndim or tuple(x.shape[x.ndim - gamma.ndim:]) != shape:
        raise ValueError(
            f"{where}: Given normalized_shape={list(shape)}, expected input with shape "
            f"[*, {', '.join(map(str, shape))}], but got input of size{list(x.shape)}"
        )


def layernorm_forward(x, gamma, beta, eps=1e-5):
    """Layer normalization over the trailing ``gamma.ndim`` axes of ``x``.

    Args:
        x: (..., *normalized_shape) float array, e.g. (N, D) or (N, T, D).
        gamma, beta: arrays of shape normalized_shape.
        eps: positive constant inside the square root.

    Returns:
        A tuple ``(out, cache)``: out like x, cache for :func:`layernorm_backward`.
    """
    where = "layernorm_forward"
    require_input(x, where, min_ndim=1)
    require_array(gamma, "gamma", where)
    trailing_shape_check(x, gamma, where)
    require_shape(beta, "beta", gamma.shape, where)
    eps = require_eps(eps, where)
    dtype = compute_dtype(x.dtype)
    rows = x.reshape(-1, gamma.size).astype(dtype, copy=False)
    xhat, invstd = normalize_rows(rows, eps)
    g, b = gamma.reshape(-1).astype(dtype), beta.reshape(-1).astype(dtype)
    out = (xhat * g + b).reshape(x.shape).astype(x.dtype, copy=False)
    return out, RowNormCache(xhat, invstd, g, x.shape, x.dtype, gamma.shape)


def layernorm_backward(dout, cache):
    """Backward of :func:`layernorm_forward`.

    Returns (dx, dgamma, dbeta): dx like the input; dgamma, dbeta like gamma, summed over rows.
    """
    where = "layernorm_backward"
    dout_rows = cached_rows(dout, cache, where)
    dgamma = (dout_rows * cache.xhat).sum(axis=0)
    dbeta = dout_rows.sum(axis=0)
    dx = row_backward(dout_rows * cache.gamma, cache.xhat, cache.invstd)
    return (
        dx.reshape(cache.shape).astype(cache.dtype, copy=False),
        dgamma.reshape(cache.param_shape),
        dbeta.reshape(cache.param_shape),
    )


def cached_rows(dout, cache, where: str) -> np.ndarray:
    """Check ``dout`` against the cache and view it as rows of the compute dtype."""
    require_cache(cache, RowNormCache, "the matching forward", where)
    require_dout(dout, cache.shape, where)
    return dout.reshape(cache.xhat.shape).astype(cache.xhat.dtype, copy=False)


def groupnorm_forward(x, gamma, beta, num_groups, eps=1e-5):
    """Group normalization: channels split into ``num_groups`` groups, each normalized over
    its C/G channels and every spatial position, per sample.

    Args:
        x: (N, C) or (N, C, *spatial). gamma, beta: (C,). num_groups: divides C.

    Returns:
        (out, cache) for :func:`groupnorm_backward`.
    """
    where = "groupnorm_forward"
    require_input(x, where)
    n, channels = x.shape[:2]
    require_vector(gamma, "gamma", channels, where)
    require_vector(beta, "beta", channels, where)
    if isinstance(num_groups, bool) or not isinstance(num_groups, (int, np.integer)):
        raise TypeError(f"{where}: num_groups must be an int, got {type(num_groups).__name__}")
    if num_groups <= 0 or channels % num_groups:
        raise ValueError(
            f"{where}: num_channels ({channels}) must be divisible by num_groups ({num_groups})"
        )
    eps = require_eps(eps, where)
    dtype = compute_dtype(x.dtype)
    rows = x.reshape(n * num_groups, -1).astype(dtype, copy=False)
    xhat, invstd = normalize_rows(rows, eps)
    spatial = rows.shape[1] // (channels // num_groups)
    g = per_channel_rows(gamma.astype(dtype), num_groups, spatial)
    b = per_channel_rows(beta.astype(dtype), num_groups, spatial)
    out = (xhat.reshape(n, num_groups, -1) * g + b).reshape(x.shape).astype(x.dtype, copy=False)
    return out, RowNormCache(xhat, invstd, g, x.shape, x.dtype, gamma.shape)


def per_channel_rows(v: np.ndarray, num_groups: int, spatial: int) -> np.ndarray:
    """Lay a (C,) vector out as (G, C/G * spatial) to match the grouped rows."""
    return np.repeat(v, spatial).reshape(num_groups, -1)


def groupnorm_backward(dout, cache):
    """Backward of :func:`groupnorm_forward`: returns (dx, dgamma, dbeta), dgamma/dbeta (C,)."""
    where = "groupnorm_backward"
    dout_rows = cached_rows(dout, cache, where)
    n, channels = cache.shape[:2]
    groups = cache.gamma.shape[0]
    grouped = dout_rows.reshape(n, groups, -1)
    g = (grouped * cache.gamma).reshape(dout_rows.shape)
    dx = row_backward(g, cache.xhat, cache.invstd)
    per_channel = (n, channels, -1)
    dout_c, xhat_c = dout_rows.reshape(per_channel), cache.xhat.reshape(per_channel)
    dgamma = (dout_c * xhat_c).sum(axis=(0, 2))
    dbeta = dout_c.sum(axis=(0, 2))
    return dx.reshape(cache.shape).astype(cache.dtype, copy=False), dgamma, dbeta


def rmsnorm_forward(x, gamma, eps=1e-6):
    """RMS normalization over the trailing ``gamma.ndim`` axes: ``out = gamma * x / rms(x)``
    with ``rms(x) = sqrt(mean(x**2) + eps)``. No mean subtraction and no beta.

    Args:
        x: (..., *normalized_shape) float array, e.g. (N, D) or (N, T, D).
        gamma: array of shape normalized_shape.
        eps: positive constant inside the square root.

    Returns:
        A tuple ``(out, cache)``: out like x, cache for :func:`rmsnorm_backward`.
    """
    where = "rmsnorm_forward"
    require_input(x, where, min_ndim=1)
    require_array(gamma, "gamma", where)
    trailing_shape_check(x, gamma, where)
    eps = require_eps(eps, where)
    dtype = compute_dtype(x.dtype)
    rows = x.reshape(-1, gamma.size).astype(dtype, copy=False)
    xhat, invstd = normalize_rows(rows, eps, center=False)
    g = gamma.reshape(-1).astype(dtype)
    out = (xhat * g).reshape(x.shape).astype(x.dtype, copy=False)
    return out, RowNormCache(xhat, invstd, g, x.shape, x.dtype, gamma.shape)


def rmsnorm_backward(dout, cache):
    """Backward of :func:`rmsnorm_forward`: returns (dx, dgamma), dx like the input and
    dgamma like gamma."""
    dout_rows = cached_rows(dout, cache, "rmsnorm_backward")
    dgamma = (dout_rows * cache.xhat).sum(axis=0)
    dx = row_backward(dout_rows * cache.gamma, cache.xhat, cache.invstd, center=False)
    return (
        dx.reshape(cache.shape).astype(cache.dtype, copy=False),
        dgamma.reshape(cache.param_shape),
    )
