"""The GPU benchmark's report formatting and its smoke run, checked on the CPU."""

import json

import pytest
import torch


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


def test_smoke_run_writes_results(bench, tmp_path, capsys):
    """--smoke runs the tiny cases (CPU interpreter without CUDA) and writes both files."""
    from bnlib.torch import _triton

    if not (torch.cuda.is_available() or _triton.available()):
        pytest.skip("Triton runs neither on a GPU nor in its interpreter in this process")
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
