"""README's two tables of assignments (student guide, instructor guide) against the
declarations in bnlib/grading/assignments/: every assignment, its chapter, its graded functions
in notebook order and what its student code may not import."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bnlib.grading.assignments import declared
from bnlib.grading.checks import AUTOGRAD_LIBRARIES

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
ASSIGNMENTS = declared()


def table_rows(header: str) -> dict[str, list[str]]:
    """The rows of the table under ``header``, keyed by the name in their first cell."""
    table = README.split(f"\n{header}\n|---", 1)[1].split("\n\n", 1)[0]
    rows = {}
    for line in table.splitlines()[1:]:
        first, *cells = (cell.strip() for cell in line.strip().strip("|").split("|"))
        rows[re.search(r"(\w+)(?:\.ipynb)?`$", first)[1]] = cells
    return rows


STUDENT_ROWS = table_rows("| assignment | chapter | you write |")
INSTRUCTOR_ROWS = table_rows(
    "| assignment | chapter | graded functions | student code may not import |")


def test_both_tables_list_the_declared_assignments_in_chapter_order():
    names = [assignment.name for assignment in ASSIGNMENTS]
    assert list(STUDENT_ROWS) == names
    assert list(INSTRUCTOR_ROWS) == names


@pytest.mark.parametrize("assignment", ASSIGNMENTS, ids=lambda a: a.name)
def test_student_row_links_the_chapter_and_names_every_graded_function(assignment):
    chapter, you_write = STUDENT_ROWS[assignment.name]
    assert re.fullmatch(rf"\[{assignment.chapter}, [^]]+\]\(chapters/0{assignment.chapter}_\w+"
                        r"\.md\)", chapter)
    written = re.findall(r"`(\w+)`", you_write)
    assert [f for f in written if f in {g.name for g in assignment.functions}] == \
        list(dict.fromkeys(g.name for g in assignment.functions))


@pytest.mark.parametrize("assignment", ASSIGNMENTS, ids=lambda a: a.name)
def test_instructor_row_gives_chapter_functions_and_forbidden_imports(assignment):
    chapter, functions, forbidden = INSTRUCTOR_ROWS[assignment.name]
    assert chapter == str(assignment.chapter)
    assert re.findall(r"`(\w+)`", functions) == [f.name for f in assignment.functions]
    expected = {AUTOGRAD_LIBRARIES: "autograd libraries", (): "nothing"}
    assert forbidden == expected[assignment.forbidden_imports]
