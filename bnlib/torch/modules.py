"""Normalization modules: torch.nn's own classes, computing with bnlib.

Each class subclasses its ``torch.nn`` namesake (``bnlib.torch.BatchNorm2d`` is an
``nn.BatchNorm2d``, the lazy ones are ``nn.LazyBatchNorm2d``...) and replaces only ``forward``,
as ``nn.SyncBatchNorm`` does: constructor arguments, parameters, buffers, ``state_dict`` keys
and version upgrades, ``repr``, ``reset_parameters`` and every ``isinstance`` check are
torch's own. ``forward`` calls :mod:`bnlib.torch.functional`, and does its shape checks with
:mod:`bnlib.torch.validation`, whose functions ``torch.fx.symbolic_trace`` records as nodes
(torch's own ``forward`` branches on the input's rank, which fx cannot trace through).
"""

import torch
from torch import nn

from bnlib.torch import functional as F
from bnlib.torch import validation
from bnlib.torch.helpers import overridable

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "GroupNorm",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "LayerNorm",
    "LazyBatchNorm1d",
    "LazyBatchNorm2d",
    "LazyBatchNorm3d",
    "LazyInstanceNorm1d",
    "LazyInstanceNorm2d",
    "LazyInstanceNorm3d",
    "RMSNorm",
]


@overridable
def count_training_batch(input, num_batches_tracked: torch.Tensor, momentum) -> float:
    """Add one to ``num_batches_tracked``; return the momentum of this step's running update:
    ``momentum``, or ``1 / batches seen`` (a cumulative average) when it is None.

    ``input`` is unused but passed, so that tracers (fx) see the call and record the update
    in the graph, where it runs once per batch; a buffer alone would be updated at trace time.
    """
    num_batches_tracked.add_(1)
    return 1.0 / float(num_batches_tracked) if momentum is None else momentum


class _BnlibBatchNorm(nn.modules.batchnorm._BatchNorm):
    """torch.nn's batch norm with bnlib's ``forward``. ``_input_dims``: the ranks accepted."""

    _input_dims: tuple[int, ...] = ()

    def _check_input_dim(self, input: torch.Tensor) -> None:
        validation.check_input_dims(input, self._input_dims)

    def _count_batch(self, input: torch.Tensor) -> float:
        """Count a training batch; return the momentum of this step's running update."""
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            return count_training_batch(input, self.num_batches_tracked, self.momentum)
        return 0.0 if self.momentum is None else self.momentum

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """input ``(N, C, *spatial)`` -> output of the same shape, dtype and memory format.

        Batch statistics in training and whenever the running buffers are None; the buffers
        are passed when they are updated (training and tracking) or used (eval).
        """
        self._check_input_dim(input)
        momentum = self._count_batch(input)
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        pass_buffers = not self.training or self.track_running_stats
        return F.batch_norm(
            input,
            self.running_mean if pass_buffers else None,
            self.running_var if pass_buffers else None,
            self.weight,
            self.bias,
            use_batch_stats,
            momentum,
            self.eps,
        )


class BatchNorm1d(_BnlibBatchNorm, nn.BatchNorm1d):
    """Batch norm over ``(N, C)`` or ``(N, C, L)`` input (``torch.nn.BatchNorm1d``)."""

    _input_dims = (2, 3)


class BatchNorm2d(_BnlibBatchNorm, nn.BatchNorm2d):
    """Batch norm over ``(N, C, H, W)`` input (``torch.nn.BatchNorm2d``)."""

    _input_dims = (4,)


class BatchNorm3d(_BnlibBatchNorm, nn.BatchNorm3d):
    """Batch norm over ``(N, C, D, H, W)`` input (``torch.nn.BatchNorm3d``)."""

    _input_dims = (5,)


class LazyBatchNorm1d(_BnlibBatchNorm, nn.LazyBatchNorm1d):
    """:class:`BatchNorm1d` whose ``num_features`` is read from the first input
    (``torch.nn.LazyBatchNorm1d``); it then becomes a :class:`BatchNorm1d`."""

    _input_dims = (2, 3)
    cls_to_become = BatchNorm1d


class LazyBatchNorm2d(_BnlibBatchNorm, nn.LazyBatchNorm2d):
    """:class:`BatchNorm2d` whose ``num_features`` is read from the first input
    (``torch.nn.LazyBatchNorm2d``); it then becomes a :class:`BatchNorm2d`."""

    _input_dims = (4,)
    cls_to_become = BatchNorm2d


class LazyBatchNorm3d(_BnlibBatchNorm, nn.LazyBatchNorm3d):
    """:class:`BatchNorm3d` whose ``num_features`` is read from the first input
    (``torch.nn.LazyBatchNorm3d``); it then becomes a :class:`BatchNorm3d`."""

    _input_dims = (5,)
    cls_to_become = BatchNorm3d


@overridable
def _instance_norm_of_batch_or_sample(input, no_batch_dim: int, *args):
    """``F.instance_norm(input, *args)``; a single sample given without its batch axis (rank
    ``no_batch_dim``, which torch's modules accept) is normalized as a batch of one."""
    if input.dim() == no_batch_dim:
        return F.instance_norm(input.unsqueeze(0), *args).squeeze(0)
    return F.instance_norm(input, *args)


class _BnlibInstanceNorm(nn.modules.instancenorm._InstanceNorm):
    """torch.nn's instance norm with bnlib's ``forward``."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """input ``(N, C, *spatial)`` or ``(C, *spatial)`` -> output of the same shape.

        Statistics of each (sample, channel) in training or without running statistics,
        the running statistics otherwise.
        """
        no_batch_dim = self._get_no_batch_dim()
        validation.check_instance_norm_module(input, no_batch_dim, self.num_features, self.affine)
        return _instance_norm_of_batch_or_sample(
            input,
            no_batch_dim,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            self.training or not self.track_running_stats,
            self.momentum if self.momentum is not None else 0.0,
            self.eps,
        )


class InstanceNorm1d(_BnlibInstanceNorm, nn.InstanceNorm1d):
    """Instance norm of ``(N, C, L)`` or ``(C, L)`` input (``torch.nn.InstanceNorm1d``)."""


class InstanceNorm2d(_BnlibInstanceNorm, nn.InstanceNorm2d):
    """Instance norm of ``(N, C, H, W)`` or ``(C, H, W)`` input (``torch.nn.InstanceNorm2d``)."""


class InstanceNorm3d(_BnlibInstanceNorm, nn.InstanceNorm3d):
    """Instance norm of ``(N, C, D, H, W)`` or ``(C, D, H, W)`` input
    (``torch.nn.InstanceNorm3d``)."""


class LazyInstanceNorm1d(_BnlibInstanceNorm, nn.LazyInstanceNorm1d):
    """:class:`InstanceNorm1d` whose ``num_features`` is read from the first input."""

    cls_to_become = InstanceNorm1d


class LazyInstanceNorm2d(_BnlibInstanceNorm, nn.LazyInstanceNorm2d):
    """:class:`InstanceNorm2d` whose ``num_features`` is read from the first input."""

    cls_to_become = InstanceNorm2d


class LazyInstanceNorm3d(_BnlibInstanceNorm, nn.LazyInstanceNorm3d):
    """:class:`InstanceNorm3d` whose ``num_features`` is read from the first input."""

    cls_to_become = InstanceNorm3d


class LayerNorm(nn.LayerNorm):
    """Layer norm over the trailing ``normalized_shape`` dims (``torch.nn.LayerNorm``)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """input ``(*, *normalized_shape)`` -> contiguous output of the same shape."""
        return F.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)


class GroupNorm(nn.GroupNorm):
    """Group norm of ``(N, C, *spatial)`` input in ``num_groups`` groups of channels
    (``torch.nn.GroupNorm``)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """input ``(N, C, *spatial)`` -> output of the same shape and memory format."""
        return F.group_norm(input, self.num_groups, self.weight, self.bias, self.eps)


class RMSNorm(nn.RMSNorm):
    """RMS norm over the trailing ``normalized_shape`` dims (``torch.nn.RMSNorm``)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """input ``(*, *normalized_shape)`` -> output of the same shape and memory format."""
        return F.rms_norm(input, self.normalized_shape, self.weight, self.eps)
