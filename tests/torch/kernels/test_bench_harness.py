"""The GPU benchmark (benchmarks/bench_gpu.py) that times these kernels: its byte models and
report formatting, checked on the CPU."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[3] / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def byte_models():
    return _load("byte_models")


@pytest.fixture(scope="module")
def bench(byte_models):
    return _load("bench_gpu")


@pytest.mark.parametrize(("op", "direction", "fp32_bytes"), [
    ("bn", "forward", 12), ("bn", "backward", 20), ("bn", "inference", 8),
    ("bn", "fwd+bwd", 32), ("ln", "forward", 8), ("ln", "backward", 12)])
def test_byte_models_match_the_performance_reference(byte_models, op, direction, fp32_bytes):
    model = byte_models.byte_model(op, direction)
    numel = 256 * 256 * 14 * 14
    assert model.bytes_moved(numel, 4) == fp32_bytes * numel
    assert model.bytes_moved(numel, 2) == fp32_bytes // 2 * numel  # bfloat16 halves it
    assert model.describe(4) == f"{fp32_bytes // 4} passes = {fp32_bytes} B/elem"


def test_byte_model_errors(byte_models):
    with pytest.raises(ValueError, match="no byte model for bn sideways"):
        byte_models.byte_model("bn", "sideways")
    with pytest.raises(ValueError, match="element_size > 0"):
        byte_models.byte_model("ln", "forward").bytes_moved(10, 0)
    with pytest.raises(ValueError, match="seconds must be positive"):
        byte_models.effective_gbps(100, 0.0)


def test_effective_gbps(byte_models):
    # BN2d (256,256,14,14) fp32 forward, 3 passes in 51 us: ~3.0 TB/s (performance.md)
    bytes_moved = byte_models.byte_model("bn", "forward").bytes_moved(256 * 256 * 196, 4)
    assert byte_models.effective_gbps(bytes_moved, 51e-6) == pytest.approx(3023, rel=1e-3)


def _rows(bench):
    forward = bench.Row("bn", "forward", (256, 256, 14, 14), "float32", "nchw", 4,
                        256 * 256 * 196, times_us={"bnlib": 60.0, "eager": 66.0,
                                                   "eager_no_cudnn": 90.0, "compile": None})
    backward = bench.Row("bn", "backward", (256, 256, 14, 14), "float32", "nchw", 4,
                         256 * 256 * 196, times_us={"bnlib": 100.0, "eager": 80.0,
                                                    "eager_no_cudnn": 120.0, "compile": None})
    return [forward, backward]


def test_speedup_and_fwd_bwd_rows(bench):
    forward, backward = _rows(bench)
    assert forward.speedup("eager") == pytest.approx(1.1)
    assert forward.speedup("compile") is None
    assert forward.gbps() == pytest.approx(12 * 256 * 256 * 196 / 60e-6 / 1e9)
    (combined,) = bench.combine_fwd_bwd([forward, backward])
    assert combined.direction == "fwd+bwd"
    assert combined.times_us == {"bnlib": 160.0, "eager": 146.0, "eager_no_cudnn": 210.0}
    assert combined.bytes_moved == 32 * 256 * 256 * 196


def test_markdown_table_rows(bench):
    forward, backward = _rows(bench)
    table = bench.markdown_table([forward, backward], copy_gbps=3000.0)
    lines = table.splitlines()
    assert lines[0].startswith("| op | pass | shape | layout | dtype | byte model | bnlib us |")
    assert len(lines) == 4
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    gbps = 12 * 256 * 256 * 196 / 60e-6 / 1e9
    assert cells[:10] == ["BN", "forward", "256x256x14x14", "nchw", "float32",
                          "3 passes = 12 B/elem", "60.0", "n/a", f"{gbps:.0f}",
                          f"{100 * gbps / 3000:.0f}%"]
    assert cells[10:] == ["66.0", "1.10x", "90.0", "1.50x", "n/a", "n/a"]


def test_report_and_json(bench):
    rows = _rows(bench)
    meta = dict(device="NVIDIA H100 80GB HBM3", date="2026-11-23T03:00Z", torch="2.11.0",
                triton="3.6.0", cuda="13.0", cudnn=91000, python="3.12.3", reps=100,
                clock="CUDA events", copy=dict(bytes=2**30, time_us=700.0, gbps=3067.0))
    report = bench.markdown_report(rows, meta)
    assert report.startswith("# GPU benchmark, NVIDIA H100 80GB HBM3, 2026-11-23T03:00Z")
    assert "torch 2.11.0, triton 3.6.0, CUDA 13.0" in report
    payload = json.loads(bench.results_json(rows, meta))
    assert payload["rows"][1]["byte_model"] == "5 passes = 20 B/elem"
    assert payload["rows"][1]["speedup"]["eager"] == pytest.approx(0.8)
    assert bench.result_stem(meta) == "NVIDIA-H100-80GB-HBM3-2026-11-23"


def test_smoke_run_writes_results(bench, device, tmp_path, capsys):
    """--smoke runs the tiny cases (CPU interpreter without CUDA) and writes both files."""
    assert bench.main(["--smoke", "--reps", "2", "--no-compile", "--out", str(tmp_path)]) == 0
    written = sorted(p.suffix for p in tmp_path.iterdir())
    assert written == [".json", ".md"]
    payload = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert {row["op"] for row in payload["rows"]} == {"bn", "ln"}
    assert all(row["times_us"]["bnlib"] > 0 for row in payload["rows"])
    assert "max|diff|" in capsys.readouterr().out


def test_sweep_knobs_exist_in_the_backend(bench):
    """Every knob --sweep moves is a module constant of bnlib.torch._triton."""
    from bnlib.torch import _triton

    settings = bench.kernel_settings(_triton)
    assert settings["REDUCE_TILE_BYTES"] == _triton.REDUCE_TILE_BYTES
    for op_knobs in bench.SWEEP_KNOBS.values():
        for knob, values in op_knobs.items():
            assert isinstance(getattr(_triton, knob), int)
            assert getattr(_triton, knob) not in values  # the default is not swept twice
