"""Triton kernels for batch normalization over ``(N, C, *spatial)`` tensors.

Two memory layouts, each seen as a matrix whose rows or columns hold one channel:

* NCHW (contiguous): ``x`` is ``(N, C, S)`` with ``S = prod(spatial)``; each ``(n, c)`` plane is
  ``S`` contiguous values, so a channel is ``N`` strided runs of ``S`` values.
* channels_last: ``x`` is the row-major matrix ``(R, C)`` with ``R = N * S``; the channel is
  the fastest axis and a channel's values form one column.

Training forward (3 passes over ``x``'s bytes: read, read, write):

1. ``*_stats_*``: each program reduces one block of one channel (or of a block of channels) to
   a partial ``(mean, M2, count)`` from float32 sums of ``x - pivot`` (the pivot is one sample
   of the channel, so the sums do not cancel);
2. ``bn_stats_combine_kernel``: merges the partials of each channel with Chan's formula;
3. ``bn_apply_kernel``: ``y = (x - mean) * invstd * weight + bias``.

Training backward (5 passes: read x, dy; read x, dy; write dx):

1. ``*_grad_sums_*``: partial ``sum(dy)`` and ``sum(dy * (x - mean))`` per channel block;
2. ``bn_grad_combine_kernel``: ``dbias = sum(dy)``, ``dweight = invstd * sum(dy * (x - mean))``;
3. ``bn_input_grad_kernel``: ``dx = weight * invstd * (dy - dbias / M - xhat * dweight / M)``.

Partials are written to a ``(splits, C)`` buffer, one row per split, so no program waits on
another and no atomics are needed. Every value is accumulated in float32.
"""

import triton
import triton.language as tl


@triton.jit
def welford_combine(mean_a, m2_a, count_a, mean_b, m2_b, count_b):
    """Chan's parallel formula: merge two ``(mean, M2, count)`` summaries (counts may be 0)."""
    count = count_a + count_b
    weight_b = count_b / tl.maximum(count, 1.0)
    delta = mean_b - mean_a
    mean = mean_a + delta * weight_b
    m2 = m2_a + m2_b + delta * delta * count_a * weight_b
    return mean, m2, count


@triton.jit
def _moments_from_sums(sum1, sum2, count):
    """``(mean, M2)`` of ``x - pivot`` from its sum and sum of squares (count may be 0)."""
    mean = sum1 / tl.maximum(count, 1.0)
    return mean, tl.maximum(sum2 - sum1 * mean, 0.0)


@triton.jit
def _nchw_block(N, S, n_per_split, s_per_split):
    """The ``(n, s)`` block of NCHW program ``(c, split_n, split_s)``: its ranges
    ``n_start:n_end`` and ``s_start:s_end``, and its row of the ``(splits, C)`` partials."""
    split_n = tl.program_id(1)
    split_s = tl.program_id(2)
    n_start = split_n * n_per_split
    s_start = split_s * s_per_split
    row = split_n * tl.num_programs(2) + split_s
    n_end = tl.minimum(n_start + n_per_split, N)
    return n_start, n_end, s_start, tl.minimum(s_start + s_per_split, S), row


@triton.jit
def _nchw_tile(n, s, n_end, s_end, channel, C, S):
    """Offsets and mask of the tile of samples ``n`` (a column) and positions ``s`` (a row)
    of one channel of an NCHW ``(N, C, S)`` tensor."""
    return (n.to(tl.int64) * C + channel) * S + s, (n < n_end) & (s < s_end)


@triton.jit
def _nchw_block_sums(x_ptr, w_ptr, center, channel, n_start, n_end, s_start, s_end, C, S,
                     BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr, WEIGHTED: tl.constexpr):
    """``sum(w)`` and ``sum(w * (x - center))`` over one ``(n, s)`` block of one NCHW channel,
    with ``w = x - center`` (the statistics) or, when ``WEIGHTED``, ``w = dy`` read from
    ``w_ptr`` (the backward's sums)."""
    n_offsets = tl.arange(0, BLOCK_N)[:, None]
    s_offsets = tl.arange(0, BLOCK_S)[None, :]
    sum_w = tl.zeros([BLOCK_N, BLOCK_S], tl.float32)
    sum_wd = tl.zeros([BLOCK_N, BLOCK_S], tl.float32)
    for n0 in range(n_start, n_end, BLOCK_N):
        for s0 in range(s_start, s_end, BLOCK_S):
            offsets, mask = _nchw_tile(n0 + n_offsets, s0 + s_offsets, n_end, s_end, channel, C, S)
            x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            if WEIGHTED:  # masked lanes load w = 0, so they add nothing
                w = tl.load(w_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
                d = x - center
            else:
                d = tl.where(mask, x - center, 0.0)
                w = d
            sum_w += w
            sum_wd += w * d
    return tl.sum(tl.sum(sum_w, 1), 0), tl.sum(tl.sum(sum_wd, 1), 0)


@triton.jit
def _cl_block(R, rows_per_split, BLOCK_C: tl.constexpr):
    """The block of channels_last program ``(column_block, split)``: its ``(1, BLOCK_C)``
    columns, its split (its row of the ``(splits, C)`` partials) and its rows
    ``r_start:r_end``."""
    columns = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)[None, :]
    split = tl.program_id(1)
    r_start = split * rows_per_split
    return columns, split, r_start, tl.minimum(r_start + rows_per_split, R)


@triton.jit
def _cl_block_sums(x_ptr, w_ptr, center, columns, r_start, r_end, C,
                   BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, WEIGHTED: tl.constexpr):
    """Per column ``sum(w)`` and ``sum(w * (x - center))`` over rows ``r_start:r_end`` of the
    channels_last ``(R, C)`` matrix, ``(BLOCK_C,)`` each; ``w`` as in
    :func:`_nchw_block_sums`."""
    r_offsets = tl.arange(0, BLOCK_R)[:, None]
    sum_w = tl.zeros([BLOCK_R, BLOCK_C], tl.float32)
    sum_wd = tl.zeros([BLOCK_R, BLOCK_C], tl.float32)
    for r0 in range(r_start, r_end, BLOCK_R):
        r = r0 + r_offsets
        mask = (r < r_end) & (columns < C)
        offsets = r.to(tl.int64) * C + columns
        x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        d = tl.where(mask, x - center, 0.0)
        if WEIGHTED:
            w = tl.load(w_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        else:
            w = d
        sum_w += w
        sum_wd += w * d
    return tl.sum(sum_w, 0), tl.sum(sum_wd, 0)


@triton.jit
def bn_stats_nchw_kernel(
    x_ptr, pivot_ptr, part_mean_ptr, part_m2_ptr, part_count_ptr,
    N, C, S, n_per_split, s_per_split,
    BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """Partial ``(mean, M2, count)`` of ``x - pivot`` for channel ``program_id(0)`` over one block.

    ``pivot = x[0, c, 0]``, one sample of the channel, stored by the first split.
    Grid ``(C, splits_n, splits_s)``; writes row ``split_n * splits_s + split_s`` of the
    ``(splits, C)`` partial buffers.
    """
    channel = tl.program_id(0)
    n_start, n_end, s_start, s_end, row = _nchw_block(N, S, n_per_split, s_per_split)
    pivot = tl.load(x_ptr + channel.to(tl.int64) * S).to(tl.float32)
    if row == 0:
        tl.store(pivot_ptr + channel, pivot)
    # Sums of x - pivot: with the pivot one sample of the channel they do not cancel, and
    # they cost two FMAs per element where a Welford step costs a division.
    sum1, sum2 = _nchw_block_sums(x_ptr, x_ptr, pivot, channel, n_start, n_end, s_start, s_end,
                                  C, S, BLOCK_N, BLOCK_S, False)
    count = (tl.maximum(n_end - n_start, 0) * tl.maximum(s_end - s_start, 0)).to(tl.float32)
    mean, m2 = _moments_from_sums(sum1, sum2, count)
    out = row * C + channel
    tl.store(part_mean_ptr + out, mean)
    tl.store(part_m2_ptr + out, m2)
    tl.store(part_count_ptr + out, count)


@triton.jit
def bn_stats_cl_kernel(
    x_ptr, pivot_ptr, part_mean_ptr, part_m2_ptr, part_count_ptr,
    R, C, rows_per_split,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Partial ``(mean, M2, count)`` of ``x - pivot`` for ``BLOCK_C`` columns over one row block.

    ``pivot = x[0, c]`` (row 0 of the ``(R, C)`` matrix), stored by the first split.
    Grid ``(cdiv(C, BLOCK_C), splits)``; writes row ``program_id(1)`` of the partial buffers.
    """
    columns, split, r_start, r_end = _cl_block(R, rows_per_split, BLOCK_C)
    pivot = tl.load(x_ptr + columns, mask=columns < C, other=0.0).to(tl.float32)
    if split == 0:
        tl.store(pivot_ptr + columns, pivot, mask=columns < C)
    sum1, sum2 = _cl_block_sums(x_ptr, x_ptr, pivot, columns, r_start, r_end, C, BLOCK_R,
                                BLOCK_C, False)
    count = tl.maximum(r_end - r_start, 0).to(tl.float32)
    mean, m2 = _moments_from_sums(sum1, sum2, count)
    columns = tl.reshape(columns, [BLOCK_C])
    out = split * C + columns
    tl.store(part_mean_ptr + out, mean, mask=columns < C)
    tl.store(part_m2_ptr + out, m2, mask=columns < C)
    tl.store(part_count_ptr + out, count, mask=columns < C)


@triton.jit
def bn_stats_combine_kernel(
    part_mean_ptr, part_m2_ptr, part_count_ptr, pivot_ptr,
    mean_ptr, var_ptr, invstd_ptr, mean_dev_ptr,
    C, splits, eps,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Merge the ``(splits, C)`` partials into ``mean``, biased ``var`` and ``invstd`` ``(C,)``.

    Also stores ``mean_dev = mean - pivot``, which the normalize pass subtracts from
    ``x - pivot``: a float32 ``mean`` near 1e3 is only good to 3e-5, ``mean_dev`` to far less.
    """
    columns = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)[None, :]
    p_offsets = tl.arange(0, BLOCK_P)[:, None]
    mean = tl.zeros([BLOCK_P, BLOCK_C], tl.float32)
    m2 = tl.zeros([BLOCK_P, BLOCK_C], tl.float32)
    count = tl.zeros([BLOCK_P, BLOCK_C], tl.float32)
    for p0 in range(0, splits, BLOCK_P):
        p = p0 + p_offsets
        mask = (p < splits) & (columns < C)
        offsets = p * C + columns
        part_mean = tl.load(part_mean_ptr + offsets, mask=mask, other=0.0)
        part_m2 = tl.load(part_m2_ptr + offsets, mask=mask, other=0.0)
        part_count = tl.load(part_count_ptr + offsets, mask=mask, other=0.0)
        mean, m2, count = welford_combine(mean, m2, count, part_mean, part_m2, part_count)
    mean, m2, count = tl.reduce((mean, m2, count), 0, welford_combine)
    var = m2 / tl.maximum(count, 1.0)
    columns = tl.reshape(columns, [BLOCK_C])
    mask = columns < C
    pivot = tl.load(pivot_ptr + columns, mask=mask, other=0.0)
    tl.store(mean_ptr + columns, pivot + mean, mask=mask)
    tl.store(mean_dev_ptr + columns, mean, mask=mask)
    tl.store(var_ptr + columns, var, mask=mask)
    tl.store(invstd_ptr + columns, 1.0 / tl.sqrt(var + eps), mask=mask)


@triton.jit
def _tile_channels(row_block, col_block, ROWS, COLS, C,
                   CHANNEL_IS_COLUMN: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_COL: tl.constexpr):
    """Offsets, mask and channel index of one ``(BLOCK_R, BLOCK_COL)`` tile of a row-major matrix.

    NCHW: the matrix is ``(N * C, S)`` and the channel of row ``r`` is ``r % C``;
    channels_last: the matrix is ``(R, C)`` and the channel is the column.
    """
    rows = row_block * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]
    cols = col_block * BLOCK_COL + tl.arange(0, BLOCK_COL)[None, :]
    mask = (rows < ROWS) & (cols < COLS)
    offsets = rows.to(tl.int64) * COLS + cols
    if CHANNEL_IS_COLUMN:
        channel = cols
        channel_mask = cols < COLS
    else:
        channel = rows % C
        channel_mask = rows < ROWS
    return offsets, mask, channel, channel_mask


@triton.jit
def bn_apply_kernel(
    x_ptr, y_ptr, pivot_ptr, mean_dev_ptr, scale_ptr, weight_ptr, bias_ptr,
    ROWS, COLS, C, eps,
    HAS_MEAN_DEV: tl.constexpr, SCALE_IS_VAR: tl.constexpr,
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
    CHANNEL_IS_COLUMN: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_COL: tl.constexpr,
):
    """``y = ((x - pivot[c]) - mean_dev[c]) * invstd[c] * weight[c] + bias[c]`` over one tile.

    Training: ``pivot`` is a sample of the channel and ``mean_dev = mean - pivot``; centering in
    two steps keeps the float32 rounding of a large mean out of ``y``. Inference: ``pivot`` is
    the running mean, there is no ``mean_dev``, and ``scale_ptr`` holds the running variance
    (``SCALE_IS_VAR``: ``invstd = 1 / sqrt(var + eps)``).
    """
    offsets, mask, channel, channel_mask = _tile_channels(
        tl.program_id(0), tl.program_id(1), ROWS, COLS, C, CHANNEL_IS_COLUMN, BLOCK_R, BLOCK_COL)
    pivot = tl.load(pivot_ptr + channel, mask=channel_mask, other=0.0).to(tl.float32)
    scale = tl.load(scale_ptr + channel, mask=channel_mask, other=1.0).to(tl.float32)
    if SCALE_IS_VAR:
        scale = 1.0 / tl.sqrt(scale + eps)
    if HAS_WEIGHT:
        scale *= tl.load(weight_ptr + channel, mask=channel_mask, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    centered = x - pivot
    if HAS_MEAN_DEV:
        centered -= tl.load(mean_dev_ptr + channel, mask=channel_mask, other=0.0)
    y = centered * scale
    if HAS_BIAS:
        y += tl.load(bias_ptr + channel, mask=channel_mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + offsets, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def bn_grad_sums_nchw_kernel(
    dy_ptr, x_ptr, mean_ptr, part_dy_ptr, part_dyxmu_ptr,
    N, C, S, n_per_split, s_per_split,
    BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """Partial ``sum(dy)`` and ``sum(dy * (x - mean))`` of one channel over one ``(n, s)`` block."""
    channel = tl.program_id(0)
    n_start, n_end, s_start, s_end, row = _nchw_block(N, S, n_per_split, s_per_split)
    mean = tl.load(mean_ptr + channel)
    sum_dy, sum_dyxmu = _nchw_block_sums(x_ptr, dy_ptr, mean, channel, n_start, n_end, s_start,
                                         s_end, C, S, BLOCK_N, BLOCK_S, True)
    out = row * C + channel
    tl.store(part_dy_ptr + out, sum_dy)
    tl.store(part_dyxmu_ptr + out, sum_dyxmu)


@triton.jit
def bn_grad_sums_cl_kernel(
    dy_ptr, x_ptr, mean_ptr, part_dy_ptr, part_dyxmu_ptr,
    R, C, rows_per_split,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Partial ``sum(dy)`` and ``sum(dy * (x - mean))`` of ``BLOCK_C`` columns over a row block."""
    columns, split, r_start, r_end = _cl_block(R, rows_per_split, BLOCK_C)
    mean = tl.load(mean_ptr + columns, mask=columns < C, other=0.0)
    sum_dy, sum_dyxmu = _cl_block_sums(x_ptr, dy_ptr, mean, columns, r_start, r_end, C, BLOCK_R,
                                       BLOCK_C, True)
    columns = tl.reshape(columns, [BLOCK_C])
    out = split * C + columns
    tl.store(part_dy_ptr + out, sum_dy, mask=columns < C)
    tl.store(part_dyxmu_ptr + out, sum_dyxmu, mask=columns < C)


@triton.jit
def bn_grad_combine_kernel(
    part_dy_ptr, part_dyxmu_ptr, invstd_ptr, dweight_ptr, dbias_ptr,
    C, splits,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """``dbias = sum(dy)``, ``dweight = invstd * sum(dy * (x - mean))`` from the partials."""
    columns = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)[None, :]
    p_offsets = tl.arange(0, BLOCK_P)[:, None]
    sum_dy = tl.zeros([BLOCK_P, BLOCK_C], tl.float32)
    sum_dyxmu = tl.zeros([BLOCK_P, BLOCK_C], tl.float32)
    for p0 in range(0, splits, BLOCK_P):
        p = p0 + p_offsets
        mask = (p < splits) & (columns < C)
        sum_dy += tl.load(part_dy_ptr + p * C + columns, mask=mask, other=0.0)
        sum_dyxmu += tl.load(part_dyxmu_ptr + p * C + columns, mask=mask, other=0.0)
    columns = tl.reshape(columns, [BLOCK_C])
    mask = columns < C
    invstd = tl.load(invstd_ptr + columns, mask=mask, other=0.0)
    tl.store(dbias_ptr + columns, tl.sum(sum_dy, 0), mask=mask)
    tl.store(dweight_ptr + columns, tl.sum(sum_dyxmu, 0) * invstd, mask=mask)


@triton.jit
def bn_input_grad_kernel(
    dy_ptr, x_ptr, dx_ptr, mean_ptr, invstd_ptr, weight_ptr, dweight_ptr, dbias_ptr,
    ROWS, COLS, C, inv_count,
    HAS_WEIGHT: tl.constexpr, CHANNEL_IS_COLUMN: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_COL: tl.constexpr,
):
    """``dx = weight * invstd * (dy - dbias / M - xhat * dweight / M)`` over one tile."""
    offsets, mask, channel, channel_mask = _tile_channels(
        tl.program_id(0), tl.program_id(1), ROWS, COLS, C, CHANNEL_IS_COLUMN, BLOCK_R, BLOCK_COL)
    mean = tl.load(mean_ptr + channel, mask=channel_mask, other=0.0)
    invstd = tl.load(invstd_ptr + channel, mask=channel_mask, other=0.0)
    mean_dy = tl.load(dbias_ptr + channel, mask=channel_mask, other=0.0) * inv_count
    mean_dy_xhat = tl.load(dweight_ptr + channel, mask=channel_mask, other=0.0) * inv_count
    scale = invstd
    if HAS_WEIGHT:
        scale *= tl.load(weight_ptr + channel, mask=channel_mask, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    xhat = (x - mean) * invstd
    dx = scale * (dy - mean_dy - xhat * mean_dy_xhat)
    tl.store(dx_ptr + offsets, dx.to(dx_ptr.dtype.element_ty), mask=mask)
