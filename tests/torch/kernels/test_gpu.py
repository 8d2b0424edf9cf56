"""The kernels at benchmark-like sizes on a CUDA device, against float64 maths on the device.

Skipped without CUDA. Output tolerances (``atol = rtol``): float32 2e-5 (5e-5 for dx, whose
sums run over up to 200k values), bfloat16 2e-2.
"""

import pytest
import torch

from bnlib.torch import _triton

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

EPS = 1e-5
TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2}


def _inputs(shape, dtype, channels_last, scale=2.0, offset=0.5):
    generator = torch.Generator(device="cuda").manual_seed(7)
    x = torch.randn(shape, device="cuda", generator=generator) * scale + offset
    x = x.to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    return x


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", list(TOL), ids=str)
@pytest.mark.parametrize("shape", [(32, 512, 7, 7), (16, 64, 56, 56), (8, 96, 15, 13)], ids=str)
def test_batchnorm_train_and_eval(shape, dtype, channels_last):
    x = _inputs(shape, dtype, channels_last)
    dy = _inputs(shape, dtype, channels_last, scale=1.0, offset=0.0)
    C = shape[1]
    weight = torch.rand(C, device="cuda") + 0.5
    bias = torch.randn(C, device="cuda")
    y, mean, var = _triton.bn_forward_train(x, weight, bias, EPS)
    dx, dweight, dbias = _triton.bn_backward_train(dy, x, weight, mean, torch.rsqrt(var + EPS))
    y_eval = _triton.bn_forward_eval(x, mean, var, weight, bias, EPS)

    x64, w64, b64 = (t.double().requires_grad_() for t in (x, weight, bias))
    y64 = torch.nn.functional.batch_norm(x64, None, None, w64, b64, True, 0.1, EPS)
    y64.backward(dy.double())
    var64, mean64 = torch.var_mean(x64.detach(), dim=(0, 2, 3), unbiased=False)
    tol = TOL[dtype]
    torch.testing.assert_close(y.double(), y64.detach(), atol=tol, rtol=tol)
    torch.testing.assert_close(y_eval.double(), y64.detach(), atol=tol, rtol=tol)
    torch.testing.assert_close(dx.double(), x64.grad, atol=max(tol, 5e-5), rtol=tol)
    torch.testing.assert_close(mean.double(), mean64, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(var.double(), var64, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dweight.double(), w64.grad, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(dbias.double(), b64.grad, atol=1e-3, rtol=1e-4)
    assert y.stride() == dx.stride() == x.stride()


@pytest.mark.parametrize("channels_last", [False, True])
def test_batchnorm_large_mean_small_std(channels_last):
    x = _inputs((64, 64, 28, 28), torch.float32, channels_last, scale=0.1, offset=1e3)
    y, _, _ = _triton.bn_forward_train(x, None, None, EPS)
    y64 = torch.nn.functional.batch_norm(x.double(), None, None, None, None, True, 0.1, EPS)
    assert (y.double() - y64).abs().max().item() < 5e-4


@pytest.mark.parametrize("dtype", list(TOL), ids=str)
@pytest.mark.parametrize("shape", [(512, 4095), (64, 16384), (1000, 1024), (16, 40000)], ids=str)
def test_layernorm_forward_backward(shape, dtype):
    x = _inputs(shape, dtype, False)
    dy = _inputs(shape, dtype, False, scale=1.0, offset=0.0)
    K = shape[1]
    weight = (torch.rand(K, device="cuda") + 0.5).to(dtype)
    bias = torch.randn(K, device="cuda").to(dtype)
    y, mean, rstd = _triton.ln_forward(x, weight, bias, EPS)
    dx, dweight, dbias = _triton.ln_backward(dy, x, weight, mean, rstd)
    x64, w64, b64 = (t.double().requires_grad_() for t in (x, weight, bias))
    y64 = torch.nn.functional.layer_norm(x64, (K,), w64, b64, EPS)
    y64.backward(dy.double())
    tol = TOL[dtype]
    torch.testing.assert_close(y.double(), y64.detach(), atol=tol, rtol=tol)
    torch.testing.assert_close(dx.double(), x64.grad, atol=max(tol, 5e-5), rtol=tol)
    torch.testing.assert_close(dweight.double(), w64.grad, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(dbias.double(), b64.grad, atol=1e-3, rtol=1e-4)
