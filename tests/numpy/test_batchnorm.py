"""bnlib.numpy batch norm against float64 maths, torch.nn and numerical gradients."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import bnlib.numpy as bn
from tests.numpy.reference import reference_batchnorm

SHAPES = [(2, 3), (8, 5), (4, 3, 5), (4, 3, 5, 6), (3, 2, 2, 2, 2), (2, 4, 1, 1), (600, 7)]


@pytest.mark.parametrize("shape", SHAPES)
def test_forward_matches_float64_maths(shape, rng):
    x = rng.normal(2.0, 3.0, size=shape)
    gamma, beta = rng.normal(size=shape[1]), rng.normal(size=shape[1])
    out, _ = bn.batchnorm_forward(x, gamma, beta, eps=1e-5)
    np.testing.assert_allclose(out, reference_batchnorm(x, gamma, beta), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_forward_output_is_standardised_per_channel(shape, rng):
    x = rng.normal(-4.0, 7.0, size=shape)
    out, _ = bn.batchnorm_forward(x, np.ones(shape[1]), np.zeros(shape[1]), eps=0.0 + 1e-12)
    axes = (0, *range(2, x.ndim))
    np.testing.assert_allclose(out.mean(axis=axes), 0.0, atol=1e-10)
    np.testing.assert_allclose(out.var(axis=axes), 1.0, rtol=1e-8)


@pytest.mark.parametrize("shape", SHAPES)
def test_forward_and_backward_match_torch(shape, rng):
    x = rng.normal(size=shape)
    gamma, beta, dout = rng.normal(size=shape[1]), rng.normal(size=shape[1]), rng.normal(size=shape)
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


@pytest.mark.parametrize("shape", SHAPES)
def test_staged_and_textbook_backward_equal_closed_form(shape, rng):
    x = rng.normal(size=shape)
    gamma, beta, dout = rng.normal(size=shape[1]), rng.normal(size=shape[1]), rng.normal(size=shape)
    out, cache = bn.batchnorm_forward(x, gamma, beta)
    textbook_out, textbook_cache = bn.batchnorm_forward_textbook(x, gamma, beta)
    np.testing.assert_allclose(textbook_out, out, atol=1e-12)
    closed = bn.batchnorm_backward(dout, cache)
    for other in (bn.batchnorm_backward_staged(dout, cache),
                  bn.batchnorm_backward_textbook(dout, textbook_cache)):
        for a, b in zip(closed, other, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-11)


@pytest.mark.parametrize("shape", [(16, 3), (6, 4, 3, 3)])
def test_gradient_invariants(shape, rng):
    """BN's output ignores shifts (and, as eps -> 0, scales) of each channel, so dx is
    orthogonal to both: sum(dx) = 0 exactly, sum(dx * xhat) = O(eps / var)."""
    x = rng.normal(size=shape)
    dout = rng.normal(size=shape)
    _, cache = bn.batchnorm_forward(x, np.ones(shape[1]), np.zeros(shape[1]), eps=1e-12)
    dx, _, _ = bn.batchnorm_backward(dout, cache)
    axes = (0, *range(2, x.ndim))
    np.testing.assert_allclose(dx.sum(axis=axes), 0.0, atol=1e-12)
    np.testing.assert_allclose((dx * cache.xhat.reshape(shape)).sum(axis=axes), 0.0, atol=1e-9)


def test_float32_large_offset_stays_accurate(rng):
    """Mean 1e3, std 0.1: E[x^2]-E[x]^2 in float32 is off by ~2; bnlib stays within 5e-4."""
    x = (1e3 + 0.1 * rng.standard_normal((64, 8, 6, 6))).astype(np.float32)
    gamma, beta = np.ones(8, np.float32), np.zeros(8, np.float32)
    out, cache = bn.batchnorm_forward(x, gamma, beta)
    assert out.dtype == np.float32
    reference = reference_batchnorm(x.astype(np.float64), np.ones(8), np.zeros(8))
    assert np.abs(out - reference).max() < 5e-4
    # the naive formula the test guards against really is that bad here
    naive_var = (x * x).mean(axis=(0, 2, 3)) - x.mean(axis=(0, 2, 3)) ** 2
    assert np.abs(naive_var - x.astype(np.float64).var(axis=(0, 2, 3))).max() > 1e-2
    dout = rng.standard_normal(x.shape).astype(np.float32)
    dx, _, _ = bn.batchnorm_backward(dout, cache)
    _, cache64 = bn.batchnorm_forward(x.astype(np.float64), np.ones(8), np.zeros(8))
    dx64, _, _ = bn.batchnorm_backward(dout.astype(np.float64), cache64)
    assert np.abs(dx - dx64).max() < 1e-3 * np.abs(dx64).max()


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_output_dtype_is_input_dtype(dtype, rng):
    x = rng.normal(size=(6, 3, 2)).astype(dtype)
    out, cache = bn.batchnorm_forward(x, np.ones(3, dtype), np.zeros(3, dtype))
    dx, _, _ = bn.batchnorm_backward(np.ones_like(x), cache)
    inference = bn.batchnorm_inference(x, np.ones(3), np.zeros(3), np.zeros(3), np.ones(3))
    assert out.dtype == dx.dtype == inference.dtype == dtype
    tolerance = {np.float16: 2e-2, np.float32: 1e-5, np.float64: 1e-12}[dtype]
    reference = reference_batchnorm(x.astype(np.float64), np.ones(3), np.zeros(3))
    np.testing.assert_allclose(out.astype(np.float64), reference, atol=tolerance)


def test_constant_channel_returns_beta():
    x = np.full((5, 2, 3), 7.25, np.float32)
    x[:, 1] = np.arange(15, dtype=np.float32).reshape(5, 3)
    out, cache = bn.batchnorm_forward(x, np.array([2.0, 1.0], np.float32),
                                      np.array([0.5, 0.0], np.float32))
    np.testing.assert_array_equal(out[:, 0], 0.5)
    dx, _, _ = bn.batchnorm_backward(np.ones_like(x), cache)
    assert np.isfinite(dx).all()


def test_inputs_are_not_modified(rng):
    x, dout = rng.normal(size=(5, 3, 2)), rng.normal(size=(5, 3, 2))
    gamma, beta = rng.normal(size=3), rng.normal(size=3)
    copies = [a.copy() for a in (x, dout, gamma, beta)]
    _, cache = bn.batchnorm_forward(x, gamma, beta)
    bn.batchnorm_backward(dout, cache)
    bn.batchnorm_backward_staged(dout, cache)
    for original, copy in zip((x, dout, gamma, beta), copies, strict=True):
        np.testing.assert_array_equal(original, copy)


def test_cache_holds_only_what_backward_needs(rng):
    x = rng.normal(size=(4, 3))
    _, cache = bn.batchnorm_forward(x, np.ones(3), np.zeros(3))
    assert set(vars(cache)) == {"x", "mean", "invstd", "gamma"}
    assert cache.x is x  # referenced, not copied


def test_non_contiguous_and_large_batches_chunk_correctly(rng):
    base = rng.normal(size=(300, 6, 10, 10))
    x = base[:, :, ::2, 1::2]  # a strided view, larger than one chunk
    gamma, beta = rng.normal(size=6), rng.normal(size=6)
    out, cache = bn.batchnorm_forward(x, gamma, beta)
    np.testing.assert_allclose(out, reference_batchnorm(x, gamma, beta), atol=1e-12)
    dout = rng.normal(size=x.shape)
    dx = bn.batchnorm_backward(dout, cache)[0]
    np.testing.assert_allclose(dx, bn.batchnorm_backward_staged(dout, cache)[0], atol=1e-11)


def test_inference_uses_the_given_statistics(rng):
    x = rng.normal(size=(1, 3, 2, 2))
    gamma, beta = rng.normal(size=3), rng.normal(size=3)
    mean, var = rng.normal(size=3), rng.uniform(0.5, 2.0, size=3)
    out = bn.batchnorm_inference(x, gamma, beta, mean, var, eps=1e-3)
    view = (1, 3, 1, 1)
    expected = (gamma.reshape(view) * (x - mean.reshape(view)) / np.sqrt(var.reshape(view) + 1e-3)
                + beta.reshape(view))
    np.testing.assert_allclose(out, expected, atol=1e-12)


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


def test_empty_batch_gives_empty_output():
    x = np.zeros((0, 3))
    out, cache = bn.batchnorm_forward(x, np.ones(3), np.zeros(3))
    assert out.shape == (0, 3)
    dx, dgamma, dbeta = bn.batchnorm_backward(np.zeros((0, 3)), cache)
    assert dx.shape == (0, 3) and not dgamma.any() and not dbeta.any()


@pytest.mark.parametrize("offset", [0.0, 3.0, 8.0, 20.0, 1e2, 1e4])
@pytest.mark.parametrize("shape", [(512, 6), (32, 6, 5, 5)])
def test_float32_accuracy_on_both_sides_of_the_centring_threshold(offset, shape, rng):
    """Small offsets use plain sums of x, large ones centre first: both stay accurate."""
    std = 0.5
    x = (offset * std + std * rng.standard_normal(shape)).astype(np.float32)
    gamma, beta = np.full(6, 1.5, np.float32), np.full(6, 0.25, np.float32)
    out, cache = bn.batchnorm_forward(x, gamma, beta)
    reference = reference_batchnorm(x.astype(np.float64), gamma.astype(np.float64),
                                    beta.astype(np.float64))
    assert np.abs(out - reference).max() < 2e-5
    dout = rng.standard_normal(shape).astype(np.float32)
    dx = bn.batchnorm_backward(dout, cache)[0]
    _, cache64 = bn.batchnorm_forward(x.astype(np.float64), gamma.astype(np.float64),
                                      beta.astype(np.float64))
    dx64 = bn.batchnorm_backward(dout.astype(np.float64), cache64)[0]
    assert np.abs(dx - dx64).max() < 1e-4 * np.abs(dx64).max()


def test_parallel_passes_equal_the_serial_ones(monkeypatch, rng):
    """Large inputs are split across threads; the parts add up in a fixed order."""
    from bnlib.numpy import batchnorm as module

    x = rng.normal(3.0, 2.0, size=(37, 5, 4, 3)).astype(np.float32)
    dout = rng.normal(size=x.shape).astype(np.float32)
    gamma, beta = rng.normal(size=5).astype(np.float32), rng.normal(size=5).astype(np.float32)
    monkeypatch.setattr(module, "CHUNK_BYTES", 64)  # one sample per chunk
    serial_out, serial_cache = bn.batchnorm_forward(x, gamma, beta)
    serial_grads = bn.batchnorm_backward(dout, serial_cache)
    monkeypatch.setattr(module, "PARALLEL_BYTES", 0)
    monkeypatch.setattr(module, "worker_count", lambda: 3)
    for _ in range(3):
        out, cache = bn.batchnorm_forward(x, gamma, beta)
        np.testing.assert_array_equal(out, serial_out)
        for a, b in zip(bn.batchnorm_backward(dout, cache), serial_grads, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
