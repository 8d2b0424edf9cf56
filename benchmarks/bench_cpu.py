"""CPU benchmark: bnlib.numpy batch norm against textbook NumPy and torch's CPU kernels.

Prints one table (median milliseconds over repeated runs, all measured in this one process)
for BN2d float32 training forward and backward. Usage:

    python benchmarks/bench_cpu.py [--shape 256 256 14 14] [--repeats 15] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
from datetime import date

import numpy as np

import bnlib.numpy as bn
from bnlib.experiments.roofline import median_seconds


def numpy_cases(x, dy, gamma, beta):
    """(name, forward, backward) triples for the two NumPy implementations."""
    _, fast_cache = bn.batchnorm_forward(x, gamma, beta)
    _, book_cache = bn.batchnorm_forward_textbook(x, gamma, beta)
    return [
        ("bnlib.numpy", lambda: bn.batchnorm_forward(x, gamma, beta),
         lambda: bn.batchnorm_backward(dy, fast_cache)),
        ("textbook NumPy", lambda: bn.batchnorm_forward_textbook(x, gamma, beta),
         lambda: bn.batchnorm_backward_textbook(dy, book_cache)),
    ]


def torch_case(x, dy):
    """torch's CPU batch norm (F.batch_norm, training mode) forward and backward."""
    import torch
    import torch.nn.functional as F

    xt = torch.from_numpy(x).requires_grad_(True)
    dyt = torch.from_numpy(dy)
    weight = torch.ones(x.shape[1], requires_grad=True)
    bias = torch.zeros(x.shape[1], requires_grad=True)

    def forward():
        with torch.no_grad():
            return F.batch_norm(xt, None, None, weight, bias, training=True)

    def backward():
        out = F.batch_norm(xt, None, None, weight, bias, training=True)
        out.backward(dyt)

    # backward() includes a forward: its time is reported as forward+backward.
    return forward, backward, f"torch {torch.__version__} CPU ({torch.get_num_threads()} threads)"


def measure(shape, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape, dtype=np.float32)
    dy = rng.standard_normal(shape, dtype=np.float32)
    gamma = np.ones(shape[1], np.float32)
    beta = np.zeros(shape[1], np.float32)

    def median_ms(fn):
        return 1e3 * median_seconds(fn, repeats)

    copy_ms = median_ms(lambda: x.copy())
    rows = []
    for name, forward, backward in numpy_cases(x, dy, gamma, beta):
        f, b = median_ms(forward), median_ms(backward)
        rows.append({"impl": name, "forward_ms": f, "backward_ms": b, "total_ms": f + b})
    t_forward, t_both, torch_name = torch_case(x, dy)
    f, total = median_ms(t_forward), median_ms(t_both)
    rows.append({"impl": torch_name, "forward_ms": f, "backward_ms": total - f, "total_ms": total})
    return {"shape": list(shape), "dtype": "float32", "copy_ms": copy_ms, "rows": rows,
            "machine": platform.processor() or platform.machine(), "numpy": np.__version__,
            "date": date.today().isoformat()}


def print_table(result: dict) -> None:
    torch_total = result["rows"][-1]["total_ms"]
    textbook_total = result["rows"][1]["total_ms"]
    print(f"BN2d training, float32 {tuple(result['shape'])}, numpy {result['numpy']}, "
          f"{result['date']}; NumPy copy of x: {result['copy_ms']:.2f} ms")
    print(f"{'implementation':40s} {'forward':>9s} {'backward':>9s} {'fwd+bwd':>9s} "
          f"{'vs torch':>9s} {'vs textbook':>11s}")
    for row in result["rows"]:
        print(f"{row['impl']:40s} {row['forward_ms']:8.2f}ms {row['backward_ms']:8.2f}ms "
              f"{row['total_ms']:8.2f}ms {row['total_ms'] / torch_total:8.2f}x "
              f"{textbook_total / row['total_ms']:10.2f}x faster")


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
