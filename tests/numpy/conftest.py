import numpy as np
import pytest


@pytest.fixture
def rng():
    """A seeded generator, so every run draws the same inputs."""
    return np.random.default_rng(1234)
