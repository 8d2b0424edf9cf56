"""The momentum widget of the inference chapter: a running mean chasing the true mean.

Batches of one feature are drawn from N(true_mean, true_std^2); a PyTorch-convention
``bnlib.numpy.BatchNorm`` tracks them and we plot its ``running_mean`` after every batch.
"""

from __future__ import annotations

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from bnlib.experiments.running_stats import RunningStatsHistory, running_stats_history

__all__ = [
    "synthetic_batches",
    "running_mean_trajectory",
    "plot_running_mean",
    "momentum_grid",
    "momentum_widget",
]


def synthetic_batches(
    num_batches: int = 150,
    batch_size: int = 16,
    true_mean: float = 3.0,
    true_std: float = 1.0,
    seed: int = 0,
) -> list[np.ndarray]:
    """``num_batches`` arrays of shape (batch_size, 1), i.i.d. from N(true_mean, true_std^2)."""
    rng = np.random.default_rng(seed)
    return [rng.normal(true_mean, true_std, size=(batch_size, 1)) for _ in range(num_batches)]


def running_mean_trajectory(
    momentum: float | None, num_batches: int = 150, batch_size: int = 16, seed: int = 0, **kw
) -> RunningStatsHistory:
    """Running statistics of ``BatchNorm(1, momentum=momentum)`` over ``synthetic_batches``."""
    batches = synthetic_batches(num_batches, batch_size, seed=seed, **kw)
    return running_stats_history(batches, momentum=momentum)


def plot_running_mean(
    momentum: float | None,
    ax: Axes | None = None,
    num_batches: int = 150,
    batch_size: int = 16,
    true_mean: float = 3.0,
    seed: int = 0,
) -> Axes:
    """Plot batch means (dots), the running mean (line) and the true mean (dashed)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    history = running_mean_trajectory(momentum, num_batches, batch_size, seed, true_mean=true_mean)
    steps = np.arange(num_batches + 1)
    ax.plot(steps[1:], history.batch_mean[:, 0], ".", color="0.6", ms=4, label="batch mean")
    ax.plot(steps, history.mean[:, 0], color="tab:blue", lw=2, label="running_mean")
    ax.axhline(true_mean, color="tab:red", ls="--", lw=1, label="true mean")
    # The error over the second half of the run: noise left once the start-up bias has decayed.
    late_error = np.abs(history.mean[num_batches // 2 :, 0] - true_mean).mean()
    name = "None (cumulative)" if momentum is None else f"{momentum:g}"
    ax.set_title(f"momentum = {name}: mean |error| late = {late_error:.3f}", fontsize=10)
    ax.set_xlabel("batches seen")
    ax.set_ylim(-0.3, true_mean + 1.5)
    return ax


def momentum_grid(momenta: tuple[float | None, ...] = (0.01, 0.1, 0.5), **kw) -> Figure:
    """Small multiples of :func:`plot_running_mean`, one panel per momentum."""
    fig, axes = plt.subplots(
        1, len(momenta), figsize=(4.2 * len(momenta), 3.4), sharey=True, layout="constrained"
    )
    for ax, momentum in zip(np.atleast_1d(axes), momenta, strict=True):
        plot_running_mean(momentum, ax=ax, **kw)
    np.atleast_1d(axes)[0].legend(loc="lower right", fontsize=8)
    return fig


def momentum_widget(num_batches: int = 150, batch_size: int = 16) -> widgets.VBox:
    """A log-scale momentum slider and a batch-size slider redrawing :func:`plot_running_mean`."""
    momentum = widgets.FloatLogSlider(
        value=0.1, base=10, min=-3, max=0, step=0.1, description="momentum"
    )
    size = widgets.IntSlider(value=batch_size, min=2, max=128, step=2, description="batch size")

    def draw(momentum: float, batch_size: int) -> None:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        plot_running_mean(momentum, ax=ax, num_batches=num_batches, batch_size=batch_size)
        ax.legend(loc="lower right", fontsize=8)
        plt.show()

    output = widgets.interactive_output(draw, {"momentum": momentum, "batch_size": size})
    return widgets.VBox([widgets.HBox([momentum, size]), output])
