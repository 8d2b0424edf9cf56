"""Core-seconds of sandboxing one submission, per assignment: a fresh sandbox process per
submission against one forked from the pre-started sandbox server.

Each submission is the assignment's solution notebook, graded by the autograde preprocessor
(``IsolatedExecute``) in this process, as ``nbgrader autograde`` does it: the trusted side
plans the checks, the sandbox runs the student cells and the drivers, the trusted side judges.
Core-seconds are user + system CPU time of every process involved: this one (``os.times``),
the sandboxes it started and reaped (``RUSAGE_CHILDREN``), and the server with the sandboxes it
forked and reaped (``/proc``). Starting the server is paid once per grading process and is
reported on its own line.

    .venv/bin/python benchmarks/bench_sandbox.py              # 3 submissions per assignment
    .venv/bin/python benchmarks/bench_sandbox.py --repeat 5 --assignment bn_torch
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
import time
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bnlib.grading import ASSIGNMENTS  # noqa: E402
from bnlib.grading.cgroups import ProcessTree  # noqa: E402
from bnlib.grading.pipeline import IsolatedExecute  # noqa: E402
from bnlib.grading.sandbox_server import running_servers  # noqa: E402

MODES = {"fresh": False, "prestarted": True}


def core_seconds() -> dict[str, float]:
    """CPU seconds so far: this process, its reaped children, and the sandbox servers with
    everything they reaped."""
    own, children = os.times(), resource.getrusage(resource.RUSAGE_CHILDREN)
    servers = sum(ProcessTree(pid).cpu_seconds() for pid in running_servers())
    return {"trusted": own.user + own.system,
            "sandbox": children.ru_utime + children.ru_stime + servers}


def grade(assignment: str, prestarted: bool) -> None:
    notebook = nbformat.read(str(REPO / "solutions" / assignment / f"{assignment}.ipynb"), 4)
    runner = IsolatedExecute(prestarted=prestarted)
    runner.log.setLevel(logging.WARNING)
    runner.preprocess(notebook, {"nbgrader": {"student": "bench", "notebook": assignment}})


def measure(assignment: str, prestarted: bool, repeat: int) -> dict[str, float]:
    """Mean core-seconds and wall seconds of one submission."""
    before, start = core_seconds(), time.perf_counter()
    for _ in range(repeat):
        grade(assignment, prestarted)
    after, wall = core_seconds(), time.perf_counter() - start
    spent = {k: (after[k] - before[k]) / repeat for k in before}
    return {**spent, "total": sum(spent.values()), "wall": wall / repeat}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="submissions per assignment")
    parser.add_argument("--assignment", action="append", choices=ASSIGNMENTS)
    parser.add_argument("--mode", action="append", choices=sorted(MODES))
    args = parser.parse_args()
    assignments = args.assignment or list(ASSIGNMENTS)
    print(f"{'assignment':<18}{'mode':<12}{'core-s':>8}{'sandbox':>9}{'trusted':>9}{'wall s':>8}")
    for mode in args.mode or list(MODES):
        totals = []
        for assignment in assignments:
            before = core_seconds()
            grade(assignment, MODES[mode])  # warm-up: imports, the isolation probe, the server
            warm_up = core_seconds()["sandbox"] - before["sandbox"]
            row = measure(assignment, MODES[mode], args.repeat)
            totals.append(row["total"])
            print(f"{assignment:<18}{mode:<12}{row['total']:>8.2f}{row['sandbox']:>9.2f}"
                  f"{row['trusted']:>9.2f}{row['wall']:>8.2f}   (first submission's sandbox: "
                  f"{warm_up:.2f} core-s)")
        print(f"{'mean':<18}{mode:<12}{sum(totals) / len(totals):>8.2f}")


if __name__ == "__main__":
    main()
