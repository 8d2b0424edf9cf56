"""The LayerNorm lines of reference/bn-edge-cases.md (numbered as there), and the matching
checks and messages of GroupNorm and RMSNorm."""

import re

import pytest
import torch
from torch import nn
from torch.testing import assert_close

import bnlib.torch as bt


# 1. Input shape against normalized_shape.
def test_1_input_not_ending_in_normalized_shape_raises():
    message = (
        "Given normalized_shape=[5], expected input with shape [*, 5], but got input of size[2, 4]"
    )
    with pytest.raises(RuntimeError, match=re.escape(message)):
        bt.LayerNorm(5)(torch.randn(2, 4))
    message = (
        "Given normalized_shape=[4, 3, 2], expected input with shape [*, 4, 3, 2], but got "
        "input of size[2, 4, 3]"
    )
    with pytest.raises(RuntimeError, match=re.escape(message)):
        bt.layer_norm(torch.randn(2, 4, 3), [4, 3, 2])


# 2. Parameter shapes.
def test_2_weight_and_bias_shapes_are_checked():
    message = (
        "Expected weight to be of same shape as normalized_shape, but got weight of shape [3] "
        "and normalized_shape = [4]"
    )
    with pytest.raises(RuntimeError, match=re.escape(message)):
        bt.layer_norm(torch.randn(2, 4), [4], torch.ones(3))
    with pytest.raises(RuntimeError, match=re.escape(message.replace("weight", "bias"))):
        bt.layer_norm(torch.randn(2, 4), [4], None, torch.ones(3))


def test_2_empty_normalized_shape_raises():
    message = (
        "Expected normalized_shape to be at least 1-dimensional, i.e., containing at least one "
        "element, but got normalized_shape = []"
    )
    with pytest.raises(RuntimeError, match=re.escape(message)):
        bt.layer_norm(torch.randn(2, 4), [])


# 3. Biased variance over the trailing dims; train == eval; N=1 and empty batches.
def test_3_biased_variance_over_trailing_dims_and_train_equals_eval():
    x = torch.randn(3, 2, 4, 5, dtype=torch.float64)
    mean = x.mean(dim=(-2, -1), keepdim=True)
    var = x.var(dim=(-2, -1), unbiased=False, keepdim=True)
    module = bt.LayerNorm((4, 5), dtype=torch.float64)
    assert_close(module.train()(x), (x - mean) / torch.sqrt(var + 1e-5))
    assert torch.equal(module.train()(x), module.eval()(x))
    assert list(module.buffers()) == []


@pytest.mark.parametrize("shape", [(1, 4), (4,), (0, 4), (2, 0, 4), (3, 0)])
def test_3_single_row_and_empty_batches_work(shape):
    x = torch.randn(shape, requires_grad=True)
    module = bt.LayerNorm(shape[-1])
    y = module(x)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad.shape == x.shape


# 4. LayerNorm(1) returns the bias.
def test_4_layernorm_of_one_feature_returns_the_bias():
    module = bt.LayerNorm(1)
    with torch.no_grad():
        module.bias.fill_(0.75)
        module.weight.fill_(3.0)
    assert torch.equal(module(torch.randn(6, 1) * 100), torch.full((6, 1), 0.75))


# 5. eps is not validated; eps=0 on a constant row gives NaN.
def test_5_eps_is_not_validated_and_zero_eps_on_constant_row_is_nan():
    assert torch.isnan(bt.layer_norm(torch.ones(2, 4), [4], eps=0.0)).all()
    x = torch.randn(2, 4, dtype=torch.float64)
    assert_close(bt.layer_norm(x, [4], eps=-1e-3), nn.functional.layer_norm(x, [4], eps=-1e-3))


# 6. Parameters, int normalized_shape, repr.
def test_6_parameters_follow_elementwise_affine_and_bias():
    assert list(bt.LayerNorm(4).state_dict()) == ["weight", "bias"]
    assert list(bt.LayerNorm(4, bias=False).state_dict()) == ["weight"]
    assert bt.LayerNorm(4, bias=False).bias is None
    no_affine = bt.LayerNorm(4, elementwise_affine=False)
    assert no_affine.weight is None and no_affine.bias is None
    assert list(no_affine.state_dict()) == []


def test_6_int_normalized_shape_and_repr():
    module = bt.LayerNorm(4)
    assert module.normalized_shape == (4,)
    bias = ", bias=True" if "bias=" in repr(nn.LayerNorm(4)) else ""  # torch 2.13 prints it
    assert repr(module) == f"LayerNorm((4,), eps=1e-05, elementwise_affine=True{bias})"
    for kwargs in ({}, {"elementwise_affine": False}, {"bias": False}, {"eps": 1e-3}):
        assert repr(bt.LayerNorm([3, 4], **kwargs)) == repr(nn.LayerNorm([3, 4], **kwargs))


def test_6_functional_accepts_an_int_normalized_shape():
    """Deliberate difference: torch's functional form raises TypeError for an int."""
    x = torch.randn(3, 4)
    assert_close(bt.layer_norm(x, 4), nn.functional.layer_norm(x, (4,)))


# 7. fp16/bf16.
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_7_reduced_precision_input(dtype):
    module = bt.LayerNorm(8)
    x = torch.randn(5, 8).to(dtype)
    y = module(x)
    assert y.dtype == dtype and module.weight.dtype == torch.float32
    assert_close(y.float(), module(x.float()), rtol=1e-2, atol=1e-2)


def test_layernorm_dtype_errors():
    with pytest.raises(
        NotImplementedError, match=re.escape("\"LayerNormKernelImpl\" not implemented for 'Long'")
    ):
        bt.layer_norm(torch.ones(2, 4, dtype=torch.long), (4,))
    with pytest.raises(  # float32 parameters: the dtype mismatch is found first, as in torch
        RuntimeError, match=re.escape("mixed dtype (CPU): all inputs must share same datatype.")
    ):
        bt.LayerNorm(4)(torch.ones(2, 4, dtype=torch.long))
    with pytest.raises(
        RuntimeError, match=re.escape("mixed dtype (CPU): all inputs must share same datatype.")
    ):
        bt.LayerNorm(4)(torch.randn(2, 4, dtype=torch.float64))
    with pytest.raises(
        RuntimeError,
        match=re.escape("mixed dtype (CPU): expect parameter to have scalar type of Float"),
    ):
        bt.LayerNorm(4, dtype=torch.float16)(torch.randn(2, 4))


# GroupNorm.
def test_groupnorm_channels_must_divide_into_groups():
    with pytest.raises(
        ValueError, match=re.escape("num_channels (6) must be divisible by num_groups (4)")
    ):
        bt.GroupNorm(4, 6)
    message = (
        "Expected number of channels in input to be divisible by num_groups, but got input of "
        "shape [2, 6, 3] and num_groups=4"
    )
    with pytest.raises(RuntimeError, match=re.escape(message)):
        bt.group_norm(torch.randn(2, 6, 3), 4)


def test_groupnorm_input_and_parameter_shapes():
    with pytest.raises(
        RuntimeError,
        match=re.escape("Expected at least 2 dimensions for input tensor but received 1"),
    ):
        bt.group_norm(torch.randn(6), 3)
    message = (
        "Expected weight to be a vector of size equal to the number of channels in input, but "
        "got weight of shape [6] and input of shape [2, 4, 3]"
    )
    with pytest.raises(RuntimeError, match=re.escape(message)):
        bt.GroupNorm(2, 6)(torch.randn(2, 4, 3))
    message = (
        "Expected bias to be a vector of size equal to the number of channels in input, but got "
        "bias of shape [5] and input of shape [2, 6, 3]"
    )
    with pytest.raises(RuntimeError, match=re.escape(message)):
        bt.group_norm(torch.randn(2, 6, 3), 2, torch.ones(6), torch.ones(5))


def test_groupnorm_one_value_per_group_raises():
    message = "Expected more than 1 value per channel when training, got input size [1, 2, 1]"
    with pytest.raises(ValueError, match=re.escape(message)):
        bt.group_norm(torch.randn(1, 2, 1), 2)


def test_groupnorm_dtypes_empty_batch_and_repr():
    with pytest.raises(
        NotImplementedError, match=re.escape("\"GroupNormKernelImpl\" not implemented for 'Long'")
    ):
        bt.group_norm(torch.ones(2, 4, 3, dtype=torch.long), 2)
    with pytest.raises(
        RuntimeError, match=re.escape("mixed dtype (CPU): all inputs must share same datatype.")
    ):
        bt.GroupNorm(2, 4)(torch.randn(2, 4, 3, dtype=torch.float64))
    assert bt.GroupNorm(2, 4)(torch.randn(0, 4, 3)).shape == (0, 4, 3)
    y = bt.GroupNorm(2, 4)(torch.randn(2, 4, 3).bfloat16())
    assert y.dtype == torch.bfloat16
    for kwargs in ({}, {"affine": False}, {"eps": 1e-3}):
        assert repr(bt.GroupNorm(2, 4, **kwargs)) == repr(nn.GroupNorm(2, 4, **kwargs))
    assert list(bt.GroupNorm(2, 4).state_dict()) == ["weight", "bias"]


def test_groupnorm_keeps_channels_last():
    x = torch.randn(2, 4, 3, 3).to(memory_format=torch.channels_last)
    y = bt.GroupNorm(2, 4)(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert_close(y, nn.GroupNorm(2, 4)(x.contiguous()))


# RMSNorm.
def test_rmsnorm_shape_errors():
    message = (
        "Given normalized_shape=[5], expected input with shape [*5], but got input of size[2, 4]"
    )
    with pytest.raises(RuntimeError, match=re.escape(message)):
        bt.RMSNorm(5)(torch.randn(2, 4))
    message = (
        "Expected weight to be of same shape as normalized_shape, but got weight of shape [3] "
        "and normalized_shape = [4]"
    )
    with pytest.raises(RuntimeError, match=re.escape(message)):
        bt.rms_norm(torch.randn(2, 4), [4], torch.ones(3))
    with pytest.raises(
        NotImplementedError, match=re.escape("\"rms_norm\" not implemented for 'Long'")
    ):
        bt.rms_norm(torch.ones(2, 4, dtype=torch.long), [4])


def test_rmsnorm_default_eps_is_the_float32_machine_epsilon_for_reduced_precision():
    x = torch.full((1, 4), 1e-4)
    eps = torch.finfo(torch.float32).eps
    expected = 1e-4 / (1e-8 + eps) ** 0.5
    assert_close(bt.rms_norm(x, [4]), torch.full((1, 4), expected))
    assert_close(
        bt.rms_norm(x.half(), [4]).float(), torch.full((1, 4), expected), rtol=1e-3, atol=0
    )


@pytest.mark.parametrize("shape", [(0, 4), (3, 0)])
def test_rmsnorm_empty_input(shape):
    x = torch.randn(shape, requires_grad=True)
    y = bt.RMSNorm(shape[-1])(x)
    assert y.shape == shape
    y.sum().backward()
    assert x.grad.shape == shape


def test_rmsnorm_output_keeps_the_input_dtype_and_repr_matches():
    assert bt.RMSNorm(4)(torch.randn(2, 4, dtype=torch.float64)).dtype == torch.float64
    assert bt.RMSNorm(4)(torch.randn(2, 4).half()).dtype == torch.float16
    for kwargs in ({}, {"eps": 1e-3}, {"elementwise_affine": False}):
        assert repr(bt.RMSNorm([4, 3], **kwargs)) == repr(nn.RMSNorm([4, 3], **kwargs))
