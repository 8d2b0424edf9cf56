"""Normalisation modules, drop-in replacements for their ``torch.nn`` namesakes.

Same constructor arguments, parameter and buffer names, ``state_dict`` keys (``load_state_dict``
works both ways with ``torch.nn``), ``repr``, ``reset_parameters``/``reset_running_stats`` and
errors; the forward maths is ``bnlib.torch.functional``.

``repr`` follows the installed torch: torch 2.13 prints ``bias=...`` for BatchNorm, LayerNorm
and GroupNorm, torch 2.11 does not. The ``bias`` keyword (BatchNorm, GroupNorm: keyword-only,
as in torch 2.13) is accepted on every version.
"""

import torch
from torch import nn

from bnlib.torch import functional as F
from bnlib.torch.functional import _as_shape

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "GroupNorm", "LayerNorm", "RMSNorm"]


def _torch_repr_shows_bias(torch_module: nn.Module) -> bool:
    """Whether the installed torch prints ``bias=...`` in this layer's repr (2.13 does)."""
    return "bias=" in torch_module.extra_repr()


_BATCHNORM_REPR_SHOWS_BIAS = _torch_repr_shows_bias(nn.BatchNorm1d(1))
_LAYERNORM_REPR_SHOWS_BIAS = _torch_repr_shows_bias(nn.LayerNorm(1))
_GROUPNORM_REPR_SHOWS_BIAS = _torch_repr_shows_bias(nn.GroupNorm(1, 1))


def _register_affine(module: nn.Module, shape, weight: bool, bias: bool | None,
                     factory_kwargs) -> None:
    """Register ``weight`` and ``bias`` of ``shape`` as torch.nn does: absent ones are None.

    ``bias=None`` registers no ``bias`` at all (RMSNorm has none).
    """
    wanted = {"weight": weight} if bias is None else {"weight": weight, "bias": weight and bias}
    for name, present in wanted.items():
        if present:
            module.register_parameter(name, nn.Parameter(torch.empty(shape, **factory_kwargs)))
        else:
            module.register_parameter(name, None)


def _reset_affine(module: nn.Module) -> None:
    """weight = 1 and bias = 0, where they exist."""
    if module.weight is not None:
        nn.init.ones_(module.weight)
    if getattr(module, "bias", None) is not None:
        nn.init.zeros_(module.bias)


class _NormBase(nn.Module):
    """Parameters (``weight``, ``bias``) and buffers (``running_mean``, ``running_var``,
    ``num_batches_tracked``) of the batch-norm layers, laid out as in ``torch.nn``."""

    _version = 2  # state_dict version 2 added num_batches_tracked, as in torch.nn

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device=None,
        dtype=None,
        *,
        bias: bool = True,
    ) -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        _register_affine(self, num_features, affine, bias, factory_kwargs)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory_kwargs))
            self.register_buffer("running_var", torch.ones(num_features, **factory_kwargs))
            self.register_buffer(
                "num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device)
            )
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        """running_mean = 0, running_var = 1, num_batches_tracked = 0."""
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        """Reset the running statistics, weight = 1 and bias = 0."""
        self.reset_running_stats()
        _reset_affine(self)

    def extra_repr(self) -> str:
        text = f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
        text += f"affine={self.affine}, "
        if _BATCHNORM_REPR_SHOWS_BIAS:
            text += f"bias={self.bias is not None}, "
        return text + f"track_running_stats={self.track_running_stats}"

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors
    ) -> None:
        # Checkpoints older than version 2 have no num_batches_tracked: count from 0.
        version = local_metadata.get("version", None)
        key = prefix + "num_batches_tracked"
        if (version is None or version < 2) and self.track_running_stats:
            if key not in state_dict:
                state_dict[key] = (
                    self.num_batches_tracked
                    if self.num_batches_tracked is not None
                    and self.num_batches_tracked.device != torch.device("meta")
                    else torch.tensor(0, dtype=torch.long)
                )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors
        )


class _BatchNorm(_NormBase):
    """Batch norm over ``(N, C, *spatial)``: batch statistics in training (and whenever the
    running buffers are None), running statistics in eval."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        raise NotImplementedError

    def _average_factor(self) -> float:
        """Momentum of this step's running update; counts the batch when tracking."""
        if not (self.training and self.track_running_stats):
            return 0.0 if self.momentum is None else self.momentum
        if self.num_batches_tracked is None:  # tracking switched on after construction
            return 0.0 if self.momentum is None else self.momentum
        self.num_batches_tracked.add_(1)
        if self.momentum is None:  # cumulative moving average
            return 1.0 / float(self.num_batches_tracked)
        return self.momentum

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """input ``(N, C, *spatial)`` -> output of the same shape, dtype and memory format."""
        self._check_input_dim(input)
        momentum = self._average_factor()
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        # Buffers are passed when they are updated (training and tracking) or used (eval).
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


class BatchNorm1d(_BatchNorm):
    """Batch norm over ``(N, C)`` or ``(N, C, L)`` input (``torch.nn.BatchNorm1d``)."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() != 2 and input.dim() != 3:
            raise ValueError(f"expected 2D or 3D input (got {input.dim()}D input)")


class BatchNorm2d(_BatchNorm):
    """Batch norm over ``(N, C, H, W)`` input (``torch.nn.BatchNorm2d``)."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() != 4:
            raise ValueError(f"expected 4D input (got {input.dim()}D input)")


class BatchNorm3d(_BatchNorm):
    """Batch norm over ``(N, C, D, H, W)`` input (``torch.nn.BatchNorm3d``)."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() != 5:
            raise ValueError(f"expected 5D input (got {input.dim()}D input)")


class LayerNorm(nn.Module):
    """Layer norm over the trailing ``normalized_shape`` dims (``torch.nn.LayerNorm``).

    Parameters ``weight`` and ``bias`` of shape ``normalized_shape`` (absent when
    ``elementwise_affine=False``; no ``bias`` when ``bias=False``).
    """

    def __init__(
        self,
        normalized_shape,
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        self.normalized_shape = _as_shape(normalized_shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        _register_affine(self, self.normalized_shape, elementwise_affine, bias, factory_kwargs)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """weight = 1, bias = 0."""
        _reset_affine(self)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        text = (
            f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
        )
        if _LAYERNORM_REPR_SHOWS_BIAS:
            text += f", bias={self.bias is not None}"
        return text


class GroupNorm(nn.Module):
    """Group norm of ``(N, C, *spatial)`` input in ``num_groups`` groups of channels
    (``torch.nn.GroupNorm``); per-channel ``weight`` and ``bias`` of shape ``(C,)``."""

    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        device=None,
        dtype=None,
        *,
        bias: bool = True,
    ) -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        if num_channels % num_groups != 0:
            raise ValueError(
                f"num_channels ({num_channels}) must be divisible by num_groups ({num_groups})"
            )
        self.num_groups = num_groups
        self.num_channels = num_channels
        self.eps = eps
        self.affine = affine
        _register_affine(self, num_channels, affine, bias, factory_kwargs)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """weight = 1, bias = 0."""
        _reset_affine(self)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.group_norm(input, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        text = f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"
        if _GROUPNORM_REPR_SHOWS_BIAS:
            text += f", bias={self.bias is not None}"
        return text


class RMSNorm(nn.Module):
    """RMS norm over the trailing ``normalized_shape`` dims (``torch.nn.RMSNorm``);
    ``weight`` of shape ``normalized_shape`` unless ``elementwise_affine=False``."""

    def __init__(
        self,
        normalized_shape,
        eps: float | None = None,
        elementwise_affine: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        self.normalized_shape = _as_shape(normalized_shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        _register_affine(self, self.normalized_shape, elementwise_affine, None, factory_kwargs)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """weight = 1."""
        _reset_affine(self)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(input, self.normalized_shape, self.weight, self.eps)

    def extra_repr(self) -> str:
        return (
            f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
        )
