"""Fixtures shared by the bnlib.experiments tests: a backend that draws without a display,
one torch thread, each test's figures closed after it, and the digits split the chapters use."""

import matplotlib

matplotlib.use("Agg")  # before any test module imports pyplot

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from bnlib.data import digits  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread_and_no_figures():
    """One torch thread, as the experiments themselves use (results depend only on the
    seeds); figures a test leaves open would pile up across the session, so they are closed."""
    torch.set_num_threads(1)
    yield
    plt.close("all")


@pytest.fixture(scope="session")
def data():
    """scikit-learn's digits with the chapters' split (seed 0, a quarter held out)."""
    return digits(seed=0, test_size=0.25)
