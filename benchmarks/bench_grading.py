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
processes, the workers, their sandbox servers and sandboxes, redis-server), sampled before
and after each assignment. Start-up is paid once, before the first sample, as in a long
grading run: a warm-up round grades one submission of every assignment on each judging
process or worker (so each has started its sandbox servers, NumPy's and PyTorch's), and its
total is printed on the ``start-up`` row. Wall seconds are the time each assignment took.

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
import resource
import shutil
import statistics
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


def own_cpu() -> float:
    """CPU seconds of this process alone: the coordinator."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def grade(course: cli.Course, executor, assignment: str) -> tuple[float, float, float, dict]:
    """Core-seconds (all, and the coordinator's) and wall seconds of grading one assignment;
    the scores it gave."""
    cpu, coordinator, wall = tree_cpu(), own_cpu(), time.perf_counter()
    record = cli.grade_class(course, [assignment], jobs=0, timeout=600, executor=executor)
    wall, cpu, coordinator = (time.perf_counter() - wall, tree_cpu() - cpu,
                              own_cpu() - coordinator)
    failed = [s for s in record["students"] if s["status"] != "graded"]
    if failed:
        raise SystemExit(f"{assignment}: grading failed: {failed[0]['messages']}")
    return cpu, coordinator, wall, {(assignment, s["student"]): s["score"]
                                    for s in record["students"]}


def prepared_jobs(course: cli.Course) -> list[dict]:
    """The job of every submission of the class, prepared by the coordinator once."""
    config = course.config()
    return [cli.prepare_job(course, config, cli.check_submission(course, assignment, student))
            for assignment in ASSIGNMENTS for student in course.students(assignment)]


def judging_wall(executor, jobs: list[dict], rounds: int = 3) -> float:
    """Median wall seconds per job of judging ``jobs``, all queued at once and nothing
    recorded: the workers' throughput, without the coordinator's recording beside them."""
    walls = []
    for _ in range(rounds):
        started, waiting = time.perf_counter(), {job["id"] for job in jobs}
        for job in jobs:
            executor.submit(job, 600)
        while waiting:
            for result in executor.results(wait=1.0):
                if "error" in result:
                    raise SystemExit(f"judging failed: {result['error']}")
                waiting.discard(result["id"])
        walls.append((time.perf_counter() - started) / len(jobs))
    return statistics.median(walls)


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


def warm_up(course: cli.Course, executor, processes: int) -> float:
    """Core-seconds of grading one submission of every assignment on each of ``processes``
    judging processes (or workers): each starts its sandbox servers and imports what judging
    needs, once, as at the start of a long run."""
    cpu = tree_cpu()
    students = course.students(ASSIGNMENTS[0])[:processes]
    cli.grade_class(course, list(ASSIGNMENTS), jobs=0, timeout=600, students=students,
                    executor=executor)
    return tree_cpu() - cpu


def run(name: str, executor, course: cli.Course, per_assignment: int, processes: int) -> dict:
    """Grade every assignment on ``executor`` (after a warm-up); print a row for each."""
    started = warm_up(course, executor, processes)
    print(row(name, "start-up (total)", processes * len(ASSIGNMENTS), started), flush=True)
    rows = {}
    for assignment in ASSIGNMENTS:
        cpu, coordinator, wall, scores = grade(course, executor, assignment)
        rows[assignment] = [x / per_assignment for x in (cpu, coordinator, wall)] + [scores]
        print(row(name, assignment, per_assignment, *rows[assignment][:3]), flush=True)
    cost, coordinator, wall = (statistics.mean(r[i] for r in rows.values()) for i in range(3))
    print(row(name, "mean", per_assignment, cost, coordinator, wall))
    return {"cost": cost, "wall": wall,
            "scores": {k: v for r in rows.values() for k, v in r[3].items()}}


def row(name: str, what: str, count: int, *figures: float) -> str:
    return f"{name:<11} {what:<17} {count:>4} " + " ".join(f"{x:>10.2f}" for x in figures)


def verdict_lines(results: dict[str, dict]) -> list[str]:
    """Each executor's mean cost against COST_TARGET, then, given ``celery x1`` and ``celery
    x2``, the two-worker speed-up (end to end, and judging alone) against SPEEDUP_TARGET."""
    lines = []
    for name, result in results.items():
        verdict = "met" if result["cost"] <= COST_TARGET else "not met"
        lines.append(f"{name}: {result['cost']:.2f} core-s per submission averaged over the "
                     f"assignments (target <= {COST_TARGET}: {verdict})")
    if {"celery x1", "celery x2"} <= set(results):
        for measure, what in (("wall", "grading the class, the coordinator beside them"),
                              ("judging", "judging alone")):
            speedup = results["celery x1"][measure] / results["celery x2"][measure]
            verdict = "met" if speedup >= SPEEDUP_TARGET else "not met"
            lines.append(f"two workers over one, {what}: {speedup:.2f}x (target >= "
                         f"{SPEEDUP_TARGET}x: {verdict})")
    return lines


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
              f"{'coord.':>10} {'wall-s/sub':>10}")
        results = {}
        if "local" in args.executors:
            with LocalExecutor(args.jobs) as executor:
                results[f"local x{args.jobs}"] = run(f"local x{args.jobs}", executor, course,
                                                     args.per_assignment, args.jobs)
        if "celery" in args.executors:
            jobs = prepared_jobs(course)
            for count in (1, 2):
                workers = Workers(count, folder)
                try:
                    with CeleryExecutor(workers.url) as executor:
                        name = f"celery x{count}"
                        results[name] = run(name, executor, course, args.per_assignment, count)
                        results[name]["judging"] = judging_wall(executor, jobs)
                        print(f"{name:<11} judging alone: {results[name]['judging']:.2f} wall s "
                              f"per submission ({len(jobs)} queued at once, nothing recorded)",
                              flush=True)
                finally:
                    workers.close()
        print(f"load average at end {os.getloadavg()[0]:.1f}")
        print("\n".join(verdict_lines(results)))
        scores = [r["scores"] for r in results.values()]
        print("scores identical across executors:", all(s == scores[0] for s in scores))


if __name__ == "__main__":
    main()
