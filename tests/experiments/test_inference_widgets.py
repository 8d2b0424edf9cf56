"""Tests of bnlib.experiments.inference_widgets: the running mean under each momentum."""

import ipywidgets as widgets
import numpy as np

from bnlib.experiments.inference_widgets import (
    momentum_grid,
    momentum_widget,
    running_mean_trajectory,
    synthetic_batches,
)


def test_momentum_one_tracks_the_last_batch_and_small_momentum_lags():
    batches = synthetic_batches(num_batches=20, batch_size=4, true_mean=3.0)
    np.testing.assert_allclose(
        running_mean_trajectory(1.0, 20, 4).mean[1:, 0], [b.mean() for b in batches]
    )
    slow = running_mean_trajectory(0.01, 20, 4)
    assert slow.mean[-1, 0] < 1.0  # started at 0, far from the true mean 3 after 20 steps


def test_momentum_grid_and_widget_build():
    fig = momentum_grid((0.01, 0.1, 0.5), num_batches=30)
    assert len(fig.axes) == 3
    assert "0.5" in fig.axes[2].get_title()
    widget = momentum_widget(num_batches=20)
    assert isinstance(widget, widgets.VBox)
    sliders = widget.children[0].children
    assert [s.description for s in sliders] == ["momentum", "batch size"]
