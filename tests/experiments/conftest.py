"""Fixtures shared by the bnlib.experiments tests: a backend that draws without a display,
each test's figures closed after it, and the digits split the training experiments learn."""

import matplotlib

matplotlib.use("Agg")  # before any test module imports pyplot

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from bnlib.data import digits  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    """Figures a test leaves open would pile up across the session."""
    yield
    plt.close("all")


@pytest.fixture(scope="session")
def data():
    """scikit-learn's digits with the chapters' split (seed 0)."""
    return digits(seed=0)
