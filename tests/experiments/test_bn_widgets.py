"""Tests of bnlib.experiments.bn_widgets: widget structure and what the drawings compute."""

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import pytest

from bnlib.experiments import bn_widgets
from bnlib.experiments.bn_widgets import (
    batch_size_widget,
    bn_affine_widget,
    bn_transform_feature,
    draw_batch_statistics,
    draw_bn_feature,
    plot_batch_size_grid,
    plot_bn_settings_grid,
)


@pytest.fixture
def population():
    return np.random.default_rng(0).normal(2.0, 0.5, 5000)


@pytest.fixture
def batch():
    rng = np.random.default_rng(1)
    x = rng.normal(5.0, 3.0, (64, 4))
    x[:, 3] = 0.25 + 1e-4 * rng.standard_normal(64)  # a nearly constant feature
    return x


# --- chapter 1 ------------------------------------------------------------------------------


def test_draw_batch_statistics_plots_what_it_returns(population):
    fig, axes = plt.subplots(1, 2)
    means, variances = draw_batch_statistics(axes, population, 16, num_draws=3000)
    assert means.shape == variances.shape == (3000,)
    assert means.std() == pytest.approx(0.5 / 4, rel=0.08)
    heights = np.array([patch.get_height() for patch in axes[0].patches])
    widths = np.array([patch.get_width() for patch in axes[0].patches])
    assert np.sum(heights * widths) == pytest.approx(1.0, rel=0.01)  # a density histogram
    with pytest.raises(ValueError, match="axes must hold 2 Axes"):
        draw_batch_statistics(axes[:1], population, 16)


def test_batch_size_widget_redraws_for_the_chosen_batch_size(population, monkeypatch):
    drawn = []
    original = bn_widgets.draw_batch_statistics

    def spy(axes, population, batch_size, **kwargs):
        drawn.append(batch_size)
        return original(axes, population, batch_size, **kwargs)

    monkeypatch.setattr(bn_widgets, "draw_batch_statistics", spy)
    widget = batch_size_widget(population, batch_sizes=(2, 8, 32), num_draws=100)
    slider, output = widget.children
    assert isinstance(slider, widgets.SelectionSlider)
    assert isinstance(output, widgets.Output)
    assert list(slider.options) == [2, 8, 32]
    assert drawn == [8]  # the initial picture
    slider.value = 32
    assert drawn == [8, 32]
    with pytest.raises(ValueError, match="at least two choices"):
        batch_size_widget(population, batch_sizes=(4,))


def test_plot_batch_size_grid_has_two_rows_per_batch_size(population):
    fig = plot_batch_size_grid(population, batch_sizes=(2, 8, 32), num_draws=200)
    assert len(fig.axes) == 6
    assert [ax.get_title() for ax in fig.axes[:3]] == [
        r"$\mu_\mathcal{B}$, N = 2",
        r"$\mu_\mathcal{B}$, N = 8",
        r"$\mu_\mathcal{B}$, N = 32",
    ]


# --- chapter 3 ------------------------------------------------------------------------------


@pytest.mark.parametrize(("gamma", "beta"), [(1.0, 0.0), (2.5, -1.0), (0.3, 2.0)])
def test_bn_transform_feature_gives_mean_beta_and_std_gamma(batch, gamma, beta):
    before, after = bn_transform_feature(batch, 0, gamma, beta, eps=1e-5)
    np.testing.assert_array_equal(before, batch[:, 0])
    assert after.mean() == pytest.approx(beta, abs=1e-9)
    var = before.var()
    assert after.std() == pytest.approx(gamma * np.sqrt(var / (var + 1e-5)), rel=1e-9)


def test_eps_dominates_a_nearly_constant_feature(batch):
    var = batch[:, 3].var()  # about 1e-8
    _, tiny_eps = bn_transform_feature(batch, 3, 1.0, 0.0, eps=1e-12)
    _, usual_eps = bn_transform_feature(batch, 3, 1.0, 0.0, eps=1e-5)
    assert tiny_eps.std() == pytest.approx(1.0, rel=1e-3)  # the noise is blown up to unit std
    assert usual_eps.std() == pytest.approx(np.sqrt(var / (var + 1e-5)), rel=1e-6)
    assert usual_eps.std() < 0.05


def test_bn_transform_feature_rejects_bad_input(batch):
    with pytest.raises(ValueError, match=r"feature must be in \[0, 4\), got 4"):
        bn_transform_feature(batch, 4, 1.0, 0.0, 1e-5)
    with pytest.raises(ValueError, match="x must be a 2-D"):
        bn_transform_feature(batch[:, 0], 0, 1.0, 0.0, 1e-5)


def test_bn_affine_widget_passes_slider_values_to_the_drawing(batch, monkeypatch):
    drawn = []
    original = bn_widgets.draw_bn_feature

    def spy(axes, x, feature, gamma, beta, eps):
        drawn.append((feature, gamma, beta, eps))
        return original(axes, x, feature, gamma, beta, eps)

    monkeypatch.setattr(bn_widgets, "draw_bn_feature", spy)
    widget = bn_affine_widget(batch, feature=2)
    sliders, output = widget.children
    gamma, beta, eps = sliders.children
    assert isinstance(output, widgets.Output)
    assert [s.description for s in (gamma, beta, eps)] == ["gamma", "beta", "eps"]
    assert drawn == [(2, 1.0, 0.0, pytest.approx(1e-5))]
    gamma.value = 2.0
    beta.value = -1.0
    assert drawn[-1][:3] == (2, 2.0, -1.0)


def test_draw_bn_feature_and_grid(batch):
    fig, axes = plt.subplots(1, 2)
    after = draw_bn_feature(axes, batch, 1, gamma=2.0, beta=1.0)
    assert after.mean() == pytest.approx(1.0, abs=1e-9)
    fig = plot_bn_settings_grid(batch, 1, settings=((1.0, 0.0, 1e-5), (2.0, 1.0, 1e-1)))
    assert len(fig.axes) == 4
    after_axes = fig.axes[1::2]
    assert after_axes[0].get_xlim() == after_axes[1].get_xlim()  # one range: widths compare
    low, high = after_axes[1].get_xlim()
    _, widest = bn_transform_feature(batch, 1, 2.0, 1.0, 1e-1)
    assert low <= widest.min() and widest.max() <= high
