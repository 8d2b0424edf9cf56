"""The assignments through the real nbgrader CLI and gradebook (see conftest.py)."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from bnlib.grading import ASSIGNMENTS
from bnlib.grading.catalogue import MISTAKES

REPO = Path(__file__).resolve().parents[2]

HIDDEN_BLOCK = re.compile(r"### BEGIN HIDDEN TESTS\n(.*?)### END HIDDEN TESTS", re.S)


def hidden_lines(assignment: str) -> list[str]:
    """Every line of every hidden-test block of the assignment's source notebook."""
    notebook = nbformat.read(str(REPO / "solutions" / assignment / f"{assignment}.ipynb"), 4)
    return [line.strip() for cell in notebook.cells
            for block in HIDDEN_BLOCK.findall(cell.source)
            for line in block.splitlines() if line.strip()]


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_regenerated_release_is_byte_identical_to_committed(course, assignment):
    name = Path(assignment) / f"{assignment}.ipynb"
    generated = (course / "exercises" / name).read_bytes()
    committed = (REPO / "exercises" / name).read_bytes()
    assert generated == committed, f"exercises/{name} is stale: run `make exercises`"


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_release_holds_no_solution_and_no_hidden_test(assignment):
    release = (REPO / "exercises" / assignment / f"{assignment}.ipynb").read_text()
    for secret in ("BEGIN SOLUTION", "BEGIN HIDDEN TESTS", "seed=", *hidden_lines(assignment)):
        assert secret not in release
    assert "raise NotImplementedError()" in release
    assert "YOUR ANSWER HERE" in release


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_assignment_has_ten_points_over_three_test_cells_with_visible_and_hidden_tests(
        assignment):
    notebook = nbformat.read(str(REPO / "solutions" / assignment / f"{assignment}.ipynb"), 4)
    tests = [c for c in notebook.cells if c.metadata.get("nbgrader", {}).get("grade")
             and not c.metadata["nbgrader"].get("solution")]
    written = [c for c in notebook.cells if c.cell_type == "markdown"
               and c.metadata.get("nbgrader", {}).get("grade")]
    assert len(tests) >= 3
    assert sum(c.metadata["nbgrader"]["points"] for c in tests) >= 10
    assert all("### BEGIN HIDDEN TESTS" in c.source for c in tests)
    assert all(re.search(r"^check\(.*globals\(\)\)$", c.source, re.M) for c in tests)
    assert len(written) == 1
    assert "chapters/" in notebook.cells[0].source


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_solution_scores_full_marks(graded, assignment):
    result = graded[("solution", assignment)]
    assert result.scores and result.scores == result.max_scores
    assert sum(result.max_scores.values()) >= 10


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_unmodified_release_scores_zero_with_feedback(graded, assignment):
    result = graded[("release", assignment)]
    assert result.scores and sum(result.scores.values()) == 0
    assert "replace `raise NotImplementedError()` with your code" in result.feedback


@pytest.mark.parametrize("index", range(len(MISTAKES)), ids=[m.id for m in MISTAKES])
def test_planted_mistake_loses_points_and_feedback_names_it(graded, index):
    mistake = MISTAKES[index]
    result = graded[(f"mistake{index:02d}", mistake.assignment)]
    assert sum(result.scores.values()) < sum(result.max_scores.values())
    assert mistake.diagnosis in result.feedback


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_feedback_contains_no_hidden_test(graded, assignment):
    secrets = ["BEGIN HIDDEN TESTS", "seed=", *hidden_lines(assignment)]
    feedbacks = [r.feedback for (student, a), r in graded.items() if a == assignment]
    assert feedbacks and all(feedbacks)
    for feedback in feedbacks:
        for secret in secrets:
            assert secret not in feedback


def test_stock_nbgrader_grades_and_its_feedback_hides_tests_and_tracebacks(stock_course):
    """Without the hardened pipeline, nbgrader's own autograde with this config still grades
    right, and feedback carries neither hidden tests nor tracebacks that would quote them."""
    from nbgrader.api import Gradebook

    from .conftest import feedback_text, nbgrader, planted, submit

    assignment = "bn_forward"
    nbgrader(stock_course, "generate_assignment", assignment, "--force")
    wrong_axis = next(m for m in MISTAKES if m.id == "bn_forward.wrong_axis")
    submit(stock_course, "solution", assignment,
           nbformat.read(str(REPO / "solutions" / assignment / f"{assignment}.ipynb"), 4))
    submit(stock_course, "mistake", assignment, planted(assignment, wrong_axis))
    nbgrader(stock_course, "autograde", assignment, "--force")
    nbgrader(stock_course, "generate_feedback", assignment, "--force")

    with Gradebook(f"sqlite:///{stock_course / 'grading' / 'gradebook.db'}") as gradebook:
        solution = gradebook.find_submission(assignment, "solution")
        mistake = gradebook.find_submission(assignment, "mistake")
        assert solution.code_score == solution.max_code_score >= 10
        assert mistake.code_score < mistake.max_code_score
    feedback = feedback_text(stock_course / "grading" / "feedback" / "mistake" / assignment /
                             f"{assignment}.html")
    assert wrong_axis.diagnosis in feedback
    for secret in ["BEGIN HIDDEN TESTS", "seed=", "most recent call last",
                   *hidden_lines(assignment)]:
        assert secret not in feedback
