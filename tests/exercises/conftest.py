"""A throw-away nbgrader course: this repository's nbgrader_config.py and solutions/, graded
through the real nbgrader command line with a SQLite gradebook.

The course is built once per session: release (generate_assignment), one submission per
student (the solution, the unmodified release, and one per catalogued mistake), then one
``nbgrader autograde`` and one ``nbgrader generate_feedback`` call per assignment.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest

from bnlib.grading import ASSIGNMENTS
from bnlib.grading.catalogue import MISTAKES, plant_into

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def nbgrader(course: Path, *args: str) -> subprocess.CompletedProcess:
    """Run the nbgrader CLI in ``course``; nbgrader needs alembic on PATH for a new gradebook."""
    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    done = subprocess.run([str(VENV_BIN / "nbgrader"), *args, "--log-level=ERROR"], cwd=course,
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"nbgrader {' '.join(args)} failed:\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="session")
def course(tmp_path_factory) -> Path:
    """A course folder with the repository's config and sources, assignments released."""
    root = tmp_path_factory.mktemp("course")
    shutil.copy(REPO / "nbgrader_config.py", root / "nbgrader_config.py")
    shutil.copytree(REPO / "solutions", root / "solutions")
    for assignment in ASSIGNMENTS:
        nbgrader(root, "generate_assignment", assignment, "--force")
    return root


def submit(course: Path, student: str, assignment: str, notebook) -> None:
    folder = course / "grading" / "submitted" / student / assignment
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, str(folder / f"{assignment}.ipynb"))


def planted(assignment: str, mistake) -> nbformat.NotebookNode:
    """The solution notebook with ``mistake`` planted into its code cells."""
    notebook = nbformat.read(str(REPO / "solutions" / assignment / f"{assignment}.ipynb"), 4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    for cell, source in zip(code, plant_into([c.source for c in code], mistake), strict=True):
        cell.source = source
    return notebook


@dataclass
class Graded:
    """What grading produced for one student and assignment."""

    scores: dict[str, float]        # grade cell id -> autograded score
    max_scores: dict[str, float]
    feedback: str                   # the feedback HTML, as text


def feedback_text(path: Path) -> str:
    return html.unescape(re.sub(r"<[^>]+>", " ", path.read_text()))


@pytest.fixture(scope="session")
def graded(course) -> dict[tuple[str, str], Graded]:
    """(student, assignment) -> Graded, for every submission of the session course."""
    from nbgrader.api import Gradebook

    for assignment in ASSIGNMENTS:
        source = REPO / "solutions" / assignment / f"{assignment}.ipynb"
        submit(course, "solution", assignment, nbformat.read(str(source), 4))
        release = course / "exercises" / assignment / f"{assignment}.ipynb"
        submit(course, "release", assignment, nbformat.read(str(release), 4))
    for index, mistake in enumerate(MISTAKES):
        # Student ids are mistake00, mistake01, ... in catalogue order.
        submit(course, f"mistake{index:02d}", mistake.assignment,
               planted(mistake.assignment, mistake))
    for assignment in ASSIGNMENTS:
        nbgrader(course, "autograde", assignment, "--force")
        nbgrader(course, "generate_feedback", assignment, "--force")

    results = {}
    with Gradebook(f"sqlite:///{course / 'grading' / 'gradebook.db'}") as gradebook:
        for submission_dir in (course / "grading" / "submitted").glob("*/*"):
            student, assignment = submission_dir.parent.name, submission_dir.name
            notebook = gradebook.find_submission_notebook(assignment, assignment, student)
            grades = [g for g in notebook.grades if g.auto_score is not None]
            html_path = course / "grading" / "feedback" / student / assignment / \
                f"{assignment}.html"
            results[(student, assignment)] = Graded(
                scores={g.name: g.auto_score for g in grades},
                max_scores={g.name: g.max_score for g in grades},
                feedback=feedback_text(html_path) if html_path.exists() else "",
            )
    return results


@pytest.fixture(scope="session")
def stock_course(tmp_path_factory) -> Path:
    """A course with only this repository's own nbgrader settings (the part of
    nbgrader_config.py above the hardened-autograding marker): stock nbgrader grading."""
    root = tmp_path_factory.mktemp("stock_course")
    config = (REPO / "nbgrader_config.py").read_text()
    marker = "# --- hardened autograding ---"
    assert marker in config
    (root / "nbgrader_config.py").write_text(config.split(marker)[0])
    shutil.copytree(REPO / "solutions", root / "solutions")
    return root
