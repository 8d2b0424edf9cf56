"""Run the Triton kernels on the CPU through Triton's interpreter when there is no CUDA device.

Triton reads ``TRITON_INTERPRET`` when it is imported and when it decorates a kernel, so it is
set here, at import time, before any test module imports ``bnlib.torch._triton``. If Triton was
imported earlier in the same process without it (by another test folder), the kernels cannot
be interpreted and the tests that need them skip: run ``pytest tests/triton`` on its own.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from bnlib.torch import _triton  # noqa: E402

NOT_RUNNABLE = ("Triton cannot run here: no CUDA device, and Triton was imported before "
                "TRITON_INTERPRET=1 was set (run pytest tests/triton in its own process)")


@pytest.fixture
def device() -> torch.device:
    """The device the kernels run on: CUDA when present, else the CPU interpreter."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if not _triton.available():
        pytest.skip(NOT_RUNNABLE)
    return torch.device("cpu")


@pytest.fixture
def generator() -> torch.Generator:
    """A seeded CPU generator: inputs are drawn on the CPU, then moved to the device."""
    return torch.Generator().manual_seed(1234)
