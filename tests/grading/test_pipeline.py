"""IsolatedExecute on in-memory notebooks: verdicts land in test cells, student output stays in
student cells, and nbgrader's own scoring rule gives the intended points."""

from __future__ import annotations

import textwrap

import pytest
from nbformat import v4
from nbgrader.utils import determine_grade
from traitlets.config import Config

from bnlib.grading.pipeline import (
    IsolatedExecute,
    configure_autograde,
    explain_process_errors,
    forbidden_packages,
)

FORWARD = textwrap.dedent("""\
    import numpy as np
    import sys, warnings

    def batchnorm_forward(x, gamma, beta, eps=1e-5):
        warnings.warn("a warning from correct code", UserWarning)
        print("debug output", file=sys.stderr)
        mean = x.mean(axis=0)
        var = x.var(axis=0)
        x_hat = (x - mean) / np.sqrt(var + eps)
        return gamma * x_hat + beta, (x_hat, gamma, var, eps)

    warnings.warn("a warning at the top level", DeprecationWarning)
    print("top-level debug output", file=sys.stderr)
    """)


def graded_test_cell(source: str, grade_id: str, points: float = 2.0):
    cell = v4.new_code_cell(source)
    cell.metadata["nbgrader"] = {"grade": True, "solution": False, "locked": True,
                                 "grade_id": grade_id, "points": points, "schema_version": 3}
    return cell


def grade(*cells):
    nb = v4.new_notebook()
    nb.cells = list(cells)
    config = Config()
    config.GradingLimits.cell_timeout = 5
    config.GradingLimits.check_timeout = 10
    runner = IsolatedExecute(config=config)
    nb, _ = runner.preprocess(nb, {"nbgrader": {"student": "s", "assignment": "a",
                                                "notebook": "n"}})
    return nb


@pytest.fixture(scope="module")
def graded():
    return grade(
        v4.new_code_cell(FORWARD),
        graded_test_cell('from bnlib.grading import check\n'
                  'check("bn_forward", "batchnorm_forward", globals())', "visible"),
        graded_test_cell('check("bn_forward", "spatial_batchnorm_forward", globals(), seed=3)',
                  "missing"),
        graded_test_cell("assert True", "no_check"),
        graded_test_cell('check("bn_forward", "no_such_check", globals())', "unknown"),
    )


def test_passing_check_writes_a_stream_and_scores_full(graded):
    cell = graded.cells[1]
    assert [o.output_type for o in cell.outputs] == ["stream"]
    assert cell.outputs[0].text == "passed: batchnorm_forward matches the reference\n"
    assert determine_grade(cell) == (2.0, 2.0)


def test_student_warnings_stay_in_the_student_cell(graded):
    streams = {o.name: o.text for o in graded.cells[0].outputs if o.output_type == "stream"}
    assert "top-level debug output" in streams["stderr"]
    assert "DeprecationWarning" in streams["stderr"]


def test_missing_function_names_the_signature_and_scores_zero(graded):
    cell = graded.cells[2]
    assert cell.outputs[0].output_type == "error"
    assert cell.outputs[0].evalue.startswith(
        "define spatial_batchnorm_forward(x, gamma, beta, eps=1e-5) -> (out, cache)")
    assert cell.outputs[0].traceback == [f"AssertionError: {cell.outputs[0].evalue}"]
    assert determine_grade(cell) == (0, 2.0)


def test_test_cells_without_a_known_check_score_zero(graded):
    assert "holds no check(...) call" in graded.cells[3].outputs[0].evalue
    assert "unknown check bn_forward/no_such_check" in graded.cells[4].outputs[0].evalue
    assert determine_grade(graded.cells[3])[0] == determine_grade(graded.cells[4])[0] == 0


def test_test_cell_source_is_never_run_as_student_code():
    source = 'print("leaked")\ncheck("bn_forward", "batchnorm_forward", globals())'
    nb = grade(v4.new_code_cell(FORWARD), graded_test_cell(source, "t"))
    outputs = str([cell.outputs for cell in nb.cells])
    assert "leaked" not in outputs and "passed: batchnorm_forward" in outputs


def test_process_errors_are_explained():
    assert explain_process_errors("f raised MemoryError: ", 512) == (
        "f ran out of memory (the limit is 512 MiB)")
    assert explain_process_errors("case 2: f raised numpy.core._exceptions._ArrayMemoryError: "
                                  "Unable to allocate", 512) == (
        "case 2: f ran out of memory (the limit is 512 MiB)")
    assert explain_process_errors("f raised SystemExit: 3", 512).startswith(
        "f ended the process (exit code 3)")
    assert explain_process_errors("f raised MemoryError, for x of shape (4, 3) (eps = 1e-05)",
                                  512) == ("f ran out of memory (the limit is 512 MiB), for x of "
                                           "shape (4, 3) (eps = 1e-05)")
    assert explain_process_errors("f raised SystemExit: 3, for x of shape (2, 2) (seed)",
                                  512).startswith(
        "f ended the process (exit code 3), for x of shape (2, 2) (seed): do not call")
    assert explain_process_errors("out is wrong\nf raised ValueError: no", 512) == (
        "out is wrong\nf raised ValueError: no")


def test_a_long_message_costs_linear_work():
    """The regular expression this replaced took 91 s on 30,000 characters; a run that is
    quadratic or worse in the length would not finish here."""
    words = "a" * 4_000_000
    assert explain_process_errors(words + " raised MemoryError", 512) == (
        words + " ran out of memory (the limit is 512 MiB)")
    assert explain_process_errors("f raised MemoryError: " + words, 512) == (
        "f ran out of memory (the limit is 512 MiB)")
    lines = "\n".join(["x raised ValueError: " + "b" * 20] * 100_000)
    assert explain_process_errors(lines, 512) == lines


def test_forbidden_packages_follow_the_notebook_assignments():
    assert forbidden_packages({"bn_backward"})["torch"] == (
        "bn_backward is a NumPy assignment: importing torch is not allowed; write the "
        "computation yourself")
    assert "jax" in forbidden_packages({"bn_forward", "layer_norm"})
    assert forbidden_packages({"bn_torch"}) == {}
    assert forbidden_packages({"bn_torch", "bn_forward"}) == {}  # one allows it: allowed
    assert forbidden_packages({"no_such_assignment"}) == {}


def test_configure_autograde_replaces_execute_only():
    from traitlets.config import Config

    c = Config()
    c.CourseDirectory.root = "/course"
    configure_autograde(c, cell_timeout=7)
    names = [p.__name__ for p in c.Autograde.autograde_preprocessors]
    assert names[0] == "IsolatedExecute" and "Execute" not in names
    assert "SaveAutoGrades" in names and "LimitOutput" in names
    sanitize = [p.__name__ for p in c.Autograde.sanitize_preprocessors]
    assert "PreflightCells" in sanitize and "DeduplicateIds" not in sanitize
    assert names[-1] == "SanitizeStudentHTML"
    assert c.GradingLimits.cell_timeout == 7
    with pytest.raises(TypeError, match="unknown limit 'cell_time'"):
        configure_autograde(c, cell_time=7)
