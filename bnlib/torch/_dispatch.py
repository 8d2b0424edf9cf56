"""Choice of backend (fused Triton kernels or composite torch ops) for each call.

``"auto"`` (the default) uses the Triton backend for CUDA tensors when ``bnlib.torch._triton``
imports and reports ``available()``, the composite backend otherwise. ``"triton"`` forces the
Triton backend on every device (on CPU this needs ``TRITON_INTERPRET=1``); ``"composite"``
forces the composite one. Tensors wrapped by a ``torch.func`` transform (the upstream gradient
of a vmapped backward, for example) always take the composite backend: kernels see raw memory.
"""

import importlib
from types import ModuleType

import torch

from bnlib.torch import _composite
from bnlib.torch.helpers import is_transformed

__all__ = ["BACKENDS", "backend_for", "backend_name", "get_backend", "set_backend"]

BACKENDS = ("auto", "triton", "composite")

_requested = "auto"
_triton_module: ModuleType | None = None
_triton_error: str | None = None


def set_backend(name: str) -> None:
    """Select the backend: ``"auto"``, ``"triton"`` or ``"composite"``."""
    global _requested
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    _requested = name


def get_backend() -> str:
    """The backend last passed to :func:`set_backend` (``"auto"`` by default)."""
    return _requested


def _load_triton() -> ModuleType | None:
    """Import ``bnlib.torch._triton`` once; None (and the reason kept) when it cannot be used."""
    global _triton_module, _triton_error
    if _triton_module is None and _triton_error is None:
        try:
            module = importlib.import_module("bnlib.torch._triton")
            if module.available():
                _triton_module = module
            else:
                _triton_error = "bnlib.torch._triton.available() returned False"
        except ImportError as error:
            _triton_error = f"importing bnlib.torch._triton failed: {error}"
    return _triton_module


def backend_name(tensor: torch.Tensor) -> str:
    """Which backend a call on ``tensor`` takes: ``"triton"`` or ``"composite"``."""
    if _requested == "composite":
        return "composite"
    if _requested == "triton":
        if _load_triton() is None:
            raise RuntimeError(f"the triton backend was requested but {_triton_error}")
        return "triton"
    return "triton" if tensor.is_cuda and _load_triton() is not None else "composite"


def backend_for(tensor: torch.Tensor, *others: torch.Tensor) -> ModuleType:
    """The backend module (same five functions as ``_composite``) for a call on ``tensor``
    (and ``others``, the other tensors of the call)."""
    if any(is_transformed(t) for t in (tensor, *others)):
        return _composite
    return _triton_module if backend_name(tensor) == "triton" else _composite
