"""Byte models, roofline plots and measurements behind the chapter on BN on the GPU.

Batch normalization does a handful of additions and multiplications per element, so its time
is set by how many bytes it moves, not by how many flops it does. This module holds:

- the byte model of each normalization pass (:data:`BYTE_MODELS`, :func:`byte_model`,
  :data:`ELEMENT_SIZES`), which the GPU and CPU benchmarks in ``benchmarks/`` use as well, and
  the roofline of a device (:func:`attainable_flops`, :func:`plot_roofline`);
- :func:`tensor_traffic`, which runs a PyTorch function under a dispatch mode and adds up the
  bytes each operator reads and writes, to count the passes of a composite implementation;
- :func:`predicted_time_us` and :func:`predicted_time_widget` for "how long should this take";
- small numerical demonstrations: float32 vs bfloat16 accumulation (:func:`running_sum_in`),
  and the float32 variance computed five ways (:func:`one_pass_variance`,
  :func:`two_pass_variance`, :func:`welford_variance`, built on :func:`welford_block_stats`
  and :func:`chan_combine`);
- :func:`median_seconds`, the one wall-clock timer of the chapters and the CPU benchmark, and
  :func:`time_cpu_batchnorm`, the CPU timing of BN2d forward + backward that the chapter and
  ``benchmarks/bench_cpu.py`` both report;
- :func:`load_benchmark_results`, :func:`benchmark_metadata`, :func:`benchmark_table`,
  :func:`find_case`, :func:`achieved_gbps`, :func:`copy_fraction`, :func:`copy_share_table` and
  :func:`plot_benchmark_bandwidth` for the committed GPU benchmark files in
  ``benchmarks/results/``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bnlib.experiments.checks import not_one_of

__all__ = [
    "BYTE_MODELS",
    "DEVICES",
    "ELEMENT_SIZES",
    "ByteModel",
    "Device",
    "OperatorTraffic",
    "achieved_gbps",
    "arithmetic_intensity",
    "attainable_flops",
    "benchmark_metadata",
    "benchmark_rows",
    "benchmark_table",
    "bn_training_designs",
    "byte_model",
    "chan_combine",
    "copy_fraction",
    "copy_share_table",
    "effective_gbps",
    "find_case",
    "float32_sum",
    "load_benchmark_results",
    "median_seconds",
    "numpy_copy_bandwidth",
    "one_pass_variance",
    "plot_benchmark_bandwidth",
    "plot_roofline",
    "predicted_time_us",
    "predicted_time_widget",
    "repository_results_folder",
    "running_sum_in",
    "tensor_traffic",
    "time_cpu_batchnorm",
    "two_pass_variance",
    "welford_block_stats",
    "welford_variance",
]


# --------------------------------------------------------------------------- devices


@dataclass(frozen=True)
class Device:
    """Peak figures of one processor, from its data sheet.

    ``bandwidth`` is in bytes per second; ``peak_flops`` maps a precision label
    (for example ``"fp32"``) to floating-point operations per second; ``multiprocessors`` is
    the number of streaming multiprocessors (SMs), the units a kernel's programs are spread over.
    """

    name: str
    bandwidth: float
    peak_flops: dict[str, float] = field(default_factory=dict)
    multiprocessors: int = 0

    def ridge_point(self, precision: str) -> float:
        """Arithmetic intensity (flop/byte) where the roofline turns: peak / bandwidth."""
        return self.peak_flops[precision] / self.bandwidth


#: Data-sheet figures (dense, no sparsity). fp32 is the CUDA-core rate; bf16 uses tensor cores,
#: which normalization layers cannot use.
DEVICES = {
    "H100 SXM": Device("H100 SXM", 3.35e12, {"fp32": 67e12, "bf16 tensor": 989e12}, 132),
    "H100 PCIe": Device("H100 PCIe", 2.0e12, {"fp32": 51e12, "bf16 tensor": 756e12}, 114),
    "H200": Device("H200", 4.8e12, {"fp32": 67e12, "bf16 tensor": 989e12}, 132),
}


# --------------------------------------------------------------------------- byte model


@dataclass(frozen=True)
class ByteModel:
    """The memory traffic of one normalization pass, counted in passes over a full tensor.

    A pass reads or writes every element of one tensor of the input's shape once; the small
    outputs of the reductions (per-channel statistics, parameter gradients) are not counted.

    - ``passes``: what a fused kernel moves in the usual design, the one bnlib's kernels follow
      and the benchmarks hold them to. BN streams each channel twice, once to reduce it and
      once for the elementwise step, because a channel (N * H * W values) rarely fits in one
      multiprocessor's on-chip memory; LN keeps each row on chip.
    - ``passes_on_chip``: the least traffic, when every reduced slice (a channel, a row) stays
      on chip between the reduction and the elementwise step, so it is read only once.
    - ``flops``: arithmetic per element (the reductions, then ``y = a * x + b`` or
      ``dx = A * dy + B * x + C`` with per-channel constants).
    """

    op: str
    direction: str
    name: str
    traffic: str
    passes: int
    passes_on_chip: int
    flops: int

    def bytes_per_element(self, element_size: int = 4, on_chip: bool = False) -> int:
        """Bytes moved per element of the input: passes times the size of one value."""
        if element_size <= 0:
            raise ValueError(f"element_size must be positive, got {element_size}")
        return (self.passes_on_chip if on_chip else self.passes) * element_size

    def bytes_moved(self, numel: int, element_size: int) -> int:
        """Bytes the pass moves for ``numel`` elements of ``element_size`` bytes (usual design)."""
        if numel < 0:
            raise ValueError(f"numel must be >= 0, got {numel}")
        return numel * self.bytes_per_element(element_size)

    def describe(self, element_size: int) -> str:
        """E.g. ``"3 passes = 12 B/elem"`` for float32."""
        return f"{self.passes} passes = {self.bytes_per_element(element_size)} B/elem"


#: The byte models of the normalization passes, declared once and read by the chapters, the
#: roofline and the benchmarks.
BYTE_MODELS = (
    ByteModel("bn", "forward", "BN training forward", "read x (statistics), read x, write y",
              passes=3, passes_on_chip=2, flops=6),
    ByteModel("bn", "backward", "BN training backward", "read x, dy (sums); read x, dy; write dx",
              passes=5, passes_on_chip=3, flops=8),
    ByteModel("bn", "fwd+bwd", "BN training forward + backward",
              "the forward's passes, then the backward's", passes=8, passes_on_chip=5, flops=14),
    ByteModel("bn", "inference", "BN inference", "read x, write y",
              passes=2, passes_on_chip=2, flops=2),
    ByteModel("ln", "forward", "LN forward", "read x, write y (each row stays on chip)",
              passes=2, passes_on_chip=2, flops=6),
    ByteModel("ln", "backward", "LN backward", "read x, dy; write dx (each row stays on chip)",
              passes=3, passes_on_chip=3, flops=8),
)


#: Bytes of one value of each floating-point dtype the benchmarks and the chapter name.
ELEMENT_SIZES = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2}


def byte_model(op: str, direction: str) -> ByteModel:
    """The model of ``op`` (``"bn"``, ``"ln"``) in ``direction`` (``"forward"``, ...)."""
    for model in BYTE_MODELS:
        if (model.op, model.direction) == (op, direction):
            return model
    known = ", ".join(f"{m.op} {m.direction}" for m in BYTE_MODELS)
    raise ValueError(f"no byte model for {op} {direction}; known: {known}")


def effective_gbps(bytes_moved: float, seconds: float) -> float:
    """Bandwidth in GB/s (1e9 bytes per second) that ``bytes_moved`` in ``seconds`` implies."""
    if seconds <= 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    return bytes_moved / seconds / 1e9


def arithmetic_intensity(flops_per_element: float, bytes_per_element: float) -> float:
    """Flops per byte moved: ``flops_per_element / bytes_per_element``."""
    if bytes_per_element <= 0:
        raise ValueError(f"bytes_per_element must be positive, got {bytes_per_element}")
    return flops_per_element / bytes_per_element


def attainable_flops(intensity: float | np.ndarray, device: Device, precision: str = "fp32"):
    """Roofline: ``min(peak_flops, intensity * bandwidth)`` in flop/s."""
    return np.minimum(device.peak_flops[precision], np.asarray(intensity) * device.bandwidth)


def predicted_time_us(
    num_elements: int, bytes_per_element: float, bandwidth: float, efficiency: float = 0.9
) -> float:
    """Time in microseconds of a memory-bound operation.

    ``time = num_elements * bytes_per_element / (efficiency * bandwidth)``; ``bandwidth`` in
    bytes per second, ``efficiency`` the fraction of it a good kernel reaches (0.9 on H100).
    """
    if not 0 < efficiency <= 1:
        raise ValueError(f"efficiency must be in (0, 1], got {efficiency}")
    return num_elements * bytes_per_element / (efficiency * bandwidth) * 1e6


def plot_roofline(ax, device: Device, points: dict[str, float], precisions=("fp32",)):
    """Draw ``device``'s roofline on log-log axes and mark ``points`` (label -> flop/byte)."""
    intensity = np.logspace(-2, 3, 200)
    for precision in precisions:
        ax.loglog(intensity, attainable_flops(intensity, device, precision) / 1e12,
                  label=f"{device.name} roof, {precision}")
        ridge = device.ridge_point(precision)
        ax.axvline(ridge, color="0.6", linestyle=":", linewidth=1)
        ax.annotate(f"ridge {ridge:.0f} flop/B", (ridge, device.peak_flops[precision] / 1e12),
                    textcoords="offset points", xytext=(4, -14), fontsize=8)
    markers = "osD^v<>"
    for index, (label, point) in enumerate(points.items()):
        attained = attainable_flops(point, device, precisions[0]) / 1e12
        # Points crowd together below 1 flop/byte, so they are named in the legend.
        ax.plot([point], [attained], markers[index % len(markers)], linestyle="none",
                label=f"{label}: {point:.2g} flop/B")
    ax.set_xlabel("arithmetic intensity (flop / byte)")
    ax.set_ylabel("attainable TFLOP/s")
    ax.legend(loc="lower right", fontsize=8)
    return ax


# --------------------------------------------------------------------------- traffic


# Operators that allocate or alias memory without reading or writing tensor data.
_NO_TRAFFIC_PREFIXES = ("empty", "new_empty", "detach", "alias", "_unsafe_view", "lift_fresh")


@dataclass(frozen=True)
class OperatorTraffic:
    """Full-size tensor bytes one operator read and wrote."""

    name: str
    bytes_read: int
    bytes_written: int


def tensor_traffic(fn: Callable[[], Any], num_elements: int) -> list[OperatorTraffic]:
    """Run ``fn()`` and record every PyTorch operator that reads or writes full-size tensors.

    A tensor counts when it has ``num_elements`` elements (the activation being normalized);
    per-channel vectors are ignored, as are views and allocations, which move no data. Each
    operator is assumed to read its inputs once and write its outputs once, which is what a
    separate kernel per operator does.
    """
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    def full_size_bytes(values) -> int:
        leaves = torch.utils._pytree.tree_leaves(values)
        return sum(
            t.numel() * t.element_size()
            for t in leaves
            if isinstance(t, torch.Tensor) and t.numel() == num_elements
        )

    records: list[OperatorTraffic] = []

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name = func.overloadpacket.__name__
            # _unsafe_view is a view that autograd does not track as one: it moves no data.
            if func.is_view or name.startswith(_NO_TRAFFIC_PREFIXES):
                return out
            read, written = full_size_bytes((args, kwargs)), full_size_bytes(out)
            if read or written:
                records.append(OperatorTraffic(name, read, written))
            return out

    with Recorder():
        fn()
    return records


# --------------------------------------------------------------------------- numerics


def running_sum_in(values: np.ndarray, dtype) -> np.ndarray:
    """Running (left-to-right) sums of ``values`` accumulated in ``dtype``, shape ``(n,)``.

    ``dtype`` may be ``ml_dtypes.bfloat16`` to see what a bfloat16 accumulator does.
    """
    return np.cumsum(np.asarray(values).astype(dtype), dtype=dtype)


def welford_block_stats(x: np.ndarray, num_blocks: int) -> list[tuple[int, float, float]]:
    """Split 1-D ``x`` into ``num_blocks`` blocks; return ``(count, mean, M2)`` per block.

    Within a block the summary is built one value at a time with Welford's update
    ``mean += (v - mean) / n;  M2 += (v - mean_old) * (v - mean_new)``, in float32, as one GPU
    program would do it. ``M2`` is the sum of squared deviations from the block mean.
    """
    summaries = []
    for block in np.array_split(np.asarray(x, dtype=np.float32), num_blocks):
        count, mean, m2 = 0, np.float32(0), np.float32(0)
        for value in block:
            count += 1
            delta = value - mean
            mean = mean + delta / np.float32(count)
            m2 = m2 + delta * (value - mean)
        summaries.append((count, float(mean), float(m2)))
    return summaries


def chan_combine(a: tuple[int, float, float], b: tuple[int, float, float]):
    """Merge two ``(count, mean, M2)`` summaries with Chan et al.'s formula.

    ``delta = mean_b - mean_a``; ``mean = mean_a + delta * n_b / n``;
    ``M2 = M2_a + M2_b + delta**2 * n_a * n_b / n``.
    """
    count_a, mean_a, m2_a = a
    count_b, mean_b, m2_b = b
    count = count_a + count_b
    if count == 0:
        return 0, 0.0, 0.0
    delta = mean_b - mean_a
    mean = mean_a + delta * count_b / count
    m2 = m2_a + m2_b + delta * delta * count_a * count_b / count
    return count, mean, m2


SUMMATION_ORDERS = ("sequential", "pairwise")


def float32_sum(values: np.ndarray, order: str = "sequential") -> np.float32:
    """Sum of ``values`` in float32, added in the given order.

    ``"sequential"``: left to right into one running total, as a naive loop does; every
    addition rounds a total that keeps growing, so the error grows with the length.
    ``"pairwise"``: halves summed recursively (NumPy's ``np.sum``), so each value takes part in
    about log2(n) roundings of totals of similar size.
    """
    values = np.asarray(values, dtype=np.float32)
    if order == "sequential":
        return np.cumsum(values, dtype=np.float32)[-1]
    if order == "pairwise":
        return np.sum(values, dtype=np.float32)
    raise not_one_of("order", order, SUMMATION_ORDERS)


def one_pass_variance(x: np.ndarray, order: str = "sequential") -> float:
    """``E[x**2] - E[x]**2`` from float32 sums of ``x`` and ``x**2``, taken in one pass.

    When ``|mean|`` is large compared with the spread the two terms are nearly equal, and
    their difference cancels their leading digits: the sums' rounding errors come out
    multiplied by about ``mean**2 / variance``.
    """
    x = np.asarray(x, dtype=np.float32)
    count = np.float32(x.size)
    mean = float32_sum(x, order) / count
    return float(float32_sum(x * x, order) / count - mean * mean)


def two_pass_variance(x: np.ndarray) -> float:
    """Mean of ``(x - mean)**2`` with the mean of a first pass; sequential float32 sums.

    The squared deviations are small and positive, so nothing cancels.
    """
    x = np.asarray(x, dtype=np.float32)
    count = np.float32(x.size)
    deviations = x - float32_sum(x) / count
    return float(float32_sum(deviations * deviations) / count)


def welford_variance(x: np.ndarray, num_blocks: int = 1) -> float:
    """Welford's one-pass running ``(count, mean, M2)`` per block, merged with Chan's formula.

    ``num_blocks=1`` is the sequential algorithm; more blocks do what a GPU's split reduction
    does (one summary per program, then a merge).
    """
    summary = (0, 0.0, 0.0)
    for block in welford_block_stats(x, num_blocks):
        summary = chan_combine(summary, block)
    count, _, m2 = summary
    return m2 / count


# --------------------------------------------------------------------------- CPU timing


def median_seconds(
    fn: Callable[..., Any], repeats: int = 5, warmup: int = 1,
    setup: Callable[[], Any] | None = None,
) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` calls, after ``warmup`` calls.

    The warm-up calls take the first-touch page faults and lazy initialization, which are not
    the operation being timed; the median ignores the odd call that another process slowed
    down. With ``setup``, each call is ``fn(setup())`` and ``setup`` runs outside the timing.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    times = []
    for _ in range(warmup + repeats):
        arguments = () if setup is None else (setup(),)
        start = time.perf_counter()
        fn(*arguments)
        times.append(time.perf_counter() - start)
    return float(np.median(times[warmup:]))


def numpy_copy_bandwidth(num_elements: int = 1 << 22, reps: int = 5) -> float:
    """Bytes per second of ``np.copyto`` on float32 (read + write), the CPU's practical ceiling."""
    src = np.ones(num_elements, dtype=np.float32)
    dst = np.empty_like(src)
    return 2 * src.nbytes / median_seconds(lambda: np.copyto(dst, src), reps)


def time_cpu_batchnorm(shape=(32, 64, 32, 32), reps: int = 5, seed: int = 0) -> list[dict]:
    """Median CPU time of BN2d training forward and backward for three implementations, the
    measurement of the chapter on the GPU and of ``benchmarks/bench_cpu.py``.

    Implementations, in this order: the textbook NumPy version
    (``bnlib.numpy.batchnorm_forward_textbook`` and ``batchnorm_backward_textbook``: one NumPy
    call per term, each writing a full-size array), ``bnlib.numpy.batchnorm_forward/backward``,
    and PyTorch CPU eager (``torch.nn.functional.batch_norm``; backward: autograd's dx, dgamma
    and dbeta). ``x``: float32 ``shape``. PyTorch runs on as many threads as bnlib.numpy's
    engine uses for a large input (``bnlib.numpy.engine.worker_count()``), so neither has
    more cores. Returns one dict per implementation with ``implementation``, ``forward_ms``,
    ``backward_ms``, ``total_ms`` and ``gb_per_s`` under the byte model of BN forward +
    backward (:func:`byte_model`).
    """
    import torch

    import bnlib.numpy as bnp
    from bnlib.numpy.engine import worker_count

    rng = np.random.default_rng(seed)
    x, dy = (rng.standard_normal(shape, dtype=np.float32) for _ in range(2))
    gamma, beta = (rng.standard_normal(shape[1], dtype=np.float32) for _ in range(2))

    def numpy_pair(forward, backward):
        cache = forward(x, gamma, beta)[1]
        return (lambda: forward(x, gamma, beta)), (lambda: backward(dy, cache))

    xt, gt, bt = (torch.from_numpy(a).requires_grad_() for a in (x, gamma, beta))
    dyt = torch.from_numpy(dy)

    def torch_forward():
        return torch.nn.functional.batch_norm(xt, None, None, gt, bt, training=True)

    yt = torch_forward()
    implementations = {
        "textbook NumPy": numpy_pair(bnp.batchnorm_forward_textbook,
                                     bnp.batchnorm_backward_textbook),
        "bnlib.numpy": numpy_pair(bnp.batchnorm_forward, bnp.batchnorm_backward),
        f"torch {torch.__version__.split('+')[0]} CPU eager ({worker_count()} threads)": (
            torch_forward, lambda: torch.autograd.grad(yt, (xt, gt, bt), dyt, retain_graph=True)),
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(worker_count())
    try:
        timings = {name: (1e3 * median_seconds(forward, reps), 1e3 * median_seconds(backward, reps))
                   for name, (forward, backward) in implementations.items()}
    finally:
        torch.set_num_threads(threads)
    model_bytes = byte_model("bn", "fwd+bwd").bytes_moved(x.size, x.itemsize)
    return [{"implementation": name, "forward_ms": forward_ms, "backward_ms": backward_ms,
             "total_ms": forward_ms + backward_ms,
             "gb_per_s": effective_gbps(model_bytes, (forward_ms + backward_ms) * 1e-3)}
            for name, (forward_ms, backward_ms) in timings.items()]


# --------------------------------------------------------------------------- GPU results

_ROW_KEYS = ("rows", "results", "cases")
_GBPS_KEYS = ("bnlib_gbps", "gb_per_s", "gbps", "GB/s")
_LABEL_KEYS = ("op", "direction", "impl", "shape", "layout", "dtype")
_VERSION_KEYS = ("torch", "triton", "cuda", "cudnn", "python", "numpy")
_BASELINE_NAMES = {"eager": "torch eager (cuDNN on)", "eager_no_cudnn": "torch eager (cuDNN off)",
                   "compile": "torch.compile"}


def repository_results_folder() -> Path:
    """``benchmarks/results`` of the repository bnlib is imported from (may not exist)."""
    return Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def load_benchmark_results(folder: str | Path, include_sweeps: bool = False) -> list[dict]:
    """Read the benchmark runs (``*.json``) in ``folder``, sorted by name; ``[]`` when none.

    Each file holds one run: a dict with its cases under ``rows`` (or ``results``/``cases``),
    a list of per-case dicts, and the environment under ``meta`` (or at the top level):
    ``device``, ``date``, library versions. Files named ``*-sweep.json`` (block-size sweeps)
    are skipped unless ``include_sweeps``. The file name is added under ``"file"``. Raises
    ValueError naming the file when one has no list of cases.
    """
    runs = []
    for path in sorted(Path(folder).glob("*.json")):
        if path.stem.endswith("-sweep") and not include_sweeps:
            continue
        run = json.loads(path.read_text())
        if not isinstance(run, dict) or not any(isinstance(run.get(k), list) for k in _ROW_KEYS):
            raise ValueError(f"{path}: expected a JSON object with a list under 'rows'")
        run["file"] = path.name
        runs.append(run)
    return runs


def benchmark_rows(run: dict) -> list[dict]:
    """The list of per-case dicts of a run."""
    return next(run[k] for k in _ROW_KEYS if isinstance(run.get(k), list))


def benchmark_metadata(run: dict) -> dict:
    """``device``, ``date``, ``versions`` (one string) and ``copy_gbps`` (or None) of a run."""
    meta = run.get("meta", run)
    versions = meta.get("versions")
    if isinstance(versions, dict):
        versions = ", ".join(f"{k} {v}" for k, v in versions.items())
    elif versions is None:
        versions = ", ".join(f"{k} {meta[k]}" for k in _VERSION_KEYS if k in meta)
    copy = meta.get("copy")
    return {
        "device": meta.get("device", "not recorded"),
        "date": meta.get("date", "not recorded"),
        "versions": versions or "not recorded",
        "copy_gbps": copy.get("gbps") if isinstance(copy, dict) else None,
    }


def _flatten(row: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in row.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        elif isinstance(value, list | tuple):
            flat[prefix + key] = "x".join(str(v) for v in value)
        else:
            flat[prefix + key] = value
    return flat


def _format(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def benchmark_table(rows: list[dict], columns: Iterable[str] | None = None) -> str:
    """A GitHub-flavoured Markdown table of benchmark ``rows``.

    Nested dicts become ``a.b`` columns and lists ``AxB``. ``columns`` picks and orders them
    (those absent from every row are dropped); by default every column, in first-seen order.
    """
    flat_rows = [_flatten(row) for row in rows]
    seen = list(dict.fromkeys(key for row in flat_rows for key in row))
    columns = seen if columns is None else [c for c in columns if c in seen]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in flat_rows:
        lines.append("| " + " | ".join(_format(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def find_case(rows: list[dict], **fields) -> dict:
    """The one row whose values match ``fields`` (e.g. ``op="bn", shape=[32, 512, 7, 7]``).

    Raises KeyError naming the fields when no row, or more than one, matches.
    """
    matches = [row for row in rows if all(row.get(k) == v for k, v in fields.items())]
    if len(matches) != 1:
        raise KeyError(f"{len(matches)} benchmark rows match {fields}, expected 1")
    return matches[0]


def achieved_gbps(row: dict, implementation: str = "bnlib") -> float:
    """GB/s that ``implementation``'s median time in a benchmark row implies: the row's
    ``bytes_moved`` (its byte model) over ``times_us[implementation]``.

    ``implementation`` is a key of the row's ``times_us`` (``"bnlib"``, ``"bnlib_launch"``,
    ``"eager"``, ``"eager_no_cudnn"``, ``"compile"``); KeyError naming those present if absent.
    """
    times = row["times_us"]
    if not times.get(implementation):
        raise KeyError(f"no time for {implementation!r} in this row; it has {sorted(times)}")
    return effective_gbps(row["bytes_moved"], times[implementation] * 1e-6)


def copy_fraction(run: dict, row: dict, implementation: str = "bnlib") -> float:
    """:func:`achieved_gbps` as a fraction of the device-to-device copy measured in ``run``."""
    copy_gbps = benchmark_metadata(run)["copy_gbps"]
    if not copy_gbps:
        raise ValueError(f"{run.get('file', 'this run')} records no copy bandwidth")
    return achieved_gbps(row, implementation) / copy_gbps


def copy_share_table(rows: list[dict], op: str = "bn", direction: str = "fwd+bwd") -> str:
    """Markdown table of ``percent_of_copy``: one line per shape, one column per dtype and layout.

    Only the rows of ``op`` in ``direction`` are used; a missing combination is left empty.
    """
    cases = [row for row in rows if row.get("op") == op and row.get("direction") == direction]
    shapes = list(dict.fromkeys(tuple(row["shape"]) for row in cases))
    columns = list(dict.fromkeys((row["dtype"], row["layout"]) for row in cases))
    share = {(tuple(row["shape"]), row["dtype"], row["layout"]): row.get("percent_of_copy")
             for row in cases}
    lines = ["| shape | " + " | ".join(f"{dtype} {layout}" for dtype, layout in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for shape in shapes:
        cells = [share.get((shape, dtype, layout)) for dtype, layout in columns]
        lines.append(f"| {'x'.join(map(str, shape))} | "
                     + " | ".join("" if c is None else f"{c:.0f}%" for c in cells) + " |")
    return "\n".join(lines)


def _case_label(row: dict) -> str:
    parts = [row.get(k) for k in _LABEL_KEYS]
    return " ".join("x".join(map(str, p)) if isinstance(p, list | tuple) else str(p)
                    for p in parts if p not in (None, ""))


def _gbps(row: dict) -> float | None:
    key = next((k for k in _GBPS_KEYS if isinstance(row.get(k), int | float)), None)
    return None if key is None else float(row[key])


def plot_benchmark_bandwidth(ax, rows: list[dict], baselines: Iterable[str] = (),
                             reference_lines: dict[str, float] | None = None):
    """Horizontal bars of effective GB/s per case, with optional baselines beside bnlib's.

    ``rows``: benchmark cases with a GB/s value (``bnlib_gbps`` or ``gb_per_s``). Each name in
    ``baselines`` is a key of the row's ``times_us`` dict; its GB/s is ``bytes_moved / time``.
    ``reference_lines`` maps a label to a bandwidth in GB/s drawn as a vertical line.
    """
    cases = [row for row in rows if _gbps(row) is not None]
    if not cases:
        raise ValueError("no row has a GB/s value to plot")
    baselines = list(baselines)
    series = {"bnlib": [_gbps(row) for row in cases]}
    for name in baselines:
        series[name] = [achieved_gbps(row, name) if row.get("times_us", {}).get(name) else 0.0
                        for row in cases]
    height = 0.8 / len(series)
    positions = np.arange(len(cases))
    for index, (name, values) in enumerate(series.items()):
        ax.barh(positions + (index - (len(series) - 1) / 2) * height, values, height,
                label=_BASELINE_NAMES.get(name, name))
    for (label, gbps), style in zip((reference_lines or {}).items(), ("--", ":", "-."),
                                    strict=False):
        ax.axvline(gbps, color="k", linestyle=style, linewidth=1, label=label)
    ax.set_yticks(positions, [_case_label(row) for row in cases], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("effective bandwidth under the byte model (GB/s)")
    ax.legend(fontsize=7, loc="lower right")
    return ax


# --------------------------------------------------------------------------- widget

def bn_training_designs(separate_ops: dict[str, float]) -> dict[str, dict[str, float]]:
    """Float32 bytes per element, ``"forward"`` and ``"backward"``, of three ways to build BN.

    ``"channel on chip"`` and ``"split reduction"`` come from :data:`BYTE_MODELS` (least
    traffic, and the usual fused design); ``separate_ops`` is a one-kernel-per-operator
    implementation, as measured by :func:`tensor_traffic`.
    """

    def fused(on_chip: bool) -> dict[str, float]:
        return {direction: byte_model("bn", direction).bytes_per_element(4, on_chip)
                for direction in ("forward", "backward")}

    return {"channel on chip": fused(True), "split reduction": fused(False),
            "separate ops": dict(separate_ops)}


def _predicted_times(num_elements: int, value_bytes: int, bandwidth: float, designs: dict):
    """Forward and backward predicted microseconds per design (bytes scale with dtype size)."""
    scale = value_bytes / 4  # the designs count 4-byte float32 values
    return {
        name: {phase: predicted_time_us(num_elements, b * scale, bandwidth)
               for phase, b in phases.items()}
        for name, phases in designs.items()
    }


def predicted_time_widget(composite_bytes: dict[str, float]):
    """Sliders for the BN2d shape, dtype and device; bars of predicted forward/backward time.

    ``composite_bytes``: float32 bytes per element of a separate-op implementation, keys
    ``"forward"`` and ``"backward"`` (as measured by :func:`tensor_traffic`); the other designs
    are those of :func:`bn_training_designs`.
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    batch = widgets.IntSlider(value=256, min=8, max=512, step=8, description="N")
    channels = widgets.IntSlider(value=256, min=16, max=1024, step=16, description="C")
    side = widgets.IntSlider(value=14, min=7, max=112, step=7, description="H = W")
    dtype = widgets.Dropdown(options=[("float32", 4), ("bfloat16", 2)], description="dtype")
    device = widgets.Dropdown(options=list(DEVICES), value="H100 SXM", description="device")

    def show(n, c, s, value_bytes, device_name):
        times = _predicted_times(n * c * s * s, value_bytes, DEVICES[device_name].bandwidth,
                                 bn_training_designs(composite_bytes))
        fig, ax = plt.subplots(figsize=(6, 2.4))
        names = list(times)
        positions = np.arange(len(names))
        ax.barh(positions - 0.2, [times[k]["forward"] for k in names], 0.4, label="forward")
        ax.barh(positions + 0.2, [times[k]["backward"] for k in names], 0.4, label="backward")
        ax.set_yticks(positions, names)
        ax.invert_yaxis()
        ax.set_xlabel("predicted time at 90% of peak bandwidth (µs)")
        ax.set_title(f"BN2d ({n}, {c}, {s}, {s}) on {device_name}", fontsize=10)
        ax.legend(fontsize=8)
        fig.tight_layout()
        plt.show()

    output = widgets.interactive_output(
        show, {"n": batch, "c": channels, "s": side, "value_bytes": dtype, "device_name": device}
    )
    controls = widgets.VBox([batch, channels, side, dtype, device])
    return widgets.HBox([controls, output])

