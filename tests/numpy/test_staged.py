"""bnlib.numpy.staged: the textbook and node-by-node versions equal the closed form."""

import numpy as np

import bnlib.numpy as bn


def test_staged_and_textbook_backward_equal_closed_form(shape, gamma_beta, rng):
    x, dout = rng.normal(size=shape), rng.normal(size=shape)
    gamma, beta = gamma_beta
    out, cache = bn.batchnorm_forward(x, gamma, beta)
    textbook_out, textbook_cache = bn.batchnorm_forward_textbook(x, gamma, beta)
    np.testing.assert_allclose(textbook_out, out, atol=1e-12)
    closed = bn.batchnorm_backward(dout, cache)
    for other in (bn.batchnorm_backward_staged(dout, cache),
                  bn.batchnorm_backward_staged(dout, textbook_cache),
                  bn.batchnorm_backward_textbook(dout, textbook_cache)):
        for a, b in zip(closed, other, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-11)


def test_textbook_cache_matches_the_fast_one_and_keeps_x_dtype(rng, reference):
    """The benchmark's baseline works in x's dtype, as a plain NumPy version would."""
    x = rng.normal(1.0, 2.0, size=(16, 4, 3, 3)).astype(np.float32)
    gamma, beta = np.ones(4, np.float32), np.zeros(4, np.float32)
    out, cache = bn.batchnorm_forward_textbook(x, gamma, beta)
    _, fast = bn.batchnorm_forward(x, gamma, beta)
    assert out.dtype == cache.mean.dtype == cache.var.dtype == cache.invstd.dtype == np.float32
    for name in ("mean", "var", "invstd"):
        np.testing.assert_allclose(getattr(cache, name), getattr(fast, name), rtol=1e-5, atol=1e-6)
    assert cache.xhat.shape == x.shape
    np.testing.assert_allclose(out, reference(x, gamma, beta)[0], atol=1e-5)


def test_staged_backward_leaves_its_inputs_unchanged(rng):
    x, dout = rng.normal(size=(5, 3, 2)), rng.normal(size=(5, 3, 2))
    _, cache = bn.batchnorm_forward(x, rng.normal(size=3), rng.normal(size=3))
    copies = [a.copy() for a in (x, dout)]
    bn.batchnorm_backward_staged(dout, cache)
    bn.batchnorm_backward_textbook(dout, cache)
    for original, copy in zip((x, dout), copies, strict=True):
        np.testing.assert_array_equal(original, copy)
