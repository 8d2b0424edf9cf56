"""The residual networks of chapter 7 start as their docstrings say."""

import math

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

import bnlib.torch
from bnlib.experiments.residual import (
    RESIDUAL_KINDS,
    ResidualBlock,
    ResidualMLP,
    plot_stream_statistics,
    stream_statistics,
    train_residual,
    training_table,
)
from bnlib.experiments.training import _training_batches


@pytest.fixture(scope="module")
def x():
    return torch.randn(256, 64, generator=torch.Generator().manual_seed(0))





def test_a_block_adds_its_scaled_branch():
    block = ResidualBlock(8, batch_norm=False, branch_scale=0.3).double()
    h = torch.randn(5, 8, dtype=torch.float64)
    torch.testing.assert_close(block(h), h + 0.3 * block.branch(h))
    assert isinstance(ResidualBlock(8, batch_norm=True).branch[1], bnlib.torch.BatchNorm1d)


def test_each_kind_builds_the_stated_blocks():
    depth = 9
    plain, normed, zero = (ResidualMLP(kind, depth=depth)
                           for kind in ("plain", "batch", "batch_zero_gamma"))
    assert all(block.branch_scale is None for block in plain.blocks)
    assert all(torch.equal(block.branch[-1].weight, torch.ones(100)) for block in normed.blocks)
    assert all(torch.count_nonzero(block.branch[-1].weight) == 0 for block in zero.blocks)
    skipinit = ResidualMLP("skipinit", depth=depth)
    assert all(isinstance(b.branch_scale, torch.nn.Parameter) and b.branch_scale.item() == 0
               for b in skipinit.blocks)
    scaled = ResidualMLP("scaled", depth=depth)
    assert all(block.branch_scale == pytest.approx(1 / 3) for block in scaled.blocks)


def test_branch_weights_preserve_the_second_moment_without_normalization():
    block = ResidualBlock(400, batch_norm=False)
    first, second = block.branch[0].weight, block.branch[3].weight
    assert first.var().item() == pytest.approx(2 / 400, rel=0.02)
    assert second.var().item() == pytest.approx(1 / 400, rel=0.02)
    h = torch.randn(2000, 400, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert block.branch(h).square().mean().item() == pytest.approx(1.0, rel=0.1)


def test_zero_gamma_and_skipinit_blocks_start_as_the_identity(x):
    for kind in ("batch_zero_gamma", "skipinit"):
        result = stream_statistics(kind, x, depth=12)
        np.testing.assert_allclose(result["second_moment"], result["second_moment"][0],
                                   rtol=1e-12)
        np.testing.assert_array_equal(result["branch_share"], np.zeros(12))


def test_the_skipinit_scale_is_learned_from_zero(x):
    model = ResidualMLP("skipinit", depth=3)
    model(x).square().mean().backward()
    assert all(block.branch_scale.grad.abs() > 0 for block in model.blocks)


def test_plain_blocks_double_the_second_moment(x):
    moments = stream_statistics("plain", x, depth=30)["second_moment"]
    growth = (moments[-1] / moments[0]) ** (1 / 30)
    assert 1.8 < growth < 2.2, growth


def test_batch_norm_blocks_add_about_one_each_and_shrink_the_branch_share(x):
    result = stream_statistics("batch", x, depth=40)
    moments, share = result["second_moment"], result["branch_share"]
    # Each BN branch adds features of variance 1 (gamma = 1, beta = 0), nearly uncorrelated
    # with the stream: after l blocks the second moment is about x_0's plus l.
    blocks = np.arange(41)
    np.testing.assert_allclose(moments[1:], moments[0] + blocks[1:], rtol=0.15)
    np.testing.assert_allclose(share[4:], 1 / np.sqrt(moments[5:]), rtol=0.15)


def test_scaled_branches_keep_the_stream_bounded(x):
    depth = 40
    result = stream_statistics("scaled", x, depth=depth)
    # Each block multiplies the second moment by about 1 + 1/depth: at most e overall.
    assert result["second_moment"][-1] / result["second_moment"][0] < math.e * 1.3
    np.testing.assert_allclose(result["branch_share"].mean(), 1 / math.sqrt(depth), rtol=0.2)


def test_stream_statistics_depend_only_on_the_seed(x):
    a, b = stream_statistics("batch", x, depth=4), stream_statistics("batch", x, depth=4)
    np.testing.assert_array_equal(a["second_moment"], b["second_moment"])
    c = stream_statistics("plain", x, depth=4, seed=1)
    assert not np.array_equal(c["second_moment"],
                              stream_statistics("plain", x, depth=4)["second_moment"])


def test_residual_mlp_refuses_bad_arguments():
    with pytest.raises(ValueError, match=r"kind must be one of \('plain', 'batch', "):
        ResidualMLP("fixup")
    with pytest.raises(ValueError, match="depth must be positive"):
        ResidualMLP("plain", depth=0)


def test_plot_draws_one_curve_per_kind(x):
    statistics = {kind: stream_statistics(kind, x, depth=3) for kind in RESIDUAL_KINDS}
    fig, axes = plt.subplots(1, 2)
    plot_stream_statistics(axes, statistics)
    assert len(axes[0].lines) == len(axes[1].lines) == len(RESIDUAL_KINDS)


def test_training_starts_from_the_network_of_the_seed(data):
    run = train_residual("batch", data, depth=3, steps=1, batch_size=32, seed=2)
    torch.manual_seed(2)
    model = ResidualMLP("batch", depth=3)
    x, y = next(_training_batches(data, 32, 2))
    expected = torch.nn.functional.cross_entropy(model(x), y).item()
    assert run["loss"].tolist() == pytest.approx([expected], rel=1e-6)


def test_normalized_and_skipinit_networks_learn_and_a_deep_plain_one_diverges(data):
    runs = {kind: train_residual(kind, data, depth=4, steps=60) for kind in
            ("batch", "skipinit")}
    for run in runs.values():
        assert not run["diverged"] and len(run["loss"]) == 60
        assert run["loss"][-10:].mean() < 0.5 * run["loss"][0] and run["accuracy"] > 0.5
    runs["plain"] = train_residual("plain", data, depth=50, steps=5)
    assert runs["plain"]["diverged"] and math.isnan(runs["plain"]["accuracy"])
    assert len(runs["plain"]["loss"]) < 5
    table = training_table(runs).splitlines()
    assert len(table) == 2 + 3 and table[2].startswith("| BN in each branch |")
    assert f"diverged at step {len(runs['plain']['loss']) + 1} |" in table[-1]
    assert table[2].endswith(f"| {runs['batch']['accuracy']:.1%} |")


def test_train_residual_refuses_bad_arguments(data):
    with pytest.raises(ValueError, match="steps must be positive, got 0"):
        train_residual("batch", data, steps=0)
    with pytest.raises(ValueError, match="kind must be one of"):
        train_residual("fixup", data, steps=1)
