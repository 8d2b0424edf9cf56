"""Layer, group and RMS normalization against torch.nn and numerical gradients."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import bnlib.numpy as bn


def assert_matches_torch(forward, backward, torch_forward, x, params, dout):
    """Our forward and backward against torch's forward and autograd on the same inputs:
    the output to 1e-12, every gradient (dx, then one per parameter) to 1e-11."""
    out, cache = forward(x, *params)
    ours = (out, *backward(dout, cache))
    xt = torch.tensor(x, requires_grad=True)
    params_t = [torch.tensor(p, requires_grad=True) for p in params]
    yt = torch_forward(xt, *params_t)
    yt.backward(torch.tensor(dout))
    theirs = (yt.detach().numpy(), xt.grad.numpy(), *(p.grad.numpy() for p in params_t))
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        np.testing.assert_allclose(a, b, atol=1e-12 if i == 0 else 1e-11)


@pytest.mark.parametrize("shape,normalized", [((4, 6), (6,)), ((2, 3, 5), (5,)),
                                              ((2, 3, 4, 5), (4, 5)), ((1, 7), (7,))])
def test_layernorm_matches_torch(shape, normalized, rng):
    x, dout = rng.normal(3.0, 2.0, size=shape), rng.normal(size=shape)
    gamma, beta = rng.normal(size=normalized), rng.normal(size=normalized)
    assert_matches_torch(bn.layernorm_forward, bn.layernorm_backward,
                         lambda a, g, b: F.layer_norm(a, normalized, g, b, 1e-5),
                         x, (gamma, beta), dout)


@pytest.mark.parametrize("shape,groups", [((3, 6, 4), 3), ((2, 4, 3, 3), 2), ((2, 4), 4),
                                          ((2, 6, 2, 2), 1), ((2, 6, 2, 2), 6)])
def test_groupnorm_matches_torch(shape, groups, rng):
    x, dout = rng.normal(size=shape), rng.normal(size=shape)
    gamma, beta = rng.normal(size=shape[1]), rng.normal(size=shape[1])
    assert_matches_torch(lambda a, g, b: bn.groupnorm_forward(a, g, b, groups),
                         bn.groupnorm_backward,
                         lambda a, g, b: F.group_norm(a, groups, g, b, 1e-5),
                         x, (gamma, beta), dout)


@pytest.mark.parametrize("shape,normalized", [((4, 6), (6,)), ((2, 3, 4, 5), (4, 5))])
def test_rmsnorm_matches_torch(shape, normalized, rng):
    x, dout = rng.normal(size=shape), rng.normal(size=shape)
    assert_matches_torch(lambda a, g: bn.rmsnorm_forward(a, g, eps=1e-6), bn.rmsnorm_backward,
                         lambda a, g: F.rms_norm(a, normalized, g, 1e-6),
                         x, (rng.normal(size=normalized),), dout)


def test_numerical_gradients_of_all_three(rng):
    x, dout = rng.normal(size=(3, 4, 2)), rng.normal(size=(3, 4, 2))
    gamma, beta = rng.normal(size=(4, 2)), rng.normal(size=(4, 2))
    cases = [
        (lambda a: bn.layernorm_forward(a, gamma, beta)[0],
         bn.layernorm_backward(dout, bn.layernorm_forward(x, gamma, beta)[1])[0]),
        (lambda a: bn.rmsnorm_forward(a, gamma)[0],
         bn.rmsnorm_backward(dout, bn.rmsnorm_forward(x, gamma)[1])[0]),
        (lambda a: bn.groupnorm_forward(a, gamma[:, 0], beta[:, 0], 2)[0],
         bn.groupnorm_backward(dout, bn.groupnorm_forward(x, gamma[:, 0], beta[:, 0], 2)[1])[0]),
    ]
    for forward, analytic in cases:
        np.testing.assert_allclose(analytic, bn.numerical_gradient(forward, x, dout),
                                   rtol=1e-5, atol=1e-8)


def test_group_norm_special_cases_are_layer_and_instance_norm(rng):
    x = rng.normal(size=(2, 6, 3, 3))
    ones, zeros = np.ones(6), np.zeros(6)
    gn_one_group, _ = bn.groupnorm_forward(x, ones, zeros, 1)
    ln, _ = bn.layernorm_forward(x, np.ones((6, 3, 3)), np.zeros((6, 3, 3)))
    np.testing.assert_allclose(gn_one_group, ln, atol=1e-12)
    gn_per_channel, _ = bn.groupnorm_forward(x, ones, zeros, 6)
    instance = F.instance_norm(torch.tensor(x), eps=1e-5).numpy()
    np.testing.assert_allclose(gn_per_channel, instance, atol=1e-12)


def test_layer_norm_single_feature_returns_beta_and_float32_is_accurate(rng):
    out, _ = bn.layernorm_forward(rng.normal(size=(3, 1)), np.ones(1), np.full(1, 0.5))
    np.testing.assert_array_equal(out, 0.5)
    x = (1e3 + 0.1 * rng.standard_normal((16, 256))).astype(np.float32)
    out, _ = bn.layernorm_forward(x, np.ones(256, np.float32), np.zeros(256, np.float32))
    x64 = x.astype(np.float64)
    ref = (x64 - x64.mean(1, keepdims=True)) / np.sqrt(x64.var(1, keepdims=True) + 1e-5)
    assert out.dtype == np.float32 and np.abs(out - ref).max() < 5e-4


def test_row_cache_holds_xhat_and_invstd(rng):
    x = rng.normal(2.0, 3.0, size=(5, 6))
    _, cache = bn.layernorm_forward(x, np.ones(6), np.zeros(6), eps=1e-5)
    var = x.var(axis=1, keepdims=True)
    np.testing.assert_allclose(cache.invstd, 1.0 / np.sqrt(var + 1e-5), rtol=1e-12)
    np.testing.assert_allclose(cache.xhat, (x - x.mean(axis=1, keepdims=True)) * cache.invstd,
                               rtol=1e-12, atol=1e-12)
