"""SyncBatchNorm: batch norm whose statistics span every process of a group.

A drop-in for ``torch.nn.SyncBatchNorm``. In training, each process reduces its own slice of
the batch to ``(count, mean, M2)`` per channel (M2 = sum of squared deviations), the processes
exchange these with one ``all_gather``, and every process combines them with Chan's parallel
formula into the statistics of the whole, concatenated batch:

    n = sum(n_i)    mean = sum(n_i * mean_i) / n    M2 = sum(M2_i + n_i * (mean_i - mean)**2)

The backward needs two global sums per channel, ``sum(dy)`` and ``sum(dy * (x - mean))``,
obtained with one ``all_reduce``. Weight and bias gradients stay local, as in torch: the data
parallel wrapper averages parameter gradients across processes.

Unlike torch's, this layer also synchronizes CPU tensors (the ``gloo`` backend), which is how
the tests run it. Without an initialized process group, or with a group of one, it is plain
batch norm.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from bnlib.torch import validation
from bnlib.torch.helpers import (
    accumulation_dtype,
    channel_view,
    in_layout_of,
    reduction_axes,
)
from bnlib.torch.modules import _BnlibBatchNorm

__all__ = ["SyncBatchNorm"]


def local_moments(x: torch.Tensor):
    """This process's per-channel ``(count, mean, M2)`` in the accumulation dtype."""
    values = x.to(accumulation_dtype(x.dtype))
    dims = reduction_axes(x)
    count = x.numel() // x.shape[1]
    mean = values.mean(dim=dims)
    m2 = (values - channel_view(mean, x.dim())).square().sum(dim=dims)
    return count, mean, m2


def combine_moments(counts: torch.Tensor, means: torch.Tensor, m2s: torch.Tensor):
    """Chan et al.'s combination of per-process moments: rows are processes."""
    total = counts.sum()
    weights = (counts / total).unsqueeze(1)
    mean = (weights * means).sum(dim=0)
    m2 = (m2s + counts.unsqueeze(1) * (means - mean).square()).sum(dim=0)
    return total, mean, m2


def gather_moments(count: int, mean: torch.Tensor, m2: torch.Tensor, group, world_size: int):
    """All processes' moments, stacked: one all_gather of a packed (2C + 1,) vector."""
    packed = torch.cat([mean.new_tensor([float(count)]), mean, m2])
    gathered = [torch.empty_like(packed) for _ in range(world_size)]
    dist.all_gather(gathered, packed, group=group)
    table = torch.stack(gathered)
    channels = mean.numel()
    return table[:, 0], table[:, 1:1 + channels], table[:, 1 + channels:]


class SyncBatchNormFunction(torch.autograd.Function):
    """Training-mode batch norm over the concatenation of every process's batch."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, eps, momentum, group,
                world_size):
        count, mean, m2 = local_moments(x)
        counts, means, m2s = gather_moments(count, mean, m2, group, world_size)
        total, mean, m2 = combine_moments(counts, means, m2s)
        if total <= 1:
            raise ValueError(
                "Expected more than 1 value per channel when training, "
                f"got input size {x.size()}"
            )
        invstd = torch.rsqrt(m2 / total + eps)
        if running_mean is not None:
            with torch.no_grad():
                unbiased = m2 / (total - 1)
                running_mean.mul_(1 - momentum).add_(momentum * mean.to(running_mean.dtype))
                running_var.mul_(1 - momentum).add_(momentum * unbiased.to(running_var.dtype))
        xhat = (x.to(mean.dtype) - channel_view(mean, x.dim())) * channel_view(invstd, x.dim())
        out = xhat
        if weight is not None:
            out = out * channel_view(weight.to(mean.dtype), x.dim())
        if bias is not None:
            out = out + channel_view(bias.to(mean.dtype), x.dim())
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.total, ctx.group, ctx.has_bias = total, group, bias is not None
        return in_layout_of(out.to(x.dtype), x)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, mean, invstd = ctx.saved_tensors
        dims, ndim = reduction_axes(x), x.dim()
        dy = grad_out.to(mean.dtype)
        xmu = x.to(mean.dtype) - channel_view(mean, ndim)
        local_sums = torch.stack([dy.sum(dim=dims), (dy * xmu).sum(dim=dims)])
        # Parameter gradients are this process's share; dx needs the global sums.
        grad_bias = local_sums[0].clone() if ctx.has_bias else None
        grad_weight = local_sums[1] * invstd if weight is not None else None
        dist.all_reduce(local_sums, group=ctx.group)
        sum_dy, sum_dy_xmu = local_sums
        scale = invstd if weight is None else weight.to(mean.dtype) * invstd
        dx = channel_view(scale, ndim) * (
            dy
            - channel_view(sum_dy / ctx.total, ndim)
            - xmu * channel_view(invstd.square() * sum_dy_xmu / ctx.total, ndim)
        )
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        if grad_bias is not None:
            grad_bias = grad_bias.to(weight.dtype if weight is not None else grad_bias.dtype)
        dx = in_layout_of(dx.to(x.dtype), x)
        return dx, grad_weight, grad_bias, None, None, None, None, None, None


class SyncBatchNorm(_BnlibBatchNorm, nn.SyncBatchNorm):
    """Batch norm synchronized across a process group: ``torch.nn.SyncBatchNorm`` (arguments,
    buffers, ``state_dict``, ``isinstance``) with bnlib's ``forward``.

    Input: (N, C, *spatial) with at least 2 dims and one channel.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        validation.check_sync_batch_norm_input(input)

    def _world_size(self) -> int:
        if not (dist.is_available() and dist.is_initialized()):
            return 1
        return dist.get_world_size(self.process_group or dist.group.WORLD)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Synchronized statistics in training; plain batch norm otherwise."""
        world_size = self._world_size()
        if not self.training or world_size == 1:
            return super().forward(input)
        self._check_input_dim(input)
        if input.shape[1] != self.num_features:
            raise RuntimeError(
                f"running_mean should contain {input.shape[1]} elements not {self.num_features}"
            )
        momentum = self._count_batch(input)
        group = self.process_group or dist.group.WORLD
        running = self.track_running_stats and self.running_mean is not None
        return SyncBatchNormFunction.apply(
            input, self.weight, self.bias,
            self.running_mean if running else None, self.running_var if running else None,
            self.eps, momentum, group, world_size,
        )

    @classmethod
    def convert_sync_batchnorm(cls, module: torch.nn.Module, process_group=None):
        """``module`` with every batch-norm layer (torch.nn's or bnlib's) replaced by a
        :class:`SyncBatchNorm` sharing its parameters and buffers: torch's conversion, whose
        new layers are then given this class (they hold exactly the same state)."""
        converted = nn.SyncBatchNorm.convert_sync_batchnorm(module, process_group)
        for layer in converted.modules():
            if type(layer) is nn.SyncBatchNorm:
                layer.__class__ = cls
        return converted
