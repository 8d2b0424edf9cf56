"""Every BatchNorm line of reference/bn-edge-cases.md, numbered as there."""

import re

import pytest
import torch
from torch import nn
from torch.testing import assert_close

import bnlib.torch as bt


def _reference_batch_norm(x, weight=None, bias=None, eps=1e-5):
    """Float64 training-mode batch norm from the definition, for (N, C, *spatial) input."""
    x = x.double()
    dims = [0] + list(range(2, x.dim()))
    mean = x.mean(dim=dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)
    y = (x - mean) / torch.sqrt(var + eps)
    view = (1, -1) + (1,) * (x.dim() - 2)
    if weight is not None:
        y = y * weight.double().reshape(view)
    if bias is not None:
        y = y + bias.double().reshape(view)
    return y


# 1. One value per channel in training.
def test_1_one_value_per_channel_in_training_raises():
    message = "Expected more than 1 value per channel when training, got input size "
    with pytest.raises(ValueError, match=re.escape(message + "torch.Size([1, 10])")):
        bt.BatchNorm1d(10)(torch.randn(1, 10))
    with pytest.raises(ValueError, match=re.escape(message + "torch.Size([1, 10, 1, 1])")):
        bt.BatchNorm2d(10)(torch.randn(1, 10, 1, 1))


def test_1_eval_with_running_stats_accepts_a_single_sample():
    module = bt.BatchNorm1d(10).eval()
    x = torch.randn(1, 10)
    assert_close(module(x), x / (1 + 1e-5) ** 0.5)


def test_1_eval_without_running_stats_and_a_single_sample_raises():
    module = bt.BatchNorm1d(10, track_running_stats=False).eval()
    message = (
        "Expected more than 1 value per channel when training, got input size torch.Size([1, 10])"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        module(torch.randn(1, 10))


# 2. Rank.
@pytest.mark.parametrize(
    ("module", "shape", "message"),
    [
        (bt.BatchNorm1d(10), (2, 10, 3, 3), "expected 2D or 3D input (got 4D input)"),
        (bt.BatchNorm1d(10), (10,), "expected 2D or 3D input (got 1D input)"),
        (bt.BatchNorm2d(10), (2, 10, 3), "expected 4D input (got 3D input)"),
        (bt.BatchNorm3d(10), (2, 10, 3, 3), "expected 5D input (got 4D input)"),
    ],
)
def test_2_wrong_rank_raises(module, shape, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        module(torch.randn(shape))


def test_2_functional_rank_below_two_raises_value_error():
    """Deliberate difference: torch raises IndexError here."""
    message = "batch_norm expected input with at least 2 dimensions (got 1D input)"
    with pytest.raises(ValueError, match=re.escape(message)):
        bt.batch_norm(torch.randn(10), None, None, training=True)


# 3. Channel mismatch.
def test_3_channel_mismatch_names_the_running_mean_first():
    with pytest.raises(
        RuntimeError, match=re.escape("running_mean should contain 9 elements not 10")
    ):
        bt.BatchNorm1d(10)(torch.randn(4, 9))
    with pytest.raises(
        RuntimeError, match=re.escape("running_mean should contain 9 elements not 10")
    ):
        bt.BatchNorm1d(10).eval()(torch.randn(4, 9))


def test_3_channel_mismatch_names_the_weight_without_running_stats():
    module = bt.BatchNorm1d(9, track_running_stats=False)
    with pytest.raises(RuntimeError, match=re.escape("weight should contain 10 elements not 9")):
        module(torch.randn(4, 10))


def test_3_channel_mismatch_of_bias_and_running_var_in_functional_form():
    x = torch.randn(4, 10)
    with pytest.raises(RuntimeError, match=re.escape("bias should contain 10 elements not 9")):
        bt.batch_norm(x, None, None, torch.ones(10), torch.ones(9), training=True)
    with pytest.raises(
        RuntimeError, match=re.escape("running_var should contain 10 elements not 9")
    ):
        bt.batch_norm(x, torch.zeros(10), torch.ones(9), training=True)


def test_3_no_channel_check_without_affine_and_running_stats():
    module = bt.BatchNorm1d(10, affine=False, track_running_stats=False)
    x = torch.randn(4, 9)
    assert_close(module(x), _reference_batch_norm(x).float())


# 4. Functional eval without statistics.
def test_4_functional_eval_needs_running_stats():
    x = torch.randn(4, 10)
    with pytest.raises(
        RuntimeError, match=re.escape("running_mean must be defined in evaluation mode")
    ):
        bt.batch_norm(x, None, None)
    with pytest.raises(
        RuntimeError, match=re.escape("running_var must be defined in evaluation mode")
    ):
        bt.batch_norm(x, torch.zeros(10), None)


def test_4_training_needs_both_or_neither_running_stat():
    message = "running_mean and running_var must either both be None or neither be None"
    with pytest.raises(ValueError, match=re.escape(message)):
        bt.batch_norm(torch.randn(4, 10), torch.zeros(10), None, training=True)


# 5. eps.
def test_5_training_needs_positive_eps():
    message = "batch_norm eps must be positive during training, but got 0.0"
    with pytest.raises(ValueError, match=re.escape(message)):
        bt.batch_norm(torch.randn(4, 10), None, None, training=True, eps=0.0)
    with pytest.raises(ValueError, match=re.escape(message)):
        bt.BatchNorm1d(10, eps=0.0)(torch.randn(4, 10))


def test_5_eval_rejects_negative_eps_and_accepts_zero():
    x, mean, var = torch.randn(4, 10), torch.randn(10), torch.rand(10) + 0.5
    with pytest.raises(
        ValueError, match=re.escape("batch_norm eps must be non-negative, but got -1.0")
    ):
        bt.batch_norm(x, mean, var, eps=-1.0)
    assert_close(bt.batch_norm(x, mean, var, eps=0.0), (x - mean) / var.sqrt())


# 6. dtypes.
@pytest.mark.parametrize(
    ("dtype", "name"),
    [(torch.int64, "Long"), (torch.int32, "Int"), (torch.bool, "Bool"), (torch.uint8, "Byte")],
)
def test_6_integer_input_is_not_implemented(dtype, name):
    message = f"\"batch_norm\" not implemented for '{name}'"
    with pytest.raises(NotImplementedError, match=re.escape(message)):
        bt.BatchNorm1d(10)(torch.ones(4, 10, dtype=dtype))
    with pytest.raises(NotImplementedError, match=re.escape(message)):
        bt.BatchNorm1d(10).eval()(torch.ones(4, 10, dtype=dtype))


def test_6_float64_input_with_float32_module_raises():
    message = "mixed dtype (CPU): all inputs must share same datatype."
    with pytest.raises(RuntimeError, match=re.escape(message)):
        bt.BatchNorm1d(10)(torch.randn(4, 10, dtype=torch.float64))


@pytest.mark.parametrize(
    ("input_dtype", "module_dtype"),
    [
        (torch.float32, torch.float64),
        (torch.float16, torch.float64),
        (torch.float32, torch.bfloat16),
        (torch.float16, torch.bfloat16),
    ],
)
def test_6_parameters_other_than_float32_with_another_input_dtype_raise(input_dtype, module_dtype):
    message = "mixed dtype (CPU): expect parameter to have scalar type of Float"
    with pytest.raises(RuntimeError, match=re.escape(message)):
        bt.BatchNorm1d(10, dtype=module_dtype)(torch.randn(4, 10).to(input_dtype))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("training", [True, False])
def test_6_reduced_precision_input_with_float32_module(dtype, training):
    module = bt.BatchNorm2d(3).train(training)
    with torch.no_grad():
        module.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
        module.weight.copy_(torch.tensor([1.5, 0.5, 2.0]))
    reference = bt.BatchNorm2d(3).train(training)
    reference.load_state_dict(module.state_dict())
    x = torch.randn(4, 3, 5, 5).to(dtype)
    y = module(x)
    assert y.dtype == dtype
    assert module.running_mean.dtype == module.running_var.dtype == torch.float32
    assert module.weight.dtype == torch.float32
    expected = reference(x.float())  # same values computed from float32 input
    assert_close(y.float(), expected, rtol=1e-2, atol=2e-2)
    assert_close(module.running_var, reference.running_var)


# 7. Empty batch.
@pytest.mark.parametrize("momentum", [0.1, None])
def test_7_empty_batch(momentum):
    module = bt.BatchNorm1d(10, momentum=momentum)
    y = module(torch.randn(0, 10))
    assert y.shape == (0, 10)
    assert_close(module.running_mean, torch.zeros(10))
    assert_close(module.running_var, torch.ones(10))
    assert module.num_batches_tracked.item() == 1


def test_7_empty_batch_backward_gives_zero_parameter_grads():
    module = bt.BatchNorm2d(3)
    x = torch.randn(0, 3, 2, 2, requires_grad=True)
    module(x).sum().backward()
    assert x.grad.shape == x.shape
    assert_close(module.weight.grad, torch.zeros(3))
    assert_close(module.bias.grad, torch.zeros(3))


# 8. Running update with the unbiased variance; output with the biased one.
def test_8_running_update_uses_unbiased_variance_output_biased():
    module = bt.BatchNorm2d(3, momentum=0.3).double()
    x = torch.randn(4, 3, 2, 5, dtype=torch.float64) * 2 + 1
    y = module(x)
    dims = (0, 2, 3)
    assert_close(y, _reference_batch_norm(x))
    assert_close(module.running_mean, 0.3 * x.mean(dim=dims))
    assert_close(module.running_var, 0.7 + 0.3 * x.var(dim=dims, unbiased=True))


# 9. Momentum None / 0 / 1.
def test_9_momentum_none_is_a_cumulative_average():
    module = bt.BatchNorm1d(4, momentum=None).double()
    batches = [torch.randn(6, 4, dtype=torch.float64) + i for i in range(5)]
    for x in batches:
        module(x)
    assert_close(module.running_mean, torch.stack([x.mean(0) for x in batches]).mean(0))
    assert_close(module.running_var, torch.stack([x.var(0) for x in batches]).mean(0))
    assert module.num_batches_tracked.item() == 5


def test_9_momentum_zero_freezes_stats_but_counts():
    module = bt.BatchNorm1d(4, momentum=0.0)
    for _ in range(3):
        module(torch.randn(6, 4) + 5)
    assert_close(module.running_mean, torch.zeros(4))
    assert_close(module.running_var, torch.ones(4))
    assert module.num_batches_tracked.item() == 3


def test_9_momentum_one_keeps_the_last_batch():
    module = bt.BatchNorm1d(4, momentum=1.0).double()
    for _ in range(2):
        x = torch.randn(6, 4, dtype=torch.float64) * 3
        module(x)
    assert_close(module.running_mean, x.mean(0))
    assert_close(module.running_var, x.var(0))


def test_9_momentum_is_not_range_checked():
    module = bt.BatchNorm1d(4, momentum=1.5).double()
    x = torch.randn(6, 4, dtype=torch.float64)
    module(x)
    assert_close(module.running_mean, 1.5 * x.mean(0))


# 10. Eval.
def test_10_eval_uses_running_stats_and_leaves_buffers_alone():
    module = bt.BatchNorm2d(3).double()
    with torch.no_grad():
        module.running_mean.copy_(torch.tensor([1.0, -2.0, 0.5]))
        module.running_var.copy_(torch.tensor([4.0, 0.25, 1.0]))
        module.weight.copy_(torch.tensor([2.0, 1.0, -1.0]))
        module.bias.copy_(torch.tensor([0.0, 3.0, 1.0]))
    module.eval()
    before = {name: b.clone() for name, b in module.named_buffers()}
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    view = (1, 3, 1, 1)
    expected = (x - module.running_mean.reshape(view)) / torch.sqrt(
        module.running_var.reshape(view) + 1e-5
    ) * module.weight.reshape(view) + module.bias.reshape(view)
    first, second = module(x), module(x)
    assert_close(first, expected)
    assert torch.equal(first, second)
    for name, buffer in module.named_buffers():
        assert torch.equal(buffer, before[name]), name


# 11. track_running_stats=False.
def test_11_without_tracking_buffers_are_none_and_batch_stats_are_used():
    module = bt.BatchNorm1d(4, track_running_stats=False).double()
    assert module.running_mean is None and module.running_var is None
    assert module.num_batches_tracked is None
    x = torch.randn(8, 4, dtype=torch.float64) * 3 + 2
    assert_close(module.train()(x), _reference_batch_norm(x))
    assert_close(module.eval()(x), _reference_batch_norm(x))


def test_11_tracking_switched_off_after_construction():
    module = bt.BatchNorm1d(3)
    module.track_running_stats = False
    x = torch.randn(8, 3) * 5 + 3
    assert_close(module(x), _reference_batch_norm(x).float(), rtol=1e-5, atol=1e-5)
    assert_close(module.running_mean, torch.zeros(3))
    assert module.num_batches_tracked.item() == 0
    module.eval()  # eval normalises with the existing buffers (0 and 1)
    assert_close(module(x), x / (1 + 1e-5) ** 0.5)


# 12. affine=False, state_dict keys, initial values, repr.
def test_12_affine_false_has_no_parameters():
    module = bt.BatchNorm2d(3, affine=False)
    assert module.weight is None and module.bias is None
    assert list(module.state_dict()) == ["running_mean", "running_var", "num_batches_tracked"]


def test_12_default_keys_and_initial_values():
    module = bt.BatchNorm2d(3)
    assert list(module.state_dict()) == [
        "weight",
        "bias",
        "running_mean",
        "running_var",
        "num_batches_tracked",
    ]
    assert torch.equal(module.weight, torch.ones(3))
    assert torch.equal(module.bias, torch.zeros(3))
    assert torch.equal(module.running_mean, torch.zeros(3))
    assert torch.equal(module.running_var, torch.ones(3))
    assert module.num_batches_tracked.dtype == torch.int64
    assert module.num_batches_tracked.item() == 0


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"affine": False}, {"momentum": None}, {"track_running_stats": False}, {"eps": 1e-3}],
)
@pytest.mark.parametrize("name", ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d"])
def test_12_repr_matches_torch(name, kwargs):
    assert repr(getattr(bt, name)(3, **kwargs)) == repr(getattr(nn, name)(3, **kwargs))


def test_12_repr_spelled_out():
    """torch 2.13 prints the bias flag (bn-edge-cases.md shows the older form without it)."""
    shows_bias = "bias=" in repr(nn.BatchNorm2d(3))
    bias = "bias=True, " if shows_bias else ""
    expected = (
        f"BatchNorm2d(3, eps=1e-05, momentum=0.1, affine=True, {bias}track_running_stats=True)"
    )
    assert repr(bt.BatchNorm2d(3)) == expected


def test_12_reset_parameters_and_running_stats():
    module = bt.BatchNorm1d(3)
    module(torch.randn(5, 3) * 4 + 2)
    with torch.no_grad():
        module.weight.mul_(3)
        module.bias.add_(1)
    module.reset_running_stats()
    assert torch.equal(module.running_mean, torch.zeros(3))
    assert torch.equal(module.running_var, torch.ones(3))
    assert module.num_batches_tracked.item() == 0
    assert not torch.equal(module.weight, torch.ones(3))
    module.reset_parameters()
    assert torch.equal(module.weight, torch.ones(3))
    assert torch.equal(module.bias, torch.zeros(3))


# 13. Backward in training.
def test_13_backward_matches_the_closed_form():
    x = torch.randn(5, 3, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(5, 3, 4, dtype=torch.float64)
    bt.batch_norm(x, None, None, weight, bias, training=True).backward(dy)
    with torch.no_grad():
        count = 5 * 4
        mean = x.mean(dim=(0, 2), keepdim=True)
        invstd = 1 / torch.sqrt(x.var(dim=(0, 2), unbiased=False, keepdim=True) + 1e-5)
        xhat = (x - mean) * invstd
        sum_dy = dy.sum(dim=(0, 2), keepdim=True)
        sum_dy_xhat = (dy * xhat).sum(dim=(0, 2), keepdim=True)
        dx = weight.reshape(1, 3, 1) * invstd / count * (count * dy - sum_dy - xhat * sum_dy_xhat)
    assert_close(x.grad, dx)
    assert_close(weight.grad, sum_dy_xhat.flatten())
    assert_close(bias.grad, sum_dy.flatten())


def test_13_gradcheck_and_gradgradcheck():
    x = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)

    def train_bn(x, weight, bias):
        return bt.batch_norm(x, None, None, weight, bias, training=True)

    assert torch.autograd.gradcheck(train_bn, (x, weight, bias))
    assert torch.autograd.gradgradcheck(train_bn, (x, weight, bias))


# 14. Functional training updates the passed tensors in place.
def test_14_functional_training_updates_running_tensors_in_place():
    running_mean, running_var = torch.zeros(4), torch.ones(4)
    mean_storage, var_storage = running_mean.data_ptr(), running_var.data_ptr()
    x = torch.randn(6, 4) + 3
    bt.batch_norm(x, running_mean, running_var, training=True, momentum=0.5)
    assert running_mean.data_ptr() == mean_storage and running_var.data_ptr() == var_storage
    assert_close(running_mean, 0.5 * x.mean(0))
    assert_close(running_var, 0.5 + 0.5 * x.var(0))


# 15. Memory formats.
@pytest.mark.parametrize(
    ("module_class", "shape", "memory_format"),
    [
        (bt.BatchNorm2d, (2, 3, 4, 5), torch.channels_last),
        (bt.BatchNorm3d, (2, 3, 2, 4, 3), torch.channels_last_3d),
    ],
)
def test_15_channels_last_in_channels_last_out(module_class, shape, memory_format):
    module = module_class(3)
    x = torch.randn(shape)
    expected = module_class(3)(x)
    x_last = x.to(memory_format=memory_format).requires_grad_()
    y = module(x_last)
    assert y.is_contiguous(memory_format=memory_format)
    assert_close(y, expected)
    y.backward(torch.ones_like(y))
    assert x_last.grad.is_contiguous(memory_format=memory_format)


def test_15_non_contiguous_input_gives_equal_results():
    x = torch.randn(5, 4, 3, 2).transpose(0, 2)  # (3, 4, 5, 2), not contiguous
    assert not x.is_contiguous()
    assert_close(bt.BatchNorm2d(4)(x), bt.BatchNorm2d(4)(x.contiguous()))


# 16. NaN isolation.
def test_16_nan_poisons_only_its_channel():
    module = bt.BatchNorm1d(3)
    x = torch.randn(8, 3)
    x[2, 1] = float("nan")
    y = module(x)
    assert torch.isnan(y[:, 1]).all()
    assert torch.isfinite(y[:, [0, 2]]).all()
    assert torch.isnan(module.running_mean[1]) and torch.isnan(module.running_var[1])
    assert torch.isfinite(module.running_mean[[0, 2]]).all()
    assert torch.isfinite(module.running_var[[0, 2]]).all()


# 17. Constant channel.
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_17_constant_channel_gives_beta(dtype):
    module = bt.BatchNorm2d(2, dtype=dtype)
    with torch.no_grad():
        module.bias.copy_(torch.tensor([0.25, -3.0]))
    x = torch.full((4, 2, 3, 3), 1234.5678, dtype=dtype)
    y = module(x)
    assert_close(y, _reference_batch_norm(x, module.weight, module.bias).to(dtype))
    assert_close(y[:, 0], torch.full_like(y[:, 0], 0.25), rtol=0, atol=1e-6)


# 18. Large mean, small spread.
def test_18_float32_large_offset_is_close_to_float64_and_beats_torch():
    """Deliberate difference: two-pass statistics around a pivot are more accurate than torch's."""
    generator = torch.Generator().manual_seed(0)
    x = 1e3 + 0.1 * torch.randn(64, 8, 8, 8, generator=generator)
    exact = _reference_batch_norm(x)
    ours = (bt.batch_norm(x, None, None, training=True).double() - exact).abs().max().item()
    theirs = nn.functional.batch_norm(x, None, None, training=True).double() - exact
    assert ours <= 5e-4
    assert ours < theirs.abs().max().item()


def test_18_large_offset_running_variance_is_accurate():
    x = 1e3 + 0.1 * torch.randn(256, 4, generator=torch.Generator().manual_seed(1))
    running_mean, running_var = torch.zeros(4), torch.ones(4)
    bt.batch_norm(x, running_mean, running_var, training=True, momentum=1.0)
    assert_close(running_var.double(), x.double().var(0), rtol=1e-3, atol=0)
    assert_close(running_mean.double(), x.double().mean(0), rtol=1e-6, atol=0)


# 19. Running stats carry no gradient.
def test_19_running_stats_carry_no_gradient():
    module = bt.BatchNorm1d(3)
    x = torch.randn(5, 3, requires_grad=True)
    module(x * 2).sum().backward()
    for buffer in (module.running_mean, module.running_var):
        assert not buffer.requires_grad and buffer.grad_fn is None


# 20. Old checkpoints without num_batches_tracked.
def test_20_old_checkpoint_without_counter_loads_as_zero():
    source = bt.BatchNorm1d(3)
    source(torch.randn(4, 3))
    state = source.state_dict()
    del state["num_batches_tracked"]
    state._metadata[""]["version"] = 1
    target = bt.BatchNorm1d(3)
    target.num_batches_tracked.fill_(7)
    target.load_state_dict(state)
    assert target.num_batches_tracked.item() == 7  # as torch: the module's own value is kept
    fresh = bt.BatchNorm1d(3)
    fresh.load_state_dict(state)
    assert fresh.num_batches_tracked.item() == 0
    assert_close(fresh.running_mean, source.running_mean)


def test_20_current_checkpoint_missing_the_counter_is_an_error():
    state = bt.BatchNorm1d(3).state_dict()
    del state["num_batches_tracked"]
    with pytest.raises(
        RuntimeError, match=re.escape('Missing key(s) in state_dict: "num_batches_tracked"')
    ):
        bt.BatchNorm1d(3).load_state_dict(state)
