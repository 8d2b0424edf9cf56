"""A small convolutional network on the 8x8 digits, behind chapters 3, 5 and 6.

``(N, 64) -> (N, 1, 8, 8) -> [Conv2d 3x3 -> norm -> ReLU -> MaxPool 2x2] x 2
-> Conv2d 3x3 -> norm -> ReLU -> Linear -> logits``, whose normalization layer, from
``bnlib.torch``, is one of

- ``"none"``: no normalization (the convolutions keep their bias);
- ``"batch"``: ``BatchNorm2d``, one mean and variance per channel over ``(N, H, W)``;
- ``"group"``: ``GroupNorm``, per example over groups of channels and their positions;
- ``"layer"``: ``LayerNorm`` over ``(C, H, W)``, per example over all its channels and
  positions.

The network takes the flat ``(N, 64)`` rows of ``bnlib.data.digits`` and has
``forward_with_preactivations``, so :func:`bnlib.experiments.training.train` and
:func:`~bnlib.experiments.training.batch_size_sweep` (with ``build=build_convnet``) train it
as they train the MLP. :func:`fold_batch_norms` folds its BN layers into the convolutions for
inference; :func:`plot_position_means` draws what spatial BN does to its feature maps.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from bnlib.experiments.checks import not_one_of
from bnlib.experiments.training import build_seeded, train

__all__ = [
    "CONV_NORM_KINDS",
    "ConvNet",
    "build_convnet",
    "conv_norm_layer",
    "fold_batch_norms",
    "plot_position_means",
    "trained_convnet",
]

#: The normalizations a :class:`ConvNet` can use after each convolution.
CONV_NORM_KINDS = ("none", "batch", "group", "layer")


def conv_norm_layer(kind: str, channels: int, size: int, *, num_groups: int = 4) -> nn.Module:
    """The normalization layer ``kind`` (one of :data:`CONV_NORM_KINDS`) for feature maps of
    shape ``(N, channels, size, size)``; ``num_groups`` is used by ``"group"``."""
    from bnlib.torch import BatchNorm2d, GroupNorm, LayerNorm

    if kind == "none":
        return nn.Identity()
    if kind == "batch":
        return BatchNorm2d(channels)
    if kind == "group":
        return GroupNorm(num_groups, channels)
    if kind == "layer":
        return LayerNorm((channels, size, size))
    raise not_one_of("norm", kind, CONV_NORM_KINDS)


class ConvNet(nn.Module):
    """Three 3x3 convolutions (padding 1), each followed by a normalization and a ReLU, a 2x2
    max-pool after the first two, and a Linear layer from the last feature maps to the logits.

    ``channels`` are the output channels of the three convolutions; with an 8x8 input their
    feature maps are 8x8, 4x4 and 2x2. The convolutions before a normalization have no bias
    (the normalization's ``beta`` plays its role). The convolutions start from He et al.'s
    initialisation for ReLU, the output layer from PyTorch's default.

    Input ``(N, image_size**2)`` or ``(N, 1, image_size, image_size)`` float32, output logits
    ``(N, num_classes)``.
    """

    def __init__(
        self,
        channels: Sequence[int] = (16, 32, 32),
        *,
        norm: str = "none",
        num_groups: int = 4,
        image_size: int = 8,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        # An unknown norm is refused by conv_norm_layer, below.
        if len(channels) != 3:
            raise ValueError(f"channels must name three convolutions, got {tuple(channels)}")
        if image_size < 4 or image_size % 4:
            raise ValueError(f"image_size must be a positive multiple of 4, got {image_size}")
        self.norm = norm
        self.image_size = image_size
        sizes = [image_size, image_size // 2, image_size // 4]
        self.convs = nn.ModuleList(
            nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=norm == "none")
            for c_in, c_out in zip([1, *channels[:-1]], channels, strict=True)
        )
        self.norms = nn.ModuleList(
            conv_norm_layer(norm, c_out, size, num_groups=num_groups)
            for c_out, size in zip(channels, sizes, strict=True)
        )
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(channels[-1] * sizes[-1] ** 2, num_classes)
        for conv in self.convs:
            # Without normalization, PyTorch's default initialisation shrinks the activations
            # layer by layer; He's keeps their size, so that network trains as well.
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)

    def forward_with_preactivations(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits ``(N, num_classes)`` and the ReLU inputs ``(N, C, H, W)``, one per layer."""
        x = x.reshape(len(x), 1, self.image_size, self.image_size)
        preactivations = []
        for index, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
            z = norm(conv(x))
            preactivations.append(z)
            x = torch.relu(z)
            if index < len(self.convs) - 1:
                x = self.pool(x)
        return self.head(x.flatten(1)), preactivations

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_preactivations(x)[0]


def build_convnet(norm: str = "none", *, seed: int = 0, **options) -> ConvNet:
    """A :class:`ConvNet` whose initial weights depend only on ``seed`` (options as for it)."""
    return build_seeded(ConvNet, seed=seed, norm=norm, **options)


def trained_convnet(
    data,
    norm: str = "batch",
    *,
    epochs: int = 3,
    batch_size: int = 32,
    lr: float = 0.02,
    seed: int = 0,
    progress: str | None = None,
    **options,
) -> ConvNet:
    """``build_convnet(norm, seed=seed, **options)`` trained on ``data`` for ``epochs`` epochs
    of SGD with momentum 0.9 (:func:`~bnlib.experiments.training.train`); returned in
    evaluation mode."""
    if epochs < 1:
        raise ValueError(f"epochs must be positive, got {epochs}")
    model = build_convnet(norm, seed=seed, **options)
    steps = epochs * (len(data.x_train) // batch_size)
    train(model, data, steps=steps, batch_size=batch_size, lr=lr, optimizer="momentum",
          seed=seed, eval_every=steps, progress=progress)
    return model.eval()


def fold_batch_norms(model: ConvNet) -> ConvNet:
    """A copy of ``model`` in evaluation mode with every ``BatchNorm2d`` folded into the
    convolution before it (:func:`bnlib.torch.fold_conv_batchnorm`) and replaced by an
    identity: the same function of the input, with no normalization layer left.
    ``model`` itself is not changed."""
    from bnlib.torch import fold_conv_batchnorm

    if model.norm != "batch":
        raise ValueError(f"only a network with norm='batch' has BN layers to fold, "
                         f"got norm={model.norm!r}")
    folded = copy.deepcopy(model).eval()
    for index, (conv, bn) in enumerate(zip(folded.convs, folded.norms, strict=True)):
        folded.convs[index] = fold_conv_batchnorm(conv, bn)
        folded.norms[index] = nn.Identity()
    return folded


def plot_position_means(axes, before: np.ndarray, after: np.ndarray, channels: Sequence[int]):
    """Heat maps of the mean over the batch at each position, for each of ``channels``: top
    row ``before`` BN, ``(N, C, H, W)``, titled with the one mean BN subtracts from the whole
    channel; bottom row ``after``, the normalized maps, on a colour scale centred at zero.

    ``axes`` is a ``(2, len(channels))`` array of matplotlib Axes; returns it.
    """
    if before.shape != after.shape or before.ndim != 4:
        raise ValueError(f"before and after must be two (N, C, H, W) arrays of one shape, got "
                         f"{before.shape} and {after.shape}")
    if np.shape(axes) != (2, len(channels)):
        raise ValueError(f"axes must have shape (2, {len(channels)}), got {np.shape(axes)}")
    for column, channel in enumerate(channels):
        top, bottom = axes[0, column], axes[1, column]
        image = top.imshow(before[:, channel].mean(axis=0), cmap="viridis")
        top.figure.colorbar(image, ax=top, shrink=0.8)
        top.set_title(f"channel {channel}: " + r"$\mu_\mathcal{B}$" +
                      f" = {before[:, channel].mean():.2f}", fontsize="small")
        normalized = after[:, channel].mean(axis=0)
        limit = np.abs(normalized).max()
        image = bottom.imshow(normalized, cmap="RdBu_r", vmin=-limit, vmax=limit)
        bottom.figure.colorbar(image, ax=bottom, shrink=0.8)
        bottom.set_title(f"channel {channel} after BN", fontsize="small")
        for ax in (top, bottom):
            ax.set(xticks=[], yticks=[])
    axes[0, 0].set_ylabel("conv output")
    axes[1, 0].set_ylabel(r"$\hat x$")
    return axes
