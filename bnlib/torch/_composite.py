"""Composite backend: batch and layer normalization written with plain torch tensor ops.

This is the reference backend that runs on every device and dtype. A fused backend
(``bnlib.torch._triton``) implements the same five functions with the same contract, and
``bnlib.torch._dispatch`` picks one of the two per call.

Conventions shared by both backends

* Statistics are accumulated in ``float32`` for ``float16``/``bfloat16`` input, in the input's
  dtype otherwise (``float32`` or ``float64``): :func:`bnlib.torch.helpers.accumulation_dtype`.
* Variances are *biased* (divide by ``M``); callers derive the unbiased one themselves.
* Batch statistics are two-pass around a pivot: ``d = x - pivot`` with ``pivot`` one sample of
  the channel, then ``mean(d)`` and ``mean((d - mean(d))**2)``. Subtracting a sample first
  keeps the float32 rounding of a large mean (say 1e3) out of ``x - mean``.
* Outputs keep the input's dtype and memory format (channels_last stays channels_last).
"""

import math
from functools import partial

import torch

from bnlib.torch.helpers import accumulation_dtype, channel_view, in_layout_of, reduction_axes

__all__ = [
    "bn_backward_train",
    "bn_forward_eval",
    "bn_forward_train",
    "gn_backward",
    "gn_forward",
    "ln_backward",
    "ln_forward",
    "rms_backward",
    "rms_forward",
]


def _affine(xhat, weight, bias, view=None) -> torch.Tensor:
    """``xhat * weight + bias`` with optional parameters; ``view``, when given, reshapes them
    so that they broadcast against ``xhat``."""
    view = view or (lambda parameter: parameter)
    if weight is not None:
        xhat = xhat * view(weight.to(xhat.dtype))
    if bias is not None:
        xhat = xhat + view(bias.to(xhat.dtype))
    return xhat


def _pivoted_stats(values: torch.Tensor, dims: list[int], pivot: torch.Tensor):
    """Two-pass biased ``(mean, var)`` of ``values`` over ``dims``, computed about ``pivot``.

    ``pivot`` broadcasts against ``values`` (keepdim shape). Returns ``(centered, mean, var)``
    with ``centered = values - mean`` and ``mean``/``var`` in keepdim shape.
    """
    deviations = values - pivot
    mean_dev = deviations.mean(dim=dims, keepdim=True)
    centered = deviations - mean_dev
    var = centered.square().mean(dim=dims, keepdim=True)
    return centered, pivot + mean_dev, var


def bn_forward_train(x, weight, bias, eps):
    """Batch-norm forward with batch statistics.

    x: ``(N, C, *spatial)``, any layout, float16/bfloat16/float32/float64.
    weight, bias: ``(C,)`` or None.
    Returns ``y`` (x's dtype and memory format) and the biased per-channel ``mean``, ``var``
    ``(C,)`` in :func:`accumulation_dtype`; ``y = (x - mean) / sqrt(var + eps) * weight + bias``.
    """
    acc = accumulation_dtype(x.dtype)
    xf = x.to(acc)
    dims = reduction_axes(x)
    view = partial(channel_view, ndim=x.dim())
    if x.numel() == 0:
        nan = torch.full((x.shape[1],), float("nan"), dtype=acc, device=x.device)
        return torch.empty_like(x), nan, nan.clone()
    first_sample = xf[(0, slice(None)) + (0,) * (x.dim() - 2)]  # (C,)
    centered, mean, var = _pivoted_stats(xf, dims, view(first_sample))
    xhat = centered * torch.rsqrt(var + eps)
    y = _affine(xhat, weight, bias, view).to(x.dtype)
    return in_layout_of(y, x), mean.flatten(), var.flatten()


def bn_backward_train(dy, x, weight, mean, invstd):
    """Closed-form batch-norm backward in training mode.

    dy, x: ``(N, C, *spatial)``; weight: ``(C,)`` or None; mean, invstd: ``(C,)`` float32/64.
    With ``M = N * prod(spatial)`` and ``xhat = (x - mean) * invstd``::

        dbias   = sum(dy)
        dweight = sum(dy * xhat)
        dx      = weight * invstd / M * (M * dy - dbias - xhat * dweight)

    Returns ``(dx, dweight, dbias)``: dx in x's dtype and memory format, dweight/dbias ``(C,)``
    in float32/float64.
    """
    acc = mean.dtype
    dims = reduction_axes(x)
    view = partial(channel_view, ndim=x.dim())
    count = x.numel() // x.shape[1] if x.shape[1] else 0  # 0 for empty input: dx is empty
    dyf = dy.to(acc)
    xhat = (x.to(acc) - view(mean)) * view(invstd)
    dbias = dyf.sum(dim=dims)
    dweight = (dyf * xhat).sum(dim=dims)
    scale = invstd if weight is None else invstd * weight.to(acc)
    dx = view(scale) * (dyf - view(dbias / count) - xhat * view(dweight / count))
    return in_layout_of(dx.to(x.dtype), x), dweight, dbias


def bn_forward_eval(x, running_mean, running_var, weight, bias, eps):
    """Batch-norm forward with stored statistics: ``(x - rm) / sqrt(rv + eps) * w + b``.

    x: ``(N, C, *spatial)``; running_mean, running_var: ``(C,)``; weight, bias: ``(C,)`` or None.
    Returns ``y`` in x's dtype and memory format.
    """
    acc = accumulation_dtype(x.dtype)
    view = partial(channel_view, ndim=x.dim())
    invstd = torch.rsqrt(running_var.to(acc) + eps)
    xhat = (x.to(acc) - view(running_mean.to(acc))) * view(invstd)
    y = _affine(xhat, weight, bias, view).to(x.dtype)
    return in_layout_of(y, x)


def ln_forward(x, weight, bias, eps):
    """Row-wise layer-norm forward.

    x: ``(M, K)`` contiguous rows; weight, bias: ``(K,)`` or None.
    Returns ``y`` ``(M, K)`` in x's dtype and the per-row ``mean``, ``rstd = 1/sqrt(var + eps)``
    ``(M,)`` in float32/float64 (biased variance).
    """
    acc = accumulation_dtype(x.dtype)
    xf = x.to(acc)
    if x.numel() == 0:
        stat = torch.full((x.shape[0],), float("nan"), dtype=acc, device=x.device)
        return torch.empty_like(x), stat, stat.clone()
    centered, mean, var = _pivoted_stats(xf, [1], xf[:, :1])
    rstd = torch.rsqrt(var + eps)
    y = _affine(centered * rstd, weight, bias).to(x.dtype)
    return y, mean.flatten(), rstd.flatten()


def ln_backward(dy, x, weight, mean, rstd):
    """Closed-form row-wise layer-norm backward.

    dy, x: ``(M, K)``; weight: ``(K,)`` or None; mean, rstd: ``(M,)``. With
    ``xhat = (x - mean) * rstd`` and ``g = dy * weight``::

        dx      = rstd / K * (K * g - sum_row(g) - xhat * sum_row(g * xhat))
        dweight = sum_rows(dy * xhat),   dbias = sum_rows(dy)

    Returns ``(dx, dweight, dbias)``; dweight/dbias are float32/float64 ``(K,)``, and None when
    weight is None (dbias is always returned: the caller drops it when there is no bias).
    """
    acc = mean.dtype
    dyf = dy.to(acc)
    xhat = (x.to(acc) - mean[:, None]) * rstd[:, None]
    dweight = None if weight is None else (dyf * xhat).sum(dim=0)
    dbias = dyf.sum(dim=0)
    g = dyf if weight is None else dyf * weight.to(acc)
    dx = rstd[:, None] * (
        g - g.mean(dim=1, keepdim=True) - xhat * (g * xhat).mean(dim=1, keepdim=True)
    )
    return dx.to(x.dtype), dweight, dbias


# Group and RMS normalization: composite only, on every device (not part of the backend contract).


def gn_forward(x, num_groups, weight, bias, eps):
    """Group-norm forward.

    x: ``(N, C, *spatial)``; weight, bias: ``(C,)`` or None. Each of the ``N * num_groups``
    groups of ``K = C / num_groups * prod(spatial)`` values is normalized with its own biased
    mean and variance, then ``y = xhat * weight[c] + bias[c]``.
    Returns ``y`` (x's dtype and memory format) and ``mean``, ``rstd`` ``(N * num_groups,)``
    in float32/float64.
    """
    acc = accumulation_dtype(x.dtype)
    batch, channels, spatial = x.shape[0], x.shape[1], math.prod(x.shape[2:])
    rows = x.reshape(batch * num_groups, channels // num_groups * spatial).to(acc)
    if x.numel() == 0:
        stat = torch.full((rows.shape[0],), float("nan"), dtype=acc, device=x.device)
        return torch.empty_like(x), stat, stat.clone()
    centered, mean, var = _pivoted_stats(rows, [1], rows[:, :1])
    rstd = torch.rsqrt(var + eps)
    xhat = (centered * rstd).reshape(batch, channels, spatial)
    y = _affine(xhat, weight, bias, partial(channel_view, ndim=3)).to(x.dtype).reshape(x.shape)
    return in_layout_of(y, x), mean.flatten(), rstd.flatten()


def gn_backward(dy, x, num_groups, weight, mean, rstd):
    """Closed-form group-norm backward: the layer-norm formula on each group's row, with
    ``g = dy * weight[c]``; ``dweight[c] = sum(dy * xhat)``, ``dbias[c] = sum(dy)`` over
    ``(N, *spatial)``. Returns ``(dx, dweight, dbias)``, dweight/dbias ``(C,)`` float32/64."""
    acc = mean.dtype
    batch, channels, spatial = x.shape[0], x.shape[1], math.prod(x.shape[2:])
    rows_shape = (batch * num_groups, channels // num_groups * spatial)
    dyf = dy.reshape(batch, channels, spatial).to(acc)
    xhat_rows = (x.reshape(rows_shape).to(acc) - mean[:, None]) * rstd[:, None]
    xhat = xhat_rows.reshape(batch, channels, spatial)
    dweight = (dyf * xhat).sum(dim=(0, 2))
    dbias = dyf.sum(dim=(0, 2))
    g = dyf if weight is None else dyf * weight.to(acc).reshape(1, -1, 1)
    g_rows = g.reshape(rows_shape)
    dx = rstd[:, None] * (
        g_rows
        - g_rows.mean(dim=1, keepdim=True)
        - xhat_rows * (g_rows * xhat_rows).mean(dim=1, keepdim=True)
    )
    dx = dx.to(x.dtype).reshape(x.shape)
    return in_layout_of(dx, x), dweight, dbias


def rms_forward(x, weight, eps):
    """Row-wise RMS-norm forward: ``y = x / sqrt(mean(x**2) + eps) * weight``.

    x: ``(M, K)`` contiguous rows, real or complex (``x**2``, not ``|x|**2``, as in torch);
    weight: ``(K,)`` or None; eps: a float (the caller resolves ``None``). Returns ``y`` in x's
    dtype and ``rstd`` ``(M,)`` in :func:`~bnlib.torch.helpers.accumulation_dtype`.
    """
    xf = x.to(accumulation_dtype(x.dtype))
    rstd = torch.rsqrt(xf.square().mean(dim=1) + eps)
    return _affine(xf * rstd[:, None], weight, None).to(x.dtype), rstd


def rms_backward(dy, x, weight, rstd):
    """Closed-form RMS-norm backward. With ``xhat = x * rstd`` and ``g = dy * conj(weight)``::

        dx = conj(rstd) * (g - conj(xhat) * mean_row(g * conj(xhat))),
        dweight = sum_rows(dy * conj(xhat))

    (``y`` is holomorphic in ``x``, so torch's gradient is ``conj(J)^T dy``; ``conj`` is the
    identity on real tensors.) Returns ``(dx, dweight)``; dweight is None when weight is None.
    """
    acc = rstd.dtype
    dyf = dy.to(acc)
    xhat_conj = (x.to(acc) * rstd[:, None]).conj()
    dweight = None if weight is None else (dyf * xhat_conj).sum(dim=0)
    g = dyf if weight is None else dyf * weight.to(acc).conj()
    dx = rstd.conj()[:, None] * (g - xhat_conj * (g * xhat_conj).mean(dim=1, keepdim=True))
    return dx.to(x.dtype), dweight
