"""bnlib.numpy.gradcheck: central differences and the relative error that reports them."""

import numpy as np

import bnlib.numpy as bn


def test_numerical_gradient_of_a_known_function_restores_x(rng):
    x, dout = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    saved = x.copy()
    grad = bn.numerical_gradient(lambda a: np.sin(a) * a, x, dout)
    np.testing.assert_allclose(grad, (np.cos(x) * x + np.sin(x)) * dout, rtol=1e-7, atol=1e-9)
    np.testing.assert_array_equal(x, saved)


def test_relative_error_is_symmetric_and_scale_free():
    a, b = np.array([1.0, 100.0]), np.array([1.0, 101.0])
    assert bn.relative_error(a, b) == bn.relative_error(b, a) == 1.0 / 201.0
    assert bn.relative_error(1e6 * a, 1e6 * b) == bn.relative_error(a, b)
    assert bn.relative_error(np.zeros(2), np.zeros(2)) == 0.0
