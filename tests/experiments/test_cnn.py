"""The convolutional network of chapters 3, 5 and 6 does what its docstrings say."""

import copy
import dataclasses

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

import bnlib.torch
from bnlib.experiments import training
from bnlib.experiments.cnn import (
    CONV_NORM_KINDS,
    ConvNet,
    build_convnet,
    conv_norm_layer,
    fold_batch_norms,
    plot_position_means,
    trained_convnet,
)
from bnlib.experiments.training import batch_size_sweep, evaluate_accuracy


def images(n=6, seed=0):
    return torch.rand(n, 64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    ("kind", "expected"),
    [("batch", bnlib.torch.BatchNorm2d), ("group", bnlib.torch.GroupNorm),
     ("layer", bnlib.torch.LayerNorm), ("none", torch.nn.Identity)],
)
def test_conv_norm_layer_builds_bnlib_modules(kind, expected):
    assert type(conv_norm_layer(kind, 8, 4)) is expected


def test_layer_norm_covers_channels_and_positions_and_group_norm_has_its_groups():
    assert conv_norm_layer("layer", 8, 4).normalized_shape == (8, 4, 4)
    assert conv_norm_layer("group", 8, 4, num_groups=2).num_groups == 2


def test_refuses_unknown_norms_and_shapes():
    with pytest.raises(ValueError, match=r"norm must be one of \('none', 'batch', 'group', "):
        conv_norm_layer("instance", 8, 4)
    with pytest.raises(ValueError, match="norm must be one of"):
        ConvNet(norm="noisy")
    with pytest.raises(ValueError, match=r"channels must name three convolutions, got \(8, 8\)"):
        ConvNet(channels=(8, 8))
    with pytest.raises(ValueError, match="image_size must be a positive multiple of 4, got 6"):
        ConvNet(image_size=6)


def test_feature_maps_halve_twice_and_flat_rows_are_images():
    model = build_convnet("batch", channels=(4, 6, 8)).train()
    logits, maps = model.forward_with_preactivations(images())
    assert logits.shape == (6, 10)
    assert [tuple(z.shape) for z in maps] == [(6, 4, 8, 8), (6, 6, 4, 4), (6, 8, 2, 2)]
    torch.testing.assert_close(model(images().reshape(6, 1, 8, 8)), logits)


@pytest.mark.parametrize("norm", CONV_NORM_KINDS)
def test_convolutions_have_a_bias_only_without_normalization(norm):
    model = build_convnet(norm)
    assert all((conv.bias is not None) == (norm == "none") for conv in model.convs)


@pytest.mark.parametrize(
    ("norm", "axes"),
    [("batch", (0, 2, 3)), ("layer", (1, 2, 3))],  # per channel over (N, H, W); per example
)
def test_each_norm_normalizes_over_its_axes(norm, axes):
    _, maps = build_convnet(norm, seed=1).train().forward_with_preactivations(images(8))
    for z in maps:  # gamma = 1 and beta = 0 at initialisation
        torch.testing.assert_close(z.mean(dim=axes), torch.zeros_like(z.mean(dim=axes)),
                                   atol=1e-5, rtol=0)
        torch.testing.assert_close(z.var(dim=axes, unbiased=False),
                                   torch.ones_like(z.mean(dim=axes)), atol=1e-2, rtol=0)


def test_group_norm_normalizes_each_group_of_each_example():
    _, maps = build_convnet("group", num_groups=2).train().forward_with_preactivations(images())
    grouped = maps[0].reshape(6, 2, -1)  # 16 channels in 2 groups of 8 channels x 64 positions
    torch.testing.assert_close(grouped.mean(dim=2), torch.zeros(6, 2), atol=1e-5, rtol=0)
    torch.testing.assert_close(grouped.var(dim=2, unbiased=False), torch.ones(6, 2), atol=1e-3,
                               rtol=0)


def test_he_initialisation_keeps_the_size_of_the_activations():
    """Without normalization, each conv -> ReLU keeps the mean square of its input (He et al.);
    PyTorch's default initialisation divides it by about 6 at every layer."""
    x = torch.randn(32, 64, 8, 8, generator=torch.Generator().manual_seed(0))

    def gain(conv):  # positions away from the border, where padding removes terms of the sum
        with torch.no_grad():
            inner = torch.relu(conv(x))[:, :, 1:-1, 1:-1]
        return (inner.square().mean() / x.square().mean()).item()

    he = build_convnet("none", seed=0, channels=(64, 64, 64)).convs[1]  # 64 input channels
    default = torch.nn.Conv2d(64, 64, kernel_size=3, padding=1)
    assert 0.8 < gain(he) < 1.25, gain(he)
    assert 1 / 8 < gain(default) < 1 / 4.5, gain(default)


def test_the_seed_alone_fixes_the_initial_weights():
    first, again, other = (build_convnet("group", seed=s) for s in (3, 3, 4))
    assert torch.equal(first.convs[1].weight, again.convs[1].weight)
    assert not torch.equal(first.convs[1].weight, other.convs[1].weight)


def test_trained_convnet_learns_the_digits_and_comes_back_in_eval_mode(data):
    model = trained_convnet(data, "batch", epochs=1, batch_size=64, lr=0.05)
    assert not model.training
    assert evaluate_accuracy(model, data) > 0.6  # chance is 0.1, 21 steps of SGD
    with pytest.raises(ValueError, match="epochs must be positive, got 0"):
        trained_convnet(data, epochs=0)


def test_the_momentum_optimizer_is_sgd_with_momentum_0_9():
    optimizer = training._make_optimizer("momentum", [torch.zeros(1, requires_grad=True)], 0.1)
    assert type(optimizer) is torch.optim.SGD
    assert optimizer.param_groups[0]["momentum"] == 0.9


def trained_with_running_statistics(seed=0):
    """A BN network whose running statistics and affine parameters are far from their start."""
    model = build_convnet("batch", seed=seed).train()
    with torch.no_grad():
        for step in range(20):
            model(3 * images(16, seed=step) - 1)
        for bn in model.norms:
            bn.weight.uniform_(0.5, 2.0)
            bn.bias.normal_()
    return model.eval()


def test_folded_network_computes_the_same_function_without_batch_norm():
    model = trained_with_running_statistics().double()
    state = copy.deepcopy(model.state_dict())
    folded = fold_batch_norms(model)
    x = 3 * images(10, seed=99).double() - 1
    torch.testing.assert_close(folded(x), model(x), rtol=1e-12, atol=1e-12)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert not folded.training and sum(bn.training for bn in model.norms) == 0
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name


def test_folding_needs_batch_norm():
    with pytest.raises(ValueError, match="only a network with norm='batch'.*got norm='layer'"):
        fold_batch_norms(build_convnet("layer"))


def test_sweep_of_the_convnet_scales_the_learning_rate_linearly(data, monkeypatch):
    calls = []
    real_train = training.train

    def recording_train(model, data, **options):
        calls.append((type(model), options["batch_size"], options["lr"], options["steps"]))
        return real_train(model, data, **{**options, "steps": 2})

    monkeypatch.setattr(training, "train", recording_train)
    sweep = batch_size_sweep(data, build=build_convnet, norms=("group",), batch_sizes=(8, 64),
                             epochs=2, seeds=(0, 1), lr=0.1, reference_batch_size=32,
                             optimizer="momentum", channels=(4, 4, 4), progress=False)
    np.testing.assert_allclose(sweep["learning_rates"], [0.025, 0.2])
    assert sweep["accuracy"].shape == (1, 2, 2)
    steps = [2 * (len(data.x_train) // size) for size in (8, 8, 64, 64)]
    assert calls == [(ConvNet, 8, 0.025, steps[0]), (ConvNet, 8, 0.025, steps[1]),
                     (ConvNet, 64, 0.2, steps[2]), (ConvNet, 64, 0.2, steps[3])]
    with pytest.raises(ValueError, match="reference_batch_size must be positive, got 0"):
        batch_size_sweep(data, reference_batch_size=0)


def test_sweep_in_two_processes_gives_the_results_of_one(data):
    """Each run has its own seed and one thread, so where it runs does not change it."""
    tiny = dataclasses.replace(data, x_train=data.x_train[:96], y_train=data.y_train[:96])
    options = {"build": build_convnet, "norms": ("batch", "none"), "batch_sizes": (16, 32),
               "epochs": 1, "seeds": (0, 1), "lr": 0.05, "optimizer": "momentum",
               "channels": (4, 4, 4), "progress": False}
    alone = batch_size_sweep(tiny, **options)["accuracy"]
    np.testing.assert_array_equal(batch_size_sweep(tiny, workers=2, **options)["accuracy"], alone)
    with pytest.raises(ValueError, match="workers must be positive, got 0"):
        batch_size_sweep(tiny, workers=0, **options)


def test_position_means_are_drawn_per_channel_with_the_channel_mean_in_the_title():
    before = np.random.default_rng(0).normal(2.0, 1.0, size=(5, 3, 4, 4))
    after = before - before.mean(axis=(0, 2, 3), keepdims=True)
    fig, axes = plt.subplots(2, 2)
    plot_position_means(axes, before, after, channels=(0, 2))
    assert axes[0, 1].get_title().endswith(f"= {before[:, 2].mean():.2f}")
    np.testing.assert_allclose(axes[1, 0].images[0].get_array(), after[:, 0].mean(axis=0))
    with pytest.raises(ValueError, match=r"axes must have shape \(2, 3\)"):
        plot_position_means(axes, before, after, channels=(0, 1, 2))
    with pytest.raises(ValueError, match="two \\(N, C, H, W\\) arrays of one shape"):
        plot_position_means(axes, before, after[:, :2], channels=(0, 1))
    plt.close(fig)
