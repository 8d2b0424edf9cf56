"""Triton backend: fused batch-norm and layer-norm kernels (CUDA, or CPU under the interpreter).

Same five functions and contract as :mod:`bnlib.torch._composite`, which
:mod:`bnlib.torch._dispatch` picks between. The kernels live in :mod:`bnlib.torch.kernels`;
this module checks arguments, picks block sizes and launches them.

* Statistics and gradient sums are accumulated in float32 for float32, float16 and bfloat16
  input; outputs keep the input's dtype and memory format (NCHW or channels_last).
* float64 input and empty tensors are handed to the composite backend (Triton's float64
  arithmetic buys nothing for a memory-bound kernel, and it keeps one code path exact).
* On a CPU the kernels run only under Triton's interpreter: ``TRITON_INTERPRET=1`` must be set
  before ``triton`` is first imported (Triton reads it when it decorates its own library and
  these kernels); :func:`available` says whether that happened.

Block sizes are fixed rules (module constants chosen from sweeps on an H100, no autotuning), so
every launch is reproducible and the split reductions write their partial buffers once per call.
"""

import functools

import torch

from bnlib.torch import _composite
from bnlib.torch.validation import (
    check_kernel_dtype,
    check_kernel_grad_output,
    check_kernel_input,
    check_kernel_rows,
    check_kernel_vector,
)

try:
    import triton

    from bnlib.torch.kernels import batchnorm as bn_kernels
    from bnlib.torch.kernels import layernorm as ln_kernels
except ImportError:  # Triton missing: available() says so and the dispatcher uses _composite
    triton = None

__all__ = [
    "available",
    "bn_backward_train",
    "bn_forward_eval",
    "bn_forward_train",
    "ln_backward",
    "ln_forward",
]

# Bytes of input one reduction program loads per loop step, and one elementwise program
# handles; one warp per 512 values. The reduction loops are latency-bound: what keeps memory
# busy is the bytes in flight, tiles times resident programs. Chosen from one-knob-at-a-time
# sweeps on an H100 (benchmarks/bench_gpu.py --sweep).
REDUCE_TILE_BYTES = 8192
APPLY_TILE_BYTES = 8192
# Programs per multiprocessor that the split reductions aim for; the statistics of NCHW
# input (short strided rows per channel) need more programs in flight than the rest.
PROGRAMS_PER_SM = 8
NCHW_STATS_PROGRAMS_PER_SM = 16
# Layer norm, rows held in registers: input bytes per forward program (several short rows
# share one); values per backward program, shared only by rows of at most
# LN_BACKWARD_SHARED_ROW_MAX values; values per warp (sets num_warps, at most LN_MAX_WARPS);
# backward programs per multiprocessor. Chosen from one-knob-at-a-time sweeps on an H100
# (benchmarks/bench_gpu.py --sweep).
LN_FORWARD_TILE_BYTES = 16384
LN_BACKWARD_TILE = 8192
LN_BACKWARD_SHARED_ROW_MAX = 2048
LN_FORWARD_VALUES_PER_WARP = 1024
LN_BACKWARD_VALUES_PER_WARP = 256
LN_BACKWARD_PROGRAMS_PER_SM = 2
LN_MAX_WARPS = 8
# Longest row held in registers by the layer-norm kernels; longer rows take the looped kernels.
LN_MAX_FUSED_FORWARD = 32768
LN_MAX_FUSED_BACKWARD = 16384
# Chunk of a row that the looped layer-norm kernels handle per step.
LN_LOOP_BLOCK = 4096


def _interpreted() -> bool:
    """True when the kernels, and Triton's own library (imported first), were decorated by
    Triton's CPU interpreter: ``TRITON_INTERPRET=1`` was set before ``import triton``."""
    import triton.language as tl

    return all(type(fn).__name__ == "InterpretedFunction"
               for fn in (bn_kernels.bn_apply_kernel, tl.zeros))


def available() -> bool:
    """True when Triton imports and can run here: a CUDA device, or the CPU interpreter."""
    if triton is None:
        return False
    return torch.cuda.is_available() or _interpreted()


# ---------------------------------------------------------------------------------------------
# argument checks and helpers


def _check_device(x: torch.Tensor) -> None:
    if triton is None:
        raise RuntimeError("the Triton backend needs the triton package")
    if x.is_cuda:
        return
    if x.device.type == "cpu" and _interpreted():
        return
    raise ValueError(
        f"the Triton backend needs a CUDA tensor (or TRITON_INTERPRET=1 set before import for "
        f"CPU tensors), got a tensor on {x.device}"
    )


def _uses_kernels(x: torch.Tensor) -> bool:
    """False for inputs handed to the composite backend: float64 and empty tensors."""
    check_kernel_dtype(x)
    if x.dtype == torch.float64 or x.numel() == 0:
        return False
    _check_device(x)
    return True


def _next_pow2(n: int) -> int:
    return 1 << (max(int(n), 1) - 1).bit_length()


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _multiprocessors(device: torch.device) -> int:
    """Multiprocessor count; a handful on the CPU interpreter so splits are still exercised."""
    if device.type == "cuda":
        return _cuda_multiprocessors(device.index if device.index is not None
                                     else torch.cuda.current_device())
    return 2


@functools.cache
def _cuda_multiprocessors(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _vector_or(vector: torch.Tensor | None, fallback: torch.Tensor) -> torch.Tensor:
    """A pointer argument for an optional vector (the kernel ignores it when the flag is off)."""
    return vector.contiguous() if vector is not None else fallback


class _Launch:
    """Run kernels on ``tensor``'s CUDA device (a no-op context on the CPU interpreter)."""

    def __init__(self, tensor: torch.Tensor):
        self.context = torch.cuda.device(tensor.device) if tensor.is_cuda else None

    def __enter__(self):
        if self.context is not None:
            self.context.__enter__()

    def __exit__(self, *exc):
        if self.context is not None:
            self.context.__exit__(*exc)


# ---------------------------------------------------------------------------------------------
# batch norm: layouts and block sizes


class _BNLayout:
    """How an ``(N, C, *spatial)`` tensor is walked: NCHW ``(N, C, S)`` or a ``(R, C)`` matrix.

    ``channels_last`` is True for channel-fastest memory (channels_last, channels_last_3d,
    ``(N, L, C)``-strided 3-d tensors, and any tensor with one spatial position).
    """

    def __init__(self, x: torch.Tensor):
        self.N, self.C = x.shape[0], x.shape[1]
        self.S = x.numel() // (self.N * self.C)
        self.count = self.N * self.S
        self.channels_last = _channel_fastest(x)


def _channel_fastest(x: torch.Tensor) -> bool:
    spatial = x.numel() // (x.shape[0] * x.shape[1])
    if spatial == 1 and x.is_contiguous():
        return True
    return not x.is_contiguous() and x.movedim(1, -1).is_contiguous()


def _dense(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself when NCHW- or channel-fastest-contiguous, else a contiguous copy."""
    if x.is_contiguous() or x.movedim(1, -1).is_contiguous():
        return x
    return x.contiguous()


def _like(reference: torch.Tensor, tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` with ``reference``'s strides (copied only when they differ)."""
    if tensor.stride() == reference.stride():
        return tensor
    return torch.empty_like(reference, dtype=tensor.dtype).copy_(tensor)


def _split_plan(layout: _BNLayout, x: torch.Tensor, programs_per_sm: int) -> dict:
    """Block sizes and split counts of the per-channel reductions (stats and gradient sums)."""
    return _cached_split_plan(layout.N, layout.C, layout.S, layout.channels_last,
                              x.element_size(), _multiprocessors(x.device),
                              REDUCE_TILE_BYTES, programs_per_sm)


@functools.lru_cache(maxsize=256)
def _cached_split_plan(N, C, S, channels_last, element_size, multiprocessors, tile_bytes,
                       programs_per_sm) -> dict:
    target = programs_per_sm * multiprocessors
    tile = max(1, tile_bytes // element_size)
    num_warps = min(16, max(4, tile // 512))
    if channels_last:
        rows = N * S
        block_c = min(_next_pow2(C), 128)
        block_r = min(_next_pow2(rows), max(1, tile // block_c))
        col_blocks = _cdiv(C, block_c)
        splits = max(1, min(_cdiv(target, col_blocks), _cdiv(rows, block_r)))
        rows_per_split = _cdiv(_cdiv(rows, splits), block_r) * block_r
        splits = _cdiv(rows, rows_per_split)
        return dict(grid=(col_blocks, splits), splits=splits, rows_per_split=rows_per_split,
                    BLOCK_R=block_r, BLOCK_C=block_c, num_warps=num_warps)
    block_s = min(_next_pow2(S), 1024)
    block_n = min(_next_pow2(N), max(1, tile // block_s))
    splits_n = max(1, min(_cdiv(target, C), _cdiv(N, block_n)))
    n_per_split = _cdiv(_cdiv(N, splits_n), block_n) * block_n
    splits_n = _cdiv(N, n_per_split)
    splits_s = max(1, min(_cdiv(target, C * splits_n), _cdiv(S, block_s)))
    s_per_split = _cdiv(_cdiv(S, splits_s), block_s) * block_s
    splits_s = _cdiv(S, s_per_split)
    return dict(grid=(C, splits_n, splits_s), splits=splits_n * splits_s,
                n_per_split=n_per_split, s_per_split=s_per_split,
                BLOCK_N=block_n, BLOCK_S=block_s, num_warps=num_warps)


def _tile_plan(layout: _BNLayout, x: torch.Tensor) -> dict:
    """Grid and tile of the elementwise passes over the row-major matrix view of ``x``."""
    return dict(_cached_tile_plan(layout.N, layout.C, layout.S, layout.channels_last,
                                  x.element_size(), APPLY_TILE_BYTES))


@functools.lru_cache(maxsize=256)
def _cached_tile_plan(N, C, S, channels_last, element_size, tile_bytes) -> dict:
    if channels_last:
        rows, cols = N * S, C
        block_col = min(_next_pow2(cols), 256)
    else:
        rows, cols = N * C, S
        block_col = min(_next_pow2(cols), 1024)
    tile = max(1, tile_bytes // element_size)
    block_r = min(_next_pow2(rows), max(1, tile // block_col))
    return dict(grid=(_cdiv(rows, block_r), _cdiv(cols, block_col)), ROWS=rows, COLS=cols,
                CHANNEL_IS_COLUMN=channels_last, BLOCK_R=block_r, BLOCK_COL=block_col,
                num_warps=min(16, max(1, block_r * block_col // 512)))


@functools.lru_cache(maxsize=256)
def _combine_plan(C: int, splits: int) -> dict:
    """Tiles of the ``(splits, C)`` merge: tall enough that few loop steps remain (each step
    waits on its loads), narrow enough that several programs share the channels."""
    block_p = min(_next_pow2(splits), 256)
    block_c = min(_next_pow2(C), max(1, 2048 // block_p))
    return dict(grid=(_cdiv(C, block_c),), BLOCK_P=block_p, BLOCK_C=block_c)


def _check_bn_input(x: torch.Tensor, **vectors) -> None:
    """A ``(N, C, *spatial)`` input and ``(C,)`` vectors (or None) named by keyword."""
    check_kernel_input("input", x, 2)
    for name, vector in vectors.items():
        check_kernel_vector(name, vector, x.shape[1], x)


# ---------------------------------------------------------------------------------------------
# batch norm: public functions


def bn_forward_train(x, weight, bias, eps):
    """Batch-norm forward with batch statistics.

    x: ``(N, C, *spatial)`` float16/bfloat16/float32 (float64 goes to the composite backend),
    NCHW-contiguous or channels_last; weight, bias: ``(C,)`` or None.
    Returns ``y`` (x's dtype and memory format) and the biased per-channel ``mean``, ``var``
    ``(C,)`` float32, with ``y = (x - mean) / sqrt(var + eps) * weight + bias``.
    """
    _check_bn_input(x, weight=weight, bias=bias)
    if not _uses_kernels(x):
        return _composite.bn_forward_train(x, weight, bias, eps)
    x = _dense(x)
    layout = _BNLayout(x)
    stats = _bn_batch_stats(x, layout, eps)
    y = torch.empty_like(x)
    _bn_apply(x, y, layout, stats["pivot"], stats["mean_dev"], stats["invstd"], weight, bias,
              eps)
    return y, stats["mean"], stats["var"]


def _bn_batch_stats(x: torch.Tensor, layout: _BNLayout, eps: float):
    """Per-channel float32 ``(C,)`` statistics: split sums around a pivot, then Chan's merge.

    Returns a dict of ``mean``, ``var`` (biased), ``invstd``, ``pivot`` (a sample of each
    channel) and ``mean_dev = mean - pivot``.
    """
    plan = _split_plan(
        layout, x, PROGRAMS_PER_SM if layout.channels_last else NCHW_STATS_PROGRAMS_PER_SM)
    C, splits = layout.C, plan["splits"]
    partials = torch.empty((3, splits, C), dtype=torch.float32, device=x.device)
    names = ("mean", "var", "invstd", "pivot", "mean_dev")
    stats = dict(zip(names, torch.empty((5, C), dtype=torch.float32, device=x.device),
                     strict=True))
    with _Launch(x):
        if layout.channels_last:
            bn_kernels.bn_stats_cl_kernel[plan["grid"]](
                x, stats["pivot"], partials[0], partials[1], partials[2], layout.count, C,
                plan["rows_per_split"], BLOCK_R=plan["BLOCK_R"], BLOCK_C=plan["BLOCK_C"],
                num_warps=plan["num_warps"])
        else:
            bn_kernels.bn_stats_nchw_kernel[plan["grid"]](
                x, stats["pivot"], partials[0], partials[1], partials[2], layout.N, C, layout.S,
                plan["n_per_split"], plan["s_per_split"],
                BLOCK_N=plan["BLOCK_N"], BLOCK_S=plan["BLOCK_S"], num_warps=plan["num_warps"])
        combine = _combine_plan(C, splits)
        bn_kernels.bn_stats_combine_kernel[combine["grid"]](
            partials[0], partials[1], partials[2], stats["pivot"], stats["mean"], stats["var"],
            stats["invstd"], stats["mean_dev"], C, splits, float(eps),
            BLOCK_P=combine["BLOCK_P"], BLOCK_C=combine["BLOCK_C"])
    return stats


def _bn_apply(x, y, layout, pivot, mean_dev, scale, weight, bias, eps):
    """Launch ``bn_apply_kernel``: ``y = (x - pivot - mean_dev) * invstd * weight + bias``.

    Training passes ``scale = invstd``; inference passes ``mean_dev = None`` and
    ``scale = running_var`` (the kernel takes ``1 / sqrt(var + eps)``).
    """
    plan = _tile_plan(layout, x)
    grid = plan.pop("grid")
    pivot = pivot.contiguous()
    with _Launch(x):
        bn_kernels.bn_apply_kernel[grid](
            x, y, pivot, _vector_or(mean_dev, pivot), scale.contiguous(),
            _vector_or(weight, pivot), _vector_or(bias, pivot), C=layout.C, eps=float(eps),
            HAS_MEAN_DEV=mean_dev is not None, SCALE_IS_VAR=mean_dev is None,
            HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, **plan)


def bn_backward_train(dy, x, weight, mean, invstd):
    """Closed-form batch-norm backward in training mode.

    dy, x: ``(N, C, *spatial)`` (dy is brought to x's layout); weight: ``(C,)`` or None;
    mean, invstd: ``(C,)`` float32. With ``M = N * prod(spatial)``, ``xhat = (x - mean) * invstd``::

        dbias   = sum(dy)
        dweight = sum(dy * xhat)
        dx      = weight * invstd * (dy - dbias / M - xhat * dweight / M)

    Returns ``(dx, dweight, dbias)``: dx in x's dtype and memory format, dweight and dbias
    float32 ``(C,)`` (both always computed; weight None means weight 1).
    """
    check_kernel_grad_output(dy, x)
    _check_bn_input(x, weight=weight, mean=mean, invstd=invstd)
    if not _uses_kernels(x):
        return _composite.bn_backward_train(dy, x, weight, mean, invstd)
    x = _dense(x)
    dy = _like(x, dy)
    layout = _BNLayout(x)
    mean = mean.to(torch.float32).contiguous()
    invstd = invstd.to(torch.float32).contiguous()
    plan = _split_plan(layout, x, PROGRAMS_PER_SM)
    C, splits = layout.C, plan["splits"]
    partials = torch.empty((2, splits, C), dtype=torch.float32, device=x.device)
    grads = torch.empty((2, C), dtype=torch.float32, device=x.device)
    dweight, dbias = grads[0], grads[1]
    dx = torch.empty_like(x)
    with _Launch(x):
        if layout.channels_last:
            bn_kernels.bn_grad_sums_cl_kernel[plan["grid"]](
                dy, x, mean, partials[0], partials[1], layout.count, C,
                plan["rows_per_split"], BLOCK_R=plan["BLOCK_R"], BLOCK_C=plan["BLOCK_C"],
                num_warps=plan["num_warps"])
        else:
            bn_kernels.bn_grad_sums_nchw_kernel[plan["grid"]](
                dy, x, mean, partials[0], partials[1], layout.N, C, layout.S,
                plan["n_per_split"], plan["s_per_split"],
                BLOCK_N=plan["BLOCK_N"], BLOCK_S=plan["BLOCK_S"], num_warps=plan["num_warps"])
        combine = _combine_plan(C, splits)
        bn_kernels.bn_grad_combine_kernel[combine["grid"]](
            partials[0], partials[1], invstd, dweight, dbias, C, splits,
            BLOCK_P=combine["BLOCK_P"], BLOCK_C=combine["BLOCK_C"])
        tile = _tile_plan(layout, x)
        grid = tile.pop("grid")
        bn_kernels.bn_input_grad_kernel[grid](
            dy, x, dx, mean, invstd, _vector_or(weight, mean), dweight, dbias,
            C=C, inv_count=1.0 / layout.count, HAS_WEIGHT=weight is not None, **tile)
    return dx, dweight, dbias


def bn_forward_eval(x, running_mean, running_var, weight, bias, eps):
    """Batch-norm forward with stored statistics: ``(x - rm) / sqrt(rv + eps) * w + b``.

    x: ``(N, C, *spatial)``; running_mean, running_var: ``(C,)`` (any float dtype);
    weight, bias: ``(C,)`` or None. Returns ``y`` in x's dtype and memory format. One pass.
    """
    _check_bn_input(x, weight=weight, bias=bias, running_mean=running_mean,
                    running_var=running_var)
    if running_mean is None or running_var is None:
        raise ValueError("running_mean and running_var are required in inference mode")
    if not _uses_kernels(x):
        return _composite.bn_forward_eval(x, running_mean, running_var, weight, bias, eps)
    x = _dense(x)
    layout = _BNLayout(x)
    y = torch.empty_like(x)
    _bn_apply(x, y, layout, running_mean, None, running_var, weight, bias, eps)
    return y


# ---------------------------------------------------------------------------------------------
# layer norm


def _check_ln_input(x: torch.Tensor, weight, bias) -> None:
    check_kernel_rows(x)
    check_kernel_vector("weight", weight, x.shape[1], x)
    check_kernel_vector("bias", bias, x.shape[1], x)


@functools.lru_cache(maxsize=256)
def _row_plan(M: int, K: int, tile: int, values_per_warp: int, max_warps: int) -> dict:
    """Rows per program and warps for the register-resident layer-norm kernels."""
    block_k = _next_pow2(K)
    rows = min(_next_pow2(M), max(1, tile // block_k))
    values = rows * block_k
    return dict(ROWS=rows, BLOCK_K=block_k,
                num_warps=min(max_warps, max(4, values // values_per_warp)))


def ln_forward(x, weight, bias, eps):
    """Row-wise layer-norm forward.

    x: ``(M, K)`` float16/bfloat16/float32 (float64 goes to the composite backend), rows
    contiguous; weight, bias: ``(K,)`` or None.
    Returns ``y`` ``(M, K)`` in x's dtype and the per-row ``mean``, ``rstd = 1/sqrt(var + eps)``
    ``(M,)`` float32 (biased variance).
    """
    _check_ln_input(x, weight, bias)
    if not _uses_kernels(x):
        return _composite.ln_forward(x, weight, bias, eps)
    x = x.contiguous()
    M, K = x.shape
    y = torch.empty_like(x)
    stats = torch.empty((2, M), dtype=torch.float32, device=x.device)
    mean, rstd = stats[0], stats[1]
    flags = dict(HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None)
    weight_arg, bias_arg = _vector_or(weight, x), _vector_or(bias, x)
    with _Launch(x):
        if K <= LN_MAX_FUSED_FORWARD:
            plan = _row_plan(M, K, LN_FORWARD_TILE_BYTES // x.element_size(),
                             LN_FORWARD_VALUES_PER_WARP, LN_MAX_WARPS)
            ln_kernels.ln_forward_kernel[(_cdiv(M, plan["ROWS"]),)](
                x, y, weight_arg, bias_arg, mean, rstd, M, K, float(eps), **flags, **plan)
        else:
            ln_kernels.ln_forward_looped_kernel[(M,)](
                x, y, weight_arg, bias_arg, mean, rstd, K, float(eps), **flags,
                BLOCK_K=min(LN_LOOP_BLOCK, _next_pow2(K)), num_warps=8)
    return y, mean, rstd


def ln_backward(dy, x, weight, mean, rstd):
    """Closed-form row-wise layer-norm backward.

    dy, x: ``(M, K)``; weight: ``(K,)`` or None; mean, rstd: ``(M,)`` float32. With
    ``xhat = (x - mean) * rstd`` and ``g = dy * weight``::

        dx      = rstd * (g - mean_row(g) - xhat * mean_row(g * xhat))
        dweight = sum_rows(dy * xhat),   dbias = sum_rows(dy)

    dweight/dbias come from per-program partial sums added by a second small kernel.
    Returns ``(dx, dweight, dbias)``: dx in x's dtype, dweight/dbias float32 ``(K,)``;
    dweight is None when weight is None (dbias is always returned).
    """
    check_kernel_grad_output(dy, x)
    _check_ln_input(x, weight, None)
    check_kernel_vector("mean", mean, x.shape[0], x)
    check_kernel_vector("rstd", rstd, x.shape[0], x)
    if not _uses_kernels(x):
        return _composite.ln_backward(dy, x, weight, mean, rstd)
    x, dy = x.contiguous(), dy.contiguous()
    mean = mean.to(torch.float32).contiguous()
    rstd = rstd.to(torch.float32).contiguous()
    M, K = x.shape
    dx = torch.empty_like(x)
    weight_arg = _vector_or(weight, x)
    with _Launch(x):
        if K <= LN_MAX_FUSED_BACKWARD:
            partials = _ln_backward_fused(dy, x, weight, weight_arg, mean, rstd, dx)
        else:
            partials = _ln_backward_looped(dy, x, weight, weight_arg, mean, rstd, dx)
        grads = _column_sums(partials)
    dweight, dbias = grads[:K], grads[K:]
    return dx, (dweight if weight is not None else None), dbias


def _ln_backward_fused(dy, x, weight, weight_arg, mean, rstd, dx) -> torch.Tensor:
    """One persistent pass: dx, and ``(P, 2K)`` partials ``[dweight | dbias]`` per program."""
    M, K = x.shape
    tile = LN_BACKWARD_TILE if _next_pow2(K) <= LN_BACKWARD_SHARED_ROW_MAX else 1
    plan = _row_plan(M, K, tile, LN_BACKWARD_VALUES_PER_WARP, LN_MAX_WARPS)
    programs = LN_BACKWARD_PROGRAMS_PER_SM * _multiprocessors(x.device)
    programs = max(1, min(_cdiv(M, plan["ROWS"]), programs))
    partials = torch.empty((programs, 2, K), dtype=torch.float32, device=x.device)
    ln_kernels.ln_backward_kernel[(programs,)](
        dy, x, weight_arg, mean, rstd, dx, partials, M, K,
        HAS_WEIGHT=weight is not None, **plan)
    return partials


def _ln_backward_looped(dy, x, weight, weight_arg, mean, rstd, dx) -> torch.Tensor:
    """Long rows: a row-wise dx kernel, then a column-block kernel for the parameter grads."""
    M, K = x.shape
    block = min(LN_LOOP_BLOCK, _next_pow2(K))
    ln_kernels.ln_input_grad_looped_kernel[(M,)](
        dy, x, weight_arg, mean, rstd, dx, K, HAS_WEIGHT=weight is not None,
        BLOCK_K=block, num_warps=8)
    block_k, block_m = 128, 16
    col_blocks = _cdiv(K, block_k)
    target = PROGRAMS_PER_SM * _multiprocessors(x.device)
    row_blocks = max(1, min(_cdiv(target, col_blocks), _cdiv(M, block_m)))
    rows_per_program = _cdiv(_cdiv(M, row_blocks), block_m) * block_m
    row_blocks = _cdiv(M, rows_per_program)
    partials = torch.empty((row_blocks, 2, K), dtype=torch.float32, device=x.device)
    ln_kernels.ln_param_grad_looped_kernel[(col_blocks, row_blocks)](
        dy, x, mean, rstd, partials, M, K, rows_per_program,
        BLOCK_M=block_m, BLOCK_K=block_k)
    return partials


def _column_sums(partials: torch.Tensor) -> torch.Tensor:
    """Sum a ``(P, 2, K)`` float32 buffer over ``P``: returns ``[dweight | dbias]`` ``(2K,)``."""
    P = partials.shape[0]
    width = partials.shape[1] * partials.shape[2]
    out = torch.empty(width, dtype=torch.float32, device=partials.device)
    block_k = 64
    ln_kernels.column_sum_kernel[(_cdiv(width, block_k),)](
        partials, out, P, width, BLOCK_P=min(_next_pow2(P), 64), BLOCK_K=block_k)
    return out
