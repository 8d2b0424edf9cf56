"""PyTorch normalization layers with bnlib's own maths, drop-in compatible with ``torch.nn``.

Functions (``torch.nn.functional`` signatures): :func:`batch_norm`, :func:`instance_norm`,
:func:`layer_norm`, :func:`group_norm`, :func:`rms_norm`. Modules, subclasses of their
``torch.nn`` namesakes that replace only ``forward``: :class:`BatchNorm1d`, :class:`BatchNorm2d`,
:class:`BatchNorm3d`, :class:`SyncBatchNorm`, :class:`InstanceNorm1d`, :class:`InstanceNorm2d`,
:class:`InstanceNorm3d`, :class:`LayerNorm`, :class:`GroupNorm`, :class:`RMSNorm` and the lazy
:class:`LazyBatchNorm1d`, :class:`LazyBatchNorm2d`, :class:`LazyBatchNorm3d`,
:class:`LazyInstanceNorm1d`, :class:`LazyInstanceNorm2d`, :class:`LazyInstanceNorm3d`.
For deployment, :func:`fold_conv_batchnorm` folds an evaluation-mode batch norm into the
convolution before it.

Every op is a ``torch.autograd.Function`` with a closed-form backward, a forward-mode ``jvp``
and a ``vmap`` rule (so ``torch.func`` and ``torch.autograd.forward_ad`` work); batch and layer
norm run fused Triton kernels on CUDA when available (:func:`backend_name`,
:func:`set_backend`), the others use composite torch ops everywhere. None of them calls torch's
own normalization kernels. Argument checks live in :mod:`bnlib.torch.validation`, shared
helpers in :mod:`bnlib.torch.helpers`.

Deliberate differences from torch 2.13 (each pinned by a test in ``tests/torch``):

* Better float32 statistics: two-pass around a pivot, one sample of the channel, so a float32
  channel with mean 1e3 and std 0.1 is normalized within 5e-4 of float64 maths (torch: ~1e-3).
* ``batch_norm`` on non-empty input with fewer than 2 dims raises a ``ValueError`` naming the
  rank.
* ``layer_norm`` and ``rms_norm`` accept an int ``normalized_shape``.
* torch's CPU dtype rules and ``mixed dtype (CPU)`` messages apply on every device.
* TorchScript cannot script the modules (``torch.jit.script`` does not compile a custom
  ``autograd.Function``); ``torch.jit.trace``, ``torch.compile`` and ``torch.export`` work.
"""

from bnlib.torch import functional, modules
from bnlib.torch._dispatch import backend_name, get_backend, set_backend
from bnlib.torch.folding import fold_conv_batchnorm
from bnlib.torch.functional import *  # noqa: F403 - the ops named in functional.__all__
from bnlib.torch.modules import *  # noqa: F403 - the modules named in modules.__all__
from bnlib.torch.sync import SyncBatchNorm

__all__ = [
    *functional.__all__,
    *modules.__all__,
    "SyncBatchNorm",
    "backend_name",
    "fold_conv_batchnorm",
    "get_backend",
    "set_backend",
]
