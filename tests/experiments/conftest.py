"""Fixtures shared by the experiment tests: the digits split the chapters use, one thread."""

import matplotlib.pyplot as plt
import pytest
import torch

from bnlib.data import digits


@pytest.fixture(scope="session")
def data():
    """The digits, split as the chapters split them."""
    return digits(seed=0, test_size=0.25)


@pytest.fixture(autouse=True)
def one_thread_and_no_figures():
    """One torch thread, as the experiments themselves use (results depend only on the
    seeds); figures closed afterwards."""
    torch.set_num_threads(1)
    yield
    plt.close("all")
