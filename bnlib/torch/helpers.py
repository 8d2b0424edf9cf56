"""Helpers shared by every part of ``bnlib.torch``: axes, layouts, dtypes and torch overrides.

The two idioms of per-channel normalization (reduce over every axis but 1, broadcast a ``(C,)``
vector along axis 1) have the same names as in ``bnlib.numpy.axes``.
"""

import functools

import torch
from torch._C._functorch import is_functorch_wrapped_tensor, is_legacy_batchedtensor
from torch.overrides import handle_torch_function, has_torch_function

__all__ = [
    "accumulation_dtype",
    "channel_view",
    "in_layout_of",
    "is_transformed",
    "memory_format_of",
    "overridable",
    "reduction_axes",
]


def reduction_axes(x: torch.Tensor) -> list[int]:
    """Every axis but the channel axis 1: ``[0]`` for (N, C), ``[0, 2, 3]`` for (N, C, H, W)."""
    return [0, *range(2, x.dim())]


def channel_view(vector: torch.Tensor, ndim: int) -> torch.Tensor:
    """Reshape a ``(C,)`` vector so it broadcasts along axis 1 of an ``ndim``-D tensor."""
    return vector.reshape((1, -1) + (1,) * (ndim - 2))


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype statistics of a ``dtype`` tensor are computed in: float32 for float16,
    bfloat16 and float32, float64 for float64; complex input keeps its own dtype."""
    if dtype.is_complex or dtype == torch.float64:
        return dtype
    return torch.float32


def is_transformed(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is wrapped by a ``torch.func`` transform (vmap, grad, jvp; or the
    older vmap gradcheck batches with): its memory is not the raw data, and its layout cannot
    be queried. Never while Dynamo traces."""
    if torch.compiler.is_compiling():
        return False
    return is_functorch_wrapped_tensor(tensor) or is_legacy_batchedtensor(tensor)


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """``torch.channels_last(_3d)`` when ``x`` is laid out that way, else contiguous_format
    (also for a tensor inside a torch.func transform, whose layout cannot be queried)."""
    if is_transformed(x):
        return torch.contiguous_format
    for ndim, layout in ((4, torch.channels_last), (5, torch.channels_last_3d)):
        if x.dim() == ndim and not x.is_contiguous() and x.is_contiguous(memory_format=layout):
            return layout
    return torch.contiguous_format


def in_layout_of(tensor: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``tensor`` in ``reference``'s memory format (unchanged inside a torch.func transform,
    where layouts other than contiguous cannot be requested)."""
    if is_transformed(tensor):
        return tensor
    return tensor.contiguous(memory_format=memory_format_of(reference))


def overridable(function):
    """Let tensor-likes intercept ``function``, as ``torch.nn.functional``'s functions do.

    An argument with ``__torch_function__`` (an fx ``Proxy`` while ``torch.fx.symbolic_trace``
    runs, a tensor subclass, an active ``TorchFunctionMode``) receives the call instead: fx
    records it as one node rather than tracing the checks inside, which branch on shapes.
    """

    @functools.wraps(function)
    def dispatching(*args, **kwargs):
        candidates = (*args, *kwargs.values())
        if has_torch_function(candidates):
            return handle_torch_function(dispatching, candidates, *args, **kwargs)
        return function(*args, **kwargs)

    return dispatching
