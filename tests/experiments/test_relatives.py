"""Batch renormalization, ghost BN, weight standardization and the mean-only / scale-only
normalizations of chapter 6, against bnlib's BN, LN and RMSNorm and against float64 formulas."""

import numpy as np
import pytest
import torch
from torch.nn.utils import parametrize

import bnlib.torch
from bnlib.experiments.relatives import (
    RELATIVE_KINDS,
    BatchRenorm1d,
    BatchRenorm2d,
    GhostBatchNorm1d,
    GhostBatchNorm2d,
    PartialNorm,
    Standardized,
    accuracy_table,
    build_relative_mlp,
    class_grouped_batches,
    non_iid_table,
    normalization_noise,
    relative_norm,
    train_non_iid,
    train_on_batches,
    train_relatives,
    weight_standardize,
)
from bnlib.experiments.training import build_mlp


def random_affine(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` in float64 with random gamma and beta, so that they are tested too."""
    module = module.double()
    with torch.no_grad():
        module.weight.copy_(torch.randn_like(module.weight) + 1)
        module.bias.copy_(torch.randn_like(module.bias))
    return module


def inputs(*shape, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=generator, dtype=torch.float64) * 3 + 2
    return x.requires_grad_()


def outputs_and_gradients(module, x, seed=1):
    """Output of ``module(x)`` and the gradients of a random linear function of it with respect
    to x and to the module's parameters."""
    out = module(x)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed),
                          dtype=out.dtype)
    params = [p for p in module.parameters() if p.requires_grad]
    return out, torch.autograd.grad((out * weights).sum(), [x, *params])


def assert_same_module_results(module, reference, x):
    out, grads = outputs_and_gradients(module, x)
    expected, expected_grads = outputs_and_gradients(reference, x)
    torch.testing.assert_close(out, expected)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad)


def assert_behaves_as_batch_norm(module, batch_size, momentum=0.1):
    """Three training steps and one eval step of ``module`` give what bnlib's BatchNorm1d
    with the same parameters gives: outputs, gradients, and the buffers after each step."""
    batch_norm = bnlib.torch.BatchNorm1d(module.num_features, momentum=momentum).double()
    batch_norm.load_state_dict(module.state_dict())
    for step in range(3):
        assert_same_module_results(module, batch_norm, inputs(batch_size, 6, seed=step))
        for name, buffer in batch_norm.named_buffers():
            torch.testing.assert_close(getattr(module, name), buffer)
    module.eval(), batch_norm.eval()
    x = inputs(5, 6, seed=9)
    torch.testing.assert_close(module(x), batch_norm(x))


# --- Batch Renormalization -------------------------------------------------------------------


def test_batch_renorm_with_r_fixed_to_one_and_d_to_zero_is_batch_norm():
    assert_behaves_as_batch_norm(random_affine(BatchRenorm1d(6, r_max=1.0, d_max=0.0)), 16)


def test_unclipped_batch_renorm_trains_with_the_inference_transform():
    renorm = random_affine(BatchRenorm1d(4, r_max=1e6, d_max=1e6, momentum=0.3))
    with torch.no_grad():  # running statistics far from those of the batches below
        renorm.running_mean.copy_(torch.tensor([1.0, -2.0, 0.5, 4.0]))
        renorm.running_var.copy_(torch.tensor([0.5, 9.0, 2.0, 1.0]))
    mean, var = renorm.running_mean.clone(), renorm.running_var.clone()
    x = inputs(8, 4)
    inference = (x - mean) / (var + renorm.eps).sqrt() * renorm.weight + renorm.bias
    torch.testing.assert_close(renorm(x), inference)
    # and the running statistics moved as BN's do: momentum 0.3, unbiased variance
    torch.testing.assert_close(renorm.running_mean, 0.7 * mean + 0.3 * x.detach().mean(0))
    torch.testing.assert_close(renorm.running_var, 0.7 * var + 0.3 * x.detach().var(0))


def test_batch_renorm_backward_treats_r_and_d_as_constants():
    renorm = random_affine(BatchRenorm1d(5, r_max=2.0, d_max=0.5))
    with torch.no_grad():
        renorm.running_mean.fill_(1.5)
        renorm.running_var.fill_(4.0)
    x = inputs(10, 5)
    # Ioffe's Algorithm 1, written out in float64 with r and d detached.
    mean, std = x.mean(0), (x.var(0, unbiased=False) + renorm.eps).sqrt()
    running_std = (renorm.running_var + renorm.eps).sqrt()
    r = (std / running_std).clamp(1 / 2.0, 2.0).detach()
    d = ((mean - renorm.running_mean) / running_std).clamp(-0.5, 0.5).detach()
    assert (r == 2.0).any() or (r == 0.5).any() or (d.abs() == 0.5).any()  # clipping is active
    expected = ((x - mean) / std * r + d) * renorm.weight + renorm.bias
    weights = torch.randn(10, 5, dtype=torch.float64)
    params = [x, renorm.weight, renorm.bias]
    grads = torch.autograd.grad((renorm(x) * weights).sum(), params)
    expected_grads = torch.autograd.grad((expected * weights).sum(), params)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad)


def test_batch_renorm_2d_corrects_each_channel_over_batch_and_positions():
    renorm = random_affine(BatchRenorm2d(3, r_max=1e6, d_max=1e6))
    with torch.no_grad():
        renorm.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
        renorm.running_var.copy_(torch.tensor([2.0, 0.25, 1.0]))
    mean, var = renorm.running_mean.view(1, 3, 1, 1), renorm.running_var.view(1, 3, 1, 1)
    x = inputs(4, 3, 5, 5)
    expected = ((x - mean) / (var + renorm.eps).sqrt() * renorm.weight.view(1, 3, 1, 1)
                + renorm.bias.view(1, 3, 1, 1))
    torch.testing.assert_close(renorm(x), expected)


def test_batch_renorm_warmup_relaxes_the_limits_linearly():
    renorm = BatchRenorm1d(3, r_max=3.0, d_max=5.0, warmup=4)
    seen = []
    for _ in range(6):
        seen.append(renorm.limits())
        renorm(torch.randn(8, 3) * 5 + 3)
    assert seen == [(1.0, 0.0), (1.5, 1.25), (2.0, 2.5), (2.5, 3.75), (3.0, 5.0), (3.0, 5.0)]


def test_batch_renorm_refuses_bad_arguments():
    with pytest.raises(ValueError, match="need r_max >= 1, d_max >= 0 and warmup >= 0"):
        BatchRenorm1d(3, r_max=0.5)
    with pytest.raises(ValueError, match="need r_max >= 1, d_max >= 0 and warmup >= 0"):
        BatchRenorm1d(3, d_max=-1.0)
    with pytest.raises(ValueError, match="track_running_stats must be True"):
        BatchRenorm1d(3, track_running_stats=False)
    with pytest.raises(ValueError, match=r"expected 4D input \(got 2D input\)"):
        BatchRenorm2d(3)(torch.randn(4, 3))


# --- Ghost Batch Normalization ---------------------------------------------------------------


class PerGhostBatchNorm(torch.nn.Module):
    """The definition of ghost BN: bnlib's batch_norm of each ghost batch on its own."""

    def __init__(self, ghost: torch.nn.Module) -> None:
        super().__init__()
        self.ghost = ghost

    def forward(self, x):
        return torch.cat([bnlib.torch.batch_norm(part, None, None, self.ghost.weight,
                                                 self.ghost.bias, training=True)
                          for part in x.split(self.ghost.ghost_batch_size)])


@pytest.mark.parametrize(("cls", "shape"), [(GhostBatchNorm1d, (12, 5)),
                                            (GhostBatchNorm1d, (12, 5, 3)),
                                            (GhostBatchNorm2d, (12, 5, 3, 2))])
def test_ghost_batch_norm_is_batch_norm_of_each_ghost_batch(cls, shape):
    ghost = random_affine(cls(5, 4))
    assert_same_module_results(ghost, PerGhostBatchNorm(ghost), inputs(*shape))


def test_ghost_running_statistics_average_the_ghost_batches():
    ghost = GhostBatchNorm1d(3, 4, momentum=0.25).double()
    x = inputs(12, 3).detach()
    ghost(x)
    parts = x.split(4)
    torch.testing.assert_close(ghost.running_mean,
                               0.25 * torch.stack([part.mean(0) for part in parts]).mean(0))
    torch.testing.assert_close(ghost.running_var, 0.75 + 0.25 * torch.stack(
        [part.var(0) for part in parts]).mean(0))
    assert int(ghost.num_batches_tracked) == 1


def test_one_ghost_batch_is_batch_norm_in_training_and_eval():
    ghost = random_affine(GhostBatchNorm1d(6, 16, momentum=None))  # a cumulative average
    assert_behaves_as_batch_norm(ghost, 16, momentum=None)


def test_ghost_batch_norm_refuses_bad_arguments():
    with pytest.raises(ValueError, match="ghost_batch_size must be at least 2"):
        GhostBatchNorm1d(3, 1)
    with pytest.raises(ValueError, match="a batch of 10 does not split into ghost batches of 4"):
        GhostBatchNorm1d(3, 4)(torch.randn(10, 3))


def test_ghost_batches_keep_the_noise_of_small_batches():
    generator = torch.Generator().manual_seed(0)
    # A large pool, so that batches of 256 drawn without replacement are nearly independent.
    values = torch.randn(5000, 8, generator=generator, dtype=torch.float64)
    large = normalization_noise(values, batch_size=256, draws=100)
    ghost = normalization_noise(values, batch_size=256, ghost_batch_size=16, draws=100)
    small = normalization_noise(values, batch_size=16, draws=100)
    assert ghost == pytest.approx(small, rel=1e-12)  # the same draws: example 0's ghost batch
    # The batch mean's noise falls as 1/sqrt(N): sqrt(256 / 16) = 4 (100 draws: +-15%).
    assert 3.2 < ghost / large < 4.8
    with pytest.raises(ValueError, match="need values of shape"):
        normalization_noise(values, batch_size=5001)


# --- Weight Standardization ------------------------------------------------------------------


def test_weight_standardization_standardizes_each_row_before_use():
    linear = weight_standardize(torch.nn.Linear(7, 3).double())
    raw = linear.parametrizations.weight.original
    standardized = (raw - raw.mean(1, keepdim=True)) / (raw.var(1, unbiased=False, keepdim=True)
                                                       + 1e-5).sqrt()
    x = inputs(4, 7)
    torch.testing.assert_close(linear(x), x @ standardized.T + linear.bias)
    torch.testing.assert_close(linear.weight.mean(1), torch.zeros(3, dtype=torch.float64))


def test_weight_standardized_conv_standardizes_each_filter():
    conv = weight_standardize(torch.nn.Conv2d(2, 3, 3, bias=False).double())
    raw = conv.parametrizations.weight.original
    flat = raw.reshape(3, -1)
    standardized = ((flat - flat.mean(1, keepdim=True))
                    / (flat.var(1, unbiased=False, keepdim=True) + 1e-5).sqrt())
    x = inputs(2, 2, 6, 6)
    torch.testing.assert_close(conv(x), torch.nn.functional.conv2d(x, standardized.view_as(raw)))


def test_weight_standardized_layers_ignore_the_scale_and_offset_of_each_row():
    linear = weight_standardize(torch.nn.Linear(50, 4, bias=False).double(), eps=0.0)
    x = inputs(6, 50)
    before = linear(x)
    with torch.no_grad():
        raw = linear.parametrizations.weight.original
        raw.mul_(torch.tensor([[0.1], [3.0], [7.0], [0.5]], dtype=torch.float64)).add_(2.0)
    torch.testing.assert_close(linear(x), before)


def test_the_gradient_of_a_standardized_weight_is_orthogonal_to_its_scale_and_offset():
    linear = weight_standardize(torch.nn.Linear(30, 5, bias=False).double(), eps=0.0)
    (linear(inputs(8, 30)) ** 2).sum().backward()
    raw = linear.parametrizations.weight.original
    torch.testing.assert_close(raw.grad.sum(1), torch.zeros(5, dtype=torch.float64))
    torch.testing.assert_close((raw.grad * raw).sum(1), torch.zeros(5, dtype=torch.float64))


def test_weight_standardization_refuses_modules_without_a_matrix_weight():
    with pytest.raises(ValueError, match="weight_standardize needs a module with a weight, "
                                         "got ReLU"):
        weight_standardize(torch.nn.ReLU())
    with pytest.raises(ValueError, match="needs a weight with an output axis and fan-in axes"):
        weight_standardize(torch.nn.LayerNorm(4))
    assert Standardized(eps=0.1).eps == 0.1


# --- Mean-only and scale-only normalization --------------------------------------------------


def test_partial_norm_with_both_steps_over_the_batch_is_batch_norm():
    partial = random_affine(PartialNorm(6, over="batch"))
    batch_norm = bnlib.torch.BatchNorm1d(6).double()
    with torch.no_grad():
        batch_norm.weight.copy_(partial.weight), batch_norm.bias.copy_(partial.bias)
    for step in range(3):
        assert_same_module_results(partial, batch_norm, inputs(10, 6, seed=step))
    torch.testing.assert_close(partial.running_mean, batch_norm.running_mean)
    torch.testing.assert_close(partial.running_square, batch_norm.running_var)
    partial.eval(), batch_norm.eval()
    x = inputs(3, 6, seed=5)
    torch.testing.assert_close(partial(x), batch_norm(x))


def test_partial_norm_with_both_steps_over_the_features_is_layer_norm():
    partial = random_affine(PartialNorm(6, over="features"))
    layer_norm = bnlib.torch.LayerNorm(6).double()
    layer_norm.load_state_dict(partial.state_dict())
    assert_same_module_results(partial, layer_norm, inputs(4, 6))


def test_scale_only_over_the_features_is_rms_norm():
    partial = random_affine(PartialNorm(6, over="features", center=False))
    x = inputs(5, 6)
    expected = bnlib.torch.rms_norm(x, 6, partial.weight, eps=1e-5) + partial.bias
    torch.testing.assert_close(partial(x), expected)


def test_mean_only_subtracts_the_mean_and_keeps_the_spread():
    for over, axis in (("batch", 0), ("features", 1)):
        partial = PartialNorm(4, over=over, scale=False).double()
        x = inputs(6, 4)
        torch.testing.assert_close(partial(x), x - x.mean(axis, keepdim=True))


def test_partial_norm_over_the_batch_uses_running_estimates_in_eval_mode():
    scale_only = PartialNorm(3, over="batch", center=False, momentum=0.5).double()
    mean_only = PartialNorm(3, over="batch", scale=False, momentum=0.5).double()
    x = inputs(8, 3).detach()
    scale_only(x), mean_only(x)
    # No mean was subtracted, so the mean square needs no Bessel correction.
    torch.testing.assert_close(scale_only.running_square, 0.5 + 0.5 * (x ** 2).mean(0))
    torch.testing.assert_close(mean_only.running_mean, 0.5 * x.mean(0))
    scale_only.eval(), mean_only.eval()
    probe = inputs(2, 3, seed=3).detach()
    torch.testing.assert_close(scale_only(probe),
                               probe / (scale_only.running_square + 1e-5).sqrt())
    torch.testing.assert_close(mean_only(probe), probe - mean_only.running_mean)


def test_partial_norm_refuses_bad_arguments():
    with pytest.raises(ValueError, match="over must be 'batch' or 'features', got 'channels'"):
        PartialNorm(3, over="channels")
    with pytest.raises(ValueError, match="PartialNorm needs center, scale or both"):
        PartialNorm(3, over="batch", center=False, scale=False)
    with pytest.raises(ValueError, match=r"expects \(N, D\) input, got shape \(2, 3, 4\)"):
        PartialNorm(3, over="features")(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="needs at least 2 examples in training"):
        PartialNorm(3, over="batch")(torch.randn(1, 3))


# --- The experiments -------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "expected"), [
    ("none", torch.nn.Identity), ("batch", bnlib.torch.BatchNorm1d),
    ("batch_renorm", BatchRenorm1d), ("ghost", GhostBatchNorm1d),
    ("group", bnlib.torch.GroupNorm), ("group_ws", bnlib.torch.GroupNorm),
    ("layer", bnlib.torch.LayerNorm), ("batch_mean_only", PartialNorm),
    ("batch_scale_only", PartialNorm), ("layer_mean_only", PartialNorm), ("rms", PartialNorm),
])
def test_every_kind_builds_its_layer(kind, expected):
    assert kind in RELATIVE_KINDS
    assert type(relative_norm(kind, 8)) is expected
    model = build_relative_mlp(kind, seed=0, hidden=(8, 8))
    assert all(type(norm) is expected for norm in model.norms)
    standardized = [parametrize.is_parametrized(linear, "weight") for linear in model.linears]
    assert standardized == [kind == "group_ws"] * 2


def test_relative_mlps_start_from_the_weights_of_build_mlp():
    reference = build_mlp("batch", seed=3, hidden=(10, 10))
    model = build_relative_mlp("batch_renorm", seed=3, hidden=(10, 10))
    for a, b in zip(model.linears, reference.linears, strict=True):
        assert torch.equal(a.weight, b.weight)
    ablated = relative_norm("rms", 8)
    assert (ablated.over, ablated.center, ablated.scale) == ("features", False, True)
    with pytest.raises(ValueError, match="kind must be one of"):
        relative_norm("weight", 8)


def test_train_relatives_reports_one_accuracy_per_kind_and_seed(data):
    result = train_relatives(data, ("batch", "rms"), seeds=(0, 1), progress=False,
                             model_options=dict(hidden=(30,)), steps=60, lr=0.5,
                             eval_every=60)
    assert result["accuracy"].shape == (2, 2) and result["kinds"] == ("batch", "rms")
    assert np.all(result["accuracy"] > 0.5)  # far above chance (0.1) after 60 steps
    table = accuracy_table(result)
    assert "| BatchNorm |" in table and "| RMSNorm (LN, scale only) |" in table


def test_class_grouped_batches_hold_equal_shares_of_few_classes(data):
    batches = class_grouped_batches(data, 12, 3, seed=0)
    for _ in range(20):
        x, y = next(batches)
        assert x.shape == (12, 64)
        labels, counts = torch.unique(y, return_counts=True)
        assert len(labels) == 3 and counts.tolist() == [4, 4, 4]
    with pytest.raises(ValueError, match=r"batch_size \(10\) must be a positive multiple"):
        class_grouped_batches(data, 10, 3)
    with pytest.raises(ValueError, match="cannot fill batches of 11 classes"):
        class_grouped_batches(data, 11, 11)


def test_batch_norm_trained_on_single_class_batches_is_at_chance_in_eval_mode(data):
    result = train_non_iid(data, ("batch",), classes_per_batch=(1, 10), batch_size=20,
                           steps=150, model_options=dict(hidden=(50,)), progress=None)
    assert result["accuracy"].shape == (2, 1, 1)
    (single,), (balanced,) = result["accuracy"][:, 0, 0:1]
    # BN gives every feature of a one-class batch mean 0 and variance 1, so the class cannot be
    # read from them in training; in eval mode the running statistics are those of all classes.
    assert single < 0.3 and balanced > 0.8
    again = train_on_batches(build_relative_mlp("batch", seed=0, hidden=(50,)), data,
                             class_grouped_batches(data, 20, 1, seed=0), steps=150)
    assert again == single  # the same model, batches and steps
    table = non_iid_table(result).splitlines()
    assert table[0] == "| classes per batch | BatchNorm |"
    assert table[2:] == [f"| 1 | {single:.1%} |", f"| 10 | {balanced:.1%} |"]
    with pytest.raises(ValueError, match="steps must be positive"):
        train_on_batches(build_relative_mlp("layer"), data, iter(()), steps=0)
    with pytest.raises(ValueError, match=r"batch_size \(16\) must be a positive multiple of "
                                         r"classes_per_batch \(3\)"):
        train_non_iid(data, ("batch",), classes_per_batch=(3,), progress=None)
