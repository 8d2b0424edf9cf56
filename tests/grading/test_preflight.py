"""Pre-flight: reading, repairing and restoring submitted notebooks before grading."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbformat import v4

from bnlib.grading import ASSIGNMENTS
from bnlib.grading import preflight as pf
from bnlib.grading.pipeline import CheckCall, UngradableTestCell, find_check_calls

REPO = Path(__file__).resolve().parents[2]


def graded(cell, grade_id, *, grade=False, solution=False, locked=False, points=None):
    meta = {"grade": grade, "solution": solution, "locked": locked, "grade_id": grade_id,
            "schema_version": 3}
    if points is not None:
        meta["points"] = points
    cell.metadata["nbgrader"] = meta
    return cell


def source_notebook():
    nb = v4.new_notebook()
    nb.cells = [
        graded(v4.new_markdown_cell("# Recap"), "recap", locked=True),
        graded(v4.new_code_cell("def f(x):\n    return 2 * x"), "answer", solution=True),
        graded(v4.new_code_cell('check("a", "visible", globals())'), "test_visible",
               grade=True, locked=True, points=2),
        v4.new_code_cell("print('scratch')"),
        graded(v4.new_code_cell('check("a", "hidden", globals(), seed=7)'), "test_hidden",
               grade=True, locked=True, points=3),
    ]
    return nb


@pytest.fixture
def reference():
    return pf.Reference.from_notebook(source_notebook())


def ids(nb):
    return [c.metadata.get("nbgrader", {}).get("grade_id") for c in nb.cells]


def test_invalid_json_is_rejected_with_position(tmp_path):
    path = tmp_path / "a.ipynb"
    path.write_text('{"cells": [}')
    with pytest.raises(pf.SubmissionRejected, match=r"a.ipynb is not a readable notebook: "
                                                    r"invalid JSON at line 1, column 12"):
        pf.read_notebook(path)
    assert path.read_text() == '{"cells": [}'  # the original is kept as it was


def test_truncated_and_empty_files_are_rejected():
    text = nbformat.writes(source_notebook())
    with pytest.raises(pf.SubmissionRejected, match="looks truncated"):
        pf.parse_notebook(text[: len(text) // 2], "a.ipynb")
    with pytest.raises(pf.SubmissionRejected, match="a.ipynb is empty"):
        pf.parse_notebook(b"", "a.ipynb")
    with pytest.raises(pf.SubmissionRejected, match="not a Jupyter notebook"):
        pf.parse_notebook(b"[1, 2]", "a.ipynb")


def test_nbformat_3_is_converted():
    old = {"nbformat": 3, "nbformat_minor": 0, "metadata": {}, "worksheets": [
        {"cells": [{"cell_type": "code", "input": "x = 1", "language": "python",
                    "outputs": [], "metadata": {}}], "metadata": {}}]}
    report = pf.parse_notebook(json.dumps(old))
    assert report.changes == ["converted from nbformat 3 to nbformat 4"]
    assert report.notebook.cells[0].source == "x = 1"


def test_schema_errors_are_repaired_and_logged():
    data = json.loads(nbformat.writes(source_notebook()))
    del data["cells"][1]["outputs"]
    data["cells"][3]["cell_type"] = "python"
    data["cells"][2]["source"] = ["check(", '"a", "visible", globals())']
    report = pf.parse_notebook(json.dumps(data))
    nbformat.validate(report.notebook)
    assert report.changes[0].startswith("schema errors repaired")
    assert "cell 3: unknown cell type 'python', kept as markdown" in report.changes
    assert report.notebook.cells[1].metadata.nbgrader.grade_id == "answer"
    assert report.notebook.cells[2].source == 'check("a", "visible", globals())'


def test_duplicate_grade_id_keeps_one_graded_cell(reference):
    nb = source_notebook()
    nb.cells.insert(2, nbformat.from_dict(json.loads(json.dumps(nb.cells[2]))))
    report = pf.preflight(nb, reference)
    assert ids(nb).count("test_visible") == 1
    assert "grade_id 'test_visible' appears 2 times" in report.changes[0]


def test_deleted_test_cell_is_restored_in_place(reference):
    nb = source_notebook()
    del nb.cells[2]
    report = pf.preflight(nb, reference)
    assert ids(nb) == ["recap", "answer", "test_visible", None, "test_hidden"]
    assert nb.cells[2].source == 'check("a", "visible", globals())'
    assert nb.cells[2].metadata.nbgrader.points == 2
    assert report.changes == ["test cell 'test_visible' was missing (deleted, or its metadata "
                              "removed): restored"]


def test_stripped_metadata_is_restored_as_a_graded_cell(reference):
    nb = source_notebook()
    del nb.cells[4].metadata["nbgrader"]
    pf.preflight(nb, reference)
    assert ids(nb).count("test_hidden") == 1
    restored = next(c for c in nb.cells if ids(nb)[nb.cells.index(c)] == "test_hidden")
    assert restored.metadata.nbgrader.grade and restored.metadata.nbgrader.points == 3


def test_edited_test_cell_points_and_type_are_restored(reference):
    nb = source_notebook()
    nb.cells[2].source = "pass  # full marks please"
    nb.cells[4].metadata.nbgrader.points = 300
    nb.cells[4].metadata.nbgrader.grade = False
    nb.cells[0] = graded(v4.new_code_cell("# Recap"), "recap", locked=True)
    report = pf.preflight(nb, reference)
    assert nb.cells[2].source == 'check("a", "visible", globals())'
    assert nb.cells[4].metadata.nbgrader.points == 3 and nb.cells[4].metadata.nbgrader.grade
    assert nb.cells[0].cell_type == "markdown"
    assert "test cell 'test_visible' was edited: restored" in report.changes
    assert "cell 'test_hidden': metadata grade, points edited, restored" in report.changes
    assert "cell 'recap': type changed to code, restored to markdown" in report.changes


def test_unknown_grade_id_is_stripped(reference):
    nb = source_notebook()
    nb.cells.append(graded(v4.new_code_cell("pass"), "my_own_test", grade=True, points=100))
    report = pf.preflight(nb, reference)
    assert "nbgrader" not in nb.cells[-1].metadata
    assert "unknown grade_id 'my_own_test' removed" in report.changes[0]


def test_bnlib_imports_in_student_cells_are_flagged(reference):
    nb = source_notebook()
    nb.cells[1].source = "from bnlib.numpy import batchnorm_forward as f"
    report = pf.preflight(nb, reference)
    assert report.warnings == ["cell 1 imports bnlib: bnlib is not available while your code "
                               "is graded, so this cell will fail there; write the code yourself"]


def test_missing_and_renamed_notebooks(tmp_path):
    (tmp_path / "bn_forward (1).ipynb").write_text("{}")
    assert pf.check_folder(tmp_path, ["bn_forward"]) == [
        "file bn_forward.ipynb not found (found instead: bn_forward (1).ipynb; was it renamed?)"]
    assert pf.check_folder(tmp_path / "absent", ["bn_forward"]) == [
        "file bn_forward.ipynb not found"]


def test_check_calls_are_found_in_source_order():
    source = ('from bnlib.grading import check\ncheck("a", "one", globals())\n'
              '### BEGIN HIDDEN TESTS\ncheck("a", "two", globals(), seed=12)\n'
              '### END HIDDEN TESTS\n')
    assert find_check_calls(source) == [CheckCall("a", "one", None), CheckCall("a", "two", 12)]
    with pytest.raises(UngradableTestCell, match="literal integer seed"):
        find_check_calls('check("a", "b", globals(), seed=s)')
    with pytest.raises(UngradableTestCell, match="not valid Python"):
        find_check_calls("check(")


def test_released_test_cell_without_hidden_tests_is_no_edit():
    source = source_notebook()
    source.cells[4].source = ('check("a", "visible", globals())\n### BEGIN HIDDEN TESTS\n'
                              'check("a", "hidden", globals(), seed=7)\n### END HIDDEN TESTS')
    nb = source_notebook()
    nb.cells[4].source = 'check("a", "visible", globals())'  # as nbgrader releases it
    report = pf.preflight(nb, pf.Reference.from_notebook(source))
    assert report.changes == []
    assert nb.cells[4].source == source.cells[4].source  # hidden tests back for grading


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_untouched_releases_need_no_repair(assignment):
    """Against its own release or its source, an untouched release changes nothing: nbgrader
    writes "task": false on every cell, and an absent flag means the same."""
    release = REPO / "exercises" / assignment / f"{assignment}.ipynb"
    source = REPO / "solutions" / assignment / f"{assignment}.ipynb"
    for reference in (release, source):
        report = pf.read_notebook(release)
        pf.preflight(report.notebook, pf.Reference.from_notebook(
            pf.read_notebook(reference).notebook), report)
        assert report.changes == [] and report.warnings == [], reference


def test_bnlib_imports_are_found_without_parsing():
    assert pf.imports_bnlib("import os, bnlib.numpy as bn")
    assert pf.imports_bnlib("x = 1; from bnlib import numpy")
    assert pf.imports_bnlib("def f(:\n    import bnlib")  # not valid Python: still found
    assert not pf.imports_bnlib("import bnlibx\nfrom numpy import bnlib_like\n# import bnlib")
    assert not pf.imports_bnlib("(" * 1_000_000)  # no parser to overflow


def test_untrusted_names_are_cut_in_messages(reference):
    nb = source_notebook()
    nb.cells.append(graded(v4.new_code_cell("pass"), "x" * 100_000, grade=True, points=1))
    report = pf.preflight(nb, reference)
    assert len(report.changes[0]) < 200
