"""One ``torch.autograd.Function`` per normalisation, each with a closed-form backward.

The forward and the first-order backward run on the backend chosen by
``bnlib.torch._dispatch`` (fused Triton kernels or composite torch ops). When autograd asks for
a differentiable backward (``create_graph=True``, e.g. for ``gradgradcheck``), the statistics
are recomputed from the saved input with composite torch ops and the same closed-form backward
is evaluated with them, so autograd can differentiate it once more.

The Functions expect validated arguments; ``bnlib.torch.functional`` checks them first.
"""

import torch

from bnlib.torch import _composite
from bnlib.torch._dispatch import backend_for

__all__ = ["BatchNormEval", "BatchNormTrain", "GroupNorm", "LayerNorm", "RMSNorm"]


def _dtype_of(tensor):
    """``tensor.dtype``, or None for a missing optional parameter."""
    return None if tensor is None else tensor.dtype


def _grad_for(grad, dtype, needed: bool):
    """``grad`` cast to the parameter's ``dtype`` when autograd needs it, else None."""
    if not needed or dtype is None:
        return None
    return grad.to(dtype)


class BatchNormTrain(torch.autograd.Function):
    """Batch norm with batch statistics.

    ``apply(x, weight, bias, eps) -> (y, mean, var)``: x ``(N, C, *spatial)``, weight/bias
    ``(C,)`` or None; mean and the biased var are ``(C,)`` float32/64 and carry no gradient.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        backend = backend_for(x)
        y, mean, var = backend.bn_forward_train(x, weight, bias, eps)
        invstd = torch.rsqrt(var + eps)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.backend, ctx.eps, ctx.bias_dtype = backend, eps, _dtype_of(bias)
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx, dy, _grad_mean, _grad_var):
        x, weight, mean, invstd = ctx.saved_tensors
        backend = ctx.backend
        if torch.is_grad_enabled():  # create_graph: stats must depend on x for double backward
            _, mean, var = _composite.bn_forward_train(x, None, None, ctx.eps)
            invstd = torch.rsqrt(var + ctx.eps)
            backend = _composite
        dx, dweight, dbias = backend.bn_backward_train(dy, x, weight, mean, invstd)
        needs_x, needs_weight, needs_bias, _ = ctx.needs_input_grad
        return (
            dx if needs_x else None,
            _grad_for(dweight, _dtype_of(weight), needs_weight),
            _grad_for(dbias, ctx.bias_dtype, needs_bias),
            None,
        )


class BatchNormEval(torch.autograd.Function):
    """Batch norm with stored statistics.

    ``apply(x, running_mean, running_var, weight, bias, eps) -> y`` with
    ``y = (x - rm) * invstd * weight + bias``, ``invstd = 1/sqrt(rv + eps)``. Backward:
    ``dx = dy * weight * invstd``, ``dweight = sum(dy * xhat)``, ``dbias = sum(dy)``; the
    running statistics get no gradient.
    """

    @staticmethod
    def forward(ctx, x, running_mean, running_var, weight, bias, eps):
        y = backend_for(x).bn_forward_eval(x, running_mean, running_var, weight, bias, eps)
        ctx.save_for_backward(x, running_mean, running_var, weight)
        ctx.eps, ctx.bias_dtype = eps, _dtype_of(bias)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, running_mean, running_var, weight = ctx.saved_tensors
        acc = _composite.accumulation_dtype(x.dtype)
        view = (1, -1) + (1,) * (x.dim() - 2)
        invstd = torch.rsqrt(running_var.to(acc) + ctx.eps)
        dyf = dy.to(acc)
        dims = [0] + list(range(2, x.dim()))
        xhat = (x.to(acc) - running_mean.to(acc).reshape(view)) * invstd.reshape(view)
        scale = invstd if weight is None else invstd * weight.to(acc)
        dx = (dyf * scale.reshape(view)).to(x.dtype)
        needs_x, _, _, needs_weight, needs_bias, _ = ctx.needs_input_grad
        return (
            dx if needs_x else None,
            None,
            None,
            _grad_for((dyf * xhat).sum(dim=dims), _dtype_of(weight), needs_weight),
            _grad_for(dyf.sum(dim=dims), ctx.bias_dtype, needs_bias),
            None,
        )


class LayerNorm(torch.autograd.Function):
    """Row-wise layer norm: ``apply(x, weight, bias, eps) -> y``, x ``(M, K)`` contiguous,
    weight/bias ``(K,)`` or None."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        backend = backend_for(x)
        y, mean, rstd = backend.ln_forward(x, weight, bias, eps)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.backend, ctx.eps, ctx.bias_dtype = backend, eps, _dtype_of(bias)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, mean, rstd = ctx.saved_tensors
        backend = ctx.backend
        if torch.is_grad_enabled():  # create_graph: stats must depend on x for double backward
            _, mean, rstd = _composite.ln_forward(x, None, None, ctx.eps)
            backend = _composite
        dx, dweight, dbias = backend.ln_backward(dy.contiguous(), x, weight, mean, rstd)
        needs_x, needs_weight, needs_bias, _ = ctx.needs_input_grad
        if needs_bias and dbias is None:  # a backend may skip dbias when there is no weight
            dbias = dy.to(mean.dtype).sum(dim=0)
        return (
            dx if needs_x else None,
            _grad_for(dweight, _dtype_of(weight), needs_weight),
            _grad_for(dbias, ctx.bias_dtype, needs_bias),
            None,
        )


class GroupNorm(torch.autograd.Function):
    """Group norm: ``apply(x, num_groups, weight, bias, eps) -> y``, x ``(N, C, *spatial)``,
    weight/bias ``(C,)`` or None. Composite on every device."""

    @staticmethod
    def forward(ctx, x, num_groups, weight, bias, eps):
        y, mean, rstd = _composite.gn_forward(x, num_groups, weight, bias, eps)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.num_groups, ctx.eps, ctx.bias_dtype = num_groups, eps, _dtype_of(bias)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, mean, rstd = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: stats must depend on x for double backward
            _, mean, rstd = _composite.gn_forward(x, ctx.num_groups, None, None, ctx.eps)
        dx, dweight, dbias = _composite.gn_backward(dy, x, ctx.num_groups, weight, mean, rstd)
        needs_x, _, needs_weight, needs_bias, _ = ctx.needs_input_grad
        return (
            dx if needs_x else None,
            None,
            _grad_for(dweight, _dtype_of(weight), needs_weight),
            _grad_for(dbias, ctx.bias_dtype, needs_bias),
            None,
        )


class RMSNorm(torch.autograd.Function):
    """Row-wise RMS norm: ``apply(x, weight, eps) -> y``, x ``(M, K)`` contiguous, weight
    ``(K,)`` or None, eps a float. Composite on every device."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        y, rstd = _composite.rms_forward(x, weight, eps)
        ctx.save_for_backward(x, weight, rstd)
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, rstd = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: rstd must depend on x for double backward
            _, rstd = _composite.rms_forward(x, None, ctx.eps)
        dx, dweight = _composite.rms_backward(dy, x, weight, rstd)
        needs_x, needs_weight, _ = ctx.needs_input_grad
        return dx if needs_x else None, _grad_for(dweight, _dtype_of(weight), needs_weight), None
