"""Tests of bnlib.experiments.batch_stats: mini-batch training and batch statistics."""

import numpy as np
import pytest

from bnlib.experiments.batch_stats import (
    SoftmaxHistory,
    batch_statistics,
    draw_batches,
    estimator_spread,
    expected_biased_variance,
    plot_estimator_spread,
    plot_training_histories,
    predicted_spread,
    sample_batch_statistics,
    sampled_spread,
    softmax_cross_entropy,
    std_of_batch_mean,
    std_of_batch_variance,
    train_softmax_regression,
)


@pytest.fixture
def blobs():
    """Three well separated Gaussian classes in 4-D: (90, 4) float32 and (90,) int labels."""
    rng = np.random.default_rng(1)
    centers = rng.normal(0.0, 3.0, (3, 4))
    y = np.repeat(np.arange(3), 30)
    x = (centers[y] + rng.normal(0.0, 0.5, (90, 4))).astype(np.float32)
    return x, y


# --- softmax regression ---------------------------------------------------------------------


def test_softmax_cross_entropy_of_zero_logits_is_log_k():
    loss, dlogits = softmax_cross_entropy(np.zeros((5, 4)), np.array([0, 1, 2, 3, 0]))
    assert loss == pytest.approx(np.log(4.0))
    assert dlogits.shape == (5, 4)
    np.testing.assert_allclose(dlogits.sum(axis=1), 0.0, atol=1e-12)


def test_softmax_cross_entropy_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(6, 3)), rng.integers(0, 3, 6)
    _, dlogits = softmax_cross_entropy(logits, labels)
    step = 1e-6
    numeric = np.zeros_like(logits)
    for index in np.ndindex(logits.shape):
        shifted = logits.copy()
        shifted[index] += step
        plus, _ = softmax_cross_entropy(shifted, labels)
        shifted[index] -= 2 * step
        minus, _ = softmax_cross_entropy(shifted, labels)
        numeric[index] = (plus - minus) / (2 * step)
    np.testing.assert_allclose(dlogits, numeric, atol=1e-8)


def test_softmax_cross_entropy_is_stable_for_huge_logits():
    loss, _ = softmax_cross_entropy(np.array([[1000.0, 0.0]]), np.array([1]))
    assert loss == pytest.approx(1000.0)


def test_softmax_cross_entropy_rejects_bad_shapes():
    with pytest.raises(ValueError, match="logits must be 2-D"):
        softmax_cross_entropy(np.zeros(3), np.zeros(3, dtype=int))
    with pytest.raises(ValueError, match=r"labels must have shape \(2,\)"):
        softmax_cross_entropy(np.zeros((2, 3)), np.zeros(3, dtype=int))


@pytest.mark.parametrize("batch_size", [1, 16, 90])
def test_training_lowers_the_loss_and_counts_updates(blobs, batch_size):
    x, y = blobs
    history = train_softmax_regression(
        x, y, batch_size, epochs=3, learning_rate=0.1, progress=False
    )
    assert history.loss[0] == pytest.approx(np.log(3.0))  # zero weights: uniform prediction
    assert history.loss[-1] < 0.8 * history.loss[0]
    assert history.updates[-1] == 3 * -(-90 // batch_size)
    assert history.epochs[-1] == pytest.approx(3.0)
    assert np.all(np.diff(history.seconds) >= 0)


def test_evals_per_epoch_sets_the_number_of_records(blobs):
    x, y = blobs
    history = train_softmax_regression(
        x, y, 10, epochs=2, learning_rate=0.1, evals_per_epoch=3, progress=False
    )
    assert len(history.loss) == 1 + 2 * 3
    np.testing.assert_allclose(history.epochs, [0, 1 / 3, 2 / 3, 1, 4 / 3, 5 / 3, 2], atol=0.05)


def test_history_finds_when_a_loss_is_reached_and_the_loss_after_some_updates():
    history = SoftmaxHistory(batch_size=4, learning_rate=0.1, epochs=[0, 1, 2, 3],
                             updates=[0, 10, 20, 30], seconds=[0.0, 0.1, 0.2, 0.3],
                             loss=[2.0, 1.0, 0.5, 0.6])
    assert history.first_reaching(1.0) == 1
    assert history.first_reaching(0.55) == 2
    assert history.first_reaching(0.4) is None
    assert history.loss_after(10) == 1.0
    assert history.loss_after(11) == 0.5
    with pytest.raises(ValueError, match="only 30 updates, not 31"):
        history.loss_after(31)


def test_full_batch_training_is_one_gradient_step_per_epoch(blobs):
    x, y = blobs
    history = train_softmax_regression(x, y, 90, epochs=1, learning_rate=0.5, progress=False)
    # one step from zero weights: W = -lr * x^T (softmax(0) - onehot) / N
    grad = np.full((90, 3), 1 / 3)
    grad[np.arange(90), y] -= 1.0
    weights = -0.5 * x.T @ grad / 90
    bias = -0.5 * grad.sum(axis=0) / 90
    expected, _ = softmax_cross_entropy(x @ weights + bias, y)
    assert history.loss[-1] == pytest.approx(expected, rel=1e-6)


def test_training_rejects_bad_arguments(blobs):
    x, y = blobs
    with pytest.raises(ValueError, match="batch_size must be at most the number of examples 90"):
        train_softmax_regression(x, y, 91, 1, 0.1, progress=False)
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        train_softmax_regression(x, y, 0, 1, 0.1, progress=False)
    with pytest.raises(TypeError, match="batch_size must be an int"):
        train_softmax_regression(x, y, 2.0, 1, 0.1, progress=False)
    with pytest.raises(ValueError, match="learning_rate must be positive"):
        train_softmax_regression(x, y, 2, 1, 0.0, progress=False)
    with pytest.raises(ValueError, match=r"y must have shape \(90,\)"):
        train_softmax_regression(x, y[:5], 2, 1, 0.1, progress=False)


def test_plot_training_histories_draws_one_line_per_run_and_panel(blobs):
    x, y = blobs
    runs = [train_softmax_regression(x, y, b, 1, 0.1, progress=False) for b in (1, 90)]
    fig = plot_training_histories(runs)
    assert [len(ax.lines) for ax in fig.axes] == [2, 2, 2]


# --- batch statistics -----------------------------------------------------------------------


@pytest.fixture
def gaussian_population():
    return np.random.default_rng(2).normal(3.0, 2.0, 50_000)


def test_sample_batch_statistics_computes_mean_and_biased_variance():
    population = np.array([0.0, 1.0, 5.0])
    means, variances = sample_batch_statistics(population, 4, 50, seed=3)
    # recompute the same draws: the generator is seeded identically
    batches = population[np.random.default_rng(3).integers(0, 3, size=(50, 4))]
    np.testing.assert_allclose(means, batches.sum(axis=1) / 4)
    np.testing.assert_allclose(
        variances, ((batches - batches.mean(axis=1, keepdims=True)) ** 2).sum(axis=1) / 4
    )


def test_batch_statistics_are_each_rows_mean_and_biased_variance():
    batches = np.array([[1.0, 3.0], [2.0, 2.0], [0.0, 6.0]])
    means, variances = batch_statistics(batches)
    np.testing.assert_allclose(means, [2.0, 2.0, 3.0])
    np.testing.assert_allclose(variances, [1.0, 0.0, 9.0])  # divided by N = 2, not N - 1


def test_batch_statistics_rejects_bad_input():
    with pytest.raises(TypeError, match="batches must be a numpy array, got list"):
        batch_statistics([[1.0, 2.0]])
    with pytest.raises(ValueError, match=r"batches must be 2-D \(num_draws, N\).*got shape \(3,\)"):
        batch_statistics(np.ones(3))
    with pytest.raises(TypeError, match="batches must hold floats, got dtype int64"):
        batch_statistics(np.ones((2, 2), dtype=np.int64))


def test_draw_batches_is_seeded_and_draws_from_the_population():
    population = np.array([0.0, 1.0, 5.0])
    batches = draw_batches(population, 4, 30, seed=1)
    assert batches.shape == (30, 4) and set(np.unique(batches)) <= {0.0, 1.0, 5.0}
    np.testing.assert_array_equal(batches, draw_batches(population, 4, 30, seed=1))
    assert not np.array_equal(batches, draw_batches(population, 4, 30, seed=2))


def test_sampled_spread_is_the_spread_over_the_rows():
    batches = np.array([[1.0, 3.0], [2.0, 2.0], [0.0, 6.0]])
    std_mean, mean_var, std_var = sampled_spread(batches)
    assert std_mean == pytest.approx(np.std([2.0, 2.0, 3.0]))  # divided by the 3 draws
    assert mean_var == pytest.approx(10.0 / 3)
    assert std_var == pytest.approx(np.std([1.0, 0.0, 9.0]))


def test_predicted_spread_evaluates_the_formulas_with_the_population_moments():
    population = np.array([1.0, 2.0, 2.0, 7.0])  # mean 3, sigma^2 = 5.5, mu4 = 68.5
    sizes = np.array([2, 5])
    std_mean, mean_var, std_var = predicted_spread(population, sizes)
    np.testing.assert_allclose(std_mean, np.sqrt(5.5 / sizes))
    np.testing.assert_allclose(mean_var, (sizes - 1) / sizes * 5.5)
    unbiased = (68.5 - (sizes - 3) / (sizes - 1) * 5.5**2) / sizes
    np.testing.assert_allclose(std_var, (sizes - 1) / sizes * np.sqrt(unbiased))


@pytest.mark.parametrize("batch_size", [2, 8, 64])
def test_std_of_batch_mean_scales_like_sigma_over_sqrt_b(gaussian_population, batch_size):
    means, _ = sample_batch_statistics(gaussian_population, batch_size, 8000, seed=batch_size)
    expected = std_of_batch_mean(gaussian_population.std(), batch_size)
    assert means.std() == pytest.approx(expected, rel=0.05)
    assert means.mean() == pytest.approx(gaussian_population.mean(), abs=4 * expected / 89)


@pytest.mark.parametrize("batch_size", [2, 4, 32])
def test_biased_variance_has_expectation_b_minus_1_over_b(gaussian_population, batch_size):
    _, variances = sample_batch_statistics(gaussian_population, batch_size, 20000, seed=7)
    sigma2 = gaussian_population.var()
    assert variances.mean() == pytest.approx(expected_biased_variance(sigma2, batch_size), rel=0.03)
    # the unbiased version, B/(B-1) times larger, averages to sigma^2
    assert (variances * batch_size / (batch_size - 1)).mean() == pytest.approx(sigma2, rel=0.03)


@pytest.mark.parametrize("population_seed", [0, 1])
@pytest.mark.parametrize("batch_size", [2, 8, 64])
def test_std_of_batch_variance_matches_formula_also_for_skewed_data(population_seed, batch_size):
    rng = np.random.default_rng(population_seed)
    population = rng.exponential(1.0, 50_000) if population_seed else rng.normal(0, 1, 50_000)
    _, variances = sample_batch_statistics(population, batch_size, 20000, seed=11)
    sigma2 = population.var()
    mu4 = np.mean((population - population.mean()) ** 4)
    assert variances.std() == pytest.approx(
        std_of_batch_variance(sigma2, mu4, batch_size), rel=0.08
    )


def test_std_of_batch_variance_reduces_to_gaussian_formula():
    sizes = np.array([2, 5, 100])
    unbiased = std_of_batch_variance(4.0, 3 * 4.0**2, sizes, biased=False)
    np.testing.assert_allclose(unbiased, np.sqrt(2 * 4.0**2 / (sizes - 1)))
    biased = std_of_batch_variance(4.0, 3 * 4.0**2, sizes)
    np.testing.assert_allclose(biased, (sizes - 1) / sizes * unbiased)
    with pytest.raises(ValueError, match="batch_size >= 2"):
        std_of_batch_variance(1.0, 3.0, 1)


def test_estimator_spread_agrees_with_theory(gaussian_population):
    spread = estimator_spread(gaussian_population, [2, 16, 128], num_draws=4000)
    np.testing.assert_allclose(spread["std_mean"], spread["theory_std_mean"], rtol=0.08)
    np.testing.assert_allclose(spread["std_var"], spread["theory_std_var"], rtol=0.1)
    np.testing.assert_allclose(spread["mean_var"], spread["theory_mean_var"], rtol=0.05)
    fig = plot_estimator_spread(spread)
    assert len(fig.axes) == 2


def test_sample_batch_statistics_rejects_bad_input():
    with pytest.raises(TypeError, match="population must be a numpy array, got list"):
        sample_batch_statistics([1.0, 2.0], 2, 10)
    with pytest.raises(ValueError, match=r"population must be 1-D, got shape \(2, 2\)"):
        sample_batch_statistics(np.ones((2, 2)), 2, 10)
    with pytest.raises(TypeError, match="population must hold floats, got dtype int64"):
        sample_batch_statistics(np.arange(4, dtype=np.int64), 2, 10)
    with pytest.raises(ValueError, match="batch_size must be at least 1, got 0"):
        sample_batch_statistics(np.ones(4), 0, 10)
    with pytest.raises(ValueError, match="num_draws must be at least 1"):
        sample_batch_statistics(np.ones(4), 2, 0)
