"""bnlib.numpy.BatchNorm: running statistics in the PyTorch and Keras conventions."""

import os

import numpy as np
import pytest
import torch

import bnlib.numpy as bn


def torch_module(num_features, ndim, **kwargs):
    cls = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d,
           5: torch.nn.BatchNorm3d}[ndim]
    return cls(num_features, dtype=torch.float64, **kwargs)


@pytest.mark.parametrize("shape", [(8, 3), (4, 3, 5), (4, 3, 2, 2), (2, 3, 2, 1, 2)])
@pytest.mark.parametrize("momentum", [0.1, None, 0.0, 1.0])
@pytest.mark.parametrize("affine", [True, False])
def test_pytorch_convention_matches_torch_over_train_and_eval_steps(shape, momentum, affine, rng):
    ours = bn.BatchNorm(shape[1], momentum=momentum, affine=affine)
    theirs = torch_module(shape[1], len(shape), momentum=momentum, affine=affine)
    if affine:
        ours.weight, ours.bias = rng.normal(size=shape[1]), rng.normal(size=shape[1])
        with torch.no_grad():
            theirs.weight.copy_(torch.tensor(ours.weight))
            theirs.bias.copy_(torch.tensor(ours.bias))
    for step, training in enumerate([True, True, False, True, False, True, True, False]):
        ours.train(training)
        theirs.train(training)
        x = rng.normal(loc=step, scale=1 + step, size=shape)
        dout = rng.normal(size=shape)
        xt = torch.tensor(x, requires_grad=True)
        yt = theirs(xt)
        yt.backward(torch.tensor(dout))
        np.testing.assert_allclose(ours.forward(x), yt.detach().numpy(), atol=1e-10)
        np.testing.assert_allclose(ours.backward(dout), xt.grad.numpy(), atol=1e-10)
        if affine:
            np.testing.assert_allclose(ours.weight_grad, theirs.weight.grad.numpy(), atol=1e-9)
            np.testing.assert_allclose(ours.bias_grad, theirs.bias.grad.numpy(), atol=1e-9)
            theirs.weight.grad = theirs.bias.grad = None
        np.testing.assert_allclose(ours.running_mean, theirs.running_mean.numpy(), atol=1e-12)
        np.testing.assert_allclose(ours.running_var, theirs.running_var.numpy(), atol=1e-12)
        assert ours.num_batches_tracked == theirs.num_batches_tracked.item()


def test_pytorch_running_var_is_unbiased_and_output_uses_biased(rng):
    layer = bn.BatchNorm(2, momentum=1.0)
    x = rng.normal(size=(5, 2))
    out = layer.forward(x)
    np.testing.assert_allclose(layer.running_var, x.var(axis=0, ddof=1))
    np.testing.assert_allclose(out.var(axis=0), x.var(axis=0) / (x.var(axis=0) + 1e-5))


def test_keras_convention_weights_the_old_value_and_keeps_biased_variance(rng):
    layer = bn.BatchNorm(3, convention="keras")
    assert layer.momentum == 0.99
    expected_mean, expected_var = np.zeros(3), np.ones(3)
    for _ in range(6):
        x = rng.normal(3.0, 2.0, size=(10, 3))
        layer.forward(x)
        expected_mean = 0.99 * expected_mean + 0.01 * x.mean(axis=0)
        expected_var = 0.99 * expected_var + 0.01 * x.var(axis=0)
    np.testing.assert_allclose(layer.running_mean, expected_mean)
    np.testing.assert_allclose(layer.running_var, expected_var)
    assert layer.num_batches_tracked == 6


# keras 3.15's torch backend converts with np.array(x, copy=False) internally.
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_keras_convention_matches_keras_batch_normalization(rng):
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    assert keras.backend.backend() == "torch"
    theirs = keras.layers.BatchNormalization(axis=1, momentum=0.99, epsilon=1e-3)
    ours = bn.BatchNorm(4, eps=1e-3, convention="keras")
    for _ in range(5):
        x = rng.normal(2.0, 3.0, size=(16, 4)).astype(np.float32)
        out_keras = keras.ops.convert_to_numpy(theirs(x, training=True))
        np.testing.assert_allclose(ours.forward(x), out_keras, atol=1e-5)
    np.testing.assert_allclose(ours.running_mean, keras.ops.convert_to_numpy(theirs.moving_mean),
                               rtol=1e-5)
    np.testing.assert_allclose(ours.running_var,
                               keras.ops.convert_to_numpy(theirs.moving_variance), rtol=1e-5)
    x = rng.normal(size=(3, 4)).astype(np.float32)
    ours.eval()
    np.testing.assert_allclose(ours.forward(x),
                               keras.ops.convert_to_numpy(theirs(x, training=False)), atol=1e-5)


def test_eval_mode_uses_running_statistics_and_changes_nothing(rng):
    layer = bn.BatchNorm(3)
    layer.forward(rng.normal(size=(8, 3)))
    state = (layer.running_mean.copy(), layer.running_var.copy(), layer.num_batches_tracked)
    layer.eval()
    x = rng.normal(size=(1, 3))  # batch size one is fine in eval mode
    first, second = layer.forward(x), layer.forward(x)
    np.testing.assert_array_equal(first, second)
    expected = bn.batchnorm_inference(x, layer.weight, layer.bias, *state[:2])
    np.testing.assert_allclose(first, expected)
    assert (layer.running_mean == state[0]).all() and layer.num_batches_tracked == state[2]


def test_eval_backward_is_a_per_channel_scale(rng):
    layer = bn.BatchNorm(3)
    layer.forward(rng.normal(size=(8, 3)))
    layer.eval()
    x, dout = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    layer.forward(x)
    dx = layer.backward(dout)
    np.testing.assert_allclose(dx, dout * layer.weight / np.sqrt(layer.running_var + 1e-5))
    xhat = (x - layer.running_mean) / np.sqrt(layer.running_var + 1e-5)
    np.testing.assert_allclose(layer.weight_grad, (dout * xhat).sum(axis=0))


def test_without_running_stats_batch_statistics_are_used_in_both_modes(rng):
    layer = bn.BatchNorm(3, track_running_stats=False)
    assert layer.running_mean is None and layer.running_var is None
    x = rng.normal(size=(6, 3))
    train_out = layer.forward(x)
    layer.eval()
    np.testing.assert_allclose(layer.forward(x), train_out)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        layer.forward(x[:1])


def test_momentum_none_is_the_cumulative_average(rng):
    layer = bn.BatchNorm(2, momentum=None)
    batches = [rng.normal(size=(5, 2)) for _ in range(4)]
    for x in batches:
        layer.forward(x)
    np.testing.assert_allclose(layer.running_mean, np.mean([b.mean(axis=0) for b in batches], 0))


def test_repr_and_bad_arguments():
    assert repr(bn.BatchNorm(3)) == ("BatchNorm(3, eps=1e-05, momentum=0.1, affine=True, "
                                     "track_running_stats=True, convention='pytorch')")
    with pytest.raises(ValueError, match="convention must be 'pytorch' or 'keras', got 'tf'"):
        bn.BatchNorm(3, convention="tf")
    with pytest.raises(ValueError, match="num_features must be a positive int, got 0"):
        bn.BatchNorm(0)
    with pytest.raises(ValueError, match="eps must be positive, got -1"):
        bn.BatchNorm(3, eps=-1)
    with pytest.raises(TypeError, match="momentum must be a float or None, got '0.1'"):
        bn.BatchNorm(3, momentum="0.1")
    with pytest.raises(ValueError, match=r"expected 3 channels \(axis 1\), got input of shape"):
        bn.BatchNorm(3).forward(np.zeros((4, 2)))
    with pytest.raises(RuntimeError, match="call forward first"):
        bn.BatchNorm(3).backward(np.zeros((4, 3)))


def test_calling_the_layer_is_its_forward(rng):
    x = rng.normal(size=(6, 3))
    np.testing.assert_array_equal(bn.BatchNorm(3).eval()(x), bn.BatchNorm(3).eval().forward(x))


def test_layer_depends_on_the_public_functions_not_on_the_teaching_module():
    """layers.py imports the shared helpers and the public functions, never staged.py."""
    import ast
    import inspect

    from bnlib.numpy import layers

    tree = ast.parse(inspect.getsource(layers))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "bnlib.numpy.staged" not in imported
    assert {"bnlib.numpy.axes", "bnlib.numpy._checks", "bnlib.numpy.batchnorm"} <= imported


def test_running_variance_comes_from_the_forward_cache(rng, monkeypatch):
    """The layer reuses the forward's batch variance instead of computing it again."""
    from bnlib.numpy import engine

    calls = []
    statistics = engine.batch_statistics
    monkeypatch.setattr(engine, "batch_statistics", lambda x: (calls.append(x), statistics(x))[1])
    layer = bn.BatchNorm(3, momentum=1.0)
    x = rng.normal(size=(6, 3, 2))
    layer.forward(x)
    assert len(calls) == 1
    np.testing.assert_allclose(layer.running_var, x.var(axis=(0, 2), ddof=1), rtol=1e-12)
