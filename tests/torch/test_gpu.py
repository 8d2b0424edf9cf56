"""bnlib.torch on a CUDA device against torch.nn, on each backend (skipped without CUDA)."""

import copy
import re

import pytest
import torch
from torch import nn
from torch.testing import assert_close

import bnlib.torch as bt

pytestmark = pytest.mark.gpu

BACKENDS = ["auto", "composite"]


def _pair(factory, device, dtype=torch.float32):
    """(bnlib module, torch module) with equal random parameters on ``device``."""
    theirs = factory(nn).to(device=device, dtype=dtype)
    with torch.no_grad():
        for parameter in theirs.parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.5 + 1)
    ours = factory(bt).to(device=device, dtype=dtype)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def _steps(
    ours,
    theirs,
    shape,
    device,
    modes,
    memory_format=torch.contiguous_format,
    input_dtype=torch.float32,
    rtol=1e-4,
    atol=1e-4,
):
    for training in modes:
        ours.train(training)
        theirs.train(training)
        x = (torch.randn(shape, device=device) * 2 + 1).to(input_dtype)
        x = x.to(memory_format=memory_format)
        x_ours, x_theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
        y_ours, y_theirs = ours(x_ours), theirs(x_theirs)
        assert y_ours.dtype == y_theirs.dtype
        assert y_ours.is_contiguous(memory_format=memory_format)
        assert_close(y_ours, y_theirs, rtol=rtol, atol=atol)
        upstream = torch.randn_like(y_theirs)
        y_ours.backward(upstream)
        y_theirs.backward(upstream)
        assert_close(x_ours.grad, x_theirs.grad, rtol=rtol, atol=atol)
        for p_ours, p_theirs in zip(ours.parameters(), theirs.parameters(), strict=True):
            assert_close(p_ours.grad, p_theirs.grad, rtol=rtol, atol=atol * x.numel() ** 0.5)
        for b_ours, b_theirs in zip(ours.buffers(), theirs.buffers(), strict=True):
            assert b_ours.dtype == b_theirs.dtype
            assert_close(b_ours, b_theirs, rtol=rtol, atol=atol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("factory", "shape", "memory_format"),
    [
        (lambda m: m.BatchNorm1d(16), (64, 16), torch.contiguous_format),
        (lambda m: m.BatchNorm1d(8, momentum=None), (4, 8, 33), torch.contiguous_format),
        (lambda m: m.BatchNorm2d(32), (8, 32, 9, 7), torch.contiguous_format),
        (lambda m: m.BatchNorm2d(32, affine=False), (8, 32, 9, 7), torch.channels_last),
        (lambda m: m.BatchNorm3d(4), (2, 4, 3, 5, 6), torch.channels_last_3d),
    ],
)
def test_batchnorm_on_cuda_matches_torch(cuda_device, backend, factory, shape, memory_format):
    bt.set_backend(backend)
    ours, theirs = _pair(factory, cuda_device)
    _steps(ours, theirs, shape, cuda_device, [True, True, False, True, False, True], memory_format)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("input_dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision_input_with_float32_module_on_cuda(cuda_device, backend, input_dtype):
    bt.set_backend(backend)
    ours, theirs = _pair(lambda m: m.BatchNorm2d(16), cuda_device)
    _steps(
        ours,
        theirs,
        (8, 16, 6, 6),
        cuda_device,
        [True, False, True],
        input_dtype=input_dtype,
        rtol=2e-2,
        atol=3e-2,
    )
    assert ours.running_mean.dtype == torch.float32


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("factory", "shape"),
    [
        (lambda m: m.LayerNorm(64), (3, 5, 64)),
        (lambda m: m.LayerNorm((3, 40), bias=False), (7, 3, 40)),
        (lambda m: m.LayerNorm(1000, elementwise_affine=False), (9, 1000)),
        (lambda m: m.GroupNorm(4, 16), (3, 16, 5, 5)),
        (lambda m: m.RMSNorm(48), (6, 48)),
    ],
)
def test_row_norms_on_cuda_match_torch(cuda_device, backend, factory, shape):
    bt.set_backend(backend)
    ours, theirs = _pair(factory, cuda_device)
    _steps(ours, theirs, shape, cuda_device, [True, False])


def test_float64_on_cuda_matches_torch(cuda_device):
    ours, theirs = _pair(lambda m: m.BatchNorm2d(6), cuda_device, dtype=torch.float64)
    _steps(
        ours,
        theirs,
        (4, 6, 5, 5),
        cuda_device,
        [True, False, True],
        input_dtype=torch.float64,
        rtol=1e-9,
        atol=1e-9,
    )


def test_backend_choice_on_cuda(cuda_device):
    x = torch.randn(4, 3, device=cuda_device)
    expected = "triton" if _triton_available() else "composite"
    assert bt.backend_name(x) == expected
    assert bt.backend_name(x.cpu()) == "composite"
    bt.set_backend("composite")
    assert bt.backend_name(x) == "composite"


def test_large_offset_accuracy_on_cuda(cuda_device):
    x = 1e3 + 0.1 * torch.randn(64, 8, 16, 16, device=cuda_device)
    exact = x.double()
    exact = (exact - exact.mean((0, 2, 3), keepdim=True)) / torch.sqrt(
        exact.var((0, 2, 3), unbiased=False, keepdim=True) + 1e-5
    )
    for backend in BACKENDS:
        bt.set_backend(backend)
        error = (bt.batch_norm(x, None, None, training=True).double() - exact).abs().max()
        assert error.item() <= 5e-4, backend


def test_module_moves_between_devices(cuda_device):
    module = bt.BatchNorm1d(5)
    module(torch.randn(8, 5))
    on_gpu = copy.deepcopy(module).to(cuda_device)
    on_gpu(torch.randn(8, 5, device=cuda_device))
    assert on_gpu.num_batches_tracked.item() == 2
    assert on_gpu.running_mean.device.type == "cuda"


def _triton_available() -> bool:
    try:
        from bnlib.torch import _triton
    except ImportError:
        return False
    return _triton.available()


def test_cpu_dtype_rules_apply_on_cuda(cuda_device):
    """Deliberate difference: torch's CPU dtype checks and messages hold on every device."""
    module = bt.BatchNorm1d(4).to(cuda_device)
    x = torch.randn(3, 4, dtype=torch.float64, device=cuda_device)
    with pytest.raises(
        RuntimeError, match=re.escape("mixed dtype (CPU): all inputs must share same datatype.")
    ):
        module(x)


@pytest.mark.parametrize("backend", BACKENDS)
def test_edge_cases_on_cuda(cuda_device, backend):
    bt.set_backend(backend)
    module = bt.BatchNorm2d(3).to(cuda_device)
    empty = module(torch.randn(0, 3, 2, 2, device=cuda_device))
    assert empty.shape == (0, 3, 2, 2)
    assert module.num_batches_tracked.item() == 1
    assert torch.equal(module.running_var, torch.ones(3, device=cuda_device))
    assert bt.LayerNorm(5).to(cuda_device)(torch.randn(0, 5, device=cuda_device)).shape == (0, 5)

    x = torch.randn(6, 3, 2, 2, device=cuda_device)
    x[:, 2] = 7.25  # constant channel -> beta
    x[1, 0, 0, 0] = float("nan")  # NaN stays in channel 0
    with torch.no_grad():
        module.bias.copy_(torch.tensor([0.0, 0.0, -0.5]))
    y = module.train()(x)
    assert torch.isnan(y[:, 0]).all() and torch.isfinite(y[:, 1:]).all()
    assert_close(y[:, 2], torch.full_like(y[:, 2], -0.5), rtol=0, atol=1e-6)
    assert torch.isfinite(module.running_mean[1:]).all()
