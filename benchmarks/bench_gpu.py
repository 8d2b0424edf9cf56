"""GPU benchmark: bnlib's Triton kernels against torch eager, cuDNN and torch.compile.

Usage (from the repository root, on a machine with a CUDA device)::

    python benchmarks/bench_gpu.py                 # all cases, results to benchmarks/results/
    python benchmarks/bench_gpu.py --out DIR --reps 200
    python benchmarks/bench_gpu.py --smoke         # tiny cases; CPU interpreter without a GPU
    python benchmarks/bench_gpu.py --sweep         # bnlib alone, block-size knobs one by one

Every time is the median over ``--reps`` calls, each a CUDA-graph replay timed on the device
with CUDA events after a 256 MB write that flushes the L2 cache (bnlib is also timed with
plain launches, which shows its host-side cost). Each case reports the effective bandwidth under
the byte model of ``bnlib.experiments.roofline`` (the one chapter 8 explains), its share of a
device-to-device copy measured in the same run, and the speed-up over each baseline (baseline
time / bnlib time; above 1 is faster).
bnlib is timed through ``bnlib.torch._triton`` (the kernels, without the autograd wrapper);
baselines are ``torch.nn.functional`` calls, backward through ``torch.autograd.grad``.
"""

import argparse
import datetime as dt
import json
import os
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bnlib.experiments.roofline import byte_model, effective_gbps, median_seconds

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_cpu, for the no-GPU fallback

RESULTS_DIR = Path(__file__).resolve().parent / "results"
EPS = 1e-5
FLUSH_BYTES = 256 * 2**20
COPY_BYTES = 1 * 2**30
BN_SHAPES = [(256, 256, 14, 14), (256, 64, 56, 56), (32, 512, 7, 7)]
LN_SHAPES = [(8192, 4096), (8192, 1024), (4096, 16384), (8192, 4095)]
SMOKE_BN_SHAPES = [(2, 3, 4, 5)]
SMOKE_LN_SHAPES = [(4, 37)]
IMPLS = ["bnlib", "eager", "eager_no_cudnn", "compile"]
IMPL_LABELS = {"bnlib": "bnlib", "eager": "eager (cuDNN on)",
               "eager_no_cudnn": "eager (cuDNN off)", "compile": "torch.compile"}


@dataclass
class Row:
    """One measured case: medians in microseconds per implementation (None: not run)."""

    op: str
    direction: str
    shape: tuple
    dtype: str
    layout: str
    element_size: int
    numel: int
    times_us: dict = field(default_factory=dict)
    max_abs_diff: float | None = None
    note: str = ""

    @property
    def model(self):
        return byte_model(self.op, self.direction)

    @property
    def bytes_moved(self) -> int:
        return self.model.bytes_moved(self.numel, self.element_size)

    def gbps(self, impl: str = "bnlib") -> float | None:
        seconds = self.times_us.get(impl)
        return None if seconds is None else effective_gbps(self.bytes_moved, seconds * 1e-6)

    def speedup(self, baseline: str) -> float | None:
        """Baseline time over bnlib time (above 1: bnlib is faster)."""
        ours, theirs = self.times_us.get("bnlib"), self.times_us.get(baseline)
        return None if ours is None or theirs is None else theirs / ours


# ---------------------------------------------------------------------------------------------
# formatting (device-independent, tested on the CPU)


def _fmt(value, spec: str, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def combine_fwd_bwd(rows: list[Row]) -> list[Row]:
    """BN ``fwd+bwd`` rows: per implementation, the sum of the forward and backward medians."""
    index = {(r.op, r.direction, r.shape, r.dtype, r.layout): r for r in rows}
    combined = []
    for r in rows:
        if r.op != "bn" or r.direction != "forward":
            continue
        backward = index.get(("bn", "backward", r.shape, r.dtype, r.layout))
        if backward is None:
            continue
        times = {impl: r.times_us[impl] + backward.times_us[impl] for impl in r.times_us
                 if r.times_us[impl] is not None and backward.times_us.get(impl) is not None}
        combined.append(Row("bn", "fwd+bwd", r.shape, r.dtype, r.layout, r.element_size,
                            r.numel, times, note="sum of the forward and backward medians"))
    return combined


def markdown_table(rows: list[Row], copy_gbps: float) -> str:
    """One line per case: time, GB/s under the byte model, % of copy, speed-up per baseline."""
    header = ["op", "pass", "shape", "layout", "dtype", "byte model", "bnlib us",
              "bnlib us, plain launches", "bnlib GB/s", "% of copy"]
    for impl in IMPLS[1:]:
        header += [f"{IMPL_LABELS[impl]} us", f"x vs {IMPL_LABELS[impl]}"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        gbps = r.gbps()
        percent = None if gbps is None else 100 * gbps / copy_gbps
        cells = [r.op.upper(), r.direction, "x".join(map(str, r.shape)), r.layout, r.dtype,
                 r.model.describe(r.element_size), _fmt(r.times_us.get("bnlib"), ".1f"),
                 _fmt(r.times_us.get("bnlib_launch"), ".1f"), _fmt(gbps, ".0f"),
                 _fmt(percent, ".0f", "%")]
        for impl in IMPLS[1:]:
            cells += [_fmt(r.times_us.get(impl), ".1f"), _fmt(r.speedup(impl), ".2f", "x")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_report(rows: list[Row], meta: dict) -> str:
    """The Markdown file: environment, copy speed, byte models and the table."""
    copy = meta["copy"]
    out = [
        f"# GPU benchmark, {meta['device']}, {meta['date']}",
        "",
        f"torch {meta['torch']}, triton {meta['triton']}, CUDA {meta['cuda']}, "
        f"cuDNN {meta['cudnn']}, Python {meta['python']}.",
        "",
        f"Device-to-device copy of {copy['bytes'] / 1e6:.0f} MB: {copy['time_us']:.0f} us, "
        f"{copy['gbps']:.0f} GB/s counting bytes read and written (the speed of light below)."
        + (f" {meta['copy_note']}" if meta.get("copy_note") else ""),
        "",
        f"Median of {meta['reps']} timed calls per cell, {meta['clock']}. `plain launches`: "
        "bnlib's calls launched one by one instead of replayed from a graph, so the host's "
        "launch cost shows wherever it exceeds the device time. GB/s counts the "
        "bytes of the byte model (passes x element size per element); `x vs` is baseline "
        "time / bnlib time (above 1: bnlib faster). BN fwd+bwd rows add the two medians.",
        "",
        markdown_table(rows, copy["gbps"]),
        "",
    ]
    if meta.get("kernel_settings"):
        settings = ", ".join(f"{k}={v}" for k, v in meta["kernel_settings"].items())
        out += [f"bnlib block-size settings: {settings}.", ""]
    notes = [f"- {r.op.upper()} {r.direction} {r.shape} {r.dtype} {r.layout}: {r.note}"
             for r in rows if r.note and r.direction != "fwd+bwd"]
    notes += [f"- timed with plain launches, graph capture failed: {f}"
              for f in meta.get("graph_fallbacks", [])]
    if notes:
        out += ["Notes:", "", *notes, ""]
    return "\n".join(out)


def results_json(rows: list[Row], meta: dict) -> str:
    payload = dict(meta=meta, rows=[
        dict(asdict(r), shape=list(r.shape), byte_model=r.model.describe(r.element_size),
             bytes_moved=r.bytes_moved, bnlib_gbps=r.gbps(),
             percent_of_copy=None if r.gbps() is None else 100 * r.gbps() / meta["copy"]["gbps"],
             speedup={impl: r.speedup(impl) for impl in IMPLS[1:]})
        for r in rows])
    return json.dumps(payload, indent=2)


def result_stem(meta: dict) -> str:
    """File name stem ``<device>-<date>``, letters, digits and dashes only."""
    device = "".join(ch if ch.isalnum() else "-" for ch in meta["device"]).strip("-")
    while "--" in device:
        device = device.replace("--", "-")
    return f"{device}-{meta['date'][:10]}"


# ---------------------------------------------------------------------------------------------
# timing


class Timer:
    """Median device time of a call, with the L2 cache flushed before each one.

    On CUDA the call is captured once in a CUDA graph and each timed replay sits between two
    events, so host-side launch costs (Python, Triton's launcher, autograd) stay out of the
    figure; ``graph=False`` times plain launches instead, host costs included whenever the
    host is slower than the device. A call whose capture fails is timed with plain launches
    and listed in ``fallbacks``.
    """

    def __init__(self, torch, device, reps: int, warmup: int = 3):
        self.torch, self.device, self.reps, self.warmup = torch, device, reps, warmup
        self.cuda = device.type == "cuda"
        self.flush = torch.empty(FLUSH_BYTES if self.cuda else 1, dtype=torch.int8,
                                 device=device)
        self.fallbacks = []

    def median_us(self, run, setup=None, graph=True, label="") -> float:
        """``run(setup())`` timed ``reps`` times; ``setup`` runs outside the timed region."""
        if not self.cuda:
            return self._host_median_us(run, setup)
        if graph:
            try:
                return self._graph_median_us(run, setup)
            except RuntimeError as error:
                self.fallbacks.append(f"{label}: {str(error).splitlines()[0][:120]}")
                self.torch.cuda.synchronize()
        return self._launch_median_us(run, setup)

    def _host_median_us(self, run, setup) -> float:
        """CPU smoke run: host clock, no cache to flush."""
        return 1e6 * median_seconds(run, self.reps, self.warmup, setup or (lambda: None))

    def _events_median_us(self, launch) -> float:
        torch = self.torch
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(self.reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(self.reps)]
        for start, end in zip(starts, ends, strict=True):
            self.flush.zero_()
            start.record()
            launch()
            end.record()
        torch.cuda.synchronize()
        return statistics.median(s.elapsed_time(e) * 1e3
                                 for s, e in zip(starts, ends, strict=True))

    def _launch_median_us(self, run, setup) -> float:
        for _ in range(self.warmup):
            run(setup() if setup else None)
        states = [setup() if setup else None for _ in range(self.reps)] if setup else None
        calls = iter(states) if states else None
        return self._events_median_us(lambda: run(next(calls) if calls else None))

    def _graph_median_us(self, run, setup) -> float:
        """Capture ``run(state)`` on a side stream; setup runs on that stream too, so that
        autograd schedules a backward on the stream being captured."""
        torch = self.torch
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            state = setup() if setup else None
            for _ in range(self.warmup):
                run(state)
        stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            run(state)
        torch.cuda.synchronize()
        time_us = self._events_median_us(graph.replay)
        del graph
        return time_us

    def copy_gbps(self) -> dict:
        """Device-to-device copy of ``COPY_BYTES``: time and GB/s (read + write)."""
        torch = self.torch
        size = COPY_BYTES if self.cuda else 2**20
        src = torch.randn(size // 4, device=self.device)
        dst = torch.empty_like(src)
        # plain launches: captured in a graph, this copy ran ~20% slower on an H100
        time_us = self.median_us(lambda _: dst.copy_(src), graph=False)
        return dict(bytes=size, time_us=time_us, gbps=effective_gbps(2 * size, time_us * 1e-6))


# ---------------------------------------------------------------------------------------------
# cases


def _grads(torch, output, inputs, grad):
    """Gradients without touching ``.grad``; the graph is kept for the next timed call."""
    return torch.autograd.grad(output, inputs, grad, retain_graph=True)


def _autograd_runners(torch, baselines, inputs, dy):
    """``(setup, run, output_of)`` timing autograd's backward of each baseline ``fn(*inputs)``.

    ``setup`` runs the forward on fresh leaves, outside the timed region; ``run`` times only
    the backward. Baselines given as None (torch.compile switched off) are left out.
    """

    def setup(fn):
        leaves = [t.detach().requires_grad_() for t in inputs]
        return fn(*leaves), leaves

    return {impl: (lambda fn=fn: setup(fn),
                   lambda state: _grads(torch, state[0], state[1], dy),
                   lambda out: out[0])
            for impl, fn in baselines if fn is not None}


def bn_runners(torch, triton_backend, x, direction, use_compile):
    """Per implementation, ``(setup, run, output_of)`` for one BN case."""
    F = torch.nn.functional
    C = x.shape[1]
    device = x.device
    weight = torch.rand(C, device=device) + 0.5
    bias = torch.randn(C, device=device)
    running_mean = torch.randn(C, device=device)
    running_var = torch.rand(C, device=device) + 0.5
    dy = torch.randn_like(x)

    def train(x_, w_, b_):
        return F.batch_norm(x_, None, None, w_, b_, True, 0.1, EPS)

    def infer(x_):
        return F.batch_norm(x_, running_mean, running_var, weight, bias, False, 0.1, EPS)

    compiled_train = torch.compile(train, dynamic=False) if use_compile else None
    compiled_infer = torch.compile(infer, dynamic=False) if use_compile else None
    runners = {}
    if direction == "forward":
        runners["bnlib"] = (None, lambda _: triton_backend.bn_forward_train(x, weight, bias, EPS),
                            lambda out: out[0])
        for impl, fn in (("eager", train), ("eager_no_cudnn", train), ("compile", compiled_train)):
            if fn is not None:
                runners[impl] = (None, lambda _, fn=fn: fn(x, weight, bias), lambda out: out)
    elif direction == "inference":
        runners["bnlib"] = (None, lambda _: triton_backend.bn_forward_eval(
            x, running_mean, running_var, weight, bias, EPS), lambda out: out)
        for impl, fn in (("eager", infer), ("eager_no_cudnn", infer), ("compile", compiled_infer)):
            if fn is not None:
                runners[impl] = (None, lambda _, fn=fn: fn(x), lambda out: out)
    else:
        _, mean, var = triton_backend.bn_forward_train(x, weight, bias, EPS)
        invstd = torch.rsqrt(var + EPS)
        runners["bnlib"] = (None, lambda _: triton_backend.bn_backward_train(
            dy, x, weight, mean, invstd), lambda out: out[0])
        runners.update(_autograd_runners(
            torch, (("eager", train), ("eager_no_cudnn", train), ("compile", compiled_train)),
            (x, weight, bias), dy))
    return runners


def ln_runners(torch, triton_backend, x, direction, use_compile):
    """Per implementation, ``(setup, run, output_of)`` for one LN case."""
    F = torch.nn.functional
    K = x.shape[1]
    weight = (torch.rand(K, device=x.device) + 0.5).to(x.dtype)
    bias = torch.randn(K, device=x.device).to(x.dtype)
    dy = torch.randn_like(x)

    def layer_norm(x_, w_, b_):
        return F.layer_norm(x_, (K,), w_, b_, EPS)

    compiled = torch.compile(layer_norm, dynamic=False) if use_compile else None
    impls = [("eager", layer_norm), ("compile", compiled)]
    runners = {}
    if direction == "forward":
        runners["bnlib"] = (None, lambda _: triton_backend.ln_forward(x, weight, bias, EPS),
                            lambda out: out[0])
        for impl, fn in impls:
            if fn is not None:
                runners[impl] = (None, lambda _, fn=fn: fn(x, weight, bias), lambda out: out)
    else:
        _, mean, rstd = triton_backend.ln_forward(x, weight, bias, EPS)
        runners["bnlib"] = (None, lambda _: triton_backend.ln_backward(dy, x, weight, mean, rstd),
                            lambda out: out[0])
        runners.update(_autograd_runners(torch, impls, (x, weight, bias), dy))
    return runners


def measure(torch, timer, runners, row: Row, reference_impl="eager") -> Row:
    """Time every runner; record bnlib's largest deviation from the reference's output."""
    outputs = {}
    for impl, (setup, run, output_of) in runners.items():
        cudnn = torch.backends.cudnn.flags(enabled=impl != "eager_no_cudnn")
        grad_mode = torch.no_grad() if setup is None else torch.enable_grad()
        label = f"{row.op} {row.direction} {row.shape} {row.dtype} {row.layout} {impl}"
        with cudnn, grad_mode:
            row.times_us[impl] = timer.median_us(run, setup, label=label)
            if impl == "bnlib":
                row.times_us["bnlib_launch"] = timer.median_us(run, setup, graph=False)
            outputs[impl] = output_of(run(setup() if setup else None)).float()
    if reference_impl in outputs:
        row.max_abs_diff = (outputs["bnlib"] - outputs[reference_impl]).abs().max().item()
    for impl in IMPLS:
        row.times_us.setdefault(impl, None)
    return row


def run_cases(torch, triton_backend, timer, bn_shapes, ln_shapes, dtypes, use_compile,
              log=print) -> list[Row]:
    device = timer.device
    rows = []
    for shape in bn_shapes:
        for dtype in dtypes:
            for layout in ("nchw", "channels_last"):
                x = torch.randn(shape, device=device) * 2 + 0.5
                x = x.to(dtype)
                if layout == "channels_last":
                    x = x.to(memory_format=torch.channels_last)
                for direction in ("forward", "backward", "inference"):
                    torch._dynamo.reset()
                    row = Row("bn", direction, shape, _dtype_name(dtype), layout,
                              x.element_size(), x.numel())
                    runners = bn_runners(torch, triton_backend, x, direction, use_compile)
                    rows.append(measure(torch, timer, runners, row))
                    log(_progress(rows[-1]))
    for shape in ln_shapes:
        for dtype in dtypes:
            x = (torch.randn(shape, device=device) * 2 + 0.5).to(dtype)
            for direction in ("forward", "backward"):
                torch._dynamo.reset()
                row = Row("ln", direction, shape, _dtype_name(dtype), "rows", x.element_size(),
                          x.numel())
                runners = ln_runners(torch, triton_backend, x, direction, use_compile)
                rows.append(measure(torch, timer, runners, row))
                log(_progress(rows[-1]))
                if direction == "backward" and shape[1] > 8192 and device.type == "cuda":
                    rows[-1].note = _looped_variant_note(torch, triton_backend, timer, x, row)
    return rows


def _looped_variant_note(torch, triton_backend, timer, x, row) -> str:
    """Long rows: also time the chunked backward (dx sweep + column-block parameter grads)."""
    saved = triton_backend.LN_MAX_FUSED_BACKWARD
    triton_backend.LN_MAX_FUSED_BACKWARD = 0
    try:
        looped = Row("ln", "backward", row.shape, row.dtype, "rows", row.element_size, row.numel)
        runners = {"bnlib": ln_runners(torch, triton_backend, x, "backward", False)["bnlib"]}
        measure(torch, timer, runners, looped)
    finally:
        triton_backend.LN_MAX_FUSED_BACKWARD = saved
    return (f"register-resident backward {row.times_us['bnlib']:.1f} us; looped backward "
            f"(LN_MAX_FUSED_BACKWARD=0) {looped.times_us['bnlib']:.1f} us, "
            f"{looped.gbps():.0f} GB/s")


def _dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def _progress(row: Row) -> str:
    times = ", ".join(f"{impl} {_fmt(t, '.1f')}" for impl, t in row.times_us.items())
    return (f"{row.op} {row.direction:9s} {str(row.shape):20s} {row.dtype:8s} {row.layout:13s} "
            f"{times} us | {_fmt(row.gbps(), '.0f')} GB/s | max|diff| "
            f"{_fmt(row.max_abs_diff, '.2e')}")


# Block-size knobs of bnlib.torch._triton tried one at a time by --sweep (defaults marked *).
SWEEP_KNOBS = {
    "bn": {"REDUCE_TILE_BYTES": [4096, 16384], "PROGRAMS_PER_SM": [4, 16],
           "NCHW_STATS_PROGRAMS_PER_SM": [8, 32], "APPLY_TILE_BYTES": [4096, 16384]},
    "ln": {"LN_FORWARD_TILE_BYTES": [8192, 32768], "LN_FORWARD_VALUES_PER_WARP": [512, 2048],
           "LN_BACKWARD_TILE": [4096, 16384], "LN_BACKWARD_SHARED_ROW_MAX": [1024, 4096],
           "LN_BACKWARD_VALUES_PER_WARP": [128, 512], "LN_BACKWARD_PROGRAMS_PER_SM": [1, 4],
           "LN_MAX_WARPS": [4, 16]},
}


def sweep(torch, triton_backend, timer, log=print) -> list[dict]:
    """bnlib's time per float32 case with each knob moved off its default, one at a time."""
    device = timer.device
    cases = [("bn", shape, layout, direction, dtype) for shape in BN_SHAPES[:2]
             for layout in ("nchw", "channels_last") for direction in ("forward", "backward")
             for dtype in (torch.float32, torch.bfloat16)]
    cases += [("ln", shape, "rows", direction, dtype) for shape in LN_SHAPES
              for direction in ("forward", "backward") for dtype in (torch.float32, torch.bfloat16)]
    results = []
    for op, shape, layout, direction, dtype in cases:
        x = (torch.randn(shape, device=device) * 2 + 0.5).to(dtype)
        if layout == "channels_last":
            x = x.to(memory_format=torch.channels_last)
        make = bn_runners if op == "bn" else ln_runners
        _, run, _ = make(torch, triton_backend, x, direction, False)["bnlib"]
        settings = [("default", None, None)] + [
            (f"{knob}={value}", knob, value) for knob, values in SWEEP_KNOBS[op].items()
            for value in values]
        for label, knob, value in settings:
            saved = getattr(triton_backend, knob) if knob else None
            if knob:
                setattr(triton_backend, knob, value)
            try:
                with torch.no_grad():
                    time_us = timer.median_us(run)
            finally:
                if knob:
                    setattr(triton_backend, knob, saved)
            results.append(dict(op=op, shape=list(shape), layout=layout, direction=direction,
                                dtype=_dtype_name(dtype), setting=label, time_us=time_us))
        default = results[-len(settings)]["time_us"]
        best = min(results[-len(settings):], key=lambda r: r["time_us"])
        log(f"sweep {op} {direction:8s} {str(shape):20s} {layout:13s} {_dtype_name(dtype):8s} "
            f"default {default:.1f} us, best {best['setting']} {best['time_us']:.1f} us")
    return results


def kernel_settings(triton_backend) -> dict:
    """The block-size knobs of ``bnlib.torch._triton`` a run used."""
    knobs = {knob for op in SWEEP_KNOBS.values() for knob in op}
    return {knob: getattr(triton_backend, knob) for knob in sorted(knobs)}


def environment(torch, triton, device, reps: int) -> dict:
    cuda = device.type == "cuda"
    return dict(
        device=torch.cuda.get_device_name(device) if cuda else "CPU (Triton interpreter)",
        date=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%MZ"),
        torch=torch.__version__, triton=triton.__version__,
        cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version() if cuda else None,
        python=sys.version.split()[0], reps=reps,
        clock=(f"CUDA graph replays between CUDA events, L2 flushed by a "
               f"{FLUSH_BYTES // 2**20} MB write before each replay"
               if cuda else "host clock (CPU interpreter smoke run: times mean nothing)"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for the JSON and Markdown results "
                             "(default benchmarks/results/; --smoke writes only with --out)")
    parser.add_argument("--reps", type=int, default=100, help="timed calls per cell")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--sweep", action="store_true",
                        help="instead of the comparison, time bnlib alone with each block-size "
                             "knob moved off its default (CUDA only)")
    parser.add_argument("--sweep-reps", type=int, default=30, help="timed calls per sweep cell")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny cases; on a machine without CUDA, Triton's CPU interpreter")
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available() and not args.smoke:
        # Without a GPU the harness times the CPU implementations instead.
        import bench_cpu

        print("bench_gpu: no CUDA device, timing bnlib.numpy, textbook NumPy and torch eager "
              "on the CPU (--smoke checks the Triton harness under the interpreter).")
        bench_cpu.print_table(bench_cpu.measure((256, 256, 14, 14), repeats=15))
        return 0
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are decorated
    import triton

    from bnlib.torch import _triton

    if not _triton.available():
        print("bench_gpu: the Triton backend cannot run here "
              "(TRITON_INTERPRET must be 1 before bnlib.torch._triton is first imported).")
        return 1
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    smoke = args.smoke
    reps = 2 if smoke and device.type == "cpu" else args.reps
    timer = Timer(torch, device, reps, warmup=1 if smoke else 3)
    meta = environment(torch, triton, device, reps)
    meta["copy"] = timer.copy_gbps()
    meta["kernel_settings"] = kernel_settings(_triton)
    print(f"{meta['device']}: copy {meta['copy']['gbps']:.0f} GB/s")
    use_compile = not args.no_compile and device.type == "cuda"
    out = args.out if args.out is not None else (None if smoke else RESULTS_DIR)
    if args.sweep:
        if device.type != "cuda":
            print("bench_gpu: --sweep needs a CUDA device")
            return 1
        results = sweep(torch, _triton, Timer(torch, device, args.sweep_reps))
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            path = out / f"{result_stem(meta)}-sweep.json"
            path.write_text(json.dumps(dict(meta=meta, results=results), indent=1))
            print(f"wrote {path}")
        return 0
    rows = run_cases(torch, _triton, timer,
                     SMOKE_BN_SHAPES if smoke else BN_SHAPES,
                     SMOKE_LN_SHAPES if smoke else LN_SHAPES,
                     [torch.float32, torch.bfloat16], use_compile)
    rows += combine_fwd_bwd(rows)
    meta["graph_fallbacks"] = timer.fallbacks
    report = markdown_report(rows, meta)
    print(report)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        stem = result_stem(meta)
        (out / f"{stem}.json").write_text(results_json(rows, meta))
        (out / f"{stem}.md").write_text(report)
        print(f"wrote {out / stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
