"""Triton kernels for layer normalization of the rows of an ``(M, K)`` matrix.

Rows up to ``BLOCK_K`` values are held in registers, so each kernel reads its inputs once:

* ``ln_forward_kernel``: ``ROWS`` rows per program; two-pass ``mean`` and biased ``var`` from
  registers (8 bytes per float32 value: read x, write y);
* ``ln_backward_kernel``: a persistent grid; each program walks its share of the rows, writes
  ``dx`` and keeps running ``dweight``/``dbias`` sums that it stores as one row of a
  ``(programs, 2, K)`` partial buffer (12 bytes per value: read x, dy, write dx);
* ``column_sum_kernel``: sums the partial buffer over its rows (no locks, no atomics).

Longer rows take the ``*_looped_*`` kernels, which walk each row in ``BLOCK_K`` chunks and read
it more than once.
"""

import triton
import triton.language as tl


@triton.jit
def ln_forward_kernel(
    x_ptr, y_ptr, weight_ptr, bias_ptr, mean_ptr, rstd_ptr,
    M, K, eps,
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
    ROWS: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """``y = (x - mean) * rstd * weight + bias`` for ``ROWS`` rows; stores ``mean``, ``rstd``.

    The row's first value is subtracted before summing: a float32 sum of values near 1e3
    would lose the digits that a small standard deviation lives in.
    """
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)[:, None]
    cols = tl.arange(0, BLOCK_K)[None, :]
    mask = (rows < M) & (cols < K)
    offsets = rows.to(tl.int64) * K + cols
    pivot = tl.load(x_ptr + rows.to(tl.int64) * K, mask=rows < M, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    deviation = tl.where(mask, x - pivot, 0.0)
    mean_dev = tl.sum(deviation, 1) / K
    mean = tl.reshape(pivot, [ROWS]) + mean_dev
    centered = tl.where(mask, deviation - mean_dev[:, None], 0.0)
    var = tl.sum(centered * centered, 1) / K
    rstd = 1.0 / tl.sqrt(var + eps)
    y = centered * rstd[:, None]
    if HAS_WEIGHT:
        y *= tl.load(weight_ptr + cols, mask=cols < K, other=0.0).to(tl.float32)
    if HAS_BIAS:
        y += tl.load(bias_ptr + cols, mask=cols < K, other=0.0).to(tl.float32)
    tl.store(y_ptr + offsets, y.to(y_ptr.dtype.element_ty), mask=mask)
    rows = tl.reshape(rows, [ROWS])
    tl.store(mean_ptr + rows, mean, mask=rows < M)
    tl.store(rstd_ptr + rows, rstd, mask=rows < M)


@triton.jit
def ln_backward_kernel(
    dy_ptr, x_ptr, weight_ptr, mean_ptr, rstd_ptr, dx_ptr, partial_ptr,
    M, K,
    HAS_WEIGHT: tl.constexpr, ROWS: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """``dx = rstd * (g - mean(g) - xhat * mean(g * xhat))`` with ``g = dy * weight``.

    Program ``p`` handles row blocks ``p, p + P, p + 2P, ...`` and stores its sums of
    ``dy * xhat`` and ``dy`` as ``partial[p, 0]`` and ``partial[p, 1]`` of a ``(P, 2, K)`` buffer.
    """
    program = tl.program_id(0)
    programs = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_K)[None, :]
    col_mask = cols < K
    dweight_acc = tl.zeros([ROWS, BLOCK_K], tl.float32)
    dbias_acc = tl.zeros([ROWS, BLOCK_K], tl.float32)
    for row0 in range(program * ROWS, M, programs * ROWS):
        rows = row0 + tl.arange(0, ROWS)[:, None]
        row_mask = rows < M
        mask = row_mask & col_mask
        offsets = rows.to(tl.int64) * K + cols
        x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(mean_ptr + rows, mask=row_mask, other=0.0)
        rstd = tl.load(rstd_ptr + rows, mask=row_mask, other=0.0)
        xhat = tl.where(mask, (x - mean) * rstd, 0.0)
        g = dy
        if HAS_WEIGHT:
            g = dy * tl.load(weight_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
        mean_g = tl.sum(g, 1)[:, None] / K
        mean_g_xhat = tl.sum(g * xhat, 1)[:, None] / K
        dx = (g - mean_g - xhat * mean_g_xhat) * rstd
        tl.store(dx_ptr + offsets, dx.to(dx_ptr.dtype.element_ty), mask=mask)
        dweight_acc += dy * xhat
        dbias_acc += dy
    cols = tl.reshape(cols, [BLOCK_K])
    out = program.to(tl.int64) * 2 * K + cols
    tl.store(partial_ptr + out, tl.sum(dweight_acc, 0), mask=cols < K)
    tl.store(partial_ptr + out + K, tl.sum(dbias_acc, 0), mask=cols < K)


@triton.jit
def column_sum_kernel(part_ptr, out_ptr, P, K, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr):
    """``out[k] = sum_p part[p, k]`` for a ``(P, K)`` float32 buffer."""
    cols = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)[None, :]
    acc = tl.zeros([BLOCK_P, BLOCK_K], tl.float32)
    for p0 in range(0, P, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)[:, None]
        acc += tl.load(part_ptr + p.to(tl.int64) * K + cols, mask=(p < P) & (cols < K), other=0.0)
    cols = tl.reshape(cols, [BLOCK_K])
    tl.store(out_ptr + cols, tl.sum(acc, 0), mask=cols < K)


@triton.jit
def ln_forward_looped_kernel(
    x_ptr, y_ptr, weight_ptr, bias_ptr, mean_ptr, rstd_ptr,
    K, eps,
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Forward for rows longer than a register block: one row per program, three sweeps."""
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * K
    y_row = y_ptr + row * K
    pivot = tl.load(x_row).to(tl.float32)  # summing x - x[0] keeps a large mean's digits
    total = tl.zeros([BLOCK_K], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_row + cols, mask=cols < K, other=0.0).to(tl.float32)
        total += tl.where(cols < K, x - pivot, 0.0)
    mean_dev = tl.sum(total, 0) / K
    mean = pivot + mean_dev
    squares = tl.zeros([BLOCK_K], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_row + cols, mask=cols < K, other=0.0).to(tl.float32)
        centered = tl.where(cols < K, (x - pivot) - mean_dev, 0.0)
        squares += centered * centered
    rstd = 1.0 / tl.sqrt(tl.sum(squares, 0) / K + eps)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_row + cols, mask=cols < K, other=0.0).to(tl.float32)
        y = ((x - pivot) - mean_dev) * rstd
        if HAS_WEIGHT:
            y *= tl.load(weight_ptr + cols, mask=cols < K, other=0.0).to(tl.float32)
        if HAS_BIAS:
            y += tl.load(bias_ptr + cols, mask=cols < K, other=0.0).to(tl.float32)
        tl.store(y_row + cols, y.to(y_ptr.dtype.element_ty), mask=cols < K)
    tl.store(mean_ptr + row, mean)
    tl.store(rstd_ptr + row, rstd)


@triton.jit
def _load_x_and_g(dy_ptr, x_ptr, weight_ptr, row_start, cols, mask, HAS_WEIGHT: tl.constexpr):
    """One chunk of a row as float32: ``x`` and ``g = dy * weight`` (``dy`` without weight)."""
    x = tl.load(x_ptr + row_start + cols, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(dy_ptr + row_start + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_WEIGHT:
        g *= tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    return x, g


@triton.jit
def ln_input_grad_looped_kernel(
    dy_ptr, x_ptr, weight_ptr, mean_ptr, rstd_ptr, dx_ptr,
    K,
    HAS_WEIGHT: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """``dx`` for rows longer than a register block: one row per program, two sweeps."""
    row = tl.program_id(0).to(tl.int64)
    mean = tl.load(mean_ptr + row)
    rstd = tl.load(rstd_ptr + row)
    sum_g = tl.zeros([BLOCK_K], tl.float32)
    sum_g_xhat = tl.zeros([BLOCK_K], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        mask = cols < K
        x, g = _load_x_and_g(dy_ptr, x_ptr, weight_ptr, row * K, cols, mask, HAS_WEIGHT)
        sum_g += g
        sum_g_xhat += g * tl.where(mask, (x - mean) * rstd, 0.0)
    mean_g = tl.sum(sum_g, 0) / K
    mean_g_xhat = tl.sum(sum_g_xhat, 0) / K
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        mask = cols < K
        x, g = _load_x_and_g(dy_ptr, x_ptr, weight_ptr, row * K, cols, mask, HAS_WEIGHT)
        dx = (g - mean_g - (x - mean) * rstd * mean_g_xhat) * rstd
        tl.store(dx_ptr + row * K + cols, dx.to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def ln_param_grad_looped_kernel(
    dy_ptr, x_ptr, mean_ptr, rstd_ptr, partial_ptr,
    M, K, rows_per_program,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Partial ``sum(dy * xhat)`` and ``sum(dy)`` of ``BLOCK_K`` columns over one row block.

    Grid ``(cdiv(K, BLOCK_K), P)``; writes ``partial[program_id(1), 0 and 1]`` of a ``(P, 2, K)``
    buffer.
    """
    cols = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)[None, :]
    block = tl.program_id(1)
    r_start = block * rows_per_program
    r_end = tl.minimum(r_start + rows_per_program, M)
    dweight_acc = tl.zeros([BLOCK_M, BLOCK_K], tl.float32)
    dbias_acc = tl.zeros([BLOCK_M, BLOCK_K], tl.float32)
    for r0 in range(r_start, r_end, BLOCK_M):
        rows = r0 + tl.arange(0, BLOCK_M)[:, None]
        mask = (rows < r_end) & (cols < K)
        offsets = rows.to(tl.int64) * K + cols
        x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(mean_ptr + rows, mask=rows < r_end, other=0.0)
        rstd = tl.load(rstd_ptr + rows, mask=rows < r_end, other=0.0)
        dweight_acc += dy * (x - mean) * rstd
        dbias_acc += dy
    cols = tl.reshape(cols, [BLOCK_K])
    out = block.to(tl.int64) * 2 * K + cols
    tl.store(partial_ptr + out, tl.sum(dweight_acc, 0), mask=cols < K)
    tl.store(partial_ptr + out + K, tl.sum(dbias_acc, 0), mask=cols < K)
