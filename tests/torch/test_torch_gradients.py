"""gradcheck and gradgradcheck in float64 for every op, and the invariants of the backward."""

import pytest
import torch
from torch.testing import assert_close

import bnlib.torch as bt


def _f64(*shape, requires_grad=True, seed=0):
    generator = torch.Generator().manual_seed(seed + sum(shape))
    tensor = torch.randn(shape, generator=generator, dtype=torch.float64)
    return tensor.requires_grad_(requires_grad)


TINY_EPS = 1e-30  # makes sum(xhat**2) equal the group size, so the invariants hold exactly
RUNNING_MEAN = _f64(3, requires_grad=False, seed=1)
RUNNING_VAR = _f64(3, requires_grad=False, seed=2).abs() + 0.5

# name -> (function of the differentiable tensors, the tensors)
CASES = {
    "batch_norm_train": (
        lambda x, w, b: bt.batch_norm(x, None, None, w, b, training=True),
        (_f64(4, 3, 2), _f64(3), _f64(3)),
    ),
    "batch_norm_train_no_affine": (
        lambda x: bt.batch_norm(x, None, None, training=True),
        (_f64(5, 3),),
    ),
    "batch_norm_train_2d_channels_last": (
        lambda x, w, b: bt.batch_norm(x, None, None, w, b, training=True),
        (
            _f64(2, 3, 2, 2, requires_grad=False)
            .to(memory_format=torch.channels_last)
            .requires_grad_(),
            _f64(3),
            _f64(3),
        ),
    ),
    "batch_norm_eval": (
        lambda x, w, b: bt.batch_norm(x, RUNNING_MEAN, RUNNING_VAR, w, b, eps=1e-3),
        (_f64(4, 3, 2), _f64(3), _f64(3)),
    ),
    "layer_norm": (
        lambda x, w, b: bt.layer_norm(x, (2, 3), w, b),
        (_f64(3, 2, 3), _f64(2, 3), _f64(2, 3)),
    ),
    "layer_norm_bias_only": (
        lambda x, b: bt.layer_norm(x, (4,), None, b),
        (_f64(3, 4), _f64(4)),
    ),
    "group_norm": (
        lambda x, w, b: bt.group_norm(x, 2, w, b),
        (_f64(2, 4, 3), _f64(4), _f64(4)),
    ),
    "group_norm_no_affine": (
        lambda x: bt.group_norm(x, 3, eps=1e-3),
        (_f64(2, 6, 2, 2),),
    ),
    "rms_norm": (
        lambda x, w: bt.rms_norm(x, (5,), w),
        (_f64(3, 5), _f64(5)),
    ),
    "rms_norm_no_weight": (
        lambda x: bt.rms_norm(x, (2, 3), eps=1e-3),
        (_f64(4, 2, 3),),
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_gradcheck(name):
    function, inputs = CASES[name]
    assert torch.autograd.gradcheck(function, inputs)


@pytest.mark.parametrize("name", CASES)
def test_gradgradcheck(name):
    function, inputs = CASES[name]
    assert torch.autograd.gradgradcheck(function, inputs)


def _normalised_and_grad(function, x, upstream):
    x = x.detach().requires_grad_()
    y = function(x)
    y.backward(upstream)
    return y.detach(), x.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batch_norm_input_grad_is_orthogonal_to_one_and_xhat_per_channel(dtype):
    """With weight 1: sum(dx) = 0 and sum(dx * xhat) = 0 over each channel's N*H*W values
    (exactly so when eps is negligible: then sum(xhat**2) = M)."""
    x = torch.randn(6, 3, 4, 4, dtype=dtype) * 3 + 2
    upstream = torch.randn_like(x)
    xhat, dx = _normalised_and_grad(
        lambda v: bt.batch_norm(v, None, None, training=True, eps=TINY_EPS), x, upstream
    )
    dims = (0, 2, 3)
    tolerance = 1e-4 if dtype == torch.float32 else 1e-11
    assert_close(dx.sum(dim=dims), torch.zeros(3, dtype=dtype), rtol=0, atol=tolerance)
    assert_close((dx * xhat).sum(dim=dims), torch.zeros(3, dtype=dtype), rtol=0, atol=tolerance)


def test_layer_and_group_norm_input_grads_are_orthogonal_to_one_and_xhat_per_group():
    x = torch.randn(4, 6, 5, dtype=torch.float64) * 2 - 1
    upstream = torch.randn_like(x)
    xhat, dx = _normalised_and_grad(lambda v: bt.layer_norm(v, (6, 5), eps=TINY_EPS), x, upstream)
    assert_close(dx.sum(dim=(1, 2)), torch.zeros(4, dtype=torch.float64), rtol=0, atol=1e-11)
    assert_close(
        (dx * xhat).sum(dim=(1, 2)), torch.zeros(4, dtype=torch.float64), rtol=0, atol=1e-11
    )
    xhat, dx = _normalised_and_grad(lambda v: bt.group_norm(v, 3, eps=TINY_EPS), x, upstream)
    groups = (4, 3, 10)
    assert_close(
        dx.reshape(groups).sum(-1), torch.zeros(4, 3, dtype=torch.float64), rtol=0, atol=1e-11
    )
    assert_close(
        (dx * xhat).reshape(groups).sum(-1),
        torch.zeros(4, 3, dtype=torch.float64),
        rtol=0,
        atol=1e-11,
    )


def test_rms_norm_input_grad_is_orthogonal_to_x_per_row():
    """RMS norm is invariant to scaling each row, so sum(dx * x) = 0 per row."""
    x = torch.randn(5, 7, dtype=torch.float64) + 1
    _, dx = _normalised_and_grad(lambda v: bt.rms_norm(v, (7,), eps=0.0), x, torch.randn_like(x))
    assert_close((dx * x).sum(-1), torch.zeros(5, dtype=torch.float64), rtol=0, atol=1e-11)


def test_parameter_grads_have_the_parameter_dtype_for_reduced_precision_input():
    module = bt.BatchNorm2d(3)
    x = torch.randn(4, 3, 2, 2).bfloat16().requires_grad_()
    module(x).float().pow(2).sum().backward()
    assert x.grad.dtype == torch.bfloat16
    assert module.weight.grad.dtype == module.bias.grad.dtype == torch.float32
