"""bnlib.experiments.roofline: the byte models, roofline, variance demonstrations, timer,
traffic counter and result readers."""

import json

import matplotlib.pyplot
import ml_dtypes
import numpy as np
import pytest
import torch

from bnlib.experiments import roofline

H100 = roofline.DEVICES["H100 SXM"]
RESNET_BN = 256 * 256 * 14 * 14


@pytest.mark.parametrize(("bytes_per_element", "expected_us"), [(8, 34), (12, 51), (20, 85)])
def test_predicted_time_matches_the_byte_model(bytes_per_element, expected_us):
    # (256, 256, 14, 14) fp32 at 90% of 3.35 TB/s: 34 / 51 / 85 us (reference figures).
    t = roofline.predicted_time_us(RESNET_BN, bytes_per_element, H100.bandwidth)
    assert t == pytest.approx(RESNET_BN * bytes_per_element / (0.9 * 3.35e12) * 1e6)
    assert round(t) == expected_us


def test_predicted_time_rejects_bad_efficiency():
    with pytest.raises(ValueError, match=r"efficiency must be in \(0, 1\]"):
        roofline.predicted_time_us(10, 8, 1e12, efficiency=1.5)


def test_roofline_is_bandwidth_then_peak():
    ridge = H100.ridge_point("fp32")
    assert ridge == pytest.approx(67e12 / 3.35e12)
    assert roofline.attainable_flops(0.5, H100) == pytest.approx(0.5 * 3.35e12)
    assert roofline.attainable_flops(10 * ridge, H100) == pytest.approx(67e12)


def test_arithmetic_intensity_of_bn_is_below_one_flop_per_byte():
    for model in roofline.BYTE_MODELS:
        assert roofline.arithmetic_intensity(model.flops, model.bytes_per_element()) < 1
    with pytest.raises(ValueError, match="bytes_per_element must be positive"):
        roofline.arithmetic_intensity(6, 0)


@pytest.mark.parametrize(("op", "direction", "fp32_bytes", "on_chip_bytes"), [
    ("bn", "forward", 12, 8), ("bn", "backward", 20, 12), ("bn", "fwd+bwd", 32, 20),
    ("bn", "inference", 8, 8), ("ln", "forward", 8, 8), ("ln", "backward", 12, 12)])
def test_byte_models_match_the_performance_reference(op, direction, fp32_bytes, on_chip_bytes):
    model = roofline.byte_model(op, direction)
    assert model.bytes_per_element() == fp32_bytes
    assert model.bytes_per_element(on_chip=True) == on_chip_bytes
    assert model.bytes_moved(RESNET_BN, 4) == fp32_bytes * RESNET_BN
    assert model.bytes_moved(RESNET_BN, 2) == fp32_bytes // 2 * RESNET_BN  # bfloat16 halves it
    assert model.describe(4) == f"{fp32_bytes // 4} passes = {fp32_bytes} B/elem"


def test_forward_and_backward_add_up_to_fwd_bwd():
    forward, backward = roofline.byte_model("bn", "forward"), roofline.byte_model("bn", "backward")
    both = roofline.byte_model("bn", "fwd+bwd")
    assert both.passes == forward.passes + backward.passes
    assert both.passes_on_chip == forward.passes_on_chip + backward.passes_on_chip
    assert both.flops == forward.flops + backward.flops


def test_byte_model_errors():
    with pytest.raises(ValueError, match="no byte model for bn sideways; known: bn forward"):
        roofline.byte_model("bn", "sideways")
    with pytest.raises(ValueError, match="element_size must be positive, got 0"):
        roofline.byte_model("ln", "forward").bytes_moved(10, 0)
    with pytest.raises(ValueError, match="numel must be >= 0, got -1"):
        roofline.byte_model("ln", "forward").bytes_moved(-1, 4)
    with pytest.raises(ValueError, match="seconds must be positive"):
        roofline.effective_gbps(100, 0.0)


def test_effective_gbps():
    # BN2d (256,256,14,14) fp32 forward, 3 passes in 51 us: ~3.0 TB/s (performance.md)
    bytes_moved = roofline.byte_model("bn", "forward").bytes_moved(RESNET_BN, 4)
    assert roofline.effective_gbps(bytes_moved, 51e-6) == pytest.approx(3023, rel=1e-3)


def test_bn_training_designs_come_from_the_byte_models():
    designs = roofline.bn_training_designs({"forward": 48.0, "backward": 156.0})
    assert designs == {"channel on chip": {"forward": 8, "backward": 12},
                       "split reduction": {"forward": 12, "backward": 20},
                       "separate ops": {"forward": 48.0, "backward": 156.0}}


def test_welford_blocks_merged_with_chan_match_float64_variance():
    rng = np.random.default_rng(1)
    x = (1000.0 + rng.standard_normal(3000)).astype(np.float32)
    blocks = roofline.welford_block_stats(x, num_blocks=7)
    assert sum(count for count, _, _ in blocks) == x.size
    summary = (0, 0.0, 0.0)
    for block in blocks:
        summary = roofline.chan_combine(summary, block)
    exact = x.astype(np.float64)
    assert summary[1] == pytest.approx(exact.mean(), rel=1e-6)
    assert summary[2] / summary[0] == pytest.approx(exact.var(), rel=1e-4)
    assert roofline.welford_variance(x, num_blocks=7) == summary[2] / summary[0]


def test_pairwise_float32_sum_is_closer_than_sequential():
    x = np.full(1 << 16, 0.1, dtype=np.float32)
    exact = float(x.astype(np.float64).sum())
    sequential = float(roofline.float32_sum(x, "sequential"))
    pairwise = float(roofline.float32_sum(x, "pairwise"))
    assert abs(pairwise - exact) < abs(sequential - exact) / 100
    with pytest.raises(ValueError, match="order must be one of"):
        roofline.float32_sum(x, "random")


def test_one_pass_variance_cancels_where_two_pass_and_welford_do_not():
    noise = np.random.default_rng(2).standard_normal(4096)
    near_zero, near_1000 = noise.astype(np.float32), (1000.0 + noise).astype(np.float32)

    def error(estimate, x):
        exact = float(np.var(x.astype(np.float64)))
        return abs(estimate(x) - exact) / exact

    for estimate in (roofline.two_pass_variance, roofline.welford_variance,
                     lambda x: roofline.one_pass_variance(x, "pairwise")):
        assert error(estimate, near_zero) < 1e-5
    # Moved to mean 1000, the one-pass formula loses about six digits (1000**2 / 1), even with
    # nearly exact pairwise sums; the other two stay accurate.
    assert error(lambda x: roofline.one_pass_variance(x, "pairwise"), near_1000) > 1e-4
    assert error(roofline.two_pass_variance, near_1000) < 1e-4
    assert error(roofline.welford_variance, near_1000) < 1e-4


def test_median_seconds_takes_the_median_after_the_warm_up():
    calls = []

    def record(*arguments):
        calls.append(arguments)

    assert roofline.median_seconds(record, repeats=3, warmup=2) >= 0
    assert calls == [()] * 5
    calls.clear()
    roofline.median_seconds(record, repeats=2, warmup=0, setup=lambda: "state")
    assert calls == [("state",), ("state",)]
    with pytest.raises(ValueError, match="repeats must be at least 1, got 0"):
        roofline.median_seconds(record, repeats=0)


def test_chan_combine_of_two_empty_summaries_is_empty():
    assert roofline.chan_combine((0, 0.0, 0.0), (0, 0.0, 0.0)) == (0, 0.0, 0.0)


def test_bfloat16_running_sum_stalls_at_256():
    sums = roofline.running_sum_in(np.ones(1000), ml_dtypes.bfloat16)
    assert float(sums[-1]) == 256.0
    assert float(roofline.running_sum_in(np.ones(1000), np.float32)[-1]) == 1000.0


def test_tensor_traffic_counts_each_textbook_pass():
    x = torch.randn(4, 3, 5, 5)

    def textbook(x):
        mean = x.mean((0, 2, 3), keepdim=True)
        centered = x - mean
        var = (centered**2).mean((0, 2, 3), keepdim=True)
        return centered / torch.sqrt(var + 1e-5)

    records = roofline.tensor_traffic(lambda: textbook(x), x.numel())
    assert [r.name for r in records] == ["mean", "sub", "pow", "mean", "div"]
    total = sum(r.bytes_read + r.bytes_written for r in records)
    assert total / x.numel() == 4 * (1 + 2 + 2 + 1 + 2)


def test_tensor_traffic_ignores_views_but_counts_copies():
    x = torch.randn(4, 6)
    assert roofline.tensor_traffic(lambda: x.view(6, 4).t().unsqueeze(0), x.numel()) == []
    # Flattening a transposed tensor has to copy it: one read and one write.
    records = roofline.tensor_traffic(lambda: x.t().reshape(24), x.numel())
    assert sum(r.bytes_read + r.bytes_written for r in records) == 2 * x.numel() * 4


def test_benchmark_results_folder_may_be_empty(tmp_path):
    assert roofline.load_benchmark_results(tmp_path) == []


RUN = {
    "meta": {"device": "NVIDIA H100 80GB HBM3", "date": "2026-11-20", "torch": "2.13",
             "copy": {"gbps": 2990.0}},
    "rows": [{"op": "bn", "direction": "forward", "shape": [256, 256, 14, 14],
              "dtype": "float32", "bytes_moved": 154_140_672,
              "times_us": {"bnlib": 60.0, "eager": 120.0}, "bnlib_gbps": 2569.0,
              "speedup": {"eager": 2.0}}],
}


def test_benchmark_files_load_with_metadata_and_skip_sweeps(tmp_path):
    (tmp_path / "h100.json").write_text(json.dumps(RUN))
    (tmp_path / "h100-sweep.json").write_text(json.dumps({"results": []}))
    [run] = roofline.load_benchmark_results(tmp_path)
    assert run["file"] == "h100.json"
    assert roofline.benchmark_metadata(run) == {
        "device": "NVIDIA H100 80GB HBM3", "date": "2026-11-20", "versions": "torch 2.13",
        "copy_gbps": 2990.0}
    assert len(roofline.load_benchmark_results(tmp_path, include_sweeps=True)) == 2


def test_benchmark_table_flattens_nested_values():
    table = roofline.benchmark_table(RUN["rows"], ["op", "shape", "times_us.bnlib",
                                                   "speedup.eager", "absent", "note"])
    assert table.splitlines() == ["| op | shape | times_us.bnlib | speedup.eager |",
                                  "|---|---|---|---|",
                                  "| bn | 256x256x14x14 | 60 | 2 |"]


def test_benchmark_plot_puts_baselines_beside_bnlib():
    fig, ax = matplotlib.pyplot.subplots()
    roofline.plot_benchmark_bandwidth(ax, RUN["rows"], ["eager"], {"copy": 2990.0})
    widths = sorted(bar.get_width() for bar in ax.patches)
    # eager: the same bytes in twice the time.
    assert widths == pytest.approx([154_140_672 / 120.0 / 1e3, 2569.0])
    assert [t.get_text() for t in ax.get_yticklabels()] == ["bn forward 256x256x14x14 float32"]
    matplotlib.pyplot.close(fig)


def test_find_case_needs_exactly_one_match():
    rows = RUN["rows"] + [dict(RUN["rows"][0], dtype="bfloat16")]
    assert roofline.find_case(rows, op="bn", dtype="bfloat16")["dtype"] == "bfloat16"
    with pytest.raises(KeyError, match="2 benchmark rows match {'op': 'bn'}, expected 1"):
        roofline.find_case(rows, op="bn")
    with pytest.raises(KeyError, match="0 benchmark rows match"):
        roofline.find_case(rows, op="ln")


def test_achieved_gbps_and_copy_fraction_of_any_implementation():
    row = RUN["rows"][0]
    assert roofline.achieved_gbps(row, "eager") == pytest.approx(154_140_672 / 120e-6 / 1e9)
    assert roofline.copy_fraction(RUN, row) == pytest.approx(154_140_672 / 60e-6 / 1e9 / 2990)
    with pytest.raises(KeyError, match=r"no time for 'compile' in this row; it has "
                                       r"\['bnlib', 'eager'\]"):
        roofline.achieved_gbps(row, "compile")
    with pytest.raises(ValueError, match="bad.json records no copy bandwidth"):
        roofline.copy_fraction({"meta": {}, "file": "bad.json"}, row)


def test_copy_share_table_has_a_line_per_shape_and_a_column_per_dtype_and_layout():
    rows = [{"op": "bn", "direction": "fwd+bwd", "shape": shape, "dtype": dtype,
             "layout": "nchw", "percent_of_copy": share}
            for shape, dtype, share in [([8, 4, 2, 2], "float32", 90.4),
                                        ([8, 4, 2, 2], "bfloat16", 29.6),
                                        ([2, 4, 1, 1], "float32", 12.0)]]
    rows.append(dict(rows[0], direction="forward", percent_of_copy=50.0))  # another pass
    assert roofline.copy_share_table(rows).splitlines() == [
        "| shape | float32 nchw | bfloat16 nchw |", "|---|---|---|",
        "| 8x4x2x2 | 90% | 30% |", "| 2x4x1x1 | 12% |  |"]


def test_benchmark_file_without_rows_is_an_error(tmp_path):
    (tmp_path / "bad.json").write_text(json.dumps({"device": "x"}))
    with pytest.raises(ValueError, match=r"bad\.json: expected a JSON object with a list"):
        roofline.load_benchmark_results(tmp_path)


def test_plot_needs_a_bandwidth_column():
    fig, ax = matplotlib.pyplot.subplots()
    with pytest.raises(ValueError, match="no row has a GB/s value"):
        roofline.plot_benchmark_bandwidth(ax, [{"op": "bn", "median_us": 3.0}])
    matplotlib.pyplot.close(fig)


def test_committed_results_render():
    """Whatever is committed in benchmarks/results/ loads, tabulates and plots."""
    for run in roofline.load_benchmark_results(roofline.repository_results_folder()):
        rows = roofline.benchmark_rows(run)
        assert rows, f"{run['file']} has no cases"
        assert roofline.benchmark_table(rows).count("\n") == len(rows) + 1
        assert roofline.benchmark_metadata(run)["device"] != "not recorded"


def test_cpu_timing_reports_three_implementations():
    rows = roofline.time_cpu_batchnorm(shape=(2, 3, 4, 4), reps=1)
    assert [r["implementation"].split()[0] for r in rows] == ["textbook", "bnlib.numpy", "torch"]
    for row in rows:
        assert row["total_ms"] == pytest.approx(row["forward_ms"] + row["backward_ms"])
        assert row["forward_ms"] > 0 and row["backward_ms"] > 0
        # GB/s counts the 3 + 5 passes of the byte model over 2*3*4*4 float32 values
        assert row["gb_per_s"] == pytest.approx(8 * 4 * 96 / (row["total_ms"] * 1e-3) / 1e9)


def test_predicted_time_widget_has_shape_dtype_and_device_controls():
    widget = roofline.predicted_time_widget({"forward": 48, "backward": 156})
    controls = widget.children[0].children
    assert [c.description for c in controls] == ["N", "C", "H = W", "dtype", "device"]
