"""Functional normalizations with the signatures, checks and error messages of
``torch.nn.functional``; the checks are :mod:`bnlib.torch.validation`, the maths is bnlib's own
(:mod:`bnlib.torch._autograd`).

Like torch's, each function lets ``__torch_function__`` overrides (fx proxies, tensor
subclasses, modes) intercept it, so ``torch.fx.symbolic_trace`` records one node per call.

Deliberate differences from torch 2.13

* Statistics are two-pass around a pivot (see ``bnlib.torch._composite``), so float32 batch norm
  of a channel with mean 1e3 and std 0.1 stays within 5e-4 of float64 maths where torch's
  float32 kernel is off by about 1e-3.
* ``batch_norm`` of a non-empty input with fewer than 2 dimensions raises
  ``ValueError: batch_norm expected input with at least 2 dimensions (got 1D input)`` where torch
  raises an ``IndexError`` or a misleading channel-count error.
* ``layer_norm`` and ``rms_norm`` also accept an int ``normalized_shape`` (torch's functional
  forms raise a ``TypeError``; its modules convert the int, as bnlib does everywhere).
* The dtype rules of torch's CPU kernels (and their ``mixed dtype (CPU)`` messages) apply on
  every device.
"""

import numbers

import torch

from bnlib.torch import _autograd, validation
from bnlib.torch.helpers import overridable

__all__ = ["batch_norm", "group_norm", "instance_norm", "layer_norm", "rms_norm"]


@torch.no_grad()
def _update_running_stats(running_mean, running_var, mean, var, count: int, momentum: float):
    """``r <- (1 - momentum) * r + momentum * s`` with the unbiased variance
    ``var * count / (count - 1)``."""
    unbiased_var = var * (count / (count - 1))
    running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
    running_var.mul_(1 - momentum).add_(unbiased_var.to(running_var.dtype), alpha=momentum)


def _empty_batch_norm(input, weight, bias):
    """torch's result for an empty input: a copy scaled and shifted by the first parameter
    values, so that the (empty) output stays connected to the parameters' gradients."""
    output = input.clone()
    if weight is not None:
        output = output * weight[0]
    if bias is not None:
        output = output + bias[0]
    return output


def _batch_norm_kernel(input, running_mean, running_var, weight, bias, training, momentum, eps):
    """Checked batch norm of a non-empty input."""
    validation.check_batch_norm_kernel(input, running_mean, running_var, weight, bias, training)
    if not training:
        return _autograd.batch_norm_eval(input, running_mean, running_var, weight, bias, eps)
    output, mean, var = _autograd.batch_norm_train(input, weight, bias, eps)
    if running_mean is not None:
        validation.check_running_stats_batched(mean, running_mean)
        count = input.numel() // input.shape[1]
        _update_running_stats(running_mean, running_var, mean, var, count, momentum)
    return output


@overridable
def batch_norm(
    input: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Batch normalization over every axis of ``input`` except the channel axis 1.

    input: ``(N, C, *spatial)`` float16/bfloat16/float32/float64, any memory format.
    running_mean, running_var: ``(C,)`` or None; updated in place when ``training``.
    weight, bias: ``(C,)`` or None. Returns ``y`` in input's dtype and memory format::

        training:  y = (x - mean_B) / sqrt(var_B + eps) * weight + bias    (biased var_B)
                   r <- (1 - momentum) * r + momentum * s  (unbiased var_B for running_var)
        eval:      y = (x - running_mean) / sqrt(running_var + eps) * weight + bias
    """
    validation.check_batch_norm(input, running_mean, running_var, weight, bias, training, eps)
    if input.numel() == 0:
        return _empty_batch_norm(input, weight, bias)
    return _batch_norm_kernel(
        input, running_mean, running_var, weight, bias, training, momentum, eps)


def _per_instance(vector: torch.Tensor | None, samples: int) -> torch.Tensor | None:
    """A ``(C,)`` vector repeated for each of ``samples`` samples: ``(samples * C,)``."""
    return None if vector is None else vector.repeat(samples)


@overridable
def instance_norm(
    input: torch.Tensor,
    running_mean: torch.Tensor | None = None,
    running_var: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    use_input_stats: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Instance normalization: each (sample, channel) of ``(N, C, *spatial)`` is normalized
    over its ``prod(spatial)`` values.

    As in torch, this is batch norm of the input seen as ``(1, N * C, *spatial)``, with the
    per-channel vectors repeated ``N`` times (so channel-count errors count ``N * C``); the
    running statistics, when given, move towards the average over the samples. With
    ``use_input_stats=False`` the running statistics normalize instead. Output: contiguous, in
    input's dtype.
    """
    validation.check_instance_norm(
        input, running_mean, running_var, weight, bias, use_input_stats)
    if input.numel() == 0:
        return _empty_batch_norm(input, weight, bias)
    samples = input.shape[0]
    folded = input.contiguous().reshape(1, -1, *input.shape[2:])
    vectors = [_per_instance(v, samples) for v in (running_mean, running_var, weight, bias)]
    output = _batch_norm_kernel(folded, *vectors, use_input_stats, momentum, eps)
    if running_mean is not None and use_input_stats:
        _copy_averaged(running_mean, vectors[0], samples)
        _copy_averaged(running_var, vectors[1], samples)
    return output.reshape(input.shape)


@torch.no_grad()
def _copy_averaged(running: torch.Tensor, repeated: torch.Tensor, samples: int) -> None:
    """Store in ``running`` the average over samples of its repeated, updated copy."""
    running.copy_(repeated.reshape(samples, -1).mean(0))


def _as_shape(normalized_shape) -> tuple[int, ...]:
    """``normalized_shape`` as a tuple; an int ``n`` becomes ``(n,)``."""
    if isinstance(normalized_shape, numbers.Integral):
        return (int(normalized_shape),)
    return tuple(normalized_shape)


@overridable
def layer_norm(
    input: torch.Tensor,
    normalized_shape,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Layer normalization over the trailing ``normalized_shape`` dims of ``input``.

    input: ``(*, *normalized_shape)``; weight, bias: ``normalized_shape`` or None.
    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` with the biased variance of each
    row of ``K = prod(normalized_shape)`` values; output in input's dtype, contiguous.
    """
    shape = _as_shape(normalized_shape)
    validation.check_layer_norm(input, shape, weight, bias)
    return _autograd.layer_norm(input, shape, weight, bias, eps)[0]


@overridable
def group_norm(
    input: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Group normalization: the ``C`` channels are split into ``num_groups`` groups and each
    (sample, group) is normalized over its ``C / num_groups * prod(spatial)`` values.

    input: ``(N, C, *spatial)``; weight, bias: ``(C,)`` or None.
    ``y = (x - mean_ng) / sqrt(var_ng + eps) * weight[c] + bias[c]``; output in input's dtype
    and memory format.
    """
    validation.check_group_norm(input, num_groups, weight, bias)
    return _autograd.group_norm(input, num_groups, weight, bias, eps)[0]


@overridable
def rms_norm(
    input: torch.Tensor,
    normalized_shape,
    weight: torch.Tensor | None = None,
    eps: float | None = None,
) -> torch.Tensor:
    """Root-mean-square normalization over the trailing ``normalized_shape`` dims.

    input: ``(*, *normalized_shape)``, real or complex; weight: ``normalized_shape`` or None.
    ``y = x / sqrt(mean(x**2) + eps) * weight``; ``eps=None`` means the machine epsilon of the
    accumulation dtype (float32 for float16/bfloat16 input). Output in input's dtype and
    memory format.
    """
    shape = _as_shape(normalized_shape)
    validation.check_rms_norm(input, shape, weight)
    if eps is None:
        eps = torch.finfo(torch.float64 if input.dtype in (torch.float64, torch.complex128)
                          else torch.float32).eps
    return _autograd.rms_norm(input, shape, weight, eps)[0]
