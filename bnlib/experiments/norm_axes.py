"""Which axes Batch, Layer, Instance and Group Normalization take their statistics over.

For a feature map ``x`` of shape ``(N, C, *spatial)`` every method computes a mean and a
variance over a set of elements and normalizes those elements with them:

- Batch Normalization: one set per channel, over the batch and the spatial axes;
- Layer Normalization: one set per example, over the channels and the spatial axes;
- Instance Normalization: one set per example and channel, over the spatial axes;
- Group Normalization: one set per example and group of ``C // G`` channels.

:func:`reduction_axes` names those axes, :func:`shared_statistics_mask` marks the set that
contains one element, and :func:`draw_norm_axes` draws the sets as the shaded part of an
``N x C x (H, W)`` cube, the picture of Wu & He (2018), Fig. 2.
"""

from __future__ import annotations

import numpy as np

from bnlib.experiments.checks import not_one_of

__all__ = ["NORM_METHODS", "draw_norm_axes", "reduction_axes", "shared_statistics_mask"]

NORM_METHODS = ("batch", "layer", "instance", "group")
TITLES = {
    "batch": "Batch Norm",
    "layer": "Layer Norm",
    "instance": "Instance Norm",
    "group": "Group Norm",
}


def _check_method(method: str) -> None:
    if method not in NORM_METHODS:
        raise not_one_of("method", method, NORM_METHODS)


def reduction_axes(method: str, ndim: int = 4) -> tuple[int, ...]:
    """The axes of an ``(N, C, *spatial)`` tensor with ``ndim`` axes that ``method`` reduces.

    For ``"group"`` the axes refer to the grouped view ``(N, G, C // G, *spatial)``, which has
    ``ndim + 1`` axes: the statistics are taken over the channels of a group and the spatial
    axes, ``(2, 3, ..., ndim)``.

    >>> reduction_axes("batch"), reduction_axes("layer"), reduction_axes("instance")
    ((0, 2, 3), (1, 2, 3), (2, 3))
    >>> reduction_axes("group")
    (2, 3, 4)
    """
    _check_method(method)
    if not isinstance(ndim, int) or ndim < 2:
        raise ValueError(f"ndim must be an integer of at least 2 (N, C, *spatial), got {ndim!r}")
    spatial = tuple(range(2, ndim))
    if method == "batch":
        return (0, *spatial)
    if method == "layer":
        return (1, *spatial)
    if method == "instance":
        return spatial
    return tuple(range(2, ndim + 1))


def shared_statistics_mask(
    method: str, shape: tuple[int, ...], index: tuple[int, ...], num_groups: int | None = None
) -> np.ndarray:
    """Boolean mask, of ``shape``, of the elements normalized with the same mean and variance
    as the element at ``index`` (``shape = (N, C, *spatial)``).

    ``num_groups`` is required for ``"group"`` and must divide ``C``.
    """
    _check_method(method)
    shape, index = tuple(shape), tuple(index)
    if len(shape) < 2:
        raise ValueError(f"shape must be (N, C, *spatial), got {shape}")
    if len(index) != len(shape) or not all(0 <= i < s for i, s in zip(index, shape, strict=True)):
        raise ValueError(f"index {index} is not a position in a tensor of shape {shape}")
    channels = shape[1]
    if method == "group":
        if num_groups is None or not 1 <= num_groups <= channels or channels % num_groups:
            raise ValueError(
                f"num_groups must divide the number of channels ({channels}), got {num_groups}"
            )
    mask = np.ones(shape, dtype=bool)
    batch_index, channel_index = np.indices(shape)[:2]
    if method != "batch":  # every method except BN keeps examples apart
        mask &= batch_index == index[0]
    if method in ("batch", "instance"):  # one set per channel
        mask &= channel_index == index[1]
    if method == "group":
        group_size = channels // num_groups
        mask &= channel_index // group_size == index[1] // group_size
    return mask


def draw_norm_axes(
    axes=None, *, shape: tuple[int, int, int] = (5, 6, 4), num_groups: int = 2, index=(0, 0, 0)
):
    """Draw, for each method, an ``N x C x (H, W)`` cube with the set that shares the statistics
    of the element ``index`` shaded (spatial axes flattened into one).

    ``axes``: four 3-D matplotlib Axes, or None to make a new figure. Returns the figure.
    """
    import matplotlib.pyplot as plt

    if axes is None:
        fig, axes = plt.subplots(
            1, len(NORM_METHODS), figsize=(12, 3.4), subplot_kw={"projection": "3d"}
        )
    else:
        fig = axes[0].figure
    batch, channels, spatial = shape
    for ax, method in zip(axes, NORM_METHODS, strict=True):
        mask = shared_statistics_mask(
            method, (batch, channels, spatial, 1), (*index, 0), num_groups=num_groups
        )[..., 0]
        colors = np.where(mask[..., None], [0.20, 0.45, 0.80, 0.95], [0.85, 0.85, 0.85, 0.25])
        ax.voxels(np.ones(shape, dtype=bool), facecolors=colors, edgecolors=(0.3, 0.3, 0.3, 0.3),
                  linewidth=0.3)
        ax.set_xlabel("N", labelpad=-12)
        ax.set_ylabel("C", labelpad=-12)
        ax.set_zlabel("H, W", labelpad=-12)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_zticks([])
        ax.set_box_aspect(shape)
        title = TITLES[method] + (f" (G = {num_groups})" if method == "group" else "")
        ax.set_title(title)
    return fig
