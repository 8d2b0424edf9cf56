"""The training experiments of chapters 6 and 7 do what their docstrings say."""

import math

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

import bnlib.torch
from bnlib.experiments import training
from bnlib.experiments.training import (
    MLP,
    NORM_KINDS,
    NoisyBatchNorm1d,
    batch_size_sweep,
    batch_size_table,
    build_mlp,
    equilibrium_angular_update,
    evaluate_accuracy,
    gradient_norms_at_init,
    learning_rate_sweep,
    loss_range_at_equal_loss,
    loss_smoothness,
    norm_layer,
    plot_accuracy_curves,
    plot_batch_size_sweep,
    plot_gradient_norms,
    plot_learning_rate_sweep,
    plot_percentiles,
    plot_smoothness,
    plot_weight_norm_dynamics,
    recalibrate_batch_norm,
    row_angles,
    train,
    train_many,
    weight_norm_dynamics,
)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("batch", bnlib.torch.BatchNorm1d),
        ("layer", bnlib.torch.LayerNorm),
        ("group", bnlib.torch.GroupNorm),
        ("noisy", NoisyBatchNorm1d),
        ("noisy_shared", NoisyBatchNorm1d),
        ("none", torch.nn.Identity),
    ],
)
def test_norm_layer_builds_bnlib_modules(kind, expected):
    assert type(norm_layer(kind, 8)) is expected


def test_the_noisy_kinds_use_per_sample_and_shared_noise():
    assert norm_layer("noisy", 8).noise == "per_sample"
    assert norm_layer("noisy_shared", 8).noise == "shared"


def test_norm_layer_and_mlp_refuse_unknown_names():
    with pytest.raises(ValueError, match="norm must be one of"):
        norm_layer("weight", 8)
    with pytest.raises(ValueError, match="norm must be one of"):
        MLP(norm="instance")
    with pytest.raises(ValueError, match="activation must be one of"):
        MLP(activation="gelu")
    with pytest.raises(ValueError, match="at least one hidden layer"):
        MLP(hidden=())


def test_batch_norm_model_standardizes_each_preactivation_over_the_batch(data):
    model = build_mlp("batch", seed=0, init_std=0.1)
    _, preactivations = model.forward_with_preactivations(torch.as_tensor(data.x_train[:60]))
    for z in preactivations:  # (60, 100) with gamma = 1, beta = 0 at initialization
        torch.testing.assert_close(z.mean(dim=0), torch.zeros(100), atol=1e-5, rtol=0)
        torch.testing.assert_close(z.var(dim=0, unbiased=False), torch.ones(100), atol=2e-3,
                                   rtol=0)


def test_layer_norm_model_standardizes_each_example_over_its_features(data):
    model = build_mlp("layer", seed=0)
    _, preactivations = model.forward_with_preactivations(torch.as_tensor(data.x_train[:7]))
    for z in preactivations:
        torch.testing.assert_close(z.mean(dim=1), torch.zeros(7), atol=1e-5, rtol=0)
        torch.testing.assert_close(z.var(dim=1, unbiased=False), torch.ones(7), atol=2e-3, rtol=0)


def test_shared_noise_gives_the_batch_exactly_the_drawn_mean_and_variance():
    noisy = NoisyBatchNorm1d(5, noise="shared", max_shift=2.0, max_variance=9.0, seed=3)
    x = torch.randn(400, 5, dtype=torch.float64) * 4 + 7
    noisy.batch_norm.double()
    z = noisy(x)
    torch.testing.assert_close(z.mean(dim=0), noisy.last_mean.double(), atol=1e-10, rtol=0)
    torch.testing.assert_close(z.var(dim=0, unbiased=False), noisy.last_variance.double(),
                               rtol=1e-4, atol=0)  # eps = 1e-5 in BN's denominator
    # One affine map per feature: the examples keep their order.
    torch.testing.assert_close(torch.argsort(z, dim=0), torch.argsort(x, dim=0), rtol=0, atol=0)


def test_per_sample_noise_is_independent_for_every_activation_of_every_example():
    noisy = NoisyBatchNorm1d(6, max_shift=2.0, max_variance=9.0, seed=1)
    assert noisy.noise == "per_sample"
    x = torch.randn(20_000, 6, dtype=torch.float64) * 3 - 1
    noisy.batch_norm.double()
    z = noisy(x)
    noise = noisy.last_noise.double()
    torch.testing.assert_close(z - noisy.batch_norm(x), noise, rtol=0, atol=1e-6)
    mean, variance = noisy.last_mean.double(), noisy.last_variance.double()
    # 20,000 draws per feature: the standard error of the mean is sqrt(v / 20,000) < 0.022, and
    # that of the variance about v * sqrt(2 / 20,000) = 0.01 v; the margins are 5 of them.
    assert torch.all((noise.mean(dim=0) - mean).abs() < 5 * (variance / 20_000).sqrt())
    assert torch.all((noise.var(dim=0) / variance - 1).abs() < 0.05)
    # Independent of the example's own value and of the other features (|r| < 5 / sqrt(n)).
    y = noisy.batch_norm(x)
    correlations = torch.corrcoef(torch.cat([noise, y], dim=1).T)[:6]
    correlations[torch.arange(6), torch.arange(6)] = 0  # each noise column with itself
    assert correlations.abs().max() < 5 / math.sqrt(20_000)


@pytest.mark.parametrize("noise", ["per_sample", "shared"])
def test_noisy_batch_norm_draws_a_new_distribution_each_step_in_the_stated_ranges(noise):
    noisy = NoisyBatchNorm1d(50, noise=noise, max_shift=1.5, max_variance=4.0, seed=0)
    x = torch.randn(16, 50)
    means, variances = [], []
    for _ in range(200):
        noisy(x)
        means.append(noisy.last_mean)
        variances.append(noisy.last_variance)
    means, variances = torch.stack(means), torch.stack(variances)
    assert not torch.equal(means[0], means[1])
    assert means.abs().max() <= 1.5 and means.abs().max() > 1.4
    assert variances.min() >= 1.0 and variances.max() <= 4.0
    # U(-1.5, 1.5) has mean 0; U(1, 4) has mean 2.5 (10,000 draws: standard errors < 0.01).
    assert abs(means.mean().item()) < 0.04
    assert abs(variances.mean().item() - 2.5) < 0.04


@pytest.mark.parametrize("noise", ["per_sample", "shared"])
def test_noisy_batch_norm_adds_no_noise_in_eval_mode(noise):
    noisy = NoisyBatchNorm1d(4, noise=noise, seed=0)
    noisy(torch.randn(32, 4))  # one training step fills the running statistics
    noisy.eval()
    x = torch.randn(10, 4)
    torch.testing.assert_close(noisy(x), noisy.batch_norm(x), rtol=0, atol=0)


def test_noisy_batch_norm_refuses_bad_arguments():
    with pytest.raises(ValueError, match="max_shift must be non-negative"):
        NoisyBatchNorm1d(3, max_shift=-1.0)
    with pytest.raises(ValueError, match="max_variance must be at least 1"):
        NoisyBatchNorm1d(3, max_variance=0.5)
    with pytest.raises(ValueError, match=r"noise must be one of \('per_sample', 'shared'\)"):
        NoisyBatchNorm1d(3, noise="gaussian")


def test_mlp_drops_the_bias_before_a_normalization_and_uses_the_gaussian_init():
    plain, normed = MLP(init_std=0.05), MLP(norm="batch", init_std=0.05)
    assert all(linear.bias is not None for linear in plain.linears)
    assert all(linear.bias is None for linear in normed.linears)
    weights = torch.cat([linear.weight.reshape(-1) for linear in plain.linears])
    assert abs(weights.std().item() - 0.05) < 0.002
    assert torch.count_nonzero(plain.linears[0].bias) == 0


def test_build_mlp_depends_only_on_the_seed():
    a, b, c = build_mlp("batch", seed=4), build_mlp("batch", seed=4), build_mlp("batch", seed=5)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert not torch.equal(a.linears[0].weight, c.linears[0].weight)


def test_training_reduces_the_loss_and_reaches_good_accuracy(data):
    model = build_mlp("batch", seed=0, init_std=0.1)
    history = train(model, data, steps=150, lr=0.5, eval_every=50)
    np.testing.assert_array_equal(history.steps, [0, 50, 100, 150])
    assert history.test_accuracy[0] < 0.3 < 0.9 < history.test_accuracy[-1]
    assert history.train_loss[-1] < 0.5 * math.log(10)  # chance level is ln 10
    assert not history.diverged and history.final_train_loss == history.train_loss[-1]


def test_training_is_reproducible(data):
    runs = [train(build_mlp("noisy", seed=1), data, steps=40, eval_every=20) for _ in range(2)]
    np.testing.assert_array_equal(runs[0].train_loss, runs[1].train_loss)
    np.testing.assert_array_equal(runs[0].percentiles, runs[1].percentiles)


def test_percentiles_are_those_of_the_tracked_unit_on_the_test_set(data):
    model = build_mlp("none", seed=0, hidden=(20, 30))
    history = train(model, data, steps=30, eval_every=30, unit=7)
    model.eval()
    _, preactivations = model.forward_with_preactivations(torch.as_tensor(data.x_test))
    values = preactivations[-1][:, 7].double().detach().numpy()
    np.testing.assert_allclose(history.percentiles[-1], np.percentile(values, [15, 50, 85]))
    assert np.all(np.diff(history.percentiles, axis=1) >= 0)


def test_divergence_is_detected(data):
    model = build_mlp("none", seed=0, activation="relu")
    history = train(model, data, steps=50, lr=1e6, eval_every=10)
    assert history.diverged and history.final_train_loss == math.inf
    assert history.steps[-1] < 50


def test_train_refuses_bad_arguments(data):
    model = build_mlp("none")
    with pytest.raises(ValueError, match="steps must be positive"):
        train(model, data, steps=0)
    with pytest.raises(ValueError, match="eval_every must be positive"):
        train(model, data, steps=5, eval_every=0)
    with pytest.raises(ValueError, match="batch_size must be in"):
        train(model, data, steps=5, batch_size=10**6)
    with pytest.raises(ValueError, match=r"optimizer must be one of \('sgd', 'momentum', 'adam'\)"):
        train(model, data, steps=5, optimizer="lbfgs")


def test_learning_rate_sweep_marks_diverged_runs(data):
    sweep = learning_rate_sweep(data, norms=("none", "batch"), learning_rates=(0.1, 1e6),
                                steps=20, activation="relu", progress=False)
    assert sweep["norms"] == ("none", "batch")
    assert sweep["accuracy"].shape == sweep["train_loss"].shape == (2, 2)
    assert np.isnan(sweep["accuracy"][0, 1]) and sweep["train_loss"][0, 1] == math.inf
    assert np.all(np.isfinite(sweep["accuracy"][:, 0]))


def test_batch_size_sweep_has_one_accuracy_per_norm_size_and_seed(data):
    sweep = batch_size_sweep(data, norms=("batch", "layer"), batch_sizes=(64, 128), epochs=2,
                             seeds=(0, 1, 2), lr=3e-2, hidden=(32,), progress=False)
    assert sweep["accuracy"].shape == (2, 2, 3)
    assert np.all(sweep["accuracy"] > 0.8)  # chance is 0.1
    assert len(np.unique(sweep["accuracy"])) > 1  # seeds and sizes give different runs
    np.testing.assert_array_equal(sweep["batch_sizes"], [64, 128])


def test_loss_smoothness_probes_descend_for_small_steps(data):
    record = loss_smoothness(data, "batch", steps=60, measure_every=20, lr=0.1,
                             step_sizes=(1e-3, 0.1), activation="relu")
    np.testing.assert_array_equal(record.steps, [0, 20, 40])
    assert record.loss.shape == record.gradient_change.shape == (3, 2)
    assert np.all(record.loss[:, 0] < record.train_loss)  # -g is a descent direction
    assert np.all(record.gradient_change[:, 0] < record.gradient_change[:, 1])
    expected_range = np.ptp(np.column_stack([record.train_loss, record.loss]), axis=1)
    np.testing.assert_allclose(record.loss_range, expected_range)
    assert np.all(record.directional_smoothness > 0)


def test_directional_smoothness_is_the_curvature_along_the_gradient_for_small_steps(data):
    """For a small step, |grad L(w - eta g) - g| / |eta g| is |H g| / |g|, the curvature along
    the gradient (tanh: a smooth network, where finite differences converge)."""
    record = loss_smoothness(data, "batch", steps=1, measure_every=1, step_sizes=(1e-3,),
                             activation="tanh")
    model = build_mlp("batch", seed=0, activation="tanh").train()
    x, y = next(training._training_batches(data, 60, seed=0))
    parameters = list(model.parameters())
    gradient = torch.autograd.grad(
        torch.nn.functional.cross_entropy(model(x), y), parameters, create_graph=True)
    flat = torch.cat([g.reshape(-1) for g in gradient])
    hessian_times_g = torch.autograd.grad(flat @ flat.detach(), parameters)  # d(g.g0)/dw = H g
    curvature = torch.cat([h.reshape(-1) for h in hessian_times_g]).norm() / flat.norm()
    np.testing.assert_allclose(record.directional_smoothness[0], curvature.item(), rtol=0.01)


@pytest.mark.parametrize("kind", ["noisy", "noisy_shared"])
def test_loss_smoothness_refuses_noisy_batch_norm(data, kind):
    with pytest.raises(ValueError, match=f"deterministic forward pass; '{kind}' is not one"):
        loss_smoothness(data, kind, steps=5)


def test_plots_draw_one_curve_per_norm(data):
    fig, axes = plt.subplots(1, 7)
    histories = {norm: [train(build_mlp(norm), data, steps=10, eval_every=5)]
                 for norm in ("none", "batch")}
    plot_accuracy_curves(axes[0], histories)
    assert len(axes[0].lines) == 2
    plot_percentiles(axes[1], histories["batch"][0])
    assert len(axes[1].lines) == 3 and len(axes[1].lines[0].get_xdata()) == 2
    lr_sweep = learning_rate_sweep(data, learning_rates=(0.1, 0.2), steps=3, progress=False)
    plot_learning_rate_sweep(axes[2], lr_sweep)
    assert len(axes[2].lines) == 4  # a curve and its (empty) divergence markers per norm
    size_sweep = batch_size_sweep(data, norms=("layer",), batch_sizes=(512,), epochs=1,
                                  seeds=(0,), progress=False)
    plot_batch_size_sweep(axes[3], size_sweep)
    records = {norm: loss_smoothness(data, norm, steps=4, measure_every=2) for norm in
               ("none", "batch")}
    plot_smoothness(axes[4:], records)
    assert len(axes[6].collections) == 2
    plt.close(fig)


def test_every_norm_kind_trains(data):
    for kind in NORM_KINDS:
        history = train(build_mlp(kind, seed=0, activation="relu"), data, steps=60, lr=1e-2,
                        optimizer="adam", eval_every=60)
        assert history.test_accuracy[-1] > 0.5, kind


def test_batch_size_table_lists_mean_and_range_per_norm_and_size():
    sweep = {"norms": ("batch", "layer"), "batch_sizes": np.array([2, 32]),
             "accuracy": np.array([[[0.5, 0.7], [0.9, 0.9]], [[0.8, 1.0], [0.95, 0.97]]])}
    lines = batch_size_table(sweep).splitlines()
    assert lines[0] == "| normalization | batch 2 | batch 32 |"
    assert lines[2] == "| BatchNorm | 60.0% (50.0% to 70.0%) | 90.0% (90.0% to 90.0%) |"
    assert lines[3].startswith("| LayerNorm | 90.0% (80.0% to 100.0%) | 96.0%")


def test_train_many_returns_trained_models_and_histories_per_norm_and_seed(data):
    histories, models = train_many(data, ("none", "layer"), seeds=(0, 1),
                                   model_options={"hidden": (16,)}, steps=20, eval_every=10,
                                   progress=False)
    assert set(histories) == set(models) == {"none", "layer"}
    assert all(len(runs) == 2 for runs in histories.values())
    untrained = build_mlp("layer", seed=1, hidden=(16,))
    assert not torch.equal(models["layer"][1].head.weight, untrained.head.weight)
    again = train(untrained, data, steps=20, eval_every=10, seed=1)
    np.testing.assert_array_equal(again.train_loss, histories["layer"][1].train_loss)


def test_recalibration_sets_running_statistics_to_training_set_statistics(data):
    model = build_mlp("batch", seed=0, hidden=(6, 5))
    train(model, data, steps=30, batch_size=4, lr=0.1, eval_every=30)
    recalibrate_batch_norm(model, data)
    _, preactivations = model.train().forward_with_preactivations(torch.as_tensor(data.x_train))
    first = model.linears[0](torch.as_tensor(data.x_train))  # input of the first BN
    bn = model.norms[0]
    torch.testing.assert_close(bn.running_mean, first.mean(dim=0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bn.running_var, first.var(dim=0), atol=1e-5, rtol=1e-4)
    assert bn.momentum == 0.1 and model.training
    # In eval mode the recalibrated network now reproduces its full-batch training-mode output.
    model.eval()
    _, eval_preactivations = model.forward_with_preactivations(torch.as_tensor(data.x_train))
    torch.testing.assert_close(eval_preactivations[-1], preactivations[-1], atol=1e-2, rtol=0)


def test_evaluate_accuracy_matches_the_last_record_of_train(data):
    model = build_mlp("layer", seed=0, hidden=(16,))
    history = train(model, data, steps=25, eval_every=25)
    assert evaluate_accuracy(model, data) == history.test_accuracy[-1]


def test_gradient_norms_at_init_are_those_of_one_backward_pass(data):
    norms = gradient_norms_at_init(data, "batch", depth=3, width=16, batch_size=32, seeds=(2, 5),
                                   activation="tanh")
    assert norms.shape == (2, 3)
    model = build_mlp("batch", seed=5, hidden=(16, 16, 16), activation="tanh").train()
    x, y = next(training._training_batches(data, 32, seed=5))
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    expected = [linear.weight.grad.norm().item() for linear in model.linears]
    np.testing.assert_allclose(norms[1], expected, rtol=1e-6)
    with pytest.raises(ValueError, match="depth must be positive"):
        gradient_norms_at_init(data, "batch", depth=0)


def test_deep_batch_norm_networks_have_exploding_gradients_at_initialization(data):
    """Yang et al. (2019): in a deep BN network the gradient grows towards the input layer."""
    norms = gradient_norms_at_init(data, "batch", depth=30, width=64, seeds=(0, 1),
                                   activation="relu").mean(axis=0)
    assert norms[0] > 30 * norms[-1]
    assert np.all(norms[:10] > norms[-10:].max())


def test_row_angles_measures_known_rotations_of_rows_of_any_length():
    angles = torch.tensor([0.0, 1e-7, 0.3, math.pi / 2, 3.0], dtype=torch.float64)
    before = torch.stack([torch.ones(5, dtype=torch.float64), torch.zeros(5, dtype=torch.float64)],
                         dim=1) * 3.0
    after = torch.stack([angles.cos(), angles.sin()], dim=1) * 0.5
    torch.testing.assert_close(row_angles(before, after), angles, rtol=1e-9, atol=1e-15)
    with pytest.raises(ValueError, match="expected two matrices of one shape"):
        row_angles(before, after[:3])


def test_equilibrium_angular_update_is_sqrt_of_two_lr_wd():
    assert equilibrium_angular_update(0.5, 0.01) == pytest.approx(0.1)
    assert equilibrium_angular_update(0.1, 0.0) == 0.0
    with pytest.raises(ValueError, match="need lr > 0 and weight_decay >= 0"):
        equilibrium_angular_update(0.1, -1e-3)


def test_without_weight_decay_the_rows_feeding_batch_norm_only_grow(data):
    record = weight_norm_dynamics(data, lr=0.5, steps=100, hidden=(32,))
    assert record.weight_norm.shape == (101,)
    assert record.angular_update.shape == record.train_loss.shape == (100,)
    # |w - lr g|^2 = |w|^2 + lr^2 |g|^2 when g is orthogonal to w (up to BN's eps).
    assert np.all(np.diff(record.weight_norm) > -1e-6 * record.weight_norm[1:])
    assert record.weight_norm[-1] > record.weight_norm[0]


def test_weight_decay_brings_the_angular_update_to_its_equilibrium(data):
    lr, weight_decay = 0.5, 0.05
    record = weight_norm_dynamics(data, lr=lr, weight_decay=weight_decay, steps=400,
                                  hidden=(32,))
    late = np.sqrt(np.mean(record.angular_update[-200:] ** 2))  # root mean square
    assert late == pytest.approx(equilibrium_angular_update(lr, weight_decay), rel=0.15)
    without = weight_norm_dynamics(data, lr=lr, steps=400, hidden=(32,))
    assert record.weight_norm[-1] < without.weight_norm[-1]


def test_weight_norm_dynamics_refuses_bad_arguments(data):
    with pytest.raises(ValueError, match="steps must be positive"):
        weight_norm_dynamics(data, lr=0.1, steps=0)
    with pytest.raises(ValueError, match="weight_decay must be non-negative"):
        weight_norm_dynamics(data, lr=0.1, weight_decay=-1.0)
    with pytest.raises(ValueError, match="layer must index one of the 2 hidden layers, got 2"):
        weight_norm_dynamics(data, lr=0.1, layer=2, hidden=(8, 8))


def test_gradient_norm_and_weight_norm_plots_draw_one_curve_per_run(data):
    fig, axes = plt.subplots(1, 3)
    plot_gradient_norms(axes[0], {"a": np.ones((2, 4)), "b": np.arange(1, 5)[None, :] * 1.0})
    assert len(axes[0].lines) == 2
    np.testing.assert_array_equal(axes[0].lines[1].get_ydata(), [1, 2, 3, 4])
    records = {f"wd {wd}": weight_norm_dynamics(data, lr=0.1, weight_decay=wd, steps=12,
                                                hidden=(8,)) for wd in (0.0, 0.01)}
    plot_weight_norm_dynamics(axes[1:], records, window=5)
    assert len(axes[1].lines) == 2
    assert len(axes[2].lines) == 3  # two moving averages and one equilibrium line
    assert len(axes[2].lines[0].get_xdata()) == 8  # 12 steps, window 5
    plt.close(fig)


def test_loss_range_at_equal_loss_groups_measurements_by_their_loss():
    record = training.SmoothnessRecord(
        steps=np.arange(5), step_sizes=np.ones(1), loss=np.zeros((5, 1)),
        gradient_change=np.zeros((5, 1)), loss_range=np.array([5.0, 1.0, 3.0, 2.0, 9.0]),
        directional_smoothness=np.ones(5), train_loss=np.array([0.5, 0.02, 0.05, 0.09, 3.0]),
    )
    counts, medians = loss_range_at_equal_loss(record, [0.01, 0.05, 0.1, 1.0, 2.0])
    np.testing.assert_array_equal(counts, [1, 2, 1, 0])
    np.testing.assert_array_equal(medians[:3], [1.0, 2.5, 5.0])
    assert np.isnan(medians[3])  # the loss 3.0 lies beyond the last edge
    with pytest.raises(ValueError, match="edges must be at least two increasing values"):
        loss_range_at_equal_loss(record, [0.1, 0.1])
