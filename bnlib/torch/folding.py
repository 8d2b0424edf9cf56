"""Folding an evaluation-mode batch norm into the convolution before it.

In evaluation mode BN is a fixed affine map per channel, and a convolution is a linear layer
applied to every patch of its input, so the two compose into one convolution. The arithmetic
is :func:`bnlib.numpy.fold_batchnorm`'s, applied to the kernel seen as a matrix.
"""

import copy

import numpy as np
import torch
from torch import nn

from bnlib.numpy import fold_batchnorm

__all__ = ["fold_conv_batchnorm"]

_CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _float64(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to("cpu", torch.float64).numpy()


def _check_foldable(conv: nn.Module, bn: nn.Module) -> None:
    where = "fold_conv_batchnorm"
    if not isinstance(conv, _CONVOLUTIONS):
        raise TypeError(f"{where}: conv must be a torch.nn.Conv1d, Conv2d or Conv3d, "
                        f"got {type(conv).__name__}")
    if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
        raise TypeError(f"{where}: bn must be a batch norm module (torch.nn.BatchNorm1d, 2d, "
                        f"3d or a subclass), got {type(bn).__name__}")
    if bn.training:
        raise ValueError(f"{where}: bn is in training mode, where it normalizes with the "
                         "statistics of each batch; only evaluation mode folds (call bn.eval())")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"{where}: bn keeps no running statistics (track_running_stats=False), "
                         "so it normalizes with batch statistics even in evaluation mode")
    if bn.num_features != conv.out_channels:
        raise ValueError(f"{where}: bn normalizes {bn.num_features} channels but conv has "
                         f"{conv.out_channels} output channels")


def fold_conv_batchnorm(conv: nn.Module, bn: nn.Module) -> nn.Module:
    """A new convolution that computes ``bn(conv(x))`` of evaluation mode in one layer.

    With ``a = gamma / sqrt(running_var + eps)``, one factor per output channel ``o``:

        weight'[o] = a[o] * weight[o]
        bias'[o]   = (bias[o] - running_mean[o]) * a[o] + beta[o]

    (``bias = 0`` when ``conv`` has none, ``gamma = 1, beta = 0`` when ``bn`` has no affine
    parameters). The kernel ``(C_out, C_in / groups, *kernel_size)`` is flattened to a
    ``(C_in / groups * prod(kernel_size), C_out)`` matrix and folded by
    :func:`bnlib.numpy.fold_batchnorm`, in float64; the result has the convolution's dtype and
    device. ``conv`` and ``bn`` are left unchanged. The same as torch's
    ``torch.nn.utils.fusion.fuse_conv_bn_eval`` for a convolution that is not transposed.

    Args:
        conv: a ``torch.nn.Conv1d``, ``Conv2d`` or ``Conv3d`` (any stride, padding, dilation
            and groups).
        bn: a batch norm module over ``conv.out_channels`` channels, in evaluation mode, with
            running statistics.

    Returns:
        A copy of ``conv`` with the folded weight and a bias.

    Raises:
        TypeError: ``conv`` or ``bn`` is not a module of those kinds.
        ValueError: ``bn`` is in training mode, has no running statistics, or has another
            number of channels.
    """
    _check_foldable(conv, bn)
    kernel = conv.weight
    channels = bn.num_features
    gamma = _float64(bn.weight) if bn.weight is not None else np.ones(channels)
    beta = _float64(bn.bias) if bn.bias is not None else np.zeros(channels)
    bias = _float64(conv.bias) if conv.bias is not None else None
    # One column per output channel: the convolution as a linear layer on patches.
    matrix = _float64(kernel).reshape(channels, -1).T
    weight_folded, bias_folded = fold_batchnorm(
        matrix, bias, gamma, beta, _float64(bn.running_mean), _float64(bn.running_var),
        bn.eps,
    )
    folded = copy.deepcopy(conv)
    folded.weight = nn.Parameter(
        torch.as_tensor(weight_folded.T.reshape(kernel.shape)).to(kernel),
        requires_grad=kernel.requires_grad,
    )
    folded.bias = nn.Parameter(torch.as_tensor(bias_folded).to(kernel),
                               requires_grad=kernel.requires_grad)
    return folded
