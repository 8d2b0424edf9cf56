"""What grading one submission costs, per assignment and per executor, and what a second
worker buys.

Each submission is one assignment's solution notebook with, four times in five, a random
mistake of bnlib.grading.catalogue planted into it. The course is a temporary copy of this
repository's nbgrader_config.py and solutions/. The class is graded, one assignment at a
time, by the coordinator in this process (``bnlib.grading.cli.grade_class``) on

    local       the local executor's long-lived processes (``--jobs``, default 2)
    celery x1   one Celery worker (concurrency 1) on a redis-server started here
    celery x2   two such workers

Core-seconds are the CPU time of this process and every process under it (the judging
processes, the workers, their sandboxes, redis-server), sampled before and after each
assignment: start-up is paid once, before the first sample, as in a long grading run. Wall
seconds are the time each assignment took.

    .venv/bin/python benchmarks/bench_grading.py                  # 4 submissions per assignment
    .venv/bin/python benchmarks/bench_grading.py --per-assignment 10 --executors local

Targets: at most 0.5 core-seconds per submission averaged over the assignments, and two
workers at least 1.8 times as fast as one. The machine's load is printed with the results:
other work on the machine takes cores from the workers and makes the speed-up smaller.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bnlib.grading import ASSIGNMENTS, cli  # noqa: E402
from bnlib.grading.catalogue import MISTAKES, plant_into  # noqa: E402
from bnlib.grading.executors import CeleryExecutor, LocalExecutor  # noqa: E402

VENV_BIN = Path(sys.executable).parent
COST_TARGET, SPEEDUP_TARGET = 0.5, 1.8


def nbgrader(course: Path, *args: str) -> None:
    done = subprocess.run([str(VENV_BIN / "nbgrader"), *args, "--log-level=ERROR"], cwd=course,
                          env=cli.nbgrader_env(), capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"nbgrader {' '.join(args)} failed:\n{done.stderr[-3000:]}")


def synthetic_submission(assignment: str, rng: random.Random):
    """The solution of ``assignment`` with a random catalogued mistake (or none)."""
    notebook = nbformat.read(str(REPO / "solutions" / assignment / f"{assignment}.ipynb"), 4)
    if rng.random() < 0.2:
        return notebook
    mistake = rng.choice([m for m in MISTAKES if m.assignment == assignment])
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    for cell, source in zip(code, plant_into([c.source for c in code], mistake), strict=True):
        cell.source = source
    return notebook


def make_class(course: Path, per_assignment: int, seed: int) -> None:
    shutil.copy(REPO / "nbgrader_config.py", course / "nbgrader_config.py")
    shutil.copytree(REPO / "solutions", course / "solutions")
    for assignment in ASSIGNMENTS:
        nbgrader(course, "generate_assignment", assignment, "--force")
    rng = random.Random(seed)
    for assignment in ASSIGNMENTS:
        for index in range(per_assignment):
            folder = course / "grading" / "submitted" / f"student{index:03d}" / assignment
            folder.mkdir(parents=True)
            nbformat.write(synthetic_submission(assignment, rng),
                           str(folder / f"{assignment}.ipynb"))


def tree_cpu() -> float:
    """CPU seconds of this process and all under it, the ones that ended included."""
    me = psutil.Process()
    total = 0.0
    for process in [me, *me.children(recursive=True)]:
        try:
            t = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def grade(course: cli.Course, executor, assignment: str) -> tuple[float, float, dict]:
    """Core-seconds and wall seconds of grading one assignment; the scores it gave."""
    cpu, wall = tree_cpu(), time.perf_counter()
    record = cli.grade_class(course, [assignment], jobs=0, timeout=600, executor=executor)
    wall, cpu = time.perf_counter() - wall, tree_cpu() - cpu
    failed = [s for s in record["students"] if s["status"] != "graded"]
    if failed:
        raise SystemExit(f"{assignment}: grading failed: {failed[0]['messages']}")
    return cpu, wall, {(assignment, s["student"]): s["score"] for s in record["students"]}


class Workers:
    """A redis-server and ``count`` Celery workers of concurrency 1, all under this process."""

    def __init__(self, count: int, folder: Path):
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.url = f"redis://127.0.0.1:{port}/0"
        self.redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind",
                                       "127.0.0.1", "--save", "", "--appendonly", "no"],
                                      stdout=subprocess.DEVNULL, cwd=folder)
        self.workers = [subprocess.Popen(
            [sys.executable, "-m", "bnlib.grading.cli", "worker", "--broker", self.url,
             "--concurrency", "1", "--loglevel", "WARNING"], env=cli.nbgrader_env(),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(count)]

    def close(self) -> None:
        for process in [*self.workers, self.redis]:
            process.terminate()
            process.wait()


def run(name: str, executor, course: cli.Course, per_assignment: int) -> dict:
    """Grade every assignment on ``executor`` (after a warm-up one); print a row for each."""
    grade(course, executor, ASSIGNMENTS[0])  # start-up: imports, processes, caches
    rows = {}
    for assignment in ASSIGNMENTS:
        cpu, wall, scores = grade(course, executor, assignment)
        rows[assignment] = (cpu / per_assignment, wall / per_assignment, scores)
        print(f"{name:<11} {assignment:<17} {per_assignment:>4} {cpu / per_assignment:>10.2f} "
              f"{wall / per_assignment:>10.2f}", flush=True)
    cost = sum(r[0] for r in rows.values()) / len(rows)
    wall = sum(r[1] for r in rows.values()) / len(rows)
    print(f"{name:<11} {'mean':<17} {per_assignment:>4} {cost:>10.2f} {wall:>10.2f}")
    return {"cost": cost, "wall": wall,
            "scores": {k: v for r in rows.values() for k, v in r[2].items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-assignment", type=int, default=4, help="submissions each")
    parser.add_argument("--jobs", type=int, default=2, help="processes of the local executor")
    parser.add_argument("--executors", nargs="+", default=["local", "celery"],
                        choices=["local", "celery"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_grading_") as tmp:
        folder = Path(tmp)
        make_class(folder, args.per_assignment, args.seed)
        course = cli.Course(folder)
        print(f"platform: {platform.platform()}, {os.cpu_count()} CPUs, python "
              f"{platform.python_version()}; load average at start "
              f"{os.getloadavg()[0]:.1f}")
        print(f"{'executor':<11} {'assignment':<17} {'subs':>4} {'core-s/sub':>10} "
              f"{'wall-s/sub':>10}")
        results = {}
        if "local" in args.executors:
            with LocalExecutor(args.jobs) as executor:
                results[f"local x{args.jobs}"] = run(f"local x{args.jobs}", executor, course,
                                                     args.per_assignment)
        if "celery" in args.executors:
            for count in (1, 2):
                workers = Workers(count, folder)
                try:
                    with CeleryExecutor(workers.url) as executor:
                        results[f"celery x{count}"] = run(f"celery x{count}", executor, course,
                                                          args.per_assignment)
                finally:
                    workers.close()
        print(f"load average at end {os.getloadavg()[0]:.1f}")
        for name, result in results.items():
            verdict = "met" if result["cost"] <= COST_TARGET else "not met"
            print(f"{name}: {result['cost']:.2f} core-s per submission averaged over the "
                  f"assignments (target <= {COST_TARGET}: {verdict})")
        if {"celery x1", "celery x2"} <= set(results):
            speedup = results["celery x1"]["wall"] / results["celery x2"]["wall"]
            verdict = "met" if speedup >= SPEEDUP_TARGET else "not met"
            print(f"two workers over one: {speedup:.2f}x (target >= {SPEEDUP_TARGET}x: "
                  f"{verdict})")
        scores = [r["scores"] for r in results.values()]
        print("scores identical across executors:", all(s == scores[0] for s in scores))


if __name__ == "__main__":
    main()
