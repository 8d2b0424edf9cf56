"""The per-layer diagnostics of chapter 2 measure what their docstrings say."""

import math

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from bnlib.experiments.diagnostics import (
    INITS,
    TANH_GAIN,
    build_tanh_mlp,
    layer_table,
    plot_histograms,
    plot_saturation,
    plot_update_ratios,
    snapshot,
    tanh_saturation,
    train_with_diagnostics,
)
from bnlib.experiments.training import build_mlp


@pytest.fixture(scope="module")
def batch(data):
    return torch.as_tensor(data.x_train[:128]), torch.as_tensor(data.y_train[:128])





def test_the_tanh_gain_is_torchs():
    assert TANH_GAIN == pytest.approx(torch.nn.init.calculate_gain("tanh"))


@pytest.mark.parametrize(("init", "gain"), [("naive", None), ("fan_in", 1.0),
                                             ("kaiming", 5 / 3)])
def test_hidden_weights_have_the_stated_standard_deviation(init, gain):
    model = build_tanh_mlp(init, depth=3, width=200, seed=1)
    for linear in model.linears:
        expected = 1.0 if gain is None else gain / math.sqrt(linear.in_features)
        # 12,800 or 40,000 draws: the relative standard error of the std is below 0.7%
        assert linear.weight.std().item() == pytest.approx(expected, rel=0.03)
        assert torch.count_nonzero(linear.bias) == 0
    assert model.head.weight.std().item() == pytest.approx(1 / math.sqrt(200), rel=0.05)


def test_the_inits_differ_only_by_the_scale_of_the_same_draws():
    naive, kaiming = build_tanh_mlp("naive", seed=3), build_tanh_mlp("kaiming", seed=3)
    for a, b in zip(naive.linears, kaiming.linears, strict=True):
        torch.testing.assert_close(a.weight * (TANH_GAIN / math.sqrt(a.in_features)), b.weight)


def test_batch_norm_makes_the_activations_independent_of_the_init_scale(batch):
    shots = [snapshot(build_tanh_mlp(init, batch_norm=True, seed=2), *batch) for init in INITS]
    for other in shots[1:]:
        for a, b in zip(shots[0].activations, other.activations, strict=True):
            # Equal up to eps = 1e-5 in BN's denominator, against variances of 0.1 and more.
            np.testing.assert_allclose(a, b, atol=1e-3)


def test_build_tanh_mlp_refuses_bad_arguments():
    with pytest.raises(ValueError, match=r"init must be one of \('naive', 'fan_in', 'kaiming'\)"):
        build_tanh_mlp("xavier")
    with pytest.raises(ValueError, match="depth must be positive"):
        build_tanh_mlp("naive", depth=0)


def test_tanh_saturation_counts_outputs_beyond_the_threshold_in_both_tails():
    values = np.array([-1.0, -0.98, -0.5, 0.0, 0.96, 0.971, 0.99, 1.0])
    assert tanh_saturation(values) == 5 / 8
    assert tanh_saturation(torch.as_tensor(values, dtype=torch.float32)) == 5 / 8


def test_snapshot_holds_the_tanh_outputs_and_their_gradients(batch):
    model = build_tanh_mlp("kaiming", depth=4, seed=0)
    shot = snapshot(model, *batch)
    # The same pass written out, and the gradients of the loss by autograd directly.
    outputs, x = [], batch[0]
    for linear, norm in zip(model.linears, model.norms, strict=True):
        x = torch.tanh(norm(linear(x)))
        outputs.append(x)
    loss = torch.nn.functional.cross_entropy(model.head(x), batch[1])
    gradients = torch.autograd.grad(loss, outputs)
    assert shot.loss == pytest.approx(loss.item(), rel=1e-6)
    assert len(shot.activations) == len(shot.gradients) == 4
    for a, t, g, expected in zip(shot.activations, outputs, shot.gradients, gradients,
                                 strict=True):
        np.testing.assert_allclose(a, t.detach().numpy(), atol=1e-6)
        np.testing.assert_allclose(g, expected.numpy(), rtol=1e-4, atol=1e-9)
    assert model.linears[0].weight.grad is not None  # the parameter gradients are kept


def test_snapshot_refuses_networks_that_are_not_tanh(batch):
    with pytest.raises(ValueError, match="the diagnostics are for tanh networks"):
        snapshot(build_mlp("none", activation="relu"), *batch)


def test_naive_init_saturates_and_kaiming_init_keeps_the_spread(batch):
    naive = snapshot(build_tanh_mlp("naive", seed=0), *batch)
    fan_in = snapshot(build_tanh_mlp("fan_in", seed=0), *batch)
    kaiming = snapshot(build_tanh_mlp("kaiming", seed=0), *batch)
    assert naive.saturated().min() > 0.5 > 0.1 > kaiming.saturated().max()
    spreads = [a.std() for a in fan_in.activations]
    assert all(later < earlier for earlier, later in zip(spreads, spreads[1:], strict=False))
    kaiming_spreads = [a.std() for a in kaiming.activations]
    assert max(kaiming_spreads) / min(kaiming_spreads) < 1.3


def test_the_update_ratio_of_plain_sgd_is_lr_times_gradient_over_weight(data):
    model = build_tanh_mlp("kaiming", depth=2, width=30, seed=0)
    x, y = torch.as_tensor(data.x_train), torch.as_tensor(data.y_train)
    first = next(iter(torch.randperm(len(x), generator=torch.Generator().manual_seed(5))
                      .split(16)))  # the first mini-batch of seed 5, as train() draws it
    snapshot(model, x[first], y[first])
    expected = [(0.2 * linear.weight.grad).std().item() / linear.weight.std().item()
                for linear in model.linears]
    record = train_with_diagnostics(model, data, steps=1, batch_size=16, lr=0.2, seed=5)
    np.testing.assert_allclose(record.update_ratio[0], expected, rtol=1e-4)
    assert record.saturated.shape == (1, 2) and record.loss.shape == (1,)


def test_training_records_every_step_and_lowers_the_loss(data):
    model = build_tanh_mlp("kaiming", depth=3, width=50, seed=0)
    record = train_with_diagnostics(model, data, steps=150, batch_size=32, lr=0.1)
    assert record.update_ratio.shape == record.saturated.shape == (150, 3)
    assert record.loss[-20:].mean() < 0.5 * record.loss[:5].mean()
    assert np.all((record.saturated >= 0) & (record.saturated <= 1))
    assert len(record.final.activations) == 3 and record.final.activations[0].shape == (128, 50)


def test_train_with_diagnostics_refuses_bad_arguments(data):
    with pytest.raises(ValueError, match="steps must be positive"):
        train_with_diagnostics(build_tanh_mlp("naive"), data, steps=0)
    with pytest.raises(ValueError, match="the diagnostics are for tanh networks"):
        train_with_diagnostics(build_mlp("batch"), data, steps=1)


def test_layer_table_and_plots_cover_every_layer(batch, data):
    shot = snapshot(build_tanh_mlp("fan_in", depth=3, seed=0), *batch)
    table = layer_table({"fan-in": shot}).splitlines()
    assert len(table) == 3 and "saturated" in table[0]
    cells = table[2].split(" | ")
    assert cells[0] == "| fan-in" and cells[1].count("→") == 2
    assert cells[1].split(" → ")[0] == f"{shot.activations[0].std():.2f}"
    record = train_with_diagnostics(build_tanh_mlp("fan_in", depth=3, width=20), data, steps=5)
    fig, axes = plt.subplots(1, 3)
    plot_histograms(axes[0], shot.activations)
    plot_update_ratios(axes[1], record)
    plot_saturation(axes[2], record)
    assert len(axes[0].lines) == 3
    assert len(axes[1].lines) == 4  # three layers and the 1e-3 line
    assert len(axes[2].lines) == 3
