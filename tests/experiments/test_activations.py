"""Tests of bnlib.experiments.activations: covariate shift, sigmoid saturation and drift."""

import numpy as np
import pytest

from bnlib.experiments.activations import (
    fit_polynomial,
    gaussian_density_ratio,
    make_covariate_shift_data,
    plot_covariate_shift,
    plot_percentiles,
    plot_sigmoid,
    plot_stack_gradients,
    saturated_fraction,
    sigmoid,
    sigmoid_derivative,
    sigmoid_stack_forward,
    sigmoid_stack_gradients,
    train_sigmoid_mlp,
    true_function,
)

# --- sigmoid --------------------------------------------------------------------------------


def test_sigmoid_matches_formula_and_keeps_dtype():
    z = np.linspace(-20, 20, 101)
    np.testing.assert_allclose(sigmoid(z), 1.0 / (1.0 + np.exp(-z)), rtol=1e-12)
    assert sigmoid(z.astype(np.float32)).dtype == np.float32


def test_sigmoid_does_not_overflow_for_huge_inputs():
    # the project turns RuntimeWarnings from bnlib into errors, so an overflow would fail here
    np.testing.assert_array_equal(sigmoid(np.array([-1000.0, 1000.0])), [0.0, 1.0])


def test_sigmoid_derivative_is_at_most_a_quarter_and_matches_finite_differences():
    z = np.linspace(-10, 10, 2001)
    derivative = sigmoid_derivative(z)
    assert derivative.max() == pytest.approx(0.25)
    assert z[derivative.argmax()] == pytest.approx(0.0)
    numeric = (sigmoid(z + 1e-6) - sigmoid(z - 1e-6)) / 2e-6
    np.testing.assert_allclose(derivative, numeric, atol=1e-8)


# --- covariate shift ------------------------------------------------------------------------


def test_covariate_shift_data_follows_the_requested_laws():
    data = make_covariate_shift_data(n_train=20000, n_test=20000, noise_std=0.0, seed=1)
    assert data.x_train.mean() == pytest.approx(0.5, abs=0.02)
    assert data.x_train.std() == pytest.approx(0.5, rel=0.02)
    assert data.x_test.mean() == pytest.approx(0.0, abs=0.02)
    assert data.x_test.std() == pytest.approx(0.3, rel=0.02)
    # same P(y | x) in both sets: without noise y is exactly f(x)
    np.testing.assert_allclose(data.y_train, true_function(data.x_train))
    np.testing.assert_allclose(data.y_test, true_function(data.x_test))


def test_density_ratio_is_the_ratio_of_the_two_gaussian_densities():
    data = make_covariate_shift_data(seed=0)
    x = np.array([0.0, 0.5, 1.0])
    p_test = np.exp(-0.5 * (x / 0.3) ** 2) / (0.3 * np.sqrt(2 * np.pi))
    p_train = np.exp(-0.5 * ((x - 0.5) / 0.5) ** 2) / (0.5 * np.sqrt(2 * np.pi))
    np.testing.assert_allclose(gaussian_density_ratio(data, x), p_test / p_train)


def test_fit_polynomial_recovers_a_line_and_ignores_zero_weight_points():
    x = np.linspace(-1, 1, 20)
    y = 3.0 * x - 1.0
    np.testing.assert_allclose(fit_polynomial(x, y), [3.0, -1.0], atol=1e-12)
    corrupted = y.copy()
    corrupted[:5] += 100.0
    weights = np.ones_like(x)
    weights[:5] = 0.0
    np.testing.assert_allclose(
        fit_polynomial(x, corrupted, weights=weights), [3.0, -1.0], atol=1e-10
    )
    with pytest.raises(ValueError, match="weights must be non-negative"):
        fit_polynomial(x, y, weights=-weights)
    with pytest.raises(ValueError, match="x and y must be 1-D of equal shape"):
        fit_polynomial(x, y[:3])


def test_importance_weighting_lowers_the_test_error_of_a_line():
    errors = []
    for seed in range(5):
        data = make_covariate_shift_data(seed=seed)
        plain = fit_polynomial(data.x_train, data.y_train)
        weighted = fit_polynomial(
            data.x_train, data.y_train, weights=gaussian_density_ratio(data, data.x_train)
        )
        errors.append(
            [np.mean((np.polyval(c, data.x_test) - data.y_test) ** 2) for c in (plain, weighted)]
        )
    plain_error, weighted_error = np.mean(errors, axis=0)
    assert weighted_error < plain_error


# --- gradients through sigmoid stacks -------------------------------------------------------


def test_saturated_fraction_counts_both_tails_strictly_beyond_the_threshold():
    z = np.array([[-5.0, -4.0, 0.0], [3.9, 4.0, 4.1]])
    assert saturated_fraction(z) == pytest.approx(2 / 6)  # -5 and 4.1; exactly 4 is not beyond
    assert saturated_fraction(z, threshold=3.0) == pytest.approx(5 / 6)
    assert sigmoid_derivative(np.array(4.0)) < 0.018  # why 4 is the default


def test_saturated_fraction_rejects_bad_input():
    with pytest.raises(TypeError, match="z must be a float numpy array, got list"):
        saturated_fraction([1.0, 5.0])
    with pytest.raises(TypeError, match="got ndarray of dtype int64"):
        saturated_fraction(np.arange(3))
    with pytest.raises(ValueError, match="z is empty"):
        saturated_fraction(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="threshold must be positive, got 0"):
        saturated_fraction(np.ones(3), threshold=0)


@pytest.mark.parametrize("use_batchnorm", [False, True])
def test_sigmoid_stack_forward_feeds_each_layer_the_sigmoid_of_the_last(use_batchnorm):
    rng = np.random.default_rng(0)
    h = rng.standard_normal((32, 8))
    weights = rng.normal(0.0, 4.0 / np.sqrt(8), (3, 8, 8))
    preacts, caches = sigmoid_stack_forward(h, weights, use_batchnorm)
    assert len(preacts) == len(caches) == 3
    assert all((cache is None) != use_batchnorm for cache in caches)
    inputs = [h] + [sigmoid(z) for z in preacts[:-1]]
    for layer_input, w, z in zip(inputs, weights, preacts, strict=True):
        expected = layer_input @ w
        if use_batchnorm:
            expected = (expected - expected.mean(axis=0)) / np.sqrt(expected.var(axis=0) + 1e-5)
        np.testing.assert_allclose(z, expected, rtol=1e-10, atol=1e-12)


def test_sigmoid_stack_forward_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"h must be 2-D \(N, D\), got shape \(4,\)"):
        sigmoid_stack_forward(np.ones(4), np.ones((1, 4, 4)))
    with pytest.raises(ValueError, match=r"each weight must have shape \(4, 4\), got \(4, 3\)"):
        sigmoid_stack_forward(np.ones((2, 4)), np.ones((1, 4, 3)))


def test_sigmoid_stack_gradient_vanishes_towards_the_input_without_bn():
    result = sigmoid_stack_gradients(depth=8, width=64, weight_std=1.0, seed=0)
    assert np.all(result["mean_derivative"] <= 0.25)
    assert np.all(np.diff(result["grad_rms"]) > 0)  # smaller at every layer closer to the input
    assert result["grad_rms"][0] < 1e-3 * result["grad_rms"][-1]


def test_batchnorm_keeps_sigmoid_inputs_standardized_but_not_above_a_quarter():
    plain = sigmoid_stack_gradients(depth=6, width=64, weight_std=8.0, seed=0)
    with_bn = sigmoid_stack_gradients(depth=6, width=64, weight_std=8.0, use_batchnorm=True, seed=0)
    np.testing.assert_allclose(with_bn["preact_std"], 1.0, rtol=1e-3)
    assert np.all(with_bn["saturated_fraction"] < plain["saturated_fraction"])
    assert np.all(with_bn["mean_derivative"] > plain["mean_derivative"])
    assert np.all(with_bn["mean_derivative"] <= 0.25)


def test_sigmoid_stack_rejects_bad_sizes():
    with pytest.raises(ValueError, match="batch_size >= 2"):
        sigmoid_stack_gradients(batch_size=1)


# --- drift while training -------------------------------------------------------------------


@pytest.fixture
def small_problem():
    rng = np.random.default_rng(0)
    x = rng.random((120, 8))
    y = (x[:, 0] > x[:, 1]).astype(np.int64)
    return x, y


def test_no_learning_means_no_drift(small_problem):
    x, y = small_problem
    record = train_sigmoid_mlp(
        x, y, x[:40], y[:40], hidden=(6, 5), steps=5, learning_rate=0.0, progress=False
    )
    assert record.unit_percentiles.shape == (5, 3)
    assert record.layer_percentiles.shape == (5, 3)
    np.testing.assert_allclose(record.unit_percentiles, np.tile(record.unit_percentiles[0], (5, 1)))
    assert np.all(np.diff(record.layer_percentiles, axis=1) >= 0)  # 15th <= 50th <= 85th


def test_training_moves_the_percentiles_and_lowers_the_loss(small_problem):
    x, y = small_problem
    record = train_sigmoid_mlp(
        x,
        y,
        x[:40],
        y[:40],
        hidden=(16,),
        steps=200,
        batch_size=30,
        learning_rate=1.0,
        init_std=0.3,
        progress=False,
    )
    assert not np.allclose(record.unit_percentiles[-1], record.unit_percentiles[0])
    assert record.loss[-20:].mean() < record.loss[:20].mean()
    assert record.layer == 0
    fig = plot_percentiles(record)
    assert len(fig.axes) == 2


def test_train_sigmoid_mlp_rejects_bad_arguments(small_problem):
    x, y = small_problem
    with pytest.raises(ValueError, match=r"unit must be in \[0, 5\), got 7"):
        train_sigmoid_mlp(x, y, x, y, hidden=(5,), steps=1, unit=7, progress=False)
    with pytest.raises(ValueError, match="equal D"):
        train_sigmoid_mlp(x, y, x[:, :3], y, hidden=(5,), steps=1, progress=False)


def test_plots_draw_the_requested_curves():
    data = make_covariate_shift_data(seed=0)
    fits = {
        "plain": fit_polynomial(data.x_train, data.y_train),
        "weighted": fit_polynomial(
            data.x_train, data.y_train, weights=gaussian_density_ratio(data, data.x_train)
        ),
    }
    fig = plot_covariate_shift(data, fits)
    assert len(fig.axes[0].lines) == 1 + len(fits)  # f(x) and one line per fit
    fig = plot_sigmoid()
    derivative_line = fig.axes[0].lines[1]
    assert derivative_line.get_ydata().max() == pytest.approx(0.25, abs=1e-3)
    runs = {
        "a": sigmoid_stack_gradients(depth=3, width=8),
        "b": sigmoid_stack_gradients(depth=3, width=8, use_batchnorm=True),
    }
    fig = plot_stack_gradients(runs)
    assert [len(ax.lines) for ax in fig.axes] == [2, 3, 2]  # middle panel adds the 1/4 line
