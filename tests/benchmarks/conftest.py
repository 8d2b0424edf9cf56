"""The benchmark scripts are not a package: each test module loads its script by path."""

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load_script(name: str):
    """Import ``benchmarks/<name>.py`` as module ``name`` (registered, so dataclasses and
    pickling can find it)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def bench_cpu():
    return load_script("bench_cpu")


@pytest.fixture(scope="session")
def bench():
    """benchmarks/bench_gpu.py."""
    return load_script("bench_gpu")


@pytest.fixture(scope="session")
def bench_grading():
    return load_script("bench_grading")
