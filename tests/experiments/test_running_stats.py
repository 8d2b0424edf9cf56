"""Tests of bnlib.experiments.running_stats: running statistics, the small BN network."""

import numpy as np
import pytest

from bnlib.experiments.running_stats import (
    BNMLP,
    accuracy,
    compare_conventions,
    fold_first_layer,
    minibatches,
    reestimate_running_stats,
    running_stats_history,
    softmax_cross_entropy,
    train_mlp,
)
from bnlib.numpy import numerical_gradient


@pytest.fixture(scope="module")
def trained(data):
    model, losses = train_mlp(data.x_train, data.y_train, batch_size=32, epochs=5, lr=0.1)
    return model, losses


def batches_of(seed=0, count=6, size=8, features=3):
    rng = np.random.default_rng(seed)
    return [rng.normal(2.0, 3.0, size=(size, features)) for _ in range(count)]


def test_pytorch_history_is_the_ema_of_batch_mean_and_unbiased_variance():
    batches = batches_of()
    history = running_stats_history(batches, momentum=0.1)
    mean, var = np.zeros(3), np.ones(3)
    for b in batches:
        mean = 0.9 * mean + 0.1 * b.mean(axis=0)
        var = 0.9 * var + 0.1 * b.var(axis=0, ddof=1)
    np.testing.assert_allclose(history.mean[-1], mean, rtol=1e-12)
    np.testing.assert_allclose(history.var[-1], var, rtol=1e-12)
    assert history.mean.shape == (len(batches) + 1, 3)
    np.testing.assert_array_equal(history.mean[0], 0.0)
    np.testing.assert_allclose(history.batch_var[0], batches[0].var(axis=0))


def test_keras_with_one_minus_momentum_is_the_same_ema_up_to_bessel():
    batches = batches_of(count=10, size=8)
    runs = compare_conventions(batches, torch_momentum=0.1)
    torch_h, keras_h = runs["pytorch"], runs["keras"]
    np.testing.assert_allclose(torch_h.mean, keras_h.mean, rtol=1e-12)
    decay = 0.9 ** np.arange(len(batches) + 1)[:, None]  # weight left on the initial var 1
    np.testing.assert_allclose(torch_h.var - decay, 8 / 7 * (keras_h.var - decay), rtol=1e-10)
    assert not np.allclose(torch_h.var[-1], keras_h.var[-1])


def test_momentum_none_is_the_plain_average_of_batch_statistics():
    batches = batches_of(count=7)
    history = running_stats_history(batches, momentum=None)
    np.testing.assert_allclose(history.mean[-1], np.mean([b.mean(0) for b in batches], 0))
    np.testing.assert_allclose(history.var[-1], np.mean([b.var(0, ddof=1) for b in batches], 0))


def test_running_stats_history_needs_a_batch():
    with pytest.raises(ValueError, match="at least one batch"):
        running_stats_history([])


def test_minibatches_drop_the_partial_batch_and_keep_rows_aligned():
    x = np.arange(10.0)[:, None]
    y = np.arange(10)
    got = list(minibatches(x, 3, np.random.default_rng(0), y))
    assert [len(xb) for xb, _ in got] == [3, 3, 3]
    for xb, yb in got:
        np.testing.assert_array_equal(xb[:, 0], yb)
    assert len({int(v) for xb, _ in got for v in xb[:, 0]}) == 9


@pytest.mark.parametrize(("size", "message"), [(0, "positive integer"), (11, "exceeds")])
def test_minibatches_reject_bad_sizes(size, message):
    with pytest.raises(ValueError, match=message):
        next(minibatches(np.zeros((10, 2)), size))


@pytest.mark.parametrize("use_bn", [True, False])
def test_bnmlp_gradients_match_central_differences(use_bn):
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(6, 5)), rng.integers(0, 3, size=6)
    model = BNMLP(d_in=5, hidden=4, n_classes=3, use_bn=use_bn, seed=2)
    if use_bn:
        model.bn.weight[...] = rng.normal(1.0, 0.3, size=4)
        model.bn.bias[...] = rng.normal(0.0, 0.3, size=4)
    _, dlogits = softmax_cross_entropy(model.forward(x), y)
    model.backward(dlogits)

    for name, param in model.parameters().items():

        def loss_of(value, param=param):
            saved = param.copy()
            param[...] = value
            loss, _ = softmax_cross_entropy(model.forward(x), y)
            param[...] = saved
            return np.array(loss)

        numeric = numerical_gradient(loss_of, param.copy(), np.array(1.0))
        np.testing.assert_allclose(model.grads[name], numeric, rtol=1e-5, atol=1e-8, err_msg=name)


def test_bias_before_bn_gets_zero_gradient():
    rng = np.random.default_rng(0)
    model = BNMLP(d_in=5, hidden=4, n_classes=3, seed=0)
    _, dlogits = softmax_cross_entropy(model.forward(rng.normal(size=(8, 5))), np.arange(8) % 3)
    model.backward(dlogits)
    np.testing.assert_allclose(model.grads["b1"], 0.0, atol=1e-14)
    assert np.abs(model.grads["w1"]).max() > 1e-3


def test_training_learns_digits_and_returns_eval_mode(trained, data):
    model, losses = trained
    assert not model.training and not model.bn.training
    assert np.mean(losses[-20:]) < 0.3 * np.mean(losses[:5])
    assert accuracy(model, data.x_test, data.y_test) > 0.9


def test_train_mode_accuracy_depends_on_batch_size_and_leaves_stats_alone(trained, data):
    model, _ = trained
    before = (model.bn.running_mean.copy(), model.bn.num_batches_tracked)
    eval_acc = accuracy(model, data.x_test, data.y_test)
    model.train()
    tiny = accuracy(model, data.x_test, data.y_test, batch_size=2)
    model.eval()
    assert tiny < eval_acc - 0.1
    np.testing.assert_array_equal(model.bn.running_mean, before[0])
    assert model.bn.num_batches_tracked == before[1]


def test_reestimated_stats_are_the_training_set_statistics(data):
    model, _ = train_mlp(data.x_train, data.y_train, batch_size=32, epochs=1, lr=0.1)
    x = data.x_train[:320].astype(np.float64)
    reestimate_running_stats(model, x, batch_size=64)
    z = model.hidden_preactivation(x)
    np.testing.assert_allclose(model.bn.running_mean, z.mean(axis=0), rtol=1e-10, atol=1e-12)
    assert model.bn.momentum == 0.1 and not model.training
    unbiased = np.mean([z[i : i + 64].var(0, ddof=1) for i in range(0, 320, 64)], axis=0)
    np.testing.assert_allclose(model.bn.running_var, unbiased, rtol=1e-10)


def test_folded_first_layer_equals_linear_then_bn_in_eval_mode(trained, data):
    model, _ = trained
    w, b = fold_first_layer(model)
    x = data.x_test.astype(np.float64)
    np.testing.assert_allclose(
        x @ w + b, model.bn.forward(model.hidden_preactivation(x)), rtol=1e-10, atol=1e-12
    )


def test_helpers_reject_a_model_without_bn():
    model = BNMLP(use_bn=False)
    with pytest.raises(ValueError, match="no BatchNorm"):
        reestimate_running_stats(model, np.zeros((4, 64)))
    with pytest.raises(ValueError, match="no BatchNorm"):
        fold_first_layer(model)
