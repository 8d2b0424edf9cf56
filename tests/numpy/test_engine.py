"""bnlib.numpy.engine: the chunked, threaded passes compute the formulas they document."""

import numpy as np
import pytest

import bnlib.numpy as bn
from bnlib.numpy import engine

AXES = (0, 2, 3)
VIEW = (1, -1, 1, 1)


def float64_pieces(x, dout, gamma, beta, eps=1e-5):
    """Every quantity the four calls compute, in float64 with full-size temporaries."""
    x, dout = x.astype(np.float64), dout.astype(np.float64)
    mean, var = x.mean(axis=AXES), x.var(axis=AXES)
    invstd = 1.0 / np.sqrt(var + eps)
    xhat = (x - mean.reshape(VIEW)) * invstd.reshape(VIEW)
    out = gamma.reshape(VIEW) * xhat + beta.reshape(VIEW)
    dbeta, dgamma = dout.sum(axis=AXES), (dout * xhat).sum(axis=AXES)
    count = x.size // x.shape[1]
    dx = (gamma * invstd / count).reshape(VIEW) * (
        count * dout - dbeta.reshape(VIEW) - xhat * dgamma.reshape(VIEW))
    return dict(mean=mean, var=var, invstd=invstd, out=out, dbeta=dbeta, dgamma=dgamma, dx=dx)


@pytest.mark.parametrize("dtype,offset,tolerance", [
    (np.float64, 0.0, 1e-12), (np.float64, 1e4, 1e-9),
    (np.float32, 0.0, 2e-5), (np.float32, 1e3, 2e-4), (np.float16, 0.0, 2e-2),
])
def test_the_four_calls_compute_their_formulas(dtype, offset, tolerance, rng, monkeypatch):
    monkeypatch.setattr(engine, "CHUNK_BYTES", 512)  # several chunks, a partial last one
    x = (offset + rng.normal(size=(13, 3, 4, 5))).astype(dtype)
    dout = rng.normal(size=x.shape).astype(dtype)
    gamma, beta = rng.normal(size=3), rng.normal(size=3)
    expected = float64_pieces(x, dout, gamma, beta)
    mean, var = engine.batch_statistics(x)
    np.testing.assert_allclose(mean, expected["mean"], rtol=0, atol=tolerance)  # std is 1
    np.testing.assert_allclose(var, expected["var"], rtol=tolerance)
    invstd = expected["invstd"]
    out = engine.normalize(x, expected["mean"], invstd, gamma, beta)
    dbeta, dgamma = engine.gradient_sums(dout, x, expected["mean"], invstd)
    dx = engine.input_gradient(dout, x, expected["mean"], invstd, gamma, dbeta, dgamma)
    assert out.dtype == dx.dtype == dtype and out.shape == dx.shape == x.shape
    scale = {name: np.abs(expected[name]).max() for name in ("out", "dgamma", "dx")}
    np.testing.assert_allclose(out, expected["out"], atol=tolerance * scale["out"])
    np.testing.assert_allclose(dbeta, expected["dbeta"], atol=1e-9 + 1e-12 * abs(offset))
    np.testing.assert_allclose(dgamma, expected["dgamma"], atol=tolerance * scale["dgamma"])
    np.testing.assert_allclose(dx, expected["dx"], atol=tolerance * scale["dx"])


@pytest.mark.parametrize("offset", [0.0, 3.0, 8.0, 20.0, 1e2, 1e4])
@pytest.mark.parametrize("shape", [(512, 6), (32, 6, 5, 5)])
def test_float32_accuracy_on_both_sides_of_the_centering_threshold(offset, shape, rng, reference):
    """Small offsets use plain sums of x, large ones center on a pivot: both stay accurate."""
    std = 0.5
    x = (offset * std + std * rng.standard_normal(shape)).astype(np.float32)
    gamma, beta = np.full(6, 1.5, np.float32), np.full(6, 0.25, np.float32)
    out, cache = bn.batchnorm_forward(x, gamma, beta)
    assert np.abs(out - reference(x, gamma, beta)[0]).max() < 2e-5
    dout = rng.standard_normal(shape).astype(np.float32)
    dx = bn.batchnorm_backward(dout, cache)[0]
    _, cache64 = bn.batchnorm_forward(x.astype(np.float64), gamma.astype(np.float64),
                                      beta.astype(np.float64))
    dx64 = bn.batchnorm_backward(dout.astype(np.float64), cache64)[0]
    assert np.abs(dx - dx64).max() < 1e-4 * np.abs(dx64).max()


@pytest.mark.parametrize("ratio,centered", [
    (0.0, (False, False, False, False)),
    (2.0, (False, False, False, False)),
    (5.0, (True, False, False, False)),  # the variance's squares cost 25 ulps, the passes 5
    (1e2, (True, True, True, True)),
    (1e4, (True, True, True, True)),
])
def test_the_threshold_picks_the_pivot_it_needs(ratio, centered, rng, monkeypatch):
    """Both sides of the threshold are really taken: x itself near zero, a pivot far from
    it (the first-samples estimate for the statistics, the mean for the passes). ``ratio`` is
    the mean in units of the standard deviation."""
    pivots = []
    sums, lines = engine.pivoted_sums, engine.channel_lines
    monkeypatch.setattr(engine, "pivoted_sums", lambda x3, pivot, *a: (
        pivots.append(pivot), sums(x3, pivot, *a))[1])
    monkeypatch.setattr(engine, "channel_lines", lambda x, pivot, *a: (
        pivots.append(pivot), lines(x, pivot, *a))[1])
    x = (0.5 * ratio + 0.5 * rng.standard_normal((32, 6, 5, 5))).astype(np.float32)
    _, cache = bn.batchnorm_forward(x, np.ones(6, np.float32), np.zeros(6, np.float32))
    bn.batchnorm_backward(np.ones_like(x), cache)
    # statistics, output, gradient sums, dx
    assert tuple(pivot is not None for pivot in pivots) == centered
    if centered[-1]:
        np.testing.assert_allclose(pivots[-1], cache.mean, rtol=1e-7)


def test_centering_decision_counts_ulps_linearly_in_passes_and_squared_in_sums():
    huge = np.array([1.0 / np.finfo(np.float64).tiny])  # invstd of a constant channel
    assert engine.centering_needed(np.array([7.25]), huge)
    assert not engine.centering_needed(np.array([0.0]), huge)
    mean, invstd = np.array([0.0, 4.0]), np.ones(2)
    assert not engine.centering_needed(mean, invstd)
    assert engine.centering_needed(mean, invstd, squares=True)


def test_non_contiguous_and_large_batches_chunk_correctly(rng, reference):
    base = rng.normal(size=(300, 6, 10, 10))
    x = base[:, :, ::2, 1::2]  # a strided view, larger than one chunk
    gamma, beta = rng.normal(size=6), rng.normal(size=6)
    out, cache = bn.batchnorm_forward(x, gamma, beta)
    np.testing.assert_allclose(out, reference(x, gamma, beta)[0], atol=1e-12)
    dout = rng.normal(size=x.shape)
    dx = bn.batchnorm_backward(dout, cache)[0]
    np.testing.assert_allclose(dx, bn.batchnorm_backward_staged(dout, cache)[0], atol=1e-11)


def test_parallel_passes_equal_the_serial_ones(monkeypatch, rng):
    """Large inputs are split across threads; the parts add up in a fixed order."""
    x = rng.normal(3.0, 2.0, size=(37, 5, 4, 3)).astype(np.float32)
    dout = rng.normal(size=x.shape).astype(np.float32)
    gamma, beta = rng.normal(size=5).astype(np.float32), rng.normal(size=5).astype(np.float32)
    monkeypatch.setattr(engine, "CHUNK_BYTES", 64)  # one sample per chunk
    serial_out, serial_cache = bn.batchnorm_forward(x, gamma, beta)
    serial_grads = bn.batchnorm_backward(dout, serial_cache)
    monkeypatch.setattr(engine, "PARALLEL_BYTES", 0)
    monkeypatch.setattr(engine, "worker_count", lambda: 3)
    for _ in range(3):
        out, cache = bn.batchnorm_forward(x, gamma, beta)
        np.testing.assert_array_equal(out, serial_out)
        for a, b in zip(bn.batchnorm_backward(dout, cache), serial_grads, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_worker_count_is_bounded():
    assert 1 <= engine.worker_count() <= engine.MAX_WORKERS
