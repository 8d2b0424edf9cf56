"""Grade a class of synthetic submissions through `nbgrader autograde` and print the time.

Each submission is one assignment's solution notebook with, four times in five, a random
mistake of bnlib.grading.catalogue planted into it. The course is a temporary copy of this
repository's nbgrader_config.py and solutions/; grading uses whatever autograde pipeline that
config sets up, one `nbgrader autograde` call per assignment for all its students.

    .venv/bin/python benchmarks/bench_grading.py               # 100 submissions
    .venv/bin/python benchmarks/bench_grading.py --students 10

Targets: under 10 s per submission, a class of 100 under 10 minutes on 2 cores.
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
from collections import Counter
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bnlib.grading import ASSIGNMENTS  # noqa: E402
from bnlib.grading.catalogue import MISTAKES, plant_into  # noqa: E402

VENV_BIN = Path(sys.executable).parent


def nbgrader(course: Path, *args: str) -> float:
    """Run the nbgrader CLI in ``course``; return the wall time in seconds."""
    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    start = time.perf_counter()
    done = subprocess.run([str(VENV_BIN / "nbgrader"), *args, "--log-level=ERROR"], cwd=course,
                          env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"nbgrader {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def synthetic_submission(assignment: str, rng: random.Random):
    """The solution of ``assignment`` with a random catalogued mistake (or none); its label."""
    notebook = nbformat.read(str(REPO / "solutions" / assignment / f"{assignment}.ipynb"), 4)
    candidates = [m for m in MISTAKES if m.assignment == assignment]
    if rng.random() < 0.2:
        return notebook, "correct"
    mistake = rng.choice(candidates)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    for cell, source in zip(code, plant_into([c.source for c in code], mistake), strict=True):
        cell.source = source
    return notebook, mistake.id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=int, default=100, help="submissions to grade")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    with tempfile.TemporaryDirectory(prefix="bench_grading_") as tmp:
        course = Path(tmp)
        shutil.copy(REPO / "nbgrader_config.py", course / "nbgrader_config.py")
        shutil.copytree(REPO / "solutions", course / "solutions")
        release_time = sum(nbgrader(course, "generate_assignment", a, "--force")
                           for a in ASSIGNMENTS)

        per_assignment: Counter = Counter()
        labels: dict[str, str] = {}
        for index in range(args.students):
            assignment = ASSIGNMENTS[index % len(ASSIGNMENTS)]
            notebook, label = synthetic_submission(assignment, rng)
            folder = course / "grading" / "submitted" / f"student{index:03d}" / assignment
            folder.mkdir(parents=True)
            nbformat.write(notebook, str(folder / f"{assignment}.ipynb"))
            per_assignment[assignment] += 1
            labels[f"student{index:03d}"] = label

        print(f"platform: {platform.platform()}, {os.cpu_count()} CPUs, "
              f"python {platform.python_version()}")
        print(f"release of {len(ASSIGNMENTS)} assignments: {release_time:.1f} s")
        total = 0.0
        for assignment in ASSIGNMENTS:
            if not per_assignment[assignment]:
                continue
            seconds = nbgrader(course, "autograde", assignment, "--force")
            total += seconds
            print(f"autograde {assignment:13s} {per_assignment[assignment]:4d} submissions "
                  f"{seconds:7.1f} s  ({seconds / per_assignment[assignment]:.2f} s each)")
        print(f"total: {args.students} submissions in {total:.1f} s, "
              f"{total / max(args.students, 1):.2f} s per submission "
              f"(targets: < 10 s each, < 600 s for 100)")
        print(summary(course, labels))


def summary(course: Path, labels: dict[str, str]) -> str:
    """How many correct submissions got full marks and how many mistaken ones lost points."""
    from nbgrader.api import Gradebook

    full = lost = 0
    with Gradebook(f"sqlite:///{course / 'grading' / 'gradebook.db'}") as gradebook:
        for student, label in labels.items():
            submission = gradebook.find_student(student).submissions[0]
            complete = submission.code_score == submission.max_code_score
            full += label == "correct" and complete
            lost += label != "correct" and not complete
    correct = sum(label == "correct" for label in labels.values())
    return (f"correct submissions with full marks: {full} / {correct}; submissions with a "
            f"planted mistake that lost points: {lost} / {len(labels) - correct}")


if __name__ == "__main__":
    main()
