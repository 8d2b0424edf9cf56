"""Fixtures shared by the bnlib.torch tests (tests/conftest.py sets TRITON_INTERPRET=1 on
machines without CUDA, before Triton is first imported, so the kernels run on the CPU)."""

import pytest
import torch

import bnlib.torch as bt
from bnlib.torch import _triton


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


@pytest.fixture
def device() -> torch.device:
    """Where the Triton kernels run: CUDA when present, else the CPU interpreter."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if not _triton.available():
        pytest.skip("Triton cannot run here: no CUDA device, and Triton was imported before "
                    "TRITON_INTERPRET=1 was set")
    return torch.device("cpu")


@pytest.fixture
def generator() -> torch.Generator:
    """A seeded CPU generator: inputs are drawn on the CPU, then moved to the device."""
    return torch.Generator().manual_seed(1234)
