"""bnlib.numpy batch norm against float64 maths, torch.nn and numerical gradients."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import bnlib.numpy as bn


def test_forward_matches_float64_maths(shape, gamma_beta, rng, reference):
    x = rng.normal(2.0, 3.0, size=shape)
    gamma, beta = gamma_beta
    out, _ = bn.batchnorm_forward(x, gamma, beta, eps=1e-5)
    np.testing.assert_allclose(out, reference(x, gamma, beta)[0], rtol=1e-12, atol=1e-12)


def test_forward_output_is_standardized_per_channel(shape, rng):
    x = rng.normal(-4.0, 7.0, size=shape)
    out, _ = bn.batchnorm_forward(x, np.ones(shape[1]), np.zeros(shape[1]), eps=0.0 + 1e-12)
    np.testing.assert_allclose(out.mean(axis=bn.reduction_axes(x)), 0.0, atol=1e-10)
    np.testing.assert_allclose(out.var(axis=bn.reduction_axes(x)), 1.0, rtol=1e-8)


def test_cache_holds_the_batch_statistics_and_xhat_in_x_shape(shape, gamma_beta, rng, reference):
    x = rng.normal(5.0, 2.0, size=shape)
    gamma, beta = gamma_beta
    out, cache = bn.batchnorm_forward(x, gamma, beta, eps=1e-3)
    _, mean, var = reference(x, gamma, beta)
    np.testing.assert_allclose(cache.mean, mean, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(cache.var, var, rtol=1e-12)  # the biased variance, 1/M
    np.testing.assert_allclose(cache.invstd, 1.0 / np.sqrt(var + 1e-3), rtol=1e-12)
    assert cache.xhat.shape == x.shape
    view = (1, -1) + (1,) * (x.ndim - 2)
    expected_xhat = (x - mean.reshape(view)) / np.sqrt(var.reshape(view) + 1e-3)
    np.testing.assert_allclose(cache.xhat, expected_xhat, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out, gamma.reshape(view) * cache.xhat + beta.reshape(view),
                               rtol=1e-12, atol=1e-12)


def test_cache_variance_is_float64_and_accurate_for_float32_input(rng):
    x = (1e3 + 0.1 * rng.standard_normal((64, 8, 6, 6))).astype(np.float32)
    _, cache = bn.batchnorm_forward(x, np.ones(8, np.float32), np.zeros(8, np.float32))
    exact = x.astype(np.float64).var(axis=(0, 2, 3))
    assert cache.mean.dtype == cache.var.dtype == cache.invstd.dtype == np.float64
    np.testing.assert_allclose(cache.var, exact, rtol=1e-5)


def test_cache_holds_only_what_backward_needs_and_the_variance(rng):
    x = rng.normal(size=(4, 3))
    _, cache = bn.batchnorm_forward(x, np.ones(3), np.zeros(3))
    assert set(vars(cache)) == {"x", "gamma", "mean", "var", "invstd"}
    assert cache.x is x  # referenced, not copied


def test_forward_and_backward_match_torch(shape, gamma_beta, rng):
    x, dout = rng.normal(size=shape), rng.normal(size=shape)
    gamma, beta = gamma_beta
    out, cache = bn.batchnorm_forward(x, gamma, beta)
    dx, dgamma, dbeta = bn.batchnorm_backward(dout, cache)
    xt, gt, bt = (torch.tensor(a, requires_grad=True) for a in (x, gamma, beta))
    yt = torch.nn.functional.batch_norm(xt, None, None, gt, bt, training=True, eps=1e-5)
    yt.backward(torch.tensor(dout))
    np.testing.assert_allclose(out, yt.detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), atol=1e-12)
    np.testing.assert_allclose(dgamma, gt.grad.numpy(), atol=1e-11)
    np.testing.assert_allclose(dbeta, bt.grad.numpy(), atol=1e-11)


@settings(deadline=None, max_examples=25)
@given(
    n=st.integers(2, 6), c=st.integers(1, 4), spatial=st.lists(st.integers(1, 3), max_size=2),
    seed=st.integers(0, 2**31 - 1),
)
def test_backward_matches_numerical_gradient(n, c, spatial, seed):
    rng = np.random.default_rng(seed)
    shape = (n, c, *spatial)
    x = rng.normal(size=shape)
    gamma, beta, dout = rng.normal(size=c), rng.normal(size=c), rng.normal(size=shape)
    _, cache = bn.batchnorm_forward(x, gamma, beta)
    dx, dgamma, dbeta = bn.batchnorm_backward(dout, cache)
    num_dx = bn.numerical_gradient(lambda a: bn.batchnorm_forward(a, gamma, beta)[0], x, dout)
    num_dgamma = bn.numerical_gradient(lambda g: bn.batchnorm_forward(x, g, beta)[0], gamma, dout)
    num_dbeta = bn.numerical_gradient(lambda b: bn.batchnorm_forward(x, gamma, b)[0], beta, dout)
    np.testing.assert_allclose(dx, num_dx, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(dgamma, num_dgamma, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(dbeta, num_dbeta, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("shape", [(16, 3), (6, 4, 3, 3)])
def test_gradient_invariants(shape, rng):
    """BN's output ignores a constant added to a channel (and, as eps -> 0, a scaling about
    its mean), so dx is orthogonal to both: sum(dx) = 0 exactly, sum(dx * xhat) = O(eps / var)."""
    x = rng.normal(size=shape)
    dout = rng.normal(size=shape)
    _, cache = bn.batchnorm_forward(x, np.ones(shape[1]), np.zeros(shape[1]), eps=1e-12)
    dx, _, _ = bn.batchnorm_backward(dout, cache)
    np.testing.assert_allclose(dx.sum(axis=bn.reduction_axes(x)), 0.0, atol=1e-12)
    np.testing.assert_allclose((dx * cache.xhat).sum(axis=bn.reduction_axes(x)), 0.0, atol=1e-9)


def test_float32_large_offset_stays_accurate(rng, reference):
    """Mean 1e3, std 0.1: E[x^2]-E[x]^2 in float32 is off by ~2; bnlib's output is within
    4e-7 of float64 maths (2.9e-7 here; rounding |out| < 5 to float32 alone costs 2.4e-7)."""
    x = (1e3 + 0.1 * rng.standard_normal((64, 8, 6, 6))).astype(np.float32)
    gamma, beta = np.ones(8, np.float32), np.zeros(8, np.float32)
    out, cache = bn.batchnorm_forward(x, gamma, beta)
    assert out.dtype == np.float32
    assert np.abs(out - reference(x, np.ones(8), np.zeros(8))[0]).max() < 4e-7
    # the naive formula the test guards against really is that bad here
    naive_var = (x * x).mean(axis=(0, 2, 3)) - x.mean(axis=(0, 2, 3)) ** 2
    assert np.abs(naive_var - x.astype(np.float64).var(axis=(0, 2, 3))).max() > 1e-2
    dout = rng.standard_normal(x.shape).astype(np.float32)
    dx, _, _ = bn.batchnorm_backward(dout, cache)
    _, cache64 = bn.batchnorm_forward(x.astype(np.float64), np.ones(8), np.zeros(8))
    dx64, _, _ = bn.batchnorm_backward(dout.astype(np.float64), cache64)
    assert np.abs(dx - dx64).max() < 1e-3 * np.abs(dx64).max()


@pytest.mark.parametrize("offset", [1e4, 1e6])
def test_float64_large_offset_keeps_float64_accuracy(offset, rng, reference):
    """The variance's sums cancel quadratically in the offset: at mean 1e6, std 1, plain sums
    of x and x**2 lose nine digits even in float64, so they are taken around a pivot."""
    x = offset + rng.standard_normal((64, 4, 8, 8))
    out, cache = bn.batchnorm_forward(x, np.ones(4), np.zeros(4))
    expected, _, var = reference(x, np.ones(4), np.zeros(4))
    np.testing.assert_allclose(cache.var, var, rtol=1e-12)
    assert np.abs(out - expected).max() < 1e-9


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_output_dtype_is_input_dtype(dtype, rng, reference):
    x = rng.normal(size=(6, 3, 2)).astype(dtype)
    out, cache = bn.batchnorm_forward(x, np.ones(3, dtype), np.zeros(3, dtype))
    dx, dgamma, dbeta = bn.batchnorm_backward(np.ones_like(x), cache)
    inference = bn.batchnorm_inference(x, np.ones(3), np.zeros(3), np.zeros(3), np.ones(3))
    assert out.dtype == dx.dtype == inference.dtype == dtype
    assert dgamma.dtype == dbeta.dtype == (np.float64 if dtype == np.float64 else np.float32)
    tolerance = {np.float16: 2e-2, np.float32: 1e-5, np.float64: 1e-12}[dtype]
    np.testing.assert_allclose(out.astype(np.float64), reference(x, np.ones(3), np.zeros(3))[0],
                               atol=tolerance)


def test_constant_channel_returns_beta():
    x = np.full((5, 2, 3), 7.25, np.float32)
    x[:, 1] = np.arange(15, dtype=np.float32).reshape(5, 3)
    out, cache = bn.batchnorm_forward(x, np.array([2.0, 1.0], np.float32),
                                      np.array([0.5, 0.0], np.float32))
    np.testing.assert_array_equal(out[:, 0], 0.5)
    assert cache.var[0] == 0.0
    dx, _, _ = bn.batchnorm_backward(np.ones_like(x), cache)
    assert np.isfinite(dx).all()


def test_inputs_are_not_modified(rng):
    x, dout = rng.normal(size=(5, 3, 2)), rng.normal(size=(5, 3, 2))
    gamma, beta = rng.normal(size=3), rng.normal(size=3)
    copies = [a.copy() for a in (x, dout, gamma, beta)]
    _, cache = bn.batchnorm_forward(x, gamma, beta)
    bn.batchnorm_backward(dout, cache)
    bn.batchnorm_inference(x, gamma, beta, gamma, np.abs(beta))
    for original, copy in zip((x, dout, gamma, beta), copies, strict=True):
        np.testing.assert_array_equal(original, copy)


def test_inference_uses_the_given_statistics(rng):
    x = rng.normal(size=(1, 3, 2, 2))
    gamma, beta = rng.normal(size=3), rng.normal(size=3)
    mean, var = rng.normal(size=3), rng.uniform(0.5, 2.0, size=3)
    out = bn.batchnorm_inference(x, gamma, beta, mean, var, eps=1e-3)
    view = (1, 3, 1, 1)
    expected = (gamma.reshape(view) * (x - mean.reshape(view)) / np.sqrt(var.reshape(view) + 1e-3)
                + beta.reshape(view))
    np.testing.assert_allclose(out, expected, atol=1e-12)


def test_inference_with_batch_statistics_equals_the_training_forward(rng):
    x = (50.0 + rng.normal(size=(16, 4, 3))).astype(np.float32)
    gamma, beta = rng.normal(size=4).astype(np.float32), rng.normal(size=4).astype(np.float32)
    out, cache = bn.batchnorm_forward(x, gamma, beta)
    np.testing.assert_allclose(
        bn.batchnorm_inference(x, gamma, beta, cache.mean, cache.var), out, rtol=0, atol=1e-6)


def test_fold_batchnorm_equals_linear_then_eval_bn(rng):
    x = rng.normal(size=(7, 5))
    weight, bias = rng.normal(size=(5, 4)), rng.normal(size=4)
    gamma, beta = rng.normal(size=4), rng.normal(size=4)
    mean, var = rng.normal(size=4), rng.uniform(0.5, 2.0, size=4)
    folded_w, folded_b = bn.fold_batchnorm(weight, bias, gamma, beta, mean, var)
    expected = bn.batchnorm_inference(x @ weight + bias, gamma, beta, mean, var)
    np.testing.assert_allclose(x @ folded_w + folded_b, expected, atol=1e-12)
    no_bias_w, no_bias_b = bn.fold_batchnorm(weight, None, gamma, beta, mean, var)
    np.testing.assert_allclose(x @ no_bias_w + no_bias_b,
                               bn.batchnorm_inference(x @ weight, gamma, beta, mean, var),
                               atol=1e-12)


@pytest.mark.parametrize("shape", [(0, 3), (4, 0), (4, 3, 0)])
def test_empty_input_gives_empty_output(shape):
    x = np.zeros(shape)
    out, cache = bn.batchnorm_forward(x, np.ones(shape[1]), np.zeros(shape[1]))
    assert out.shape == shape and cache.xhat.shape == shape
    dx, dgamma, dbeta = bn.batchnorm_backward(np.zeros(shape), cache)
    assert dx.shape == shape and not dgamma.any() and not dbeta.any()
