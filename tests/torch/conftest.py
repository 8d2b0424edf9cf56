"""Fixtures shared by the bnlib.torch tests."""

import pytest
import torch

import bnlib.torch as bt


@pytest.fixture(autouse=True)
def restore_backend():
    """Each test starts on the default backend and leaves it as it found it."""
    previous = bt.get_backend()
    bt.set_backend("auto")
    yield
    bt.set_backend(previous)


@pytest.fixture
def cuda_device():
    """A CUDA device, or a clean skip on machines without one."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    return torch.device("cuda")
