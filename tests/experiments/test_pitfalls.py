"""Experiments of the myths-and-pitfalls chapter."""

import matplotlib.pyplot as plt
import numpy as np
import pytest

from bnlib.experiments.pitfalls import (
    RegularizationResult,
    bn_cost_model,
    finetune_small_batches,
    identity_parameters,
    normalize_with_unbiased_variance,
    normalize_with_variance,
    plot_hidden_distribution,
    plot_regularization,
    plot_skewed_feature,
    regularization_experiment,
    skewness_before_after,
    track_hidden_distribution,
)
from bnlib.experiments.running_stats import train_mlp
from bnlib.numpy import batchnorm_forward


def test_dividing_by_the_variance_leaves_std_one_over_sigma():
    rng = np.random.default_rng(0)
    x = rng.normal(0.0, 1.0, size=(4000, 3)) * np.array([0.1, 1.0, 10.0])
    wrong = normalize_with_variance(x)
    np.testing.assert_allclose(wrong.std(axis=0), 1 / x.std(axis=0), rtol=1e-2)
    right, _ = batchnorm_forward(x, np.ones(3), np.zeros(3))
    np.testing.assert_allclose(right.std(axis=0), 1.0, rtol=1e-3)


@pytest.mark.parametrize("m", [2, 4, 16])
def test_unbiased_variance_normalization_gives_variance_m_minus_one_over_m(m):
    x = np.random.default_rng(m).normal(size=(m, 5))
    wrong = normalize_with_unbiased_variance(x, eps=0.0)
    np.testing.assert_allclose(wrong.var(axis=0), (m - 1) / m, rtol=1e-12)
    right, _ = batchnorm_forward(x, np.ones(5), np.zeros(5), eps=1e-12)
    np.testing.assert_allclose(right.var(axis=0), 1.0, rtol=1e-9)


@pytest.mark.parametrize("shape", [(6, 3), (4, 2, 3, 5)])
def test_identity_parameters_make_bn_give_the_batch_back(shape):
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape) * rng.uniform(0.1, 5.0, shape[1]).reshape(
        (1, -1) + (1,) * (len(shape) - 2)) + 3.0
    gamma, beta = identity_parameters(x, eps=0.25)
    axes = (0, *range(2, len(shape)))
    np.testing.assert_allclose(gamma, np.sqrt(x.var(axis=axes) + 0.25), rtol=1e-12)
    np.testing.assert_allclose(beta, x.mean(axis=axes), rtol=1e-12)
    out, _ = batchnorm_forward(x, gamma, beta, eps=0.25)
    np.testing.assert_allclose(out, x, rtol=1e-12, atol=1e-12)


def test_identity_parameters_reject_a_single_axis():
    with pytest.raises(ValueError, match=r"x must be a numpy array of shape \(N, C\)"):
        identity_parameters(np.ones(4))


def test_bn_keeps_the_skewness_of_a_skewed_feature():
    x = np.random.default_rng(0).exponential(size=(5000, 2))
    before, after = skewness_before_after(x)
    assert np.all(before > 1.5)  # an exponential has skewness 2
    np.testing.assert_allclose(after, before, rtol=1e-9)


def test_cost_model_counts_flops_and_bytes():
    cost = bn_cost_model(batch=8, d_in=16, d_out=4, itemsize=4)
    assert cost["linear_flops"] == 2 * 8 * 16 * 4
    assert cost["linear_bytes"] == 4 * (8 * 16 + 16 * 4 + 8 * 4)
    # BN: 6 flops and 3 passes per element in training, 2 and 2 at inference (the byte models)
    assert cost["bn_train_flops"] == 6 * 8 * 4 and cost["bn_train_bytes"] == 4 * 3 * 8 * 4
    assert cost["bn_eval_flops"] == 2 * 8 * 4 and cost["bn_eval_bytes"] == 4 * 2 * 8 * 4


def test_regularization_experiment_runs_every_configuration(data):
    results = regularization_experiment(data, batch_sizes=(8, 32), seeds=(0,), steps=60)
    assert [(r.batch_size, r.use_bn) for r in results] == [
        (8, False),
        (8, True),
        (32, False),
        (32, True),
    ]
    for r in results:
        assert 0.5 < r.test_accuracy <= 1.0
        assert r.gap == pytest.approx(r.train_accuracy - r.test_accuracy)
    fig = plot_regularization(results)
    assert len(fig.axes) == 2
    plt.close(fig)


def test_regularization_result_gap():
    assert RegularizationResult(8, True, 0, 0.9, 0.7).gap == pytest.approx(0.2)


def test_finetuning_with_frozen_stats_keeps_the_running_statistics(data):
    pretrained, _ = train_mlp(data.x_train, data.y_train, batch_size=64, epochs=2, lr=0.1)
    frozen, _ = finetune_small_batches(data, pretrained, freeze_bn_stats=True, epochs=1)
    updated, _ = finetune_small_batches(data, pretrained, freeze_bn_stats=False, epochs=1)
    np.testing.assert_array_equal(frozen.bn.running_mean, pretrained.bn.running_mean)
    assert np.abs(updated.bn.running_mean - pretrained.bn.running_mean).max() > 1e-3
    # gamma and beta still learn when the statistics are frozen
    assert np.abs(frozen.bn.weight - pretrained.bn.weight).max() > 0
    # the pretrained model itself is not modified
    assert frozen.w1 is not pretrained.w1


def test_hidden_distribution_record_has_one_row_per_epoch(data):
    record = track_hidden_distribution(data, epochs=2)
    assert record["before_bn"].shape == record["after_bn"].shape == (3, 3)
    assert np.all(np.diff(record["after_bn"], axis=1) > 0)  # 15th < 50th < 85th
    fig = plot_hidden_distribution(record)
    assert len(fig.axes) == 2
    plt.close(fig)


def test_skewed_feature_figure_has_two_histograms():
    fig = plot_skewed_feature(n=500)
    assert len(fig.axes) == 2 and "skew" in fig.axes[1].get_title()
    plt.close(fig)
