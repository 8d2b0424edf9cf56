"""The Triton backend as bnlib.torch's modules use it, and when it can run at all."""

import pytest
import torch

import bnlib.torch as bt
from bnlib.torch import _triton


@pytest.fixture
def triton_backend(device):
    """The Triton backend for this test (conftest's restore_backend resets it)."""
    bt.set_backend("triton")


def _train_step_matches_torch(ours, theirs, x, generator):
    """Same parameters, one forward/backward through each: outputs, gradients and buffers."""
    features = ours.weight.numel()
    with torch.no_grad():
        for module in (ours, theirs):
            module.weight.copy_(torch.linspace(0.5, 1.5, features))
            module.bias.copy_(torch.linspace(-1, 1, features))
    assert bt.backend_name(x) == "triton"
    dy = torch.randn(x.shape, generator=generator).to(x.device)
    x_ours, x_theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ours, y_theirs = ours(x_ours), theirs(x_theirs)
    y_ours.backward(dy)
    y_theirs.backward(dy)
    torch.testing.assert_close(y_ours, y_theirs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x_ours.grad, x_theirs.grad, atol=1e-5, rtol=1e-5)
    for name, parameter in theirs.named_parameters():
        torch.testing.assert_close(getattr(ours, name).grad, parameter.grad, atol=1e-4, rtol=1e-5)
    for name, buffer in theirs.named_buffers():
        torch.testing.assert_close(getattr(ours, name), buffer)


@pytest.mark.parametrize("channels_last", [False, True])
def test_batchnorm2d_on_triton_matches_torch_nn(channels_last, triton_backend, device,
                                                generator):
    x = torch.randn(4, 3, 5, 6, generator=generator).to(device) * 2 + 1
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    ours, theirs = bt.BatchNorm2d(3).to(device), torch.nn.BatchNorm2d(3).to(device)
    _train_step_matches_torch(ours, theirs, x, generator)
    torch.testing.assert_close(ours.eval()(x), theirs.eval()(x), atol=1e-5, rtol=1e-5)


def test_layernorm_on_triton_matches_torch_nn(triton_backend, device, generator):
    x = torch.randn(2, 5, 37, generator=generator).to(device) * 2 + 1
    ours, theirs = bt.LayerNorm(37).to(device), torch.nn.LayerNorm(37).to(device)
    _train_step_matches_torch(ours, theirs, x, generator)


def test_available_under_the_interpreter_or_cuda():
    assert _triton.available() == (torch.cuda.is_available() or _triton._interpreted())


def test_cpu_tensor_without_interpreter_is_refused(monkeypatch):
    monkeypatch.setattr(_triton, "_interpreted", lambda: False)
    x = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match="needs a CUDA tensor"):
        _triton.bn_forward_train(x, None, None, 1e-5)
    assert _triton.available() == torch.cuda.is_available()
