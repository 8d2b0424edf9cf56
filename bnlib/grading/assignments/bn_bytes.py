"""Assignment bn_bytes: BN's memory traffic and a committed GPU benchmark (chapter 8).

The bytes BN's passes move for a shape, a dtype and a layout, their bandwidth-bound time, and
the bandwidth a committed benchmark row implies. The references are chapter 8's:
:func:`bnlib.experiments.roofline.byte_model`,
:func:`~bnlib.experiments.roofline.predicted_time_us`,
:func:`~bnlib.experiments.roofline.achieved_gbps` and
:func:`~bnlib.experiments.roofline.copy_fraction` on the latest committed H100 run.
"""

from __future__ import annotations

import math

import numpy as np

from bnlib.experiments import roofline
from bnlib.grading import checks
from bnlib.grading.checks import Assignment, Check, Function, Mistake, Verdict

SHAPES = ([256, 256, 14, 14], [256, 64, 56, 56], [32, 512, 7, 7])
DTYPES = tuple(roofline.ELEMENT_SIZES)
LAYOUTS = ("nchw", "channels_last")
DIRECTIONS = tuple(m.direction for m in roofline.BYTE_MODELS if m.op == "bn")
GIB = ("a GB/s is 1e9 bytes per second, not 2**30 (that is a GiB/s; the benchmarks and the "
       "data sheets count in GB/s)")

# --- bn_bytes_moved --------------------------------------------------------------------------

def pass_case(shape, dtype, layout, direction, **more) -> dict:
    return {"shape": [int(n) for n in shape], "dtype": dtype, "layout": layout,
            "direction": direction, **more,
            "label": f"BN {direction}, shape {tuple(shape)}, {dtype}, {layout}", "kind": "plain",
            **checks.FLOAT64_TOL}


def random_shape(rng) -> list[int]:
    return [int(rng.integers(1, 257)), int(rng.integers(1, 1025)), *(int(n) for n in
            rng.integers(1, 113, size=2))]


def bytes_cases(seed):
    if seed is None:
        return [pass_case(SHAPES[0], "float32", "nchw", "forward"),
                pass_case(SHAPES[1], "bfloat16", "channels_last", "backward"),
                pass_case(SHAPES[2], "float64", "nchw", "fwd+bwd")]
    rng = np.random.default_rng(seed)
    dtypes = rng.permutation(DTYPES)
    return [pass_case(random_shape(rng), str(dtype), LAYOUTS[i % 2], direction)
            for i, (dtype, direction) in enumerate(zip(dtypes, DIRECTIONS, strict=True))]


def passes_bytes(case: dict, passes: int | None = None, element_size: int | None = None) -> int:
    """Bytes of ``passes`` full passes (default: the byte model's) over the case's tensor."""
    model = roofline.byte_model("bn", case["direction"])
    size = roofline.ELEMENT_SIZES[case["dtype"]] if element_size is None else element_size
    return math.prod(case["shape"]) * size * (model.passes if passes is None else passes)


def reference_bytes(case: dict) -> int:
    model = roofline.byte_model("bn", case["direction"])
    return model.bytes_moved(math.prod(case["shape"]), roofline.ELEMENT_SIZES[case["dtype"]])


def converted(extra_passes: int):
    """The bytes plus layout conversions (each a read and a write) for channels_last."""
    def recompute(case):
        if case["layout"] != "channels_last":
            raise ValueError("no conversion in NCHW")
        return passes_bytes(case, roofline.byte_model("bn", case["direction"]).passes
                            + extra_passes)
    return recompute


LAYOUT_INDEPENDENT = ("your count depends on the layout: channels_last changes the order in "
                      "which the reduction reads memory, not the number of bytes, and a kernel "
                      "that handles both layouts (as bnlib's do) converts nothing")

BYTES_HYPOTHESES: list[checks.Hypothesis] = [
    ("your count is that of a kernel that keeps every channel on chip between the reduction "
     "and the elementwise step (the least traffic possible); the usual fused kernel, whose "
     "bytes the benchmarks count, streams each channel twice: 3 passes forward (read x for the "
     "statistics, read x, write y), 5 backward, 2 at inference",
     lambda c: passes_bytes(c, roofline.byte_model("bn", c["direction"]).passes_on_chip)),
    ("you counted 4 bytes per value whatever the dtype: a float64 value takes 8 bytes, a "
     "float16 or bfloat16 value 2", lambda c: passes_bytes(c, element_size=4)),
    (LAYOUT_INDEPENDENT, converted(4)),
    (LAYOUT_INDEPENDENT, converted(2)),
    ("return bytes, not megabytes (1e6 bytes)", lambda c: reference_bytes(c) / 1e6),
]


def judge_bytes(case: dict, result: dict) -> Verdict | None:
    return checks.compare_number(result, "bytes_moved", reference_bytes(case), case["function"],
                                 case, BYTES_HYPOTHESES, " bytes")


# --- bn_time_us ------------------------------------------------------------------------------

def time_case(case: dict, bandwidth_gbps: float, efficiency: float) -> dict:
    return dict(case, bandwidth_gbps=float(bandwidth_gbps), efficiency=float(efficiency),
                label=f"{case['label']}, {bandwidth_gbps:.0f} GB/s, efficiency {efficiency:g}")


def time_cases(seed):
    if seed is None:
        return [time_case(pass_case(SHAPES[0], "float32", "nchw", "forward"), 3350.0, 0.9),
                time_case(pass_case(SHAPES[2], "bfloat16", "channels_last", "backward"), 2999.0,
                          1.0)]
    rng = np.random.default_rng(seed)
    return [time_case(case, rng.uniform(500.0, 5000.0), rng.choice([0.5, 0.75, 0.8, 0.95]))
            for case in bytes_cases(seed)[:3]]


def bandwidth_time_us(case: dict, bytes_moved: float | None = None, bytes_per_gb: float = 1e9,
                      efficiency: float | None = None) -> float:
    """Microseconds to move ``bytes_moved`` (default: the reference's) at the case's bandwidth
    times ``efficiency``, by :func:`roofline.predicted_time_us` (one "element" per byte)."""
    moved = reference_bytes(case) if bytes_moved is None else bytes_moved
    efficiency = case["efficiency"] if efficiency is None else efficiency
    return roofline.predicted_time_us(moved, 1, case["bandwidth_gbps"] * bytes_per_gb,
                                      efficiency)


def other_efficiency(efficiency: float):
    def recompute(case):
        if case["efficiency"] == efficiency:
            raise ValueError("the same efficiency: not a distinct hypothesis")
        return bandwidth_time_us(case, efficiency=efficiency)
    return recompute


TIME_HYPOTHESES: list[checks.Hypothesis] = [
    *[("the bytes behind your time are wrong: " + message,
       lambda c, r=recompute: bandwidth_time_us(c, r(c)))
      for message, recompute in BYTES_HYPOTHESES],
    (GIB, lambda c: bandwidth_time_us(c, bytes_per_gb=2.0 ** 30)),
    ("you multiplied by efficiency: a kernel that reaches only efficiency * bandwidth takes "
     "longer than bytes / bandwidth, so divide by efficiency * bandwidth",
     lambda c: bandwidth_time_us(c) * c["efficiency"] ** 2),
    ("your time ignores the efficiency argument (it matches efficiency = 1)",
     other_efficiency(1.0)),
    ("your time ignores the efficiency argument (it matches efficiency = 0.9)",
     other_efficiency(0.9)),
    ("return microseconds, not milliseconds", lambda c: bandwidth_time_us(c) / 1e3),
    ("return microseconds, not seconds", lambda c: bandwidth_time_us(c) / 1e6),
]


def judge_time(case: dict, result: dict) -> Verdict | None:
    return checks.compare_number(result, "time_us", bandwidth_time_us(case), case["function"],
                                 case, TIME_HYPOTHESES, " µs")


# --- achieved_bandwidth ----------------------------------------------------------------------

def latest_h100_run() -> dict:
    """The latest committed H100 run of benchmarks/results, as chapter 8 reads it."""
    runs = [run for run in roofline.load_benchmark_results(roofline.repository_results_folder())
            if run["file"].startswith("NVIDIA-H100")]
    if not runs:
        raise FileNotFoundError("no NVIDIA-H100-*.json run in benchmarks/results")
    return runs[-1]


def row_case(run: dict, row: dict, implementation: str) -> dict:
    case = pass_case(row["shape"], row["dtype"], row["layout"], row["direction"], run=run,
                     implementation=implementation)
    return dict(case, label=f"{case['label']}, implementation {implementation!r}")


def achieved_cases(seed):
    run = latest_h100_run()
    rows = [row for row in roofline.benchmark_rows(run) if row["op"] == "bn"]
    if seed is None:
        return [row_case(run, roofline.find_case(rows, shape=SHAPES[0], dtype="float32",
                                                 layout="nchw", direction="forward"), "bnlib"),
                row_case(run, roofline.find_case(rows, shape=SHAPES[1], dtype="bfloat16",
                                                 layout="channels_last", direction="backward"),
                         "eager")]
    rng = np.random.default_rng(seed)
    bfloat16 = [row for row in rows if row["dtype"] == "bfloat16"]
    chosen = [bfloat16[i] for i in rng.choice(len(bfloat16), size=2, replace=False)]
    chosen += [rows[i] for i in rng.choice(len(rows), size=2, replace=False)]
    implementations = ["bnlib", "compile", "eager_no_cudnn", "bnlib_launch"]
    return [row_case(run, row, name) for row, name in zip(chosen, implementations, strict=True)]


def target_row(case: dict) -> dict:
    return roofline.find_case(roofline.benchmark_rows(case["run"]), op="bn", shape=case["shape"],
                              dtype=case["dtype"], layout=case["layout"],
                              direction=case["direction"])


def another_row(result: dict, case: dict) -> Verdict | None:
    """A verdict naming the fields that differ when the GB/s is that of another row."""
    value = np.asarray(result.get("gbps", np.nan))
    if value.shape != () or value.dtype.kind not in "iuf":
        return None
    target = target_row(case)
    for row in roofline.benchmark_rows(case["run"]):
        if row is target or row.get("op") != "bn" or case["implementation"] not in row.get(
                "times_us", {}):
            continue
        if checks.close(value, roofline.achieved_gbps(row, case["implementation"]), case):
            fields = ", ".join(f"{k} {row[k]} instead of {target[k]}"
                               for k in ("shape", "dtype", "layout", "direction")
                               if row[k] != target[k])
            return Verdict(False, f"{case['function']} {checks.where(case)}: your GB/s is that "
                                  f"of another row of the run ({fields}): pick the row whose op, "
                                  f"shape, dtype, layout and direction all match", diagnosed=True)
    return None


GBPS_HYPOTHESES: list[checks.Hypothesis] = [
    ("your GB/s is bnlib's (the row's bnlib_gbps) whatever the implementation: divide the "
     "row's bytes_moved by times_us[implementation]",
     lambda c: roofline.achieved_gbps(target_row(c), "bnlib")),
    (GIB, lambda c: roofline.achieved_gbps(target_row(c), c["implementation"]) * 1e9
     / 2 ** 30),
    ("times_us holds microseconds: bytes_moved / (time_us * 1e-6) is bytes per second",
     lambda c: roofline.achieved_gbps(target_row(c), c["implementation"]) / 1e3),
]


def datasheet_fraction(case: dict) -> float:
    peak_gbps = roofline.DEVICES["H100 SXM"].bandwidth / 1e9
    return roofline.achieved_gbps(target_row(case), case["implementation"]) / peak_gbps


FRACTION_HYPOTHESES: list[checks.Hypothesis] = [
    ("fraction_of_copy is a fraction (0.67), not a percentage (67)",
     lambda c: 100 * roofline.copy_fraction(c["run"], target_row(c), c["implementation"])),
    ("you divided by the H100 SXM's data-sheet bandwidth (3,350 GB/s); the fraction of copy is "
     "of the device-to-device copy measured in the same run, run['meta']['copy']['gbps']",
     datasheet_fraction),
]


def judge_achieved(case: dict, result: dict) -> Verdict | None:
    function, row, implementation = case["function"], target_row(case), case["implementation"]
    verdict = checks.compare_number(result, "gbps", roofline.achieved_gbps(row, implementation),
                                    function, case, GBPS_HYPOTHESES, " GB/s")
    if verdict:
        return verdict if verdict.diagnosed else another_row(result, case) or verdict
    return checks.compare_number(result, "fraction_of_copy",
                                 roofline.copy_fraction(case["run"], row, implementation),
                                 function, case, FRACTION_HYPOTHESES)


ASSIGNMENT = Assignment("bn_bytes", chapter=8, functions=(
    Function("bn_bytes_moved(shape, dtype, layout, direction) -> bytes_moved", (
        Check("bn_bytes_moved", "bn_bytes_moved follows the byte model", bytes_cases,
              judge_bytes),
    ), (
        Mistake("channel_on_chip", "the passes of a kernel that keeps each channel on chip",
                (('passes = {"forward": 3, "backward": 5, "fwd+bwd": 8, "inference": 2}',
                  'passes = {"forward": 2, "backward": 3, "fwd+bwd": 5, "inference": 2}'),),
                "keeps every channel on chip"),
        Mistake("four_bytes_per_value", "4 bytes per value whatever the dtype",
                (("value_bytes[dtype]", "4"),),
                "4 bytes per value whatever the dtype"),
        Mistake("layout_conversions", "channels_last counted with two layout conversions",
                (("    bytes_moved = count * passes[direction] * value_bytes[dtype]\n",
                  "    if layout == \"channels_last\":  # into NCHW and back\n"
                  "        passes = {k: v + 4 for k, v in passes.items()}\n"
                  "    bytes_moved = count * passes[direction] * value_bytes[dtype]\n"),),
                "not the number of bytes"),
        Mistake("megabytes", "the traffic in MB",
                (("passes[direction] * value_bytes[dtype]\n",
                  "passes[direction] * value_bytes[dtype] / 1e6\n"),),
                "not megabytes"),
    )),
    Function("bn_time_us(shape, dtype, layout, direction, bandwidth_gbps, efficiency=0.9) "
             "-> time_us", (
                 Check("bn_time_us", "bn_time_us is the bytes over the bandwidth it reaches",
                       time_cases, judge_time),
             ), (
        Mistake("gibibytes", "GB/s taken as 2**30 bytes per second",
                (("bandwidth_gbps * 1e9", "bandwidth_gbps * 2**30"),),
                "not 2**30"),
        Mistake("efficiency_multiplied", "the time multiplied by the efficiency",
                (("/ (efficiency * bandwidth_gbps * 1e9)",
                  "* efficiency / (bandwidth_gbps * 1e9)"),),
                "you multiplied by efficiency"),
        Mistake("efficiency_ignored", "the time at the full bandwidth",
                (("/ (efficiency * bandwidth_gbps * 1e9)", "/ (bandwidth_gbps * 1e9)"),),
                "ignores the efficiency argument"),
        Mistake("milliseconds", "the time in milliseconds",
                (("* 1e6\n", "* 1e3\n"),),
                "not milliseconds"),
    )),
    Function("achieved_bandwidth(run, shape, dtype, layout, direction, implementation='bnlib') "
             "-> (gbps, fraction_of_copy)", (
                 Check("achieved_bandwidth", "achieved_bandwidth reads the committed run as "
                       "bnlib does", achieved_cases, judge_achieved),
             ), (
        Mistake("bnlib_gbps_for_every_implementation", "the row's bnlib_gbps for every "
                "implementation",
                (("gbps = row[\"bytes_moved\"] / seconds / 1e9",
                  "gbps = row[\"bnlib_gbps\"]"),),
                "whatever the implementation"),
        Mistake("percentage", "the share of copy as a percentage",
                (("fraction_of_copy = gbps / ", "fraction_of_copy = 100 * gbps / "),),
                "not a percentage"),
        Mistake("datasheet_bandwidth", "the share of the data-sheet bandwidth",
                (("fraction_of_copy = gbps / run[\"meta\"][\"copy\"][\"gbps\"]",
                  "fraction_of_copy = gbps / 3350.0  # H100 SXM"),),
                "data-sheet bandwidth"),
        Mistake("row_without_dtype", "the first row of the shape, layout and direction, of "
                "either dtype",
                (("\"dtype\": dtype, ", ""),),
                "another row of the run"),
    )),
))
