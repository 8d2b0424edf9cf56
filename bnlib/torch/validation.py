"""Every argument check of ``bnlib.torch``, with the error types and messages of torch 2.13.

The functional ops (``bnlib.torch.functional``) and the modules (``bnlib.torch.modules``)
call these before any computation, in the order torch checks, so that a wrong call fails the
way it fails in ``torch.nn``. The last section checks the arguments of the backend functions
(``bnlib.torch._triton``), which have no torch counterpart.

The module-level rank checks are :func:`~bnlib.torch.helpers.overridable`: under
``torch.fx.symbolic_trace`` they become nodes of the graph and run when it runs.

Deliberate difference: ``batch_norm`` of a non-empty input with fewer than 2 dimensions raises
``ValueError: batch_norm expected input with at least 2 dimensions (got 1D input)``, where
torch raises an ``IndexError`` or a channel-count error that names 0 channels.
"""

import math
import warnings

import torch
from torch._C._functorch import is_batchedtensor

from bnlib.torch.helpers import overridable

__all__ = [
    "check_batch_norm",
    "check_group_norm",
    "check_input_dims",
    "check_instance_norm",
    "check_instance_norm_module",
    "check_kernel_grad_output",
    "check_kernel_input",
    "check_kernel_rows",
    "check_kernel_vector",
    "check_layer_norm",
    "check_rms_norm",
    "check_running_stats_batched",
    "check_sync_batch_norm_input",
    "check_tensor_arguments",
    "verify_batch_size",
    "verify_spatial_size",
]

# Positional arguments of the ATen ops behind each functional op: torch's TypeError for a
# non-tensor argument counts positions in these signatures, not in torch.nn.functional's.
ATEN_TENSOR_ARGUMENTS = {
    "batch_norm": ("input", "weight", "bias", "running_mean", "running_var"),
    "instance_norm": ("input", "weight", "bias", "running_mean", "running_var"),
    "layer_norm": ("input", "normalized_shape", "weight", "bias"),
    "group_norm": ("input", "num_groups", "weight", "bias"),
    "rms_norm": ("input", "normalized_shape", "weight"),
}

# Names ATen prints for dtypes in "not implemented for '...'" errors.
SCALAR_TYPE_NAMES = {
    torch.bool: "Bool",
    torch.uint8: "Byte",
    torch.int8: "Char",
    torch.int16: "Short",
    torch.int32: "Int",
    torch.int64: "Long",
    torch.complex64: "ComplexFloat",
    torch.complex128: "ComplexDouble",
}
REDUCED_FLOATS = (torch.float16, torch.bfloat16)


# ---------------------------------------------------------------------------------------------
# shared by several ops


def check_tensor_arguments(op: str, **arguments) -> None:
    """TypeError for an argument that is neither a tensor nor None (``input`` must be a tensor)."""
    positions = ATEN_TENSOR_ARGUMENTS[op]
    for name, value in arguments.items():
        if isinstance(value, torch.Tensor) or (value is None and name != "input"):
            continue
        raise TypeError(
            f"{op}(): argument '{name}' (position {positions.index(name) + 1}) must be Tensor, "
            f"not {type(value).__name__}"
        )


def check_floating(input: torch.Tensor, kernel_name: str, complex_ok: bool = False) -> None:
    """NotImplementedError, as ATen raises it, for integer, bool and (unless allowed) complex."""
    if input.is_floating_point() or (complex_ok and input.is_complex()):
        return
    name = SCALAR_TYPE_NAMES.get(input.dtype, str(input.dtype))
    raise NotImplementedError(f"\"{kernel_name}\" not implemented for '{name}'")


def check_mixed_dtype(input: torch.Tensor, *parameters: torch.Tensor | None) -> None:
    """Parameters share the input's dtype, or are float32 for float16/bfloat16 input."""
    defined = [p for p in parameters if p is not None]
    if all(p.dtype == input.dtype for p in defined):
        return
    if any(p.dtype != torch.float32 for p in defined):
        raise RuntimeError("mixed dtype (CPU): expect parameter to have scalar type of Float")
    if input.dtype not in REDUCED_FLOATS:
        raise RuntimeError("mixed dtype (CPU): all inputs must share same datatype.")


def verify_batch_size(size) -> None:
    """ValueError when each channel would hold a single value (variance undefined)."""
    if size[0] * math.prod(size[2:]) == 1:
        raise ValueError(
            f"Expected more than 1 value per channel when training, got input size {size}"
        )


def verify_spatial_size(size) -> None:
    """ValueError when each (sample, channel) would hold a single value (instance norm)."""
    if math.prod(size[2:]) == 1:
        raise ValueError(
            f"Expected more than 1 spatial element when training, got input size {size}"
        )


# ---------------------------------------------------------------------------------------------
# batch and instance norm


def _check_eps(eps: float, training: bool) -> None:
    if training and eps <= 0.0:
        raise ValueError(f"batch_norm eps must be positive during training, but got {eps}")
    if eps < 0.0:
        raise ValueError(f"batch_norm eps must be non-negative, but got {eps}")


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


def check_batch_norm(input, running_mean, running_var, weight, bias, training, eps) -> None:
    """The checks of ``F.batch_norm`` that come before the empty-input shortcut."""
    check_tensor_arguments(
        "batch_norm", input=input, weight=weight, bias=bias, running_mean=running_mean,
        running_var=running_var,
    )
    if training:
        verify_batch_size(input.size())
    _check_eps(eps, training)


def check_batch_norm_kernel(input, running_mean, running_var, weight, bias, training) -> None:
    """The checks of the batch-norm kernel itself (skipped by torch for empty input)."""
    if input.dim() < 2:
        raise ValueError(
            f"batch_norm expected input with at least 2 dimensions (got {input.dim()}D input)"
        )
    check_floating(input, "batch_norm")
    _check_channel_counts(
        input, running_mean=running_mean, running_var=running_var, weight=weight, bias=bias
    )
    _check_running_stats(running_mean, running_var, training)
    check_mixed_dtype(input, weight, bias, running_mean, running_var)


def check_running_stats_batched(batch_statistic, running_statistic) -> None:
    """Under ``torch.func.vmap``, running statistics updated in place must be batched as well."""
    if is_batchedtensor(batch_statistic) and not is_batchedtensor(running_statistic):
        raise RuntimeError(
            "Batch norm got a batched tensor as input while the running_mean or running_var, "
            "which will be updated in place, were not batched.\nIf you are using a module and "
            "do not need eval mode, please set `track_running_stats` to be False.If you are "
            "using a prebuilt module and do not need eval mode, please see the functorch "
            "website for resources on how to patch your module to work with vmap"
        )


def check_instance_norm(input, running_mean, running_var, weight, bias, use_input_stats) -> None:
    """The checks of ``F.instance_norm`` before it becomes a batch norm of ``N * C`` channels."""
    check_tensor_arguments(
        "instance_norm", input=input, weight=weight, bias=bias, running_mean=running_mean,
        running_var=running_var,
    )
    if use_input_stats:
        verify_spatial_size(input.size())
    elif running_mean is None or running_var is None:
        raise RuntimeError(
            "Expected running_mean and running_var to be defined when use_input_stats is false"
        )


def _dims_text(dims: tuple[int, ...]) -> str:
    return " or ".join(f"{d}D" for d in dims)


@overridable
def check_input_dims(input: torch.Tensor, dims: tuple[int, ...]) -> None:
    """The rank check of the batch- and instance-norm modules: ``dims`` are the ranks allowed."""
    if input.dim() not in dims:
        raise ValueError(f"expected {_dims_text(dims)} input (got {input.dim()}D input)")


@overridable
def check_sync_batch_norm_input(input: torch.Tensor) -> None:
    """SyncBatchNorm takes any rank from 2 and at least one channel."""
    if input.dim() < 2:
        raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")
    if input.size(1) == 0:
        raise ValueError("SyncBatchNorm number of input channels should be non-zero")


@overridable
def check_instance_norm_module(input, no_batch_dim: int, num_features: int, affine: bool):
    """The instance-norm modules' checks: rank, then the channel count (an error with affine
    parameters, a warning without, as the count is then unused)."""
    check_input_dims(input, (no_batch_dim, no_batch_dim + 1))
    feature_dim = input.dim() - no_batch_dim
    if input.size(feature_dim) == num_features:
        return
    if affine:
        raise ValueError(
            f"expected input's size at dim={feature_dim} to match num_features"
            f" ({num_features}), but got: {input.size(feature_dim)}."
        )
    warnings.warn(
        f"input's size at dim={feature_dim} does not match num_features. You can silence this "
        "warning by not passing in num_features, which is not used because affine=False",
        stacklevel=3,
    )


# ---------------------------------------------------------------------------------------------
# layer, RMS and group norm


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


def check_layer_norm(input, shape: tuple[int, ...], weight, bias) -> None:
    """``F.layer_norm``'s checks: argument types, shapes, then dtypes (parameters first)."""
    check_tensor_arguments("layer_norm", input=input, weight=weight, bias=bias)
    _check_normalized_shape(input, shape, weight, bias, star="*, ")
    check_mixed_dtype(input, weight, bias)
    check_floating(input, "LayerNormKernelImpl")


def check_rms_norm(input, shape: tuple[int, ...], weight) -> None:
    """``F.rms_norm``'s checks; complex input is allowed, as in torch."""
    check_tensor_arguments("rms_norm", input=input, weight=weight)
    if len(shape) and input.dim() == 0:
        raise ValueError("Input tensor must have at least 1 dimensions, but got 0")
    _check_normalized_shape(input, shape, weight, None, star="*")
    check_floating(input, "rms_norm", complex_ok=True)


def check_group_norm(input, num_groups: int, weight, bias) -> None:
    """``F.group_norm``'s checks: rank, group size, divisibility, parameters, dtypes."""
    check_tensor_arguments("group_norm", input=input, weight=weight, bias=bias)
    if input.dim() < 2:
        raise RuntimeError(
            f"Expected at least 2 dimensions for input tensor but received {input.dim()}"
        )
    batch, channels = input.shape[:2]
    verify_batch_size([batch * channels // num_groups, num_groups] + list(input.shape[2:]))
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
    check_mixed_dtype(input, weight, bias)
    check_floating(input, "GroupNormKernelImpl")


# ---------------------------------------------------------------------------------------------
# backend functions (bnlib.torch._triton): contract checks for direct callers

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_kernel_input(name: str, tensor, min_dim: int) -> None:
    """A floating-point tensor of at least ``min_dim`` dimensions."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dim() < min_dim:
        raise ValueError(
            f"{name} must have at least {min_dim} dimensions, got shape {tuple(tensor.shape)}"
        )
    if not tensor.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {tensor.dtype}")


def check_kernel_rows(x: torch.Tensor) -> None:
    """The row kernels take a 2-d ``(rows, hidden)`` matrix."""
    check_kernel_input("input", x, 2)
    if x.dim() != 2:
        raise ValueError(f"input must be a 2-d (rows, hidden) tensor, got shape {tuple(x.shape)}")


def check_kernel_vector(name: str, vector, length: int, x: torch.Tensor) -> None:
    """None, or a ``(length,)`` tensor on ``x``'s device."""
    if vector is None:
        return
    if not isinstance(vector, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(vector).__name__}")
    if vector.shape != (length,):
        raise ValueError(f"{name} must have shape ({length},), got {tuple(vector.shape)}")
    if vector.device != x.device:
        raise ValueError(f"{name} is on {vector.device} but the input is on {x.device}")


def check_kernel_grad_output(dy, x: torch.Tensor) -> None:
    """The upstream gradient has the input's shape."""
    check_kernel_input("grad_output", dy, 2)
    if dy.shape != x.shape:
        raise ValueError(
            f"grad_output shape {tuple(dy.shape)} differs from input shape {tuple(x.shape)}"
        )


def check_kernel_dtype(x: torch.Tensor) -> None:
    """The kernels take float16, bfloat16 and float32 (float64 goes to the composite backend)."""
    if x.dtype not in KERNEL_DTYPES + (torch.float64,):
        raise TypeError(f"expected a float16, bfloat16, float32 or float64 input, got {x.dtype}")
