"""Interactive widgets (and their static twins) for chapters 1 and 3 of the course.

Each widget has a drawing function that does the work and can be called on its own, so the
same picture appears as a static small-multiples figure on pages read without a kernel:

- :func:`draw_batch_statistics` / :func:`batch_size_widget` / :func:`plot_batch_size_grid`:
  histograms of the batch mean ``mu_B`` and batch variance ``sigma_B^2`` over many mini-batches,
  for a batch size chosen with a slider.
- :func:`draw_bn_feature` / :func:`bn_affine_widget` / :func:`plot_bn_settings_grid`:
  one feature before and after ``bnlib.numpy.batchnorm_forward``, for ``gamma``, ``beta`` and
  ``eps`` chosen with sliders.

The widgets are built with ``ipywidgets.interactive_output``, which reruns the drawing function
inside an ``Output`` widget whenever a slider moves. That needs a live Python kernel (Binder,
Live Code, a local Jupyter): on a static page the saved widget shows the output drawn for its
initial values, and its sliders change nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np

from bnlib.experiments.batch_stats import (
    expected_biased_variance,
    sample_batch_statistics,
    std_of_batch_mean,
)
from bnlib.numpy import batchnorm_forward

__all__ = [
    "draw_batch_statistics",
    "batch_size_widget",
    "plot_batch_size_grid",
    "bn_transform_feature",
    "draw_bn_feature",
    "bn_affine_widget",
    "plot_bn_settings_grid",
]

DEFAULT_BATCH_SIZES = (2, 4, 8, 16, 32, 64, 128, 256)


# ---------------------------------------------------------------------------------------------
# Chapter 1: batch statistics against batch size
# ---------------------------------------------------------------------------------------------


def _two_axes(axes: Sequence[plt.Axes], panels: str) -> tuple[plt.Axes, plt.Axes]:
    """The two Axes a side-by-side drawing needs (``panels`` names them for the message)."""
    if len(axes) != 2:
        raise ValueError(f"axes must hold 2 Axes ({panels}), got {len(axes)}")
    return axes[0], axes[1]


def _stat_ranges(population: np.ndarray) -> tuple[tuple[float, float], tuple[float, float]]:
    """Fixed x ranges for the two histograms, wide enough for N = 2, so panels compare."""
    low, high = float(population.min()), float(population.max())
    pad = 0.02 * (high - low)
    mean_range = (low - pad, high + pad)  # a batch mean always lies between min and max
    # no batch variance exceeds (max - min)^2 / 4 (half the values at each end)
    var_range = (0.0, min(3.0 * float(population.var()), 1.02 * (high - low) ** 2 / 4.0))
    return mean_range, var_range


def draw_batch_statistics(axes: Sequence[plt.Axes], population: np.ndarray, batch_size: int,
                          num_draws: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Histogram ``mu_B`` on ``axes[0]`` and the biased ``sigma_B^2`` on ``axes[1]``.

    The batches come from :func:`bnlib.experiments.batch_stats.sample_batch_statistics`.
    Vertical lines mark the population mean and variance ``sigma^2`` and the expectation
    ``(N-1)/N sigma^2`` of the batch variance (``N`` = batch size); a curve shows the normal
    density with mean ``mu`` and variance ``sigma^2 / N``.

    Returns:
        ``(means, variances)``, the ``(num_draws,)`` arrays that were plotted.
    """
    ax_mean, ax_var = _two_axes(axes, "mean, variance")
    population = np.asarray(population, dtype=np.float64)
    means, variances = sample_batch_statistics(population, batch_size, num_draws, seed=seed)
    mu, sigma2 = population.mean(), population.var()
    mean_range, var_range = _stat_ranges(population)

    ax_mean.hist(means, bins=40, range=mean_range, density=True, color="C0", alpha=0.7)
    grid = np.linspace(*mean_range, 200)
    spread = float(std_of_batch_mean(np.sqrt(sigma2), batch_size))
    normal = np.exp(-0.5 * ((grid - mu) / spread) ** 2) / (spread * np.sqrt(2.0 * np.pi))
    ax_mean.plot(grid, normal, color="k", lw=1, label=r"$\mathcal{N}(\mu, \sigma^2/N)$")
    ax_mean.axvline(mu, color="C3", label=r"population $\mu$")
    ax_mean.set_title(rf"$\mu_\mathcal{{B}}$, N = {batch_size}")
    ax_mean.set_xlim(mean_range)

    ax_var.hist(variances, bins=40, range=var_range, density=True, color="C1", alpha=0.7)
    ax_var.axvline(sigma2, color="C3", label=r"population $\sigma^2$")
    ax_var.axvline(
        float(expected_biased_variance(sigma2, batch_size)),
        color="k",
        ls="--",
        label=r"$\frac{N-1}{N}\sigma^2$",
    )
    ax_var.set_title(rf"$\sigma^2_\mathcal{{B}}$, N = {batch_size}")
    ax_var.set_xlim(var_range)
    for ax in axes:
        ax.set_yticks([])
    return means, variances


def batch_size_widget(population: np.ndarray, batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
                      num_draws: int = 2000, seed: int = 0) -> widgets.VBox:
    """A batch-size slider over ``batch_sizes`` and the two histograms of
    :func:`draw_batch_statistics` for the chosen size.

    Returns:
        ``VBox([SelectionSlider, Output])``.
    """
    if len(batch_sizes) < 2:
        raise ValueError("batch_sizes must offer at least two choices")
    slider = widgets.SelectionSlider(
        options=[int(b) for b in batch_sizes],
        value=int(batch_sizes[len(batch_sizes) // 2]),
        description="batch size N",
        continuous_update=False,
        style={"description_width": "initial"},
    )

    def update(batch_size: int) -> None:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
        draw_batch_statistics(axes, population, batch_size, num_draws=num_draws, seed=seed)
        axes[0].legend(loc="upper right", fontsize="small")
        axes[1].legend(loc="upper right", fontsize="small")
        fig.tight_layout()

    output = widgets.interactive_output(update, {"batch_size": slider})
    return widgets.VBox([slider, output])


def plot_batch_size_grid(population: np.ndarray, batch_sizes: Sequence[int] = (2, 8, 32, 128),
                         num_draws: int = 2000, seed: int = 0) -> plt.Figure:
    """Small multiples: one column per batch size, ``mu_B`` on top and ``sigma_B^2`` below."""
    fig, axes = plt.subplots(2, len(batch_sizes), figsize=(3.2 * len(batch_sizes), 5.2))
    axes = np.asarray(axes).reshape(2, len(batch_sizes))
    for column, batch_size in enumerate(batch_sizes):
        draw_batch_statistics(axes[:, column], population, batch_size, num_draws, seed)
    axes[0, 0].legend(loc="upper left", fontsize="x-small")
    axes[1, 0].legend(loc="upper right", fontsize="x-small")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# Chapter 3: gamma, beta and eps
# ---------------------------------------------------------------------------------------------


def bn_transform_feature(x: np.ndarray, feature: int, gamma: float, beta: float,
                         eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Batch-normalize ``x`` with ``bnlib.numpy.batchnorm_forward`` and return one feature.

    Every feature gets the same ``gamma`` and ``beta``; only column ``feature`` is returned.

    Args:
        x: ``(N, D)`` float batch.
        feature: column index in ``[0, D)``.

    Returns:
        ``(before, after)``: ``x[:, feature]`` and
        ``gamma * (x[:, feature] - mu_B) / sqrt(sigma_B^2 + eps) + beta``, both ``(N,)``.
    """
    if x.ndim != 2:
        raise ValueError(f"x must be a 2-D (N, D) batch, got shape {x.shape}")
    if not 0 <= feature < x.shape[1]:
        raise ValueError(f"feature must be in [0, {x.shape[1]}), got {feature}")
    dims = x.shape[1]
    out, _ = batchnorm_forward(
        x, np.full(dims, gamma, dtype=x.dtype), np.full(dims, beta, dtype=x.dtype), eps
    )
    return x[:, feature], out[:, feature]


def draw_bn_feature(axes: Sequence[plt.Axes], x: np.ndarray, feature: int, gamma: float = 1.0,
                    beta: float = 0.0, eps: float = 1e-5,
                    after_range: tuple[float, float] = (-7.0, 7.0)) -> np.ndarray:
    """Histogram feature ``feature`` of ``x`` before BN on ``axes[0]`` and after on ``axes[1]``.

    Returns the ``(N,)`` normalized feature that was plotted.
    """
    ax_before, ax_after = _two_axes(axes, "before, after")
    before, after = bn_transform_feature(x, feature, gamma, beta, eps)
    ax_before.hist(before, bins=30, color="C0", alpha=0.7)
    ax_before.set_title(
        f"before: mean {before.mean():.2f}, std {before.std():.3f}", fontsize="medium"
    )
    # bins over the data's own range: an affine map of the "before" bins, so shapes compare
    ax_after.hist(after, bins=30, color="C2", alpha=0.7)
    ax_after.axvline(beta, color="k", ls="--", lw=1)
    ax_after.set_title(
        rf"after ($\gamma$={gamma:g}, $\beta$={beta:g}, $\epsilon$={eps:.0e}): "
        f"mean {after.mean():.2f}, std {after.std():.2f}",
        fontsize="medium",
    )
    ax_after.set_xlim(after_range)
    return after


def bn_affine_widget(x: np.ndarray, feature: int) -> widgets.VBox:
    """Sliders for ``gamma``, ``beta`` and ``eps`` (log scale) and the histograms of
    :func:`draw_bn_feature` for column ``feature`` of the ``(N, D)`` batch ``x``.

    Returns:
        ``VBox([HBox([gamma, beta, eps sliders]), Output])``.
    """
    # Redraw on release only: each redraw makes a new figure.
    common = {"style": {"description_width": "initial"}, "continuous_update": False}
    gamma = widgets.FloatSlider(value=1.0, min=0.0, max=3.0, step=0.1, description="gamma",
                                **common)
    beta = widgets.FloatSlider(value=0.0, min=-3.0, max=3.0, step=0.1, description="beta",
                               **common)
    eps = widgets.FloatLogSlider(value=1e-5, base=10, min=-8, max=0, step=1, description="eps",
                                 readout_format=".0e", **common)

    def update(gamma: float, beta: float, eps: float) -> None:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.0))
        draw_bn_feature(axes, x, feature, gamma, beta, eps)
        fig.tight_layout()

    output = widgets.interactive_output(update, {"gamma": gamma, "beta": beta, "eps": eps})
    return widgets.VBox([widgets.HBox([gamma, beta, eps]), output])


def plot_bn_settings_grid(
    x: np.ndarray,
    feature: int,
    settings: Sequence[tuple[float, float, float]] = (
        (1.0, 0.0, 1e-5),
        (2.0, 1.0, 1e-5),
        (0.5, -2.0, 1e-5),
        (1.0, 0.0, 1e-1),
    ),
) -> plt.Figure:
    """Small multiples of :func:`draw_bn_feature`, one row per ``(gamma, beta, eps)`` setting."""
    outputs = [bn_transform_feature(x, feature, *setting)[1] for setting in settings]
    low = min(-3.0, *(float(out.min()) for out in outputs))
    high = max(3.0, *(float(out.max()) for out in outputs))
    pad = 0.05 * (high - low)
    fig, axes = plt.subplots(len(settings), 2, figsize=(10, 2.4 * len(settings)))
    axes = np.asarray(axes).reshape(len(settings), 2)
    for row, (gamma, beta, eps) in enumerate(settings):
        # one x range for all rows, just wide enough, so positions and widths compare
        draw_bn_feature(axes[row], x, feature, gamma, beta, eps, (low - pad, high + pad))
    fig.tight_layout()
    return fig
