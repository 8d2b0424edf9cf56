"""Functional normalisations with the signatures, checks and error messages of
``torch.nn.functional``; the maths is bnlib's own (``bnlib.torch._autograd``).

Deliberate differences from torch 2.13

* Statistics are two-pass and shifted (see ``bnlib.torch._composite``), so float32 batch norm
  of a channel with mean 1e3 and std 0.1 stays within 5e-4 of float64 maths where torch's
  float32 kernel is off by about 1e-3.
* ``batch_norm`` of an input with fewer than 2 dimensions raises
  ``ValueError: batch_norm expected input with at least 2 dimensions (got 1D input)`` where torch
  raises an ``IndexError`` or a misleading channel-count error.
* ``layer_norm`` also accepts an int ``normalized_shape`` (torch's functional form raises a
  ``TypeError``; its module converts the int, as bnlib does everywhere).
* The dtype rules of torch's CPU kernels (and their ``mixed dtype (CPU)`` messages) apply on
  every device.
"""

import math
import numbers

import torch

from bnlib.torch import _autograd
from bnlib.torch._composite import memory_format_of

__all__ = ["batch_norm", "group_norm", "layer_norm", "rms_norm"]

# Names ATen prints for dtypes in "not implemented for '...'" errors.
_SCALAR_TYPE_NAMES = {
    torch.bool: "Bool",
    torch.uint8: "Byte",
    torch.int8: "Char",
    torch.int16: "Short",
    torch.int32: "Int",
    torch.int64: "Long",
    torch.complex64: "ComplexFloat",
    torch.complex128: "ComplexDouble",
}
_REDUCED_FLOATS = (torch.float16, torch.bfloat16)


def _check_floating(input: torch.Tensor, kernel_name: str) -> None:
    """NotImplementedError, as ATen raises it, for integer, bool and complex input."""
    if not input.is_floating_point():
        name = _SCALAR_TYPE_NAMES.get(input.dtype, str(input.dtype))
        raise NotImplementedError(f"\"{kernel_name}\" not implemented for '{name}'")


def _check_mixed_dtype(input: torch.Tensor, *parameters: torch.Tensor | None) -> None:
    """Parameters share the input's dtype, or are float32 for float16/bfloat16 input."""
    defined = [p for p in parameters if p is not None]
    if all(p.dtype == input.dtype for p in defined):
        return
    if any(p.dtype != torch.float32 for p in defined):
        raise RuntimeError("mixed dtype (CPU): expect parameter to have scalar type of Float")
    if input.dtype not in _REDUCED_FLOATS:
        raise RuntimeError("mixed dtype (CPU): all inputs must share same datatype.")


def _verify_batch_size(size: list[int] | torch.Size) -> None:
    """ValueError when each channel would hold a single value (variance undefined)."""
    values_per_channel = size[0] * math.prod(size[2:])
    if values_per_channel == 1:
        raise ValueError(
            f"Expected more than 1 value per channel when training, got input size {size}"
        )


def _check_channel_counts(input: torch.Tensor, **vectors: torch.Tensor | None) -> None:
    """RuntimeError when a per-channel vector does not have ``C = input.shape[1]`` elements."""
    channels = input.shape[1]
    for name, vector in vectors.items():
        if vector is not None and vector.numel() != channels:
            raise RuntimeError(f"{name} should contain {channels} elements not {vector.numel()}")


def _check_running_stats(running_mean, running_var, training: bool) -> None:
    """Training takes both running statistics or neither; eval needs both."""
    if training:
        if (running_mean is None) != (running_var is None):
            raise ValueError(
                "running_mean and running_var must either both be None or neither be None"
            )
        return
    for name, stat in (("running_mean", running_mean), ("running_var", running_var)):
        if stat is None:
            raise RuntimeError(f"{name} must be defined in evaluation mode")


@torch.no_grad()
def _update_running_stats(running_mean, running_var, mean, var, count: int, momentum: float):
    """``r <- (1 - momentum) * r + momentum * s`` with the unbiased variance
    ``var * count / (count - 1)``; an empty batch (count 0) leaves the buffers unchanged."""
    if count == 0:
        return
    unbiased_var = var * (count / (count - 1))
    running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
    running_var.mul_(1 - momentum).add_(unbiased_var.to(running_var.dtype), alpha=momentum)


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
    """Batch normalisation over every axis of ``input`` except the channel axis 1.

    input: ``(N, C, *spatial)`` float16/bfloat16/float32/float64, any memory format.
    running_mean, running_var: ``(C,)`` or None; updated in place when ``training``.
    weight, bias: ``(C,)`` or None. Returns ``y`` in input's dtype and memory format::

        training:  y = (x - mean_B) / sqrt(var_B + eps) * weight + bias    (biased var_B)
                   r <- (1 - momentum) * r + momentum * s  (unbiased var_B for running_var)
        eval:      y = (x - running_mean) / sqrt(running_var + eps) * weight + bias
    """
    if input.dim() < 2:
        raise ValueError(
            f"batch_norm expected input with at least 2 dimensions (got {input.dim()}D input)"
        )
    if training:
        _verify_batch_size(input.size())
    if training and eps <= 0.0:
        raise ValueError(f"batch_norm eps must be positive during training, but got {eps}")
    if eps < 0.0:
        raise ValueError(f"batch_norm eps must be non-negative, but got {eps}")
    _check_floating(input, "batch_norm")
    _check_channel_counts(
        input, running_mean=running_mean, running_var=running_var, weight=weight, bias=bias
    )
    _check_running_stats(running_mean, running_var, training)
    _check_mixed_dtype(input, weight, bias, running_mean, running_var)
    if not training:
        return _autograd.BatchNormEval.apply(input, running_mean, running_var, weight, bias, eps)
    output, mean, var = _autograd.BatchNormTrain.apply(input, weight, bias, eps)
    if running_mean is not None:
        count = input.numel() // input.shape[1] if input.shape[1] else 0
        _update_running_stats(running_mean, running_var, mean, var, count, momentum)
    return output


def _as_shape(normalized_shape) -> tuple[int, ...]:
    """``normalized_shape`` as a tuple; an int ``n`` becomes ``(n,)``."""
    if isinstance(normalized_shape, numbers.Integral):
        return (int(normalized_shape),)
    return tuple(normalized_shape)


def _check_normalized_shape(input, shape, weight, bias, star: str) -> None:
    """torch's checks of ``normalized_shape`` against the parameters and the input's tail.

    ``star`` is what torch prints before the dims: ``"*, "`` for layer norm, ``"*"`` for RMS.
    """
    if len(shape) == 0:
        raise RuntimeError(
            "Expected normalized_shape to be at least 1-dimensional, i.e., containing at least "
            "one element, but got normalized_shape = []"
        )
    for name, parameter in (("weight", weight), ("bias", bias)):
        if parameter is not None and tuple(parameter.shape) != shape:
            raise RuntimeError(
                f"Expected {name} to be of same shape as normalized_shape, but got {name} of "
                f"shape {list(parameter.shape)} and normalized_shape = {list(shape)}"
            )
    if input.dim() < len(shape) or tuple(input.shape[input.dim() - len(shape) :]) != shape:
        dims = ", ".join(str(size) for size in shape)
        raise RuntimeError(
            f"Given normalized_shape={list(shape)}, expected input with shape [{star}{dims}], "
            f"but got input of size{list(input.shape)}"
        )


def _rows(input: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """``input`` as contiguous ``(M, K)`` rows, ``K = prod(shape)`` (explicit M: K may be 0)."""
    leading = math.prod(input.shape[: input.dim() - len(shape)])
    return input.contiguous().reshape(leading, math.prod(shape))


def _flat(parameter: torch.Tensor | None) -> torch.Tensor | None:
    """A ``normalized_shape`` parameter as the ``(K,)`` vector the row kernels take."""
    return None if parameter is None else parameter.reshape(-1)


def layer_norm(
    input: torch.Tensor,
    normalized_shape,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Layer normalisation over the trailing ``normalized_shape`` dims of ``input``.

    input: ``(*, *normalized_shape)``; weight, bias: ``normalized_shape`` or None.
    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` with the biased variance of each
    row of ``K = prod(normalized_shape)`` values; output in input's dtype, contiguous.
    """
    shape = _as_shape(normalized_shape)
    _check_normalized_shape(input, shape, weight, bias, star="*, ")
    _check_floating(input, "LayerNormKernelImpl")
    _check_mixed_dtype(input, weight, bias)
    output = _autograd.LayerNorm.apply(_rows(input, shape), _flat(weight), _flat(bias), eps)
    return output.reshape(input.shape)


def group_norm(
    input: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Group normalisation: the ``C`` channels are split into ``num_groups`` groups and each
    (sample, group) is normalised over its ``C / num_groups * prod(spatial)`` values.

    input: ``(N, C, *spatial)``; weight, bias: ``(C,)`` or None.
    ``y = (x - mean_ng) / sqrt(var_ng + eps) * weight[c] + bias[c]``; output in input's dtype
    and memory format.
    """
    if input.dim() < 2:
        raise RuntimeError(
            f"Expected at least 2 dimensions for input tensor but received {input.dim()}"
        )
    batch, channels = input.shape[:2]
    _verify_batch_size([batch * channels // num_groups, num_groups] + list(input.shape[2:]))
    if channels % num_groups != 0:
        raise RuntimeError(
            "Expected number of channels in input to be divisible by num_groups, but got input "
            f"of shape {list(input.shape)} and num_groups={num_groups}"
        )
    for name, parameter in (("weight", weight), ("bias", bias)):
        if parameter is not None and (parameter.dim() != 1 or parameter.numel() != channels):
            raise RuntimeError(
                f"Expected {name} to be a vector of size equal to the number of channels in "
                f"input, but got {name} of shape {list(parameter.shape)} and input of shape "
                f"{list(input.shape)}"
            )
    _check_floating(input, "GroupNormKernelImpl")
    _check_mixed_dtype(input, weight, bias)
    return _autograd.GroupNorm.apply(input, num_groups, weight, bias, eps)


def rms_norm(
    input: torch.Tensor,
    normalized_shape,
    weight: torch.Tensor | None = None,
    eps: float | None = None,
) -> torch.Tensor:
    """Root-mean-square normalisation over the trailing ``normalized_shape`` dims.

    input: ``(*, *normalized_shape)``; weight: ``normalized_shape`` or None.
    ``y = x / sqrt(mean(x**2) + eps) * weight``; ``eps=None`` means the machine epsilon of the
    accumulation dtype (float32 for float16/bfloat16 input). Output in input's dtype and
    memory format.
    """
    shape = _as_shape(normalized_shape)
    _check_normalized_shape(input, shape, weight, None, star="*")
    _check_floating(input, "rms_norm")
    if eps is None:
        eps = torch.finfo(torch.float64 if input.dtype == torch.float64 else torch.float32).eps
    output = _autograd.RMSNorm.apply(_rows(input, shape), _flat(weight), eps).reshape(input.shape)
    return output.contiguous(memory_format=memory_format_of(input))
