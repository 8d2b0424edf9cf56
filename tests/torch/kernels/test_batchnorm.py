"""Batch-norm Triton kernels against float64 torch maths.

Runs on CUDA when present, else on the CPU through Triton's interpreter (small shapes).
Tolerances (``atol = rtol``) for outputs stored in the input dtype are a few units of its
rounding: float32 2e-5, float16 2e-3, bfloat16 2e-2. Statistics and parameter gradients are
float32 whatever the input dtype and are checked at float32 tolerances.
"""

import pytest
import torch

from bnlib.torch import _composite, _triton
from tests.torch.kernels.checks import DTYPES, EPS, assert_float32, assert_output

# C not a power of two, odd spatial sizes, 1x1 spatial, (N, C), (N, C, L) and 3-d volumes.
SHAPES = [(2, 3, 5, 7), (4, 6, 1, 1), (3, 5), (2, 4, 9), (2, 3, 2, 3, 4)]
LAYOUTS = ["nchw", "channels_last"]


def make_input(shape, dtype, layout, device, generator, scale=2.0, offset=0.5):
    """Random ``(N, C, *spatial)`` input in ``layout``; channel means differ."""
    C = shape[1]
    channel_offsets = torch.linspace(-1, 1, C).reshape((1, C) + (1,) * (len(shape) - 2))
    x = torch.randn(shape, generator=generator) * scale + offset + channel_offsets
    return to_layout(x.to(dtype).to(device), layout)


def to_layout(x, layout):
    """The same values in NCHW-contiguous or channel-fastest memory."""
    if layout == "channels_last":
        return x.movedim(1, -1).contiguous().movedim(-1, 1)
    return x.contiguous()


def channel_params(C, generator, device):
    weight = (torch.rand(C, generator=generator) + 0.5).to(device)
    bias = torch.randn(C, generator=generator).to(device)
    return weight, bias


def reference_forward(x, weight, bias, eps=EPS):
    """float64 ``F.batch_norm`` in training mode, plus biased mean and var."""
    x64 = x.detach().double().cpu()
    dims = [0] + list(range(2, x.dim()))
    var, mean = torch.var_mean(x64, dim=dims, unbiased=False)
    y = torch.nn.functional.batch_norm(
        x64, None, None, _f64(weight), _f64(bias), training=True, eps=eps)
    return y, mean, var


def _f64(t):
    return None if t is None else t.detach().double().cpu()


def channel_fastest(t):
    return t.movedim(1, -1).is_contiguous()


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_train_matches_float64(shape, dtype, layout, device, generator):
    x = make_input(shape, dtype, layout, device, generator)
    weight, bias = channel_params(shape[1], generator, device)
    y, mean, var = _triton.bn_forward_train(x, weight, bias, EPS)
    y_ref, mean_ref, var_ref = reference_forward(x, weight, bias)
    assert_output(y, y_ref, dtype)
    assert_float32(mean, mean_ref)
    assert_float32(var, var_ref)
    assert y.stride() == x.stride()  # memory format kept


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_backward_train_matches_float64_autograd(shape, dtype, layout, device, generator):
    x = make_input(shape, dtype, layout, device, generator)
    dy = make_input(shape, dtype, layout, device, generator, scale=1.0, offset=0.0)
    weight, bias = channel_params(shape[1], generator, device)
    _, mean_ref, var_ref = reference_forward(x, weight, bias)
    invstd = torch.rsqrt(var_ref + EPS)
    dx, dweight, dbias = _triton.bn_backward_train(
        dy, x, weight, mean_ref.float().to(device), invstd.float().to(device))

    x64, w64, b64 = (t.double().cpu().requires_grad_() for t in (x, weight, bias))
    y64 = torch.nn.functional.batch_norm(x64, None, None, w64, b64, training=True, eps=EPS)
    y64.backward(dy.double().cpu())
    assert_output(dx, x64.grad, dtype)
    assert dx.stride() == x.stride()
    assert_float32(dweight, w64.grad, tol=1e-4)
    assert_float32(dbias, b64.grad, tol=1e-4)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_eval_matches_float64(shape, dtype, layout, device, generator):
    x = make_input(shape, dtype, layout, device, generator)
    weight, bias = channel_params(shape[1], generator, device)
    running_mean = torch.randn(shape[1], generator=generator).to(device)
    running_var = (torch.rand(shape[1], generator=generator) + 0.5).to(device)
    y = _triton.bn_forward_eval(x, running_mean, running_var, weight, bias, EPS)
    y_ref = torch.nn.functional.batch_norm(
        x.double().cpu(), _f64(running_mean), _f64(running_var), _f64(weight), _f64(bias),
        training=False, eps=EPS)
    assert_output(y, y_ref, dtype)
    assert y.stride() == x.stride()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_split_reductions_merge_exactly(layout, device, generator, monkeypatch):
    """Tiny tiles force many partial summaries per channel through Chan's merge."""
    monkeypatch.setattr(_triton, "REDUCE_TILE_BYTES", 32)
    monkeypatch.setattr(_triton, "PROGRAMS_PER_SM", 16)
    monkeypatch.setattr(_triton, "NCHW_STATS_PROGRAMS_PER_SM", 16)
    shape = (5, 3, 6, 7)
    x = make_input(shape, torch.float32, layout, device, generator)
    assert _triton._split_plan(_triton._BNLayout(x), x, 16)["splits"] > 3
    dy = make_input(shape, torch.float32, layout, device, generator, scale=1.0, offset=0.0)
    weight, bias = channel_params(shape[1], generator, device)
    y, mean, var = _triton.bn_forward_train(x, weight, bias, EPS)
    y_ref, mean_ref, var_ref = reference_forward(x, weight, bias)
    assert_output(y, y_ref, torch.float32)
    assert_float32(mean, mean_ref)
    assert_float32(var, var_ref)
    dx, dweight, dbias = _triton.bn_backward_train(dy, x, weight, mean, torch.rsqrt(var + EPS))
    expected = _composite.bn_backward_train(
        dy.double(), x.double(), weight.double(), mean.double(), torch.rsqrt(var.double() + EPS))
    assert_output(dx, expected[0].cpu(), torch.float32)
    assert_float32(dweight, expected[1].cpu(), tol=1e-4)
    assert_float32(dbias, expected[2].cpu(), tol=1e-4)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_large_mean_small_std_within_5e_4_of_float64(layout, device, generator):
    """float32 channels at mean 1e3, std 0.1: normalised output within 5e-4 of float64."""
    shape = (6, 3, 12, 11)
    x = make_input(shape, torch.float32, layout, device, generator, scale=0.1, offset=1e3)
    y, mean, var = _triton.bn_forward_train(x, None, None, EPS)
    y_ref, mean_ref, var_ref = reference_forward(x, None, None)
    assert (y.double().cpu() - y_ref).abs().max() < 5e-4
    assert (mean.double().cpu() - mean_ref).abs().max() < 1e-4  # float32 spacing at 1e3: 6e-5
    torch.testing.assert_close(var.double().cpu(), var_ref, rtol=1e-4, atol=0)


def test_without_weight_and_bias(device, generator):
    x = make_input((3, 4, 5), torch.float32, "nchw", device, generator)
    y, mean, var = _triton.bn_forward_train(x, None, None, EPS)
    y_ref, _, _ = reference_forward(x, None, None)
    assert_output(y, y_ref, torch.float32)
    dy = make_input((3, 4, 5), torch.float32, "nchw", device, generator, offset=0.0)
    dx, dweight, dbias = _triton.bn_backward_train(dy, x, None, mean, torch.rsqrt(var + EPS))
    x64 = x.double().cpu().requires_grad_()
    torch.nn.functional.batch_norm(x64, None, None, training=True, eps=EPS).backward(
        dy.double().cpu())
    assert_output(dx, x64.grad, torch.float32)
    assert dweight.shape == dbias.shape == (4,)


def test_backward_takes_grad_in_another_layout(device, generator):
    x = make_input((2, 3, 4, 5), torch.float32, "channels_last", device, generator)
    dy = make_input((2, 3, 4, 5), torch.float32, "nchw", device, generator, offset=0.0)
    weight, bias = channel_params(3, generator, device)
    _, mean, var = _triton.bn_forward_train(x, weight, bias, EPS)
    invstd = torch.rsqrt(var + EPS)
    dx, _, _ = _triton.bn_backward_train(dy, x, weight, mean, invstd)
    dx_same, _, _ = _triton.bn_backward_train(to_layout(dy, "channels_last"), x, weight, mean,
                                              invstd)
    assert channel_fastest(dx)
    torch.testing.assert_close(dx, dx_same, atol=0, rtol=0)


def test_non_dense_input_is_copied(device, generator):
    base = make_input((2, 3, 8, 6), torch.float32, "nchw", device, generator)
    x = base[:, :, ::2]
    weight, bias = channel_params(3, generator, device)
    y, _, _ = _triton.bn_forward_train(x, weight, bias, EPS)
    assert_output(y, reference_forward(x, weight, bias)[0], torch.float32)


def test_float64_goes_to_composite(device, generator):
    x = make_input((2, 3, 4), torch.float64, "nchw", device, generator)
    weight, bias = channel_params(3, generator, device)
    for got, expected in zip(_triton.bn_forward_train(x, weight, bias, EPS),
                             _composite.bn_forward_train(x, weight, bias, EPS), strict=True):
        torch.testing.assert_close(got, expected, atol=0, rtol=0)


def test_errors_name_the_problem(device, generator):
    x = make_input((2, 3, 4), torch.float32, "nchw", device, generator)
    weight, bias = channel_params(3, generator, device)
    with pytest.raises(ValueError, match=r"weight must have shape \(3,\), got \(4,\)"):
        _triton.bn_forward_train(x, torch.ones(4, device=device), bias, EPS)
    with pytest.raises(TypeError, match="input must be a floating-point tensor"):
        _triton.bn_forward_train(x.to(torch.int32), weight, bias, EPS)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        _triton.bn_forward_train(x[0, 0], None, None, EPS)
    with pytest.raises(ValueError, match="grad_output shape"):
        _triton.bn_backward_train(x[:1], x, weight, weight, weight)
    with pytest.raises(ValueError, match="running_mean and running_var are required"):
        _triton.bn_forward_eval(x, None, None, weight, bias, EPS)
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        _triton.bn_forward_train(x.tolist(), weight, bias, EPS)


def test_empty_batch_goes_to_composite(device):
    x = torch.empty((0, 3, 2, 2), device=device)
    y, mean, var = _triton.bn_forward_train(x, None, None, EPS)
    assert y.shape == x.shape
    assert torch.isnan(mean).all() and torch.isnan(var).all()
