"""One ``torch.autograd.Function`` per normalization: closed-form backward, forward-mode ``jvp``
and a ``vmap`` rule, so autograd, ``torch.autograd.forward_ad`` and ``torch.func`` all apply.

The forward and the first-order backward run on the backend chosen by
``bnlib.torch._dispatch`` (fused Triton kernels or composite torch ops). When autograd asks for
a differentiable backward (``create_graph=True``, as ``gradgradcheck`` and every ``torch.func``
transform do), the statistics are recomputed from the saved input with composite torch ops and
the same closed-form backward is evaluated with them, so it can be differentiated once more.

Forward mode. Write ``xhat = (x - mean) * rstd`` for the values of one normalized group
(a channel for batch norm, a row for layer norm) of ``M`` values, and a tangent ``v`` of ``x``.
Differentiating ``mean = sum(x)/M`` and ``var = sum((x - mean)**2)/M`` gives
``d mean = mean(v)`` and ``d rstd = -rstd**3 * mean((x - mean) * v)``, so::

    d xhat = rstd * (v - mean(v) - xhat * mean(xhat * v)) = rstd * P v

``P = I - 1 1^T / M - xhat xhat^T / M`` is symmetric, hence ``J = diag(weight) * rstd * P``
and the backward's ``J^T dy = rstd * P (weight * dy)`` are the same projection applied on either
side of the weight. The tangent of ``y = xhat * weight + bias`` is therefore::

    y' = weight * [backward without weight](v) + weight' * xhat + bias'

which is how every ``jvp`` below is computed, on the same backend as the backward. RMS norm has
``P = I - xhat xhat^T / M`` (no mean is removed); batch norm in eval mode is affine in ``x``:
``y' = weight * rstd * v + weight' * xhat + bias'``.

Vmap. Each rule folds the vmapped dimension into a dimension the op already normalizes
independently: channels for batch norm, samples for group norm, leading (row) dimensions for
layer and RMS norm, so a vmapped call is still one call of the fused kernels. Parameters
batched along the vmapped dimension are applied outside for the row norms.

The Functions expect validated arguments; ``bnlib.torch.functional`` checks them first.
"""

import math

import torch

from bnlib.torch import _composite
from bnlib.torch._dispatch import backend_for
from bnlib.torch.helpers import (
    accumulation_dtype,
    channel_view,
    in_layout_of,
    reduction_axes,
)

__all__ = [
    "BatchNormEval",
    "BatchNormTrain",
    "GroupNorm",
    "LayerNorm",
    "RMSNorm",
    "batch_norm_eval",
    "batch_norm_train",
    "group_norm",
    "layer_norm",
    "rms_norm",
]


def _meta(parameter):
    """``(dtype, shape)`` of an optional parameter, kept to shape its gradient."""
    return None if parameter is None else (parameter.dtype, parameter.shape)


def _grad_for(grad, meta, needed: bool):
    """``grad`` in the parameter's dtype and shape when autograd needs it, else None."""
    if not needed or meta is None:
        return None
    dtype, shape = meta
    return grad.to(dtype).reshape(shape)


def _save_with_statistics(ctx, x, weight, bias, statistics, eps) -> None:
    """Keep what backward and jvp need: ``x``, ``weight`` and the forward's ``statistics``
    outputs (per row or group, not differentiable), ``eps`` and the bias's dtype and shape."""
    ctx.save_for_backward(x, weight, *statistics)
    ctx.save_for_forward(x, weight, *statistics)
    ctx.eps, ctx.bias = eps, _meta(bias)
    ctx.mark_non_differentiable(*statistics)


def _grads_of_x_weight_bias(ctx, dx, dweight, dbias, weight):
    """The gradients of ``apply(x, <int or shape>, weight, bias, eps)``, where autograd needs
    them: dx as given, the parameters' gradients in their dtype and shape."""
    needs_x, _, needs_weight, needs_bias, _ = ctx.needs_input_grad
    return (
        dx if needs_x else None,
        None,
        _grad_for(dweight, _meta(weight), needs_weight),
        _grad_for(dbias, ctx.bias, needs_bias),
        None,
    )


def _backward_backend(x: torch.Tensor, dy: torch.Tensor):
    """The backend of a backward pass: composite when it must itself be differentiable."""
    return _composite if torch.is_grad_enabled() else backend_for(x, dy)


def _affine_tangent(x_part, xhat, weight, weight_t, bias_t, view):
    """``weight * x_part + weight' * xhat + bias'``, skipping the terms that are absent."""
    terms = []
    if x_part is not None:
        terms.append(x_part if weight is None else x_part * view(weight.to(x_part.dtype)))
    if weight_t is not None:
        terms.append(xhat * view(weight_t.to(xhat.dtype)))
    if bias_t is not None:
        terms.append(view(bias_t.to(xhat.dtype)).expand_as(xhat))
    return sum(terms[1:], terms[0]) if terms else torch.zeros_like(xhat)


def _leading(tensor, bdim, batch_size: int):
    """``tensor`` with the vmapped dimension first (broadcast when it was not batched)."""
    if tensor is None:
        return None
    if bdim is None:
        return tensor.expand(batch_size, *tensor.shape)
    return tensor.movedim(bdim, 0)


def _folded_vector(vector, bdim, batch_size: int):
    """A ``(C,)`` vector, batched or not, as the ``(B * C,)`` vector of B folded copies."""
    return None if vector is None else _leading(vector, bdim, batch_size).reshape(-1)


class BatchNormTrain(torch.autograd.Function):
    """Batch norm with batch statistics.

    ``apply(x, weight, bias, eps) -> (y, mean, var)``: x ``(N, C, *spatial)``, weight/bias
    ``(C,)`` or None; mean and the biased var are ``(C,)`` float32/64 and carry no gradient.
    """

    @staticmethod
    def forward(x, weight, bias, eps):
        return backend_for(x).bn_forward_train(x, weight, bias, eps)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, eps = inputs
        _, mean, var = output
        saved = (x, weight, mean, torch.rsqrt(var + eps))
        ctx.save_for_backward(*saved)
        ctx.save_for_forward(*saved)
        ctx.eps, ctx.bias = eps, _meta(bias)
        ctx.mark_non_differentiable(mean, var)

    @staticmethod
    def backward(ctx, dy, _grad_mean, _grad_var):
        x, weight, mean, invstd = ctx.saved_tensors
        backend = _backward_backend(x, dy)
        if torch.is_grad_enabled():  # double backward: stats recomputed from x, in the graph
            _, mean, var = _composite.bn_forward_train(x, None, None, ctx.eps)
            invstd = torch.rsqrt(var + ctx.eps)
        dx, dweight, dbias = backend.bn_backward_train(dy, x, weight, mean, invstd)
        needs_x, needs_weight, needs_bias, _ = ctx.needs_input_grad
        return (
            dx if needs_x else None,
            _grad_for(dweight, _meta(weight), needs_weight),
            _grad_for(dbias, ctx.bias, needs_bias),
            None,
        )

    @staticmethod
    def jvp(ctx, x_t, weight_t, bias_t, _eps_t):
        """``y' = weight * rstd * P x' + weight' * xhat + bias'`` (module docstring), with
        ``rstd * P x'`` the batch-norm backward of ``x'`` without weight; mean and var are
        not differentiable."""
        x, weight, mean, invstd = ctx.saved_tensors
        view = lambda vector: channel_view(vector, x.dim())  # noqa: E731
        x_part = None
        if x_t is not None:
            x_part = backend_for(x, x_t).bn_backward_train(x_t, x, None, mean, invstd)[0]
        xhat = (x.to(mean.dtype) - view(mean)) * view(invstd)
        y_t = _affine_tangent(x_part, xhat, weight, weight_t, bias_t, view)
        return y_t.to(x.dtype), None, None

    @staticmethod
    def vmap(info, in_dims, x, weight, bias, eps):
        """The vmapped copies become channels: ``(B, N, C, ...)`` is normalized as
        ``(N, B * C, ...)`` with the parameters repeated (or stacked) to ``(B * C,)``."""
        batch = info.batch_size
        x_bdim, weight_bdim, bias_bdim, _ = in_dims
        x = _leading(x, x_bdim, batch)
        channels = x.shape[2]
        folded = x.movedim(0, 1).flatten(1, 2)
        y, mean, var = BatchNormTrain.apply(
            folded, _folded_vector(weight, weight_bdim, batch),
            _folded_vector(bias, bias_bdim, batch), eps)
        stats = (mean.unflatten(0, (batch, channels)), var.unflatten(0, (batch, channels)))
        return (y.unflatten(1, (batch, channels)), *stats), (1, 0, 0)


class BatchNormEval(torch.autograd.Function):
    """Batch norm with stored statistics.

    ``apply(x, running_mean, running_var, weight, bias, eps) -> y`` with
    ``y = (x - rm) * invstd * weight + bias``, ``invstd = 1/sqrt(rv + eps)``. Backward:
    ``dx = dy * weight * invstd``, ``dweight = sum(dy * xhat)``, ``dbias = sum(dy)``; the
    running statistics get no gradient (in either mode, as in torch).
    """

    @staticmethod
    def forward(x, running_mean, running_var, weight, bias, eps):
        return backend_for(x).bn_forward_eval(x, running_mean, running_var, weight, bias, eps)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, running_mean, running_var, weight, bias, eps = inputs
        ctx.save_for_backward(x, running_mean, running_var, weight)
        ctx.save_for_forward(x, running_mean, running_var, weight)
        ctx.eps, ctx.bias = eps, _meta(bias)

    @staticmethod
    def _normalized(ctx):
        """``(x, weight, xhat, invstd, view)`` in the accumulation dtype of x."""
        x, running_mean, running_var, weight = ctx.saved_tensors
        acc = accumulation_dtype(x.dtype)
        view = lambda vector: channel_view(vector, x.dim())  # noqa: E731
        invstd = torch.rsqrt(running_var.to(acc) + ctx.eps)
        xhat = (x.to(acc) - view(running_mean.to(acc))) * view(invstd)
        return x, weight, xhat, invstd, view

    @staticmethod
    def backward(ctx, dy):
        x, weight, xhat, invstd, view = BatchNormEval._normalized(ctx)
        dyf = dy.to(xhat.dtype)
        dims = reduction_axes(x)
        scale = invstd if weight is None else invstd * weight.to(xhat.dtype)
        dx = in_layout_of((dyf * view(scale)).to(x.dtype), x)
        needs_x, _, _, needs_weight, needs_bias, _ = ctx.needs_input_grad
        return (
            dx if needs_x else None,
            None,
            None,
            _grad_for((dyf * xhat).sum(dim=dims), _meta(weight), needs_weight),
            _grad_for(dyf.sum(dim=dims), ctx.bias, needs_bias),
            None,
        )

    @staticmethod
    def jvp(ctx, x_t, _mean_t, _var_t, weight_t, bias_t, _eps_t):
        """``y' = weight * invstd * x' + weight' * xhat + bias'``."""
        x, weight, xhat, invstd, view = BatchNormEval._normalized(ctx)
        x_part = None if x_t is None else x_t.to(xhat.dtype) * view(invstd)
        return _affine_tangent(x_part, xhat, weight, weight_t, bias_t, view).to(x.dtype)

    @staticmethod
    def vmap(info, in_dims, x, running_mean, running_var, weight, bias, eps):
        """As :meth:`BatchNormTrain.vmap`: vmapped copies become channels."""
        batch = info.batch_size
        x = _leading(x, in_dims[0], batch)
        channels = x.shape[2]
        vectors = [_folded_vector(v, bdim, batch)
                   for v, bdim in zip((running_mean, running_var, weight, bias), in_dims[1:5],
                                      strict=True)]
        y = BatchNormEval.apply(x.movedim(0, 1).flatten(1, 2), *vectors, eps)
        return y.unflatten(1, (batch, channels)), 1


def _rows(x: torch.Tensor, row_size: int) -> torch.Tensor:
    """``x`` as contiguous ``(M, row_size)`` rows (explicit M: the rows may be empty)."""
    return x.contiguous().reshape(x.numel() // row_size if row_size else 0, row_size)


def _as_input(dx_rows: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A row-wise input gradient in x's shape and memory format (as torch returns it)."""
    return in_layout_of(dx_rows.reshape(x.shape), x)


def _flat(parameter):
    return None if parameter is None else parameter.reshape(-1)


def _unbatched_parameters_or_outside(function, x, parameters, bdims, batch, apply_outside):
    """Run a row norm's vmap rule: parameters without a vmapped dimension go to ``function``;
    batched ones are applied by ``apply_outside(y, parameters)`` after a call without them."""
    if all(bdim is None for bdim in bdims):
        return function(*parameters)
    stacked = [_leading(p, bdim, batch) for p, bdim in zip(parameters, bdims, strict=True)]
    return apply_outside(function(*(None for _ in parameters)), stacked, x)


def _outside_affine(outputs, stacked, x):
    """``y * weight (+ bias)`` for ``(B, ...)`` outputs and ``(B, *trailing)`` parameters."""
    y, *stats = outputs
    for index, parameter in enumerate(stacked):
        if parameter is None:
            continue
        shape = (x.shape[0],) + (1,) * (x.dim() - parameter.dim()) + tuple(parameter.shape[1:])
        parameter = parameter.reshape(shape).to(y.dtype)
        y = y * parameter if index == 0 else y + parameter
    return (y, *stats)


class LayerNorm(torch.autograd.Function):
    """Layer norm over the trailing ``len(normalized_shape)`` dims.

    ``apply(x, normalized_shape, weight, bias, eps) -> (y, mean, rstd)``: weight/bias of
    ``normalized_shape`` or None; ``y`` contiguous, in x's dtype; mean and rstd ``(M,)`` per
    row of ``K = prod(normalized_shape)`` values, not differentiable.
    """

    @staticmethod
    def forward(x, normalized_shape, weight, bias, eps):
        rows = _rows(x, math.prod(normalized_shape))
        y, mean, rstd = backend_for(x).ln_forward(rows, _flat(weight), _flat(bias), eps)
        return y.reshape(x.shape), mean, rstd

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, normalized_shape, weight, bias, eps = inputs
        _save_with_statistics(ctx, x, weight, bias, output[1:], eps)
        ctx.row_size = math.prod(normalized_shape)

    @staticmethod
    def backward(ctx, dy, _grad_mean, _grad_rstd):
        x, weight, mean, rstd = ctx.saved_tensors
        rows, dy_rows = _rows(x, ctx.row_size), _rows(dy, ctx.row_size)
        backend = _backward_backend(x, dy)
        if torch.is_grad_enabled():  # double backward: stats recomputed from x, in the graph
            _, mean, rstd = _composite.ln_forward(rows, None, None, ctx.eps)
        dx, dweight, dbias = backend.ln_backward(dy_rows, rows, _flat(weight), mean, rstd)
        return _grads_of_x_weight_bias(ctx, _as_input(dx, x), dweight, dbias, weight)

    @staticmethod
    def jvp(ctx, x_t, _shape_t, weight_t, bias_t, _eps_t):
        """``y' = weight * rstd * P x' + weight' * xhat + bias'`` over each row."""
        x, weight, mean, rstd = ctx.saved_tensors
        rows = _rows(x, ctx.row_size)
        x_part = None
        if x_t is not None:
            x_part = backend_for(x, x_t).ln_backward(
                _rows(x_t, ctx.row_size), rows, None, mean, rstd)[0]
        xhat = (rows.to(mean.dtype) - mean[:, None]) * rstd[:, None]
        y_t = _affine_tangent(x_part, xhat, _flat(weight), _flat(weight_t), _flat(bias_t),
                              lambda vector: vector)
        return y_t.to(x.dtype).reshape(x.shape), None, None

    @staticmethod
    def vmap(info, in_dims, x, normalized_shape, weight, bias, eps):
        """The vmapped dimension is one more leading dimension: more rows."""
        batch = info.batch_size
        x = _leading(x, in_dims[0], batch)
        outputs = _unbatched_parameters_or_outside(
            lambda w, b: LayerNorm.apply(x, normalized_shape, w, b, eps),
            x, (weight, bias), in_dims[2:4], batch, _outside_affine)
        y, mean, rstd = outputs
        return (y, mean.unflatten(0, (batch, -1)), rstd.unflatten(0, (batch, -1))), (0, 0, 0)


class GroupNorm(torch.autograd.Function):
    """Group norm: ``apply(x, num_groups, weight, bias, eps) -> (y, mean, rstd)``, x
    ``(N, C, *spatial)``, weight/bias ``(C,)`` or None; mean and rstd ``(N * num_groups,)``,
    not differentiable. Composite on every device."""

    @staticmethod
    def forward(x, num_groups, weight, bias, eps):
        return _composite.gn_forward(x, num_groups, weight, bias, eps)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, num_groups, weight, bias, eps = inputs
        _save_with_statistics(ctx, x, weight, bias, output[1:], eps)
        ctx.num_groups = num_groups

    @staticmethod
    def backward(ctx, dy, _grad_mean, _grad_rstd):
        x, weight, mean, rstd = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: stats must depend on x for double backward
            _, mean, rstd = _composite.gn_forward(x, ctx.num_groups, None, None, ctx.eps)
        dx, dweight, dbias = _composite.gn_backward(dy, x, ctx.num_groups, weight, mean, rstd)
        return _grads_of_x_weight_bias(ctx, dx, dweight, dbias, weight)

    @staticmethod
    def jvp(ctx, x_t, _groups_t, weight_t, bias_t, _eps_t):
        """``y' = weight[c] * rstd * P x' + weight'[c] * xhat + bias'[c]`` over each group."""
        x, weight, mean, rstd = ctx.saved_tensors
        x_part = None
        if x_t is not None:
            x_part = _composite.gn_backward(x_t, x, ctx.num_groups, None, mean, rstd)[0]
        groups = x.reshape(x.shape[0] * ctx.num_groups, -1).to(mean.dtype)
        xhat = ((groups - mean[:, None]) * rstd[:, None]).reshape(x.shape)
        view = lambda vector: channel_view(vector, x.dim())  # noqa: E731
        y_t = _affine_tangent(x_part, xhat, weight, weight_t, bias_t, view)
        return in_layout_of(y_t.to(x.dtype), x), None, None

    @staticmethod
    def vmap(info, in_dims, x, num_groups, weight, bias, eps):
        """The vmapped copies become samples: ``(B, N, C, ...)`` is normalized as
        ``(B * N, C, ...)``."""
        batch = info.batch_size
        x = _leading(x, in_dims[0], batch)
        samples = x.shape[1]

        def group_norm(w, b):
            y, mean, rstd = GroupNorm.apply(x.flatten(0, 1), num_groups, w, b, eps)
            return y.unflatten(0, (batch, samples)), mean, rstd

        def outside(outputs, stacked, x):  # (B, C) parameters act on axis 2 of (B, N, C, ...)
            trailing = (1,) * (x.dim() - 3)
            channels = [None if p is None else p.reshape(batch, 1, -1, *trailing) for p in stacked]
            return _outside_affine(outputs, channels, x)

        y, mean, rstd = _unbatched_parameters_or_outside(
            group_norm, x, (weight, bias), in_dims[2:4], batch, outside)
        return (y, mean.unflatten(0, (batch, -1)), rstd.unflatten(0, (batch, -1))), (0, 0, 0)


class RMSNorm(torch.autograd.Function):
    """RMS norm over the trailing ``len(normalized_shape)`` dims:
    ``apply(x, normalized_shape, weight, eps) -> (y, rstd)``; weight of ``normalized_shape`` or
    None, eps a float; ``y`` in x's dtype and memory format, rstd ``(M,)`` not differentiable.
    Composite on every device; real or complex."""

    @staticmethod
    def forward(x, normalized_shape, weight, eps):
        y, rstd = _composite.rms_forward(_rows(x, math.prod(normalized_shape)), _flat(weight), eps)
        return _as_input(y, x), rstd

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, normalized_shape, weight, eps = inputs
        _save_with_statistics(ctx, x, weight, None, output[1:], eps)
        ctx.row_size = math.prod(normalized_shape)

    @staticmethod
    def backward(ctx, dy, _grad_rstd):
        x, weight, rstd = ctx.saved_tensors
        rows = _rows(x, ctx.row_size)
        if torch.is_grad_enabled():  # create_graph: rstd must depend on x for double backward
            _, rstd = _composite.rms_forward(rows, None, ctx.eps)
        dx, dweight = _composite.rms_backward(_rows(dy, ctx.row_size), rows, _flat(weight), rstd)
        needs_x, _, needs_weight, _ = ctx.needs_input_grad
        return (_as_input(dx, x) if needs_x else None, None,
                _grad_for(dweight, _meta(weight), needs_weight), None)

    @staticmethod
    def jvp(ctx, x_t, _shape_t, weight_t, _eps_t):
        """``y' = weight * rstd * P x' + weight' * xhat`` with ``P = I - xhat xhat^T / K``.
        The backward computes ``conj(J)^T``; ``J`` is symmetric, so ``J v = conj(J^H conj v)``.
        """
        x, weight, rstd = ctx.saved_tensors
        rows = _rows(x, ctx.row_size)
        x_part = None
        if x_t is not None:
            backward = _composite.rms_backward(_rows(x_t, ctx.row_size).conj(), rows, None, rstd)
            x_part = backward[0].conj()
        xhat = rows.to(rstd.dtype) * rstd[:, None]
        y_t = _affine_tangent(x_part, xhat, _flat(weight), _flat(weight_t), None,
                              lambda vector: vector)
        return _as_input(y_t.to(x.dtype), x), None

    @staticmethod
    def vmap(info, in_dims, x, normalized_shape, weight, eps):
        """The vmapped dimension is one more leading dimension: more rows."""
        batch = info.batch_size
        x = _leading(x, in_dims[0], batch)
        y, rstd = _unbatched_parameters_or_outside(
            lambda w: RMSNorm.apply(x, normalized_shape, w, eps),
            x, (weight,), in_dims[2:3], batch, _outside_affine)
        return (y, rstd.unflatten(0, (batch, -1))), (0, 0)


def _without_custom_jvp(function: type) -> type:
    """``function`` with torch's default ``jvp``: Dynamo refuses to trace a Function that
    defines its own (and a compiled graph has no forward-mode AD to call it)."""
    return type(function.__name__, (function,), {"jvp": staticmethod(torch.autograd.Function.jvp),
                                                 "__doc__": function.__doc__})


_BatchNormTrainCompiled = _without_custom_jvp(BatchNormTrain)
_BatchNormEvalCompiled = _without_custom_jvp(BatchNormEval)
_LayerNormCompiled = _without_custom_jvp(LayerNorm)
_GroupNormCompiled = _without_custom_jvp(GroupNorm)
_RMSNormCompiled = _without_custom_jvp(RMSNorm)


def _apply(function: type, compiled: type, args: tuple):
    """``function.apply(*args)``, or under ``torch.compile`` its twin without a custom jvp."""
    return (compiled if torch.compiler.is_compiling() else function).apply(*args)


def batch_norm_train(x, weight, bias, eps):
    """:class:`BatchNormTrain` applied: ``(y, mean, var)``."""
    return _apply(BatchNormTrain, _BatchNormTrainCompiled, (x, weight, bias, eps))


def batch_norm_eval(x, running_mean, running_var, weight, bias, eps):
    """:class:`BatchNormEval` applied: ``y``."""
    args = (x, running_mean, running_var, weight, bias, eps)
    return _apply(BatchNormEval, _BatchNormEvalCompiled, args)


def layer_norm(x, normalized_shape, weight, bias, eps):
    """:class:`LayerNorm` applied: ``(y, mean, rstd)``."""
    return _apply(LayerNorm, _LayerNormCompiled, (x, normalized_shape, weight, bias, eps))


def group_norm(x, num_groups, weight, bias, eps):
    """:class:`GroupNorm` applied: ``(y, mean, rstd)``."""
    return _apply(GroupNorm, _GroupNormCompiled, (x, num_groups, weight, bias, eps))


def rms_norm(x, normalized_shape, weight, eps):
    """:class:`RMSNorm` applied: ``(y, rstd)``."""
    return _apply(RMSNorm, _RMSNormCompiled, (x, normalized_shape, weight, eps))
