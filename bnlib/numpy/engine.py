"""The fast path of :mod:`bnlib.numpy.batchnorm`: the same formulas, streamed through the cache.

For x of shape (N, C, *spatial), M = N * prod(spatial) values per channel, sums over every
axis but 1 and ``xhat = (x - mean) * invstd``, the four calls that the readable functions
make compute

    batch_statistics(x) -> mean, var
        mean = sum(x) / M,  var = sum((x - mean)**2) / M      (float64)
    normalize(x, mean, invstd, gamma, beta) -> out
        out = gamma * (x - mean) * invstd + beta              (x's dtype)
    gradient_sums(dout, x, mean, invstd) -> dbeta, dgamma
        dbeta = sum(dout),  dgamma = sum(dout * xhat)         (float64)
    input_gradient(dout, x, mean, invstd, gamma, dbeta, dgamma) -> dx
        dx = gamma * invstd / M * (M * dout - dbeta - xhat * dgamma)   (x's dtype)

and equal the textbook version (:mod:`bnlib.numpy.staged`) to rounding.

Why it is faster. The textbook version writes a full-size temporary for nearly every term
(x - mean, its square, xhat, gamma * xhat, ...), so it moves many times the bytes it needs.
Here every pass walks the batch in chunks of about ``CHUNK_BYTES`` whose temporaries stay in
the CPU cache: the forward reads x twice and writes out once, the backward reads x and dout
twice and writes dx once. Row sums are matrix-vector products (BLAS speed); inputs of
``PARALLEL_BYTES`` or more are split across up to ``MAX_WORKERS`` threads (NumPy releases the
GIL in its loops); and when the data sit near zero the per-channel map is
``x * slope + offset``, two operations per value instead of three.

Why it is accurate. Working on x itself rounds every value to the ulp of the mean, which is
``r = |mean| / std`` times coarser than the ulp of the spread: a linear pass then costs about
r ulps, and the sums behind the variance about r**2 (the cancellation in E[x^2] - E[x]^2).
Where that would exceed ``UNCENTERED_ULPS``, a pass first subtracts a *pivot*, a per-channel
value close to the mean (an estimate from the first samples, or the mean rounded to the
compute dtype), so a float32 batch with mean 1e3 and std 0.1 (r = 1e4) keeps its digits. The
part of the mean that the rounded pivot leaves in the data is accounted for in float64. Sums
within one (sample, channel) row use the compute dtype; the rows are added in float64.
float16 is computed in float32.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from functools import cache

import numpy as np

from bnlib.numpy._checks import compute_dtype

# Bytes of one input chunk: small enough that a chunk and its temporaries stay in cache.
CHUNK_BYTES = 1024 * 1024
# Inputs smaller than this run on one thread: starting threads would cost more than it saves.
PARALLEL_BYTES = 8 * 1024 * 1024
# More threads than this only contend for the same memory bandwidth.
MAX_WORKERS = 4
# Rounding, in ulps of the result, that working on x itself rather than x - pivot may cost.
UNCENTERED_ULPS = 8.0
# Values of x per channel that the first-samples estimate of the mean reads.
ESTIMATE_VALUES = 256


# --- the four calls ------------------------------------------------------------------------


def batch_statistics(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and biased variance of x (N, C, *spatial): two (C,) float64 arrays.

    When the data sit near zero in units of their spread, plain sums of x and x**2 are exact
    enough and need no temporary. Otherwise (or when the plain sums show a large mean) the
    sums are taken around the first samples' mean, rounded to the compute dtype.
    """
    x3, dtype = as_ncl(x), compute_dtype(x.dtype)
    if x.size == 0:
        return np.zeros(x.shape[1]), np.zeros(x.shape[1])
    estimate, estimate_invstd = first_samples_estimate(x3)
    if not centering_needed(estimate, estimate_invstd, squares=True):
        mean, var = moments_around(x3, None, dtype)
        if not centering_needed(mean, 1.0 / np.sqrt(np.maximum(var, 1e-300)), squares=True):
            return mean, var
    return moments_around(x3, estimate.astype(dtype), dtype)


def normalize(x, mean, invstd, gamma, beta) -> np.ndarray:
    """``gamma * (x - mean) * invstd + beta`` per channel, in x's shape and dtype.

    mean, invstd, gamma, beta: (C,) arrays of any float dtype.
    """
    mean, invstd = np.asarray(mean, np.float64), np.asarray(invstd, np.float64)
    slope = gamma * invstd
    pivot = pivot_for(mean, invstd, compute_dtype(x.dtype))
    # The part of the mean that the pivot does not subtract moves into the offset.
    offset = beta - (mean - pivot_value(pivot)) * slope
    return channel_lines(x, pivot, slope, offset)


def gradient_sums(dout, x, mean, invstd) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ``dbeta = sum(dout)`` and ``dgamma = sum(dout * (x - mean) * invstd)``.

    Returns two (C,) float64 arrays. As in :func:`batch_statistics`, x is centered (on a
    pivot) only when its mean is large against its spread.
    """
    if x.size == 0:
        return np.zeros(x.shape[1]), np.zeros(x.shape[1])
    dtype = compute_dtype(x.dtype)
    pivot = pivot_for(mean, invstd, dtype)
    sum_dout, sum_dout_xp = pivoted_sums(as_ncl(x), pivot, dtype, as_ncl(dout))
    # sum(dout * (x - mean)) = sum(dout * (x - pivot)) - sum(dout) * (mean - pivot)
    sum_dout_xmu = sum_dout_xp - sum_dout * (mean - pivot_value(pivot))
    return sum_dout, sum_dout_xmu * invstd


def input_gradient(dout, x, mean, invstd, gamma, dbeta, dgamma) -> np.ndarray:
    """``dx = gamma * invstd / M * (M * dout - dbeta - xhat * dgamma)``, in x's shape and dtype.

    mean, invstd, gamma, dbeta, dgamma: (C,) float64 (dbeta, dgamma from
    :func:`gradient_sums`).
    """
    if x.size == 0:
        return np.zeros_like(x)
    count = x.size // x.shape[1]
    # The formula expanded per channel: dx = dout_slope * dout + slope * (x - mean) + offset.
    dout_slope = gamma * invstd
    slope = -dout_slope * invstd * dgamma / count
    offset = -dout_slope * dbeta / count
    pivot = pivot_for(mean, invstd, compute_dtype(x.dtype))
    offset = offset - slope * (mean - pivot_value(pivot))
    return channel_lines(x, pivot, slope, offset, dout, dout_slope)


# --- when to center, and on what ---------------------------------------------------------


def centering_needed(mean, invstd, *, squares=False) -> bool:
    """Whether working with x itself rather than ``x - pivot`` would cost more than
    ``UNCENTERED_ULPS`` of rounding in some channel.

    Values of x are rounded to the ulp of |mean|, which is ``r = |mean| * invstd`` times
    coarser than the ulp of the spread the result is measured in: a linear pass
    (``x * slope + offset``, ``sum(dout * x)``) costs about r ulps, a sum of squares (the
    variance) about r**2.
    """
    with np.errstate(over="ignore"):  # a near-constant channel has a huge invstd: center it
        ratio = np.abs(mean) * invstd
        return bool(np.any((ratio * ratio if squares else ratio) > UNCENTERED_ULPS))


def pivot_for(mean, invstd, dtype):
    """The (C,) pivot to subtract from x before a pass: ``mean`` rounded to the compute
    dtype when centering is needed, else None (x is used as it is)."""
    return np.asarray(mean).astype(dtype) if centering_needed(mean, invstd) else None


def pivot_value(pivot) -> np.ndarray | float:
    """The pivot in float64, 0 for none: what a pass has already subtracted from x."""
    return 0.0 if pivot is None else pivot.astype(np.float64)


def first_samples_estimate(x3: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rough per-channel mean and 1 / std from the first samples (about ESTIMATE_VALUES values)."""
    head = x3[: max(1, ESTIMATE_VALUES // max(1, x3.shape[2]))].astype(np.float64)
    std = head.std(axis=(0, 2))
    return head.mean(axis=(0, 2)), 1.0 / np.maximum(std, np.finfo(np.float64).tiny)


# --- the two chunked passes --------------------------------------------------------------


def moments_around(x3: np.ndarray, pivot, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Mean and biased variance from sums of ``d = x - pivot`` (x itself for pivot None):
    mean = pivot + sum(d) / M, var = sum(d * d) / M - (sum(d) / M)**2."""
    count = x3.shape[0] * x3.shape[2]
    sum_d, sum_dd = pivoted_sums(x3, pivot, dtype)
    mean_d = sum_d / count  # mean - pivot: small when the pivot is close to the mean
    return pivot_value(pivot) + mean_d, np.maximum(sum_dd / count - mean_d * mean_d, 0.0)


def pivoted_sums(x3: np.ndarray, pivot, dtype, weights3=None) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ``sum(w)`` and ``sum(w * (x - pivot))``, accumulated in float64.

    ``w`` is ``weights3`` (the backward's dout) when given, else ``x - pivot`` itself (the
    variance's squares). With pivot None, chunks of x in the compute dtype are read in place.
    """
    _, c, length = x3.shape
    in_place = pivot is None and x3.dtype == dtype
    ones = np.ones(length, dtype)

    def work(part: slice):
        sum_w, sum_wd = np.zeros(c), np.zeros(c)
        scratch = None if in_place else scratch_for(x3, dtype)
        for rows in batch_chunks(part, x3):
            d = x3[rows] if in_place else scratch[: rows.stop - rows.start]
            if pivot is not None:
                np.subtract(x3[rows], pivot[:, None], out=d)
            elif not in_place:
                d[...] = x3[rows]
            w = d if weights3 is None else weights3[rows].astype(dtype, copy=False)
            sum_w += np.matmul(w, ones).sum(axis=0, dtype=np.float64)
            sum_wd += np.vecdot(w, d).sum(axis=0, dtype=np.float64)
        return sum_w, sum_wd

    parts = over_batch(work, x3)
    return sum(p[0] for p in parts), sum(p[1] for p in parts)


def channel_lines(x, pivot, slope, offset, dout=None, dout_slope=None) -> np.ndarray:
    """Per channel ``(x - pivot) * slope + offset`` (plus ``dout * dout_slope`` when dout is
    given), chunk by chunk, in x's shape and dtype. Pivot None: ``x * slope + offset``."""
    x3, dtype = as_ncl(x), compute_dtype(x.dtype)
    d3 = None if dout is None else as_ncl(dout)
    out = np.empty(x.shape, x.dtype)
    out3 = as_ncl(out)
    pivot, slope, offset, dout_slope = (
        None if v is None else np.asarray(v).astype(dtype)[:, None]
        for v in (pivot, slope, offset, dout_slope)
    )

    def work(part: slice) -> None:
        staging = None if dtype == x.dtype else scratch_for(x3, dtype)
        term = None if d3 is None else scratch_for(x3, dtype)
        for rows in batch_chunks(part, x3):
            size = rows.stop - rows.start
            block = out3[rows] if staging is None else staging[:size]
            if pivot is None:
                np.multiply(x3[rows], slope, out=block)
            else:
                np.subtract(x3[rows], pivot, out=block)
                block *= slope
            block += offset
            if d3 is not None:
                block += np.multiply(d3[rows], dout_slope, out=term[:size])
            if staging is not None:
                out3[rows] = block

    over_batch(work, x3)
    return out


# --- chunks, scratch buffers and threads ---------------------------------------------------


def as_ncl(x: np.ndarray) -> np.ndarray:
    """View ``(N, C, *spatial)`` as ``(N, C, L)``: reductions then run over axes 0 and 2."""
    return x.reshape(x.shape[0], x.shape[1], math.prod(x.shape[2:]))


def chunk_length(x3: np.ndarray) -> int:
    """How many samples make one chunk of about CHUNK_BYTES."""
    sample_bytes = x3.shape[1] * x3.shape[2] * x3.itemsize
    return max(1, CHUNK_BYTES // max(1, sample_bytes))


def batch_chunks(part: slice, x3: np.ndarray):
    """Yield slices of the batch range ``part``, one chunk each."""
    step = chunk_length(x3)
    for start in range(part.start, part.stop, step):
        yield slice(start, min(part.stop, start + step))


def scratch_for(x3: np.ndarray, dtype) -> np.ndarray:
    """A reusable chunk-sized buffer, so the loops allocate nothing per chunk."""
    n, c, length = x3.shape
    return np.empty((min(n, chunk_length(x3)), c, length), dtype)


@cache
def thread_pool() -> ThreadPoolExecutor:
    """Worker threads for the passes, shared by every call."""
    return ThreadPoolExecutor(max_workers=worker_count(), thread_name_prefix="bnlib")


def worker_count() -> int:
    """Threads per pass: the cores this process may use, at most MAX_WORKERS."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(MAX_WORKERS, cores or 1))


def over_batch(work, x3: np.ndarray) -> list:
    """Run ``work(part)`` on contiguous parts of the batch axis, in parallel for large inputs.

    Returns the results in batch order, so reductions add up in a fixed order whatever the
    threads' timing.
    """
    n = x3.shape[0]
    workers = max(1, min(worker_count() if x3.nbytes >= PARALLEL_BYTES else 1, n))
    bounds = [n * i // workers for i in range(workers + 1)]
    parts = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
    if len(parts) <= 1:
        return [work(part) for part in parts]
    return list(thread_pool().map(work, parts))
