"""Fixtures shared by the experiment tests: the digits split the chapters use, one thread."""

import pytest
import torch

from bnlib.data import digits


@pytest.fixture(scope="module")
def data():
    return digits(seed=0, test_size=0.25)


@pytest.fixture(autouse=True)
def one_thread():
    """One thread, as the experiments themselves use: results depend only on the seeds."""
    torch.set_num_threads(1)
