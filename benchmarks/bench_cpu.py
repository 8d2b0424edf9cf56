"""CPU benchmark: bnlib.numpy batch norm against textbook NumPy and torch's CPU kernels.

Prints one table (median milliseconds over repeated runs, all measured in this one process)
for BN2d float32 training forward and backward, as measured by
:func:`bnlib.experiments.roofline.time_cpu_batchnorm`. Usage:

    python benchmarks/bench_cpu.py [--shape 256 256 14 14] [--repeats 15] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
from datetime import date

import numpy as np

from bnlib.experiments.roofline import median_seconds, time_cpu_batchnorm


def measure(shape, repeats: int) -> dict:
    """The three implementations' rows, two NumPy copies of x for scale, and the environment.

    Every implementation returns new arrays, so each pays the operating system's first touch
    of fresh memory; the copy into an existing array shows how much of a copy that is.
    """
    x, existing = np.ones(shape, np.float32), np.empty(shape, np.float32)
    copy_ms = 1e3 * median_seconds(lambda: x.copy(), repeats)
    copy_into_ms = 1e3 * median_seconds(lambda: np.copyto(existing, x), repeats)
    return {"shape": list(shape), "dtype": "float32", "copy_ms": copy_ms,
            "copy_into_existing_ms": copy_into_ms,
            "rows": time_cpu_batchnorm(tuple(shape), repeats),
            "machine": platform.processor() or platform.machine(), "numpy": np.__version__,
            "date": date.today().isoformat()}


def row_named(result: dict, prefix: str) -> dict:
    """The row whose implementation starts with ``prefix`` ("textbook", "bnlib", "torch")."""
    return next(row for row in result["rows"] if row["implementation"].startswith(prefix))


def print_table(result: dict) -> None:
    torch_total = row_named(result, "torch")["total_ms"]
    textbook_total = row_named(result, "textbook")["total_ms"]
    print(f"BN2d training, float32 {tuple(result['shape'])}, numpy {result['numpy']}, "
          f"{result['date']}")
    print(f"NumPy copy of x: {result['copy_ms']:.2f} ms into new memory, "
          f"{result['copy_into_existing_ms']:.2f} ms into an existing array")
    print(f"{'implementation':40s} {'forward':>9s} {'backward':>9s} {'fwd+bwd':>9s} "
          f"{'vs torch':>9s} {'vs textbook':>11s}")
    for row in result["rows"]:
        total = row["total_ms"]
        print(f"{row['implementation']:40s} {row['forward_ms']:8.2f}ms {row['backward_ms']:8.2f}ms "
              f"{total:8.2f}ms {total / torch_total:8.2f}x {textbook_total / total:10.2f}x faster")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs="+", default=[256, 256, 14, 14])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--json", help="also write the result to this JSON file")
    args = parser.parse_args()
    result = measure(tuple(args.shape), args.repeats)
    print_table(result)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
