"""PyTorch normalisation layers with bnlib's own maths, drop-in compatible with ``torch.nn``.

Functions (``torch.nn.functional`` signatures): :func:`batch_norm`, :func:`layer_norm`,
:func:`group_norm`, :func:`rms_norm`. Modules (``torch.nn`` signatures, parameter and buffer
names, ``state_dict`` keys, ``repr`` and errors): :class:`BatchNorm1d`, :class:`BatchNorm2d`,
:class:`BatchNorm3d`, :class:`LayerNorm`, :class:`GroupNorm`, :class:`RMSNorm`.

Every op is a ``torch.autograd.Function`` with a closed-form backward; batch and layer norm
run fused Triton kernels on CUDA when available (:func:`backend_name`, :func:`set_backend`),
group and RMS norm use composite torch ops everywhere. None of them calls torch's own
normalisation kernels.

Deliberate differences from torch 2.13 (each pinned by a test in ``tests/torch``):

* Better float32 statistics: two-pass, shifted by one sample of the channel, so a float32
  channel with mean 1e3 and std 0.1 is normalised within 5e-4 of float64 maths (torch: ~1e-3).
* ``batch_norm`` on input with fewer than 2 dims raises a ``ValueError`` naming the rank.
* ``layer_norm`` accepts an int ``normalized_shape``.
* torch's CPU dtype rules and ``mixed dtype (CPU)`` messages apply on every device.
"""

from bnlib.torch._dispatch import backend_name, get_backend, set_backend
from bnlib.torch.functional import batch_norm, group_norm, layer_norm, rms_norm
from bnlib.torch.modules import (
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    GroupNorm,
    LayerNorm,
    RMSNorm,
)

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "GroupNorm",
    "LayerNorm",
    "RMSNorm",
    "backend_name",
    "batch_norm",
    "get_backend",
    "group_norm",
    "layer_norm",
    "rms_norm",
    "set_backend",
]

try:  # SyncBatchNorm lives in its own module, built on the layers above
    from bnlib.torch.sync import SyncBatchNorm  # noqa: F401

    __all__.append("SyncBatchNorm")
except ModuleNotFoundError as error:
    if error.name != "bnlib.torch.sync":
        raise
