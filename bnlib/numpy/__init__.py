"""bnlib.numpy: reference NumPy implementations of batch normalization and its relatives.

CS231n-style functions: statistics over every axis but axis 1, so one function serves
``(N, D)`` and ``(N, C, *spatial)``; each forward returns ``(out, cache)`` and each backward
takes ``(dout, cache)``.
"""

from bnlib.numpy.axes import channel_view, reduction_axes
from bnlib.numpy.batchnorm import (
    BatchNormCache,
    batchnorm_backward,
    batchnorm_forward,
    batchnorm_inference,
    fold_batchnorm,
)
from bnlib.numpy.engine import batch_statistics
from bnlib.numpy.gradcheck import numerical_gradient, relative_error
from bnlib.numpy.layernorm import (
    RowNormCache,
    groupnorm_backward,
    groupnorm_forward,
    layernorm_backward,
    layernorm_forward,
    rmsnorm_backward,
    rmsnorm_forward,
)
from bnlib.numpy.layers import BatchNorm
from bnlib.numpy.staged import (
    batchnorm_backward_staged,
    batchnorm_backward_textbook,
    batchnorm_forward_textbook,
)

__all__ = [
    "BatchNorm",
    "BatchNormCache",
    "RowNormCache",
    "batch_statistics",
    "batchnorm_backward",
    "batchnorm_backward_staged",
    "batchnorm_backward_textbook",
    "batchnorm_forward",
    "batchnorm_forward_textbook",
    "batchnorm_inference",
    "channel_view",
    "fold_batchnorm",
    "groupnorm_backward",
    "groupnorm_forward",
    "layernorm_backward",
    "layernorm_forward",
    "numerical_gradient",
    "reduction_axes",
    "relative_error",
    "rmsnorm_backward",
    "rmsnorm_forward",
]
