"""The axes drawn for BN / LN / IN / GN are the axes bnlib.numpy actually normalises over."""

import itertools

import matplotlib.pyplot as plt
import numpy as np
import pytest

from bnlib.experiments.norm_axes import (
    NORM_METHODS,
    draw_norm_axes,
    reduction_axes,
    shared_statistics_mask,
)
from bnlib.numpy import batchnorm_forward, groupnorm_forward, layernorm_forward

SHAPE = (3, 4, 2, 3)  # (N, C, H, W)
NUM_GROUPS = 2


def normalise(method: str, x: np.ndarray) -> np.ndarray:
    """bnlib.numpy's forward pass for ``method`` with gamma = 1, beta = 0."""
    channels = x.shape[1]
    ones, zeros = np.ones(channels), np.zeros(channels)
    if method == "batch":
        return batchnorm_forward(x, ones, zeros)[0]
    if method == "layer":
        return layernorm_forward(x, np.ones(x.shape[1:]), np.zeros(x.shape[1:]))[0]
    if method == "instance":
        return groupnorm_forward(x, ones, zeros, num_groups=channels)[0]
    return groupnorm_forward(x, ones, zeros, num_groups=NUM_GROUPS)[0]


@pytest.mark.parametrize("method", NORM_METHODS)
def test_mask_is_exactly_the_set_of_elements_that_move_the_output(method):
    rng = np.random.default_rng(0)
    x = rng.normal(size=SHAPE)
    index = (1, 2, 0, 1)
    base = normalise(method, x)[index]
    mask = shared_statistics_mask(method, SHAPE, index, num_groups=NUM_GROUPS)
    for position in itertools.product(*map(range, SHAPE)):
        if position == index:
            continue
        moved = x.copy()
        moved[position] += 3.0
        changed = not np.isclose(normalise(method, moved)[index], base, rtol=0, atol=1e-12)
        assert changed == mask[position], f"{method}: element {position}"


@pytest.mark.parametrize(
    ("method", "expected"),
    [("batch", (0, 2, 3)), ("layer", (1, 2, 3)), ("instance", (2, 3)), ("group", (2, 3, 4))],
)
def test_reduction_axes_of_an_image_batch(method, expected):
    assert reduction_axes(method) == expected


def test_reduction_axes_follow_the_number_of_spatial_axes():
    assert reduction_axes("batch", ndim=2) == (0,)
    assert reduction_axes("layer", ndim=3) == (1, 2)
    assert reduction_axes("instance", ndim=5) == (2, 3, 4)
    assert reduction_axes("group", ndim=3) == (2, 3)


@pytest.mark.parametrize("method", NORM_METHODS)
def test_mask_size_is_the_product_of_the_reduced_axes(method):
    n, c, h, w = SHAPE
    grouped = (n, NUM_GROUPS, c // NUM_GROUPS, h, w)
    full = grouped if method == "group" else SHAPE
    expected = int(np.prod([full[axis] for axis in reduction_axes(method)]))
    mask = shared_statistics_mask(method, SHAPE, (0, 0, 0, 0), num_groups=NUM_GROUPS)
    assert mask.sum() == expected


def test_group_norm_with_one_group_is_layer_norm_and_with_c_groups_instance_norm():
    c = SHAPE[1]
    index = (2, 3, 1, 0)
    layer = shared_statistics_mask("layer", SHAPE, index)
    instance = shared_statistics_mask("instance", SHAPE, index)
    np.testing.assert_array_equal(shared_statistics_mask("group", SHAPE, index, 1), layer)
    np.testing.assert_array_equal(shared_statistics_mask("group", SHAPE, index, c), instance)


def test_wrong_arguments_are_refused_with_a_message():
    with pytest.raises(ValueError, match="method must be one of"):
        reduction_axes("weight")
    with pytest.raises(ValueError, match="ndim must be an integer of at least 2"):
        reduction_axes("batch", ndim=1)
    with pytest.raises(ValueError, match="num_groups must divide the number of channels"):
        shared_statistics_mask("group", SHAPE, (0, 0, 0, 0), num_groups=3)
    with pytest.raises(ValueError, match="num_groups must divide"):
        shared_statistics_mask("group", SHAPE, (0, 0, 0, 0))
    with pytest.raises(ValueError, match="is not a position in a tensor of shape"):
        shared_statistics_mask("batch", SHAPE, (3, 0, 0, 0))
    with pytest.raises(ValueError, match="shape must be"):
        shared_statistics_mask("batch", (4,), (0,))


def test_drawing_shades_exactly_the_visible_voxels_of_the_shared_set():
    shape = (4, 6, 3)
    fig = draw_norm_axes(shape=shape, num_groups=3)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["Batch Norm", "Layer Norm", "Instance Norm", "Group Norm (G = 3)"]
    grid = np.indices(shape)
    on_surface = np.zeros(shape, dtype=bool)
    for axis, size in enumerate(shape):
        on_surface |= (grid[axis] == 0) | (grid[axis] == size - 1)
    for ax, method in zip(fig.axes, NORM_METHODS, strict=True):
        mask = shared_statistics_mask(method, (*shape, 1), (0, 0, 0, 0), num_groups=3)[..., 0]
        colours = [c.get_facecolor()[0] for c in ax.collections]
        assert len(colours) == on_surface.sum()  # matplotlib draws only the visible voxels
        bluish = sum(colour[2] > colour[0] + 0.2 for colour in colours)
        assert bluish == (mask & on_surface).sum(), method
    plt.close(fig)
