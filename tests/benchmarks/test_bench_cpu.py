"""The CPU benchmark measures the three implementations and prints one comparable table."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench_cpu():
    spec = importlib.util.spec_from_file_location("bench_cpu", ROOT / "benchmarks" / "bench_cpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_measure_and_table_on_a_small_shape(bench_cpu, capsys, tmp_path):
    result = bench_cpu.measure((8, 4, 3, 3), repeats=2)
    assert [row["impl"] for row in result["rows"]][:2] == ["bnlib.numpy", "textbook NumPy"]
    assert result["rows"][2]["impl"].startswith("torch")
    for row in result["rows"]:
        assert row["forward_ms"] > 0 and row["total_ms"] > 0
        assert row["total_ms"] == pytest.approx(row["forward_ms"] + row["backward_ms"])
    bench_cpu.print_table(result)
    table = capsys.readouterr().out
    assert "bnlib.numpy" in table and "textbook NumPy" in table and "vs torch" in table
