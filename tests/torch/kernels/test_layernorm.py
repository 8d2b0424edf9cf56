"""Layer-norm Triton kernels against float64 torch maths.

Runs on CUDA when present, else on the CPU through Triton's interpreter (small shapes).
Output tolerances (``atol = rtol``): float32 2e-5, float16 2e-3, bfloat16 2e-2; per-row
statistics and parameter gradients are float32 and checked at 1e-5 and 1e-4.
"""

import pytest
import torch

from bnlib.torch import _composite, _triton
from tests.torch.kernels.checks import DTYPES, EPS, assert_float32, assert_output

# Hidden sizes with remainders (4095-like), a power of two, a single column; rows not a
# multiple of the rows-per-program block.
SHAPES = [(3, 37), (5, 64), (2, 4095), (7, 1000), (4, 1)]


def make_rows(shape, dtype, device, generator, scale=2.0, offset=0.5):
    x = torch.randn(shape, generator=generator) * scale + offset
    return x.to(dtype).to(device)


def make_params(K, generator, device):
    return (torch.rand(K, generator=generator) + 0.5).to(device), torch.randn(
        K, generator=generator).to(device)


def _f64(t):
    return None if t is None else t.detach().double().cpu().requires_grad_()


def reference(x, weight, bias, dy=None, eps=EPS):
    """float64 ``F.layer_norm`` output, row mean and rstd, and (with dy) its gradients."""
    x64, w64, b64 = _f64(x), _f64(weight), _f64(bias)
    y = torch.nn.functional.layer_norm(x64, x.shape[-1:], w64, b64, eps)
    var, mean = torch.var_mean(x64.detach(), dim=1, unbiased=False)
    grads = None
    if dy is not None:
        y.backward(dy.double().cpu())
        grads = tuple(None if t is None else t.grad for t in (x64, w64, b64))
    return y.detach(), mean, torch.rsqrt(var + eps), grads


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_matches_float64(shape, dtype, device, generator):
    x = make_rows(shape, dtype, device, generator)
    weight, bias = make_params(shape[1], generator, device)
    y, mean, rstd = _triton.ln_forward(x, weight, bias, EPS)
    y_ref, mean_ref, rstd_ref, _ = reference(x, weight, bias)
    assert_output(y, y_ref, dtype)
    assert_float32(mean, mean_ref)
    assert_float32(rstd, rstd_ref)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_backward_matches_float64_autograd(shape, dtype, device, generator):
    x = make_rows(shape, dtype, device, generator)
    dy = make_rows(shape, dtype, device, generator, scale=1.0, offset=0.0)
    weight, bias = make_params(shape[1], generator, device)
    _, mean_ref, rstd_ref, grads = reference(x, weight, bias, dy)
    dx, dweight, dbias = _triton.ln_backward(
        dy, x, weight, mean_ref.float().to(device), rstd_ref.float().to(device))
    assert_output(dx, grads[0], dtype)
    assert_float32(dweight, grads[1], tol=1e-4)
    assert_float32(dbias, grads[2], tol=1e-4)


@pytest.mark.parametrize("affine", ["none", "weight", "both"])
def test_optional_weight_and_bias(affine, device, generator):
    x = make_rows((6, 33), torch.float32, device, generator)
    dy = make_rows((6, 33), torch.float32, device, generator, offset=0.0)
    weight, bias = make_params(33, generator, device)
    weight = None if affine == "none" else weight
    bias = bias if affine == "both" else None
    y, mean, rstd = _triton.ln_forward(x, weight, bias, EPS)
    y_ref, _, _, grads = reference(x, weight, bias, dy)
    assert_output(y, y_ref, torch.float32)
    dx, dweight, dbias = _triton.ln_backward(dy, x, weight, mean, rstd)
    assert_output(dx, grads[0], torch.float32)
    assert (dweight is None) == (weight is None)
    if weight is not None:
        assert_float32(dweight, grads[1], tol=1e-4)
    assert_float32(dbias, dy.double().sum(0).cpu(), tol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_long_rows_take_the_looped_kernels(dtype, device, generator, monkeypatch):
    """Rows longer than the register block: chunked sweeps give the same results."""
    monkeypatch.setattr(_triton, "LN_MAX_FUSED_FORWARD", 32)
    monkeypatch.setattr(_triton, "LN_MAX_FUSED_BACKWARD", 32)
    monkeypatch.setattr(_triton, "LN_LOOP_BLOCK", 16)
    shape = (37, 100)
    x = make_rows(shape, dtype, device, generator)
    dy = make_rows(shape, dtype, device, generator, scale=1.0, offset=0.0)
    weight, bias = make_params(shape[1], generator, device)
    y, mean, rstd = _triton.ln_forward(x, weight, bias, EPS)
    y_ref, mean_ref, rstd_ref, grads = reference(x, weight, bias, dy)
    assert_output(y, y_ref, dtype)
    assert_float32(mean, mean_ref)
    assert_float32(rstd, rstd_ref)
    dx, dweight, dbias = _triton.ln_backward(dy, x, weight, mean, rstd)
    assert_output(dx, grads[0], dtype)
    assert_float32(dweight, grads[1], tol=1e-4)
    assert_float32(dbias, grads[2], tol=1e-4)


def test_many_rows_spread_over_persistent_programs(device, generator):
    """More row blocks than programs: each program accumulates several into its partials."""
    x = make_rows((300, 24), torch.float32, device, generator)
    dy = make_rows((300, 24), torch.float32, device, generator, offset=0.0)
    weight, bias = make_params(24, generator, device)
    _, mean, rstd, grads = reference(x, weight, bias, dy)
    dx, dweight, dbias = _triton.ln_backward(dy, x, weight, mean.float().to(device),
                                             rstd.float().to(device))
    assert_output(dx, grads[0], torch.float32)
    assert_float32(dweight, grads[1], tol=1e-4)
    assert_float32(dbias, grads[2], tol=1e-4)


def test_large_mean_small_std_within_5e_4_of_float64(device, generator):
    x = make_rows((8, 300), torch.float32, device, generator, scale=0.1, offset=1e3)
    y, _, _ = _triton.ln_forward(x, None, None, EPS)
    y_ref, _, _, _ = reference(x, None, None)
    assert (y.double().cpu() - y_ref).abs().max() < 5e-4


def test_float64_goes_to_composite(device, generator):
    x = make_rows((3, 5), torch.float64, device, generator)
    for got, expected in zip(_triton.ln_forward(x, None, None, EPS),
                             _composite.ln_forward(x, None, None, EPS), strict=True):
        torch.testing.assert_close(got, expected, atol=0, rtol=0)


def test_errors_name_the_problem(device, generator):
    x = make_rows((3, 5), torch.float32, device, generator)
    with pytest.raises(ValueError, match=r"input must be a 2-d \(rows, hidden\) tensor"):
        _triton.ln_forward(x[None], None, None, EPS)
    with pytest.raises(ValueError, match=r"bias must have shape \(5,\), got \(4,\)"):
        _triton.ln_forward(x, None, torch.zeros(4, device=device), EPS)
    with pytest.raises(TypeError, match="expected a float16, bfloat16, float32 or float64"):
        _triton.ln_forward(x.to(torch.float8_e4m3fn), None, None, EPS)
    with pytest.raises(ValueError, match=r"mean must have shape \(3,\)"):
        _triton.ln_backward(x, x, None, torch.zeros(5, device=device), torch.zeros(3,
                                                                                 device=device))
