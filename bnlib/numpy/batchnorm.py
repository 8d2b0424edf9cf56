"""Batch normalization in NumPy: training forward, closed-form backward, inference, folding.

Statistics are taken over every axis except axis 1, so one function serves fully connected
inputs ``(N, D)`` and convolutional inputs ``(N, C, *spatial)``. With ``M = N * prod(spatial)``:

    mean = sum(x) / M                      var = sum((x - mean)**2) / M   (biased)
    xhat = (x - mean) / sqrt(var + eps)    y   = gamma * xhat + beta

The implementation streams over the batch in cache-sized chunks: one pass for the statistics
and one for the output in the forward, one for the sums and one for dx in the backward.
Temporaries stay in the CPU cache, so memory traffic is close to the least the algorithm
needs, and large inputs are split across the cores (NumPy releases the GIL in its loops).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache

import numpy as np

from bnlib.numpy._checks import (
    compute_dtype,
    require_array,
    require_batch_values,
    require_eps,
    require_input,
    require_vector,
)

# Bytes of one input chunk: small enough that a chunk and its temporaries stay in cache.
CHUNK_BYTES = 1024 * 1024
# Inputs smaller than this run on one thread: starting threads would cost more than it saves.
PARALLEL_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class BatchNormCache:
    """What :func:`batchnorm_backward` needs, and nothing more.

    x: the input (N, C, *spatial), not copied. mean, invstd: per-channel (C,) float64 batch
    mean and 1 / sqrt(var + eps). gamma: (C,) float64 scale.
    """

    x: np.ndarray
    mean: np.ndarray
    invstd: np.ndarray
    gamma: np.ndarray

    @property
    def xhat(self) -> np.ndarray:
        """The normalised input, recomputed on demand (the chapters plot it)."""
        return (as_ncl(self.x) - self.mean[:, None]) * self.invstd[:, None]


def as_ncl(x: np.ndarray) -> np.ndarray:
    """View ``(N, C, *spatial)`` as ``(N, C, L)``: reductions then run over axes 0 and 2."""
    n, c = x.shape[:2]
    return x.reshape(n, c, -1)


def batch_chunks(part: slice, sample_bytes: int):
    """Yield slices of the batch range ``part``, each about CHUNK_BYTES of input."""
    step = chunk_length(sample_bytes)
    for start in range(part.start, part.stop, step):
        yield slice(start, min(part.stop, start + step))


def chunk_length(sample_bytes: int) -> int:
    """How many samples make one chunk."""
    return max(1, CHUNK_BYTES // max(1, sample_bytes))


def scratch_for(x3: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """A reusable chunk-sized buffer, so the loops allocate nothing per chunk."""
    n, c, length = x3.shape
    return np.empty((min(n, chunk_length(c * length * x3.itemsize)), c, length), dtype)


@cache
def thread_pool() -> ThreadPoolExecutor:
    """Worker threads for the passes: NumPy releases the GIL inside its loops, so the
    cores share the memory traffic, as torch's CPU kernels do."""
    return ThreadPoolExecutor(max_workers=worker_count(), thread_name_prefix="bnlib")


def worker_count() -> int:
    return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                      else os.cpu_count() or 1))


def over_batch(work, x3: np.ndarray) -> list:
    """Run ``work(part)`` on contiguous parts of the batch axis, in parallel for large inputs.

    Returns the results in batch order, so reductions add up in a fixed order whatever the
    threads' timing.
    """
    n = x3.shape[0]
    workers = worker_count() if x3.nbytes >= PARALLEL_BYTES else 1
    workers = min(workers, n)
    bounds = [n * i // workers for i in range(workers + 1)]
    parts = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
    if len(parts) <= 1:
        return [work(part) for part in parts]
    return list(thread_pool().map(work, parts))


def channel_sums(x3: np.ndarray, shift, dtype: np.dtype):
    """Per-channel ``sum(x - shift)`` and ``sum((x - shift)**2)``, accumulated in float64.

    ``shift=None`` sums x itself, reading each chunk in place. Sums within a (sample, channel)
    row use the compute dtype (short rows); the rows are then added in float64, so long
    batches do not lose precision.
    """
    _, c, length = x3.shape
    in_place = shift is None and x3.dtype == dtype
    ones = np.ones(length, dtype)

    def work(part: slice):
        s1 = np.zeros(c, np.float64)
        s2 = np.zeros(c, np.float64)
        scratch = None if in_place else scratch_for(x3, dtype)
        for rows in batch_chunks(part, c * length * x3.itemsize):
            d = x3[rows] if in_place else scratch[: rows.stop - rows.start]
            if shift is not None:
                np.subtract(x3[rows], shift[:, None], out=d)
            elif not in_place:
                d[...] = x3[rows]
            s1 += np.matmul(d, ones).sum(axis=0, dtype=np.float64)
            s2 += np.vecdot(d, d).sum(axis=0, dtype=np.float64)
        return s1, s2

    parts = over_batch(work, x3)
    return sum(p[0] for p in parts), sum(p[1] for p in parts)


def centring_needed(center, spread, dtype) -> bool:
    """Whether working with x itself rather than ``x - center`` would lose visible precision.

    Sums of x and the form ``x * scale + (shift - center * scale)`` round values of size
    |center| * spread (``spread`` = 1 / std) in units of the data's own spread, so they cost
    about that many ulps. Below the threshold the cheaper uncentred form is used; above it
    the data are centred first.
    """
    with np.errstate(over="ignore"):  # a constant channel has an infinite spread: centre it
        return bool(np.any(np.abs(center) * spread * np.finfo(dtype).eps > 1e-6))


def first_samples_estimate(x3: np.ndarray):
    """Rough per-channel mean and 1 / std from the first few samples (about 256 values)."""
    head = x3[: max(1, 256 // max(1, x3.shape[2]))].astype(np.float64)
    mean = head.mean(axis=(0, 2))
    std = head.std(axis=(0, 2))
    return mean, 1.0 / np.maximum(std, np.finfo(np.float64).tiny)


def batch_statistics(x: np.ndarray):
    """Biased per-channel mean and variance of ``x`` in float64, accurate in float32.

    When the mean is small against the spread, plain sums of x and x**2 are exact enough and
    need no temporary. Otherwise the sums are taken around a shift close to the mean (an
    estimate from the first samples), so a large offset does not cancel catastrophically as
    in E[x^2] - E[x]^2.
    """
    x3 = as_ncl(x)
    dtype = compute_dtype(x.dtype)
    count = x3.shape[0] * x3.shape[2]
    estimate, spread = first_samples_estimate(x3)
    if not centring_needed(estimate, spread, dtype):
        s1, s2 = channel_sums(x3, None, dtype)
        mean = s1 / count
        var = np.maximum(s2 / count - mean * mean, 0.0)
        if not centring_needed(mean, 1.0 / np.sqrt(np.maximum(var, 1e-300)), dtype):
            return mean, var
    shift = estimate.astype(dtype)
    s1, s2 = channel_sums(x3, shift, dtype)
    offset = s1 / count
    mean = shift.astype(np.float64) + offset
    var = np.maximum(s2 / count - offset * offset, 0.0)
    return mean, var


def affine_transform(x: np.ndarray, center, scale, shift, spread) -> np.ndarray:
    """Return ``(x - center) * scale + shift`` per channel, in x's dtype, chunk by chunk.

    ``spread`` is 1 / std per channel. When the mean is large against the spread the input
    is centred first, which keeps float32 accurate; otherwise the centre is folded into the
    shift and each chunk costs two operations instead of three.
    """
    x3 = as_ncl(x)
    dtype = compute_dtype(x.dtype)
    out = np.empty(x.shape, x.dtype)
    out3 = as_ncl(out)
    center, scale, shift = (np.asarray(v, np.float64) for v in (center, scale, shift))
    centre_first = centring_needed(center, spread, dtype)
    rounded = center.astype(dtype) if centre_first else np.zeros_like(center)
    # The part of the centre not subtracted exactly moves into the shift.
    shift = shift - (center - rounded) * scale
    center, scale, shift = (v.astype(dtype)[:, None] for v in (rounded, scale, shift))
    c, length = x3.shape[1:]

    def work(part: slice) -> None:
        scratch = None if dtype == x.dtype else scratch_for(x3, dtype)
        for rows in batch_chunks(part, c * length * x3.itemsize):
            block = out3[rows] if scratch is None else scratch[: rows.stop - rows.start]
            if centre_first:
                np.subtract(x3[rows], center, out=block)
                block *= scale
            else:
                np.multiply(x3[rows], scale, out=block)
            block += shift
            if scratch is not None:
                out3[rows] = block

    over_batch(work, x3)
    return out


def batchnorm_forward(x, gamma, beta, eps=1e-5):
    """Training-mode batch normalization.

    Args:
        x: (N, C) or (N, C, *spatial) float array.
        gamma, beta: (C,) learned scale and shift.
        eps: positive constant added to the variance inside the square root.

    Returns:
        A tuple ``(out, cache)``: ``out`` has the shape and dtype of x and equals
        ``gamma * (x - mean) / sqrt(var + eps) + beta`` with the biased batch variance;
        ``cache`` is a :class:`BatchNormCache` for :func:`batchnorm_backward`.
    """
    out, cache, _ = batchnorm_forward_with_variance(x, gamma, beta, eps, "batchnorm_forward")
    return out, cache


def batchnorm_forward_with_variance(x, gamma, beta, eps, where: str):
    """:func:`batchnorm_forward` that also returns the biased batch variance (C,), float64,
    for layers that keep running statistics (so they need not compute it again)."""
    require_input(x, where)
    channels = x.shape[1]
    require_vector(gamma, "gamma", channels, where)
    require_vector(beta, "beta", channels, where)
    eps = require_eps(eps, where)
    require_batch_values(x)
    if x.size == 0:
        empty = np.zeros(channels)
        return x.copy(), BatchNormCache(x, empty, empty, gamma.astype(np.float64)), empty
    mean, var = batch_statistics(x)
    invstd = 1.0 / np.sqrt(var + eps)
    out = affine_transform(x, mean, gamma * invstd, beta, invstd)
    return out, BatchNormCache(x, mean, invstd, gamma.astype(np.float64)), var


def batchnorm_backward(dout, cache):
    """Closed-form gradient of :func:`batchnorm_forward`.

    With ``g = dout`` and sums over every axis but 1 (M values per channel):

        dbeta  = sum(g)
        dgamma = sum(g * xhat)
        dx     = gamma * invstd / M * (M * g - dbeta - xhat * dgamma)

    Args:
        dout: upstream gradient, same shape as the forward input.
        cache: the cache returned by :func:`batchnorm_forward`.

    Returns:
        A tuple ``(dx, dgamma, dbeta)``: dx like x (x's dtype); dgamma and dbeta of shape
        (C,) in the compute dtype.
    """
    where = "batchnorm_backward"
    if not isinstance(cache, BatchNormCache):
        raise TypeError(
            f"{where}: cache must come from batchnorm_forward, got {type(cache).__name__}"
        )
    x = cache.x
    require_input(dout, where)
    if dout.shape != x.shape:
        raise ValueError(f"{where}: dout must have the input's shape {x.shape}, got {dout.shape}")
    dtype = compute_dtype(x.dtype)
    if x.size == 0:
        zeros = np.zeros(x.shape[1], dtype)
        return np.zeros_like(x), zeros, zeros.copy()
    dbeta, sum_dy_xmu = gradient_sums(dout, x, cache.mean, cache.invstd, dtype)
    dgamma = sum_dy_xmu * cache.invstd
    count = x.size // x.shape[1]
    scale = cache.gamma * cache.invstd
    # dx = scale*dy + slope*(x - mean) + offset, the closed form expanded per channel.
    slope = -scale * cache.invstd * dgamma / count
    offset = -scale * dbeta / count
    dx = gradient_apply(dout, x, cache.mean, cache.invstd, scale, slope, offset, dtype)
    return dx, dgamma.astype(dtype), dbeta.astype(dtype)


def gradient_sums(dout, x, mean, invstd, dtype):
    """Per-channel ``sum(dout)`` and ``sum(dout * (x - mean))`` in float64.

    As in :func:`batch_statistics`, x is centred first only when its mean is large against
    its spread; otherwise ``sum(dout * x) - mean * sum(dout)`` is exact enough.
    """
    d3, x3 = as_ncl(dout), as_ncl(x)
    _, c, length = x3.shape
    centre_first = centring_needed(mean, invstd, dtype)
    rounded = mean.astype(dtype) if centre_first else np.zeros_like(mean)
    in_place = not centre_first and x.dtype == dtype
    ones = np.ones(length, dtype)

    def work(part: slice):
        sum_dy = np.zeros(c, np.float64)
        sum_dy_xmu = np.zeros(c, np.float64)
        scratch = None if in_place else scratch_for(x3, dtype)
        for rows in batch_chunks(part, c * length * x3.itemsize):
            dy = d3[rows].astype(dtype, copy=False)
            xmu = x3[rows] if in_place else scratch[: rows.stop - rows.start]
            if not in_place:
                np.subtract(x3[rows], rounded[:, None], out=xmu)
            sum_dy += np.matmul(dy, ones).sum(axis=0, dtype=np.float64)
            sum_dy_xmu += np.vecdot(dy, xmu).sum(axis=0, dtype=np.float64)
        return sum_dy, sum_dy_xmu

    parts = over_batch(work, x3)
    sum_dy, sum_dy_xmu = sum(p[0] for p in parts), sum(p[1] for p in parts)
    # sum(dy * (x - mean)) = sum(dy * (x - rounded)) - sum(dy) * (mean - rounded)
    return sum_dy, sum_dy_xmu - sum_dy * (mean - rounded)


def gradient_apply(dout, x, mean, invstd, scale, slope, offset, dtype):
    """Return ``scale * dout + slope * (x - mean) + offset`` per channel, chunk by chunk.

    As in :func:`affine_transform`, x is centred first only when the mean is large
    against the spread (``invstd``).
    """
    d3, x3 = as_ncl(dout), as_ncl(x)
    _, c, length = x3.shape
    dx = np.empty(x.shape, x.dtype)
    dx3 = as_ncl(dx)
    centre_first = centring_needed(mean, invstd, dtype)
    rounded = mean.astype(dtype) if centre_first else np.zeros_like(mean)
    offset = offset + slope * (rounded - mean)
    center, scale, slope, offset = (
        np.asarray(v).astype(dtype)[:, None] for v in (rounded, scale, slope, offset)
    )

    def work(part: slice) -> None:
        scratch = scratch_for(x3, dtype)
        staging = None if dtype == x.dtype else scratch_for(x3, dtype)
        for rows in batch_chunks(part, c * length * x3.itemsize):
            size = rows.stop - rows.start
            term = scratch[:size]
            if centre_first:
                np.subtract(x3[rows], center, out=term)
                term *= slope
            else:
                np.multiply(x3[rows], slope, out=term)
            term += offset
            block = dx3[rows] if staging is None else staging[:size]
            np.multiply(d3[rows], scale, out=block)
            block += term
            if staging is not None:
                dx3[rows] = block

    over_batch(work, x3)
    return dx


def batchnorm_inference(x, gamma, beta, running_mean, running_var, eps=1e-5):
    """Evaluation-mode batch normalization with stored statistics.

        y = gamma * (x - running_mean) / sqrt(running_var + eps) + beta

    Args:
        x: (N, C) or (N, C, *spatial) float array; any N, including 1.
        gamma, beta, running_mean, running_var: (C,) arrays.
        eps: non-negative constant (0 is allowed when running_var > 0, as in torch).

    Returns:
        out: same shape and dtype as x.
    """
    where = "batchnorm_inference"
    require_input(x, where)
    channels = x.shape[1]
    for name, value in (("gamma", gamma), ("beta", beta), ("running_mean", running_mean),
                        ("running_var", running_var)):
        require_vector(value, name, channels, where)
    eps = require_eps(eps, where, allow_zero=True)
    invstd = 1.0 / np.sqrt(running_var.astype(np.float64) + eps)
    return affine_transform(x, running_mean, gamma * invstd, beta, invstd)


def fold_batchnorm(weight, bias, gamma, beta, running_mean, running_var, eps=1e-5):
    """Fold an evaluation-mode BN into the linear layer before it.

    For ``z = x @ weight + bias`` followed by BN with stored statistics, returns
    ``(weight_folded, bias_folded)`` with ``x @ weight_folded + bias_folded == BN(z)``:

        s = gamma / sqrt(running_var + eps)
        weight_folded = weight * s            (each output column scaled)
        bias_folded   = (bias - running_mean) * s + beta

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
    scale = gamma / np.sqrt(running_var + eps)
    weight_folded = (weight * scale).astype(weight.dtype)
    bias_folded = ((bias - running_mean) * scale + beta).astype(weight.dtype)
    return weight_folded, bias_folded
