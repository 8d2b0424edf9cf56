"""bnlib.numpy._checks: every public NumPy function rejects bad input with a message a student
can act on."""

import re

import numpy as np
import pytest

import bnlib.numpy as bn

X = np.zeros((4, 3))
ONES, ZEROS = np.ones(3), np.zeros(3)


@pytest.mark.parametrize("call,error,message", [
    (lambda: bn.batchnorm_forward([[1.0, 2.0]], ONES, ZEROS), TypeError,
     "batchnorm_forward: x must be a numpy.ndarray, got list"),
    (lambda: bn.batchnorm_forward(np.zeros((4, 3), np.int64), ONES, ZEROS), TypeError,
     "batchnorm_forward: x must have a floating dtype (float16, float32 or float64), got int64"),
    (lambda: bn.batchnorm_forward(np.zeros(5), ONES, ZEROS), ValueError,
     "batchnorm_forward: expected x of shape (N, C) or (N, C, *spatial), "
     "got a 1-D array of shape (5,)"),
    (lambda: bn.batchnorm_forward(X, np.ones(4), ZEROS), ValueError,
     "batchnorm_forward: gamma must have shape (3,), one value per channel, got shape (4,)"),
    (lambda: bn.batchnorm_forward(X, ONES, np.zeros((3, 1))), ValueError,
     "batchnorm_forward: beta must have shape (3,), one value per channel, got shape (3, 1)"),
    (lambda: bn.batchnorm_forward(X, ONES, ZEROS, eps=0.0), ValueError,
     "batchnorm_forward: eps must be positive, got 0.0"),
    (lambda: bn.batchnorm_forward(X, ONES, ZEROS, eps="1e-5"), TypeError,
     "batchnorm_forward: eps must be a real number, got str"),
    (lambda: bn.batchnorm_forward(np.zeros((1, 10)), np.ones(10), np.zeros(10)), ValueError,
     "Expected more than 1 value per channel when training, got input size (1, 10)"),
    (lambda: bn.batchnorm_backward(X, "cache"), TypeError,
     "batchnorm_backward: cache must come from batchnorm_forward, got str"),
    (lambda: bn.batchnorm_backward(np.zeros((5, 3)), bn.batchnorm_forward(X, ONES, ZEROS)[1]),
     ValueError, "batchnorm_backward: dout must have the input's shape (4, 3), got (5, 3)"),
    (lambda: bn.batchnorm_backward([[0.0] * 3] * 4, bn.batchnorm_forward(X, ONES, ZEROS)[1]),
     TypeError, "batchnorm_backward: dout must be a numpy.ndarray, got list"),
    (lambda: bn.batchnorm_forward_textbook(X, ONES, np.zeros(2)), ValueError,
     "batchnorm_forward_textbook: beta must have shape (3,), one value per channel, "
     "got shape (2,)"),
    (lambda: bn.batchnorm_backward_staged(X, bn.layernorm_forward(X, ONES, ZEROS)[1]), TypeError,
     "batchnorm_backward_staged: cache must come from batchnorm_forward, got RowNormCache"),
    (lambda: bn.layernorm_backward(X, bn.batchnorm_forward(X, ONES, ZEROS)[1]), TypeError,
     "layernorm_backward: cache must come from the matching forward, got BatchNormCache"),
    (lambda: bn.batchnorm_inference(X, ONES, ZEROS, ZEROS, np.ones(2)), ValueError,
     "batchnorm_inference: running_var must have shape (3,), one value per channel, "
     "got shape (2,)"),
    (lambda: bn.batchnorm_inference(X, ONES, ZEROS, ZEROS, ONES, eps=-1.0), ValueError,
     "batchnorm_inference: eps must be non-negative, got -1.0"),
    (lambda: bn.layernorm_forward(np.zeros((2, 4)), np.ones(5), np.zeros(5)), ValueError,
     "layernorm_forward: Given normalized_shape=[5], expected input with shape [*, 5], "
     "but got input of size[2, 4]"),
    (lambda: bn.layernorm_forward(np.zeros((2, 4)), np.ones(4), np.zeros(3)), ValueError,
     "layernorm_forward: beta must have shape (4,), got (3,)"),
    (lambda: bn.groupnorm_forward(np.zeros((2, 6, 3)), np.ones(6), np.zeros(6), 4), ValueError,
     "groupnorm_forward: num_channels (6) must be divisible by num_groups (4)"),
    (lambda: bn.groupnorm_forward(np.zeros((2, 6, 3)), np.ones(6), np.zeros(6), 2.0), TypeError,
     "groupnorm_forward: num_groups must be an int, got float"),
    (lambda: bn.rmsnorm_forward(np.zeros((2, 4)), np.ones(3)), ValueError,
     "rmsnorm_forward: Given normalized_shape=[3], expected input with shape [*, 3], "
     "but got input of size[2, 4]"),
    (lambda: bn.fold_batchnorm(np.zeros((2, 3)), np.zeros(2), ONES, ZEROS, ZEROS, ONES),
     ValueError, "fold_batchnorm: bias must have shape (3,), one value per channel, "
     "got shape (2,)"),
    (lambda: bn.fold_batchnorm(np.zeros(3), None, ONES, ZEROS, ZEROS, ONES), ValueError,
     "fold_batchnorm: weight must have shape (D_in, D_out), got (3,)"),
    (lambda: bn.layernorm_forward(X, np.array(1.0), np.array(0.0)), ValueError,
     "layernorm_forward: gamma must have at least one axis, got a scalar"),
    (lambda: bn.numerical_gradient(lambda a: a, np.zeros(3), np.ones(3), h=0), ValueError,
     "numerical_gradient: h must be positive, got 0"),
])
def test_bad_input_message(call, error, message):
    with pytest.raises(error, match=re.escape(message)):
        call()


def test_eval_mode_layer_checks_dout_like_the_functions():
    layer = bn.BatchNorm(3).eval()
    layer.forward(X)
    with pytest.raises(ValueError, match=re.escape(
            "BatchNorm.backward: dout must have the input's shape (4, 3), got (4, 2)")):
        layer.backward(np.zeros((4, 2)))


@pytest.mark.parametrize("dtype,computed", [(np.float16, np.float32), (np.float32, np.float32),
                                            (np.float64, np.float64)])
def test_compute_dtype_widens_only_float16(dtype, computed):
    from bnlib.numpy._checks import compute_dtype

    assert compute_dtype(np.dtype(dtype)) == computed
