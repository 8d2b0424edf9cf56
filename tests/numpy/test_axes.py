"""bnlib.numpy.axes: the per-channel reduction and broadcast idioms."""

import numpy as np
import pytest

import bnlib.numpy as bn


@pytest.mark.parametrize("shape,axes", [((4, 3), (0,)), ((4, 3, 5), (0, 2)),
                                        ((4, 3, 5, 6), (0, 2, 3)), ((2, 3, 1, 2, 2), (0, 2, 3, 4))])
def test_reduction_axes_are_every_axis_but_the_channel(shape, axes, rng):
    x = rng.normal(size=shape)
    assert bn.reduction_axes(x) == axes
    per_channel = x.sum(axis=bn.reduction_axes(x))
    np.testing.assert_allclose(per_channel, np.moveaxis(x, 1, 0).reshape(shape[1], -1).sum(1))


@pytest.mark.parametrize("ndim", [2, 3, 4, 5])
def test_channel_view_broadcasts_along_axis_1(ndim):
    v = np.arange(3.0)
    view = bn.channel_view(v, ndim)
    assert view.shape == (1, 3) + (1,) * (ndim - 2)
    grid = np.zeros((2, 3) + (4,) * (ndim - 2)) + view
    for channel in range(3):
        assert (grid[:, channel] == channel).all()
