"""Grades out to Canvas: an nbgrader exporter that writes a CSV Canvas's gradebook imports.

    nbgrader export --exporter=bnlib.grading.canvas.CanvasExportPlugin

writes ``grading/canvas.csv`` (``--to FILE`` for another path) in the layout of Canvas's own
gradebook export, which is also what its "Import" reads::

    Student,ID,SIS User ID,SIS Login ID,Section,bn_forward (4711),bn_torch (4712)
    Points Possible,,,,,12,12
    "Lovelace, Ada",1234,A001,ada,Section 1,12,9.5

One row per student, one column per assignment titled ``<name> (<Canvas assignment id>)``
(Canvas matches the column to the assignment by that id; a column without an id is matched
by its title, or creates a new assignment), and a second row of points possible. The score is
nbgrader's: the submission's score less its late penalty, never below 0; a student with no
submission scores 0, as in nbgrader's plain CSV export.

Canvas finds each student by ``ID`` (its own user id), else by ``SIS User ID``, else by
``SIS Login ID``, else by name. nbgrader knows none of Canvas's ids, so ``roster`` names a
CSV that maps them, usually the gradebook export downloaded from Canvas itself: the column
``roster_key`` (``SIS Login ID`` by default) holds the nbgrader student id, and the row gives
that student's ``Student``, ``ID``, ``SIS User ID``, ``SIS Login ID`` and ``Section``.
Without a roster the nbgrader id is written as the ``SIS Login ID``.

Configured in ``nbgrader_config.py``::

    c.CanvasExportPlugin.assignment_ids = {"bn_forward": 4711, "bn_torch": 4712}
    c.CanvasExportPlugin.roster = "grading/canvas_roster.csv"
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from nbgrader.api import Gradebook, MissingEntry
from nbgrader.plugins import ExportPlugin
from traitlets import Dict, Integer, Unicode

#: The student columns of a Canvas gradebook, in Canvas's order.
STUDENT_COLUMNS = ("Student", "ID", "SIS User ID", "SIS Login ID", "Section")
#: The first cell of the row that gives each assignment's points possible.
POINTS_POSSIBLE = "Points Possible"
#: Where the export goes without ``--to``: next to the gradebook, like grades.csv.
DEFAULT_FILE = "canvas.csv"


class RosterError(ValueError):
    """The roster CSV cannot map nbgrader's student ids to Canvas's."""


def read_roster(path: str | os.PathLike, key: str) -> dict[str, dict[str, str]]:
    """nbgrader student id -> that student's Canvas columns, from a CSV whose ``key`` column
    holds the nbgrader id (a Canvas gradebook export has every column; others may be
    missing). Canvas's "Points Possible" row and rows without a key are skipped."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:  # Excel adds a BOM
            rows = list(csv.DictReader(handle))
            header = rows[0].keys() if rows else []
    except OSError as exc:
        raise RosterError(f"cannot read the Canvas roster {path}: {exc.strerror}") from None
    if rows and key not in header:
        raise RosterError(f"the Canvas roster {path} has no {key!r} column (its columns: "
                          f"{', '.join(header)}); set CanvasExportPlugin.roster_key")
    roster = {}
    for row in rows:
        nbgrader_id = (row.get(key) or "").strip()
        if not nbgrader_id or POINTS_POSSIBLE in (row.get("Student") or ""):
            continue
        if nbgrader_id in roster:
            raise RosterError(f"the Canvas roster {path} lists {key} {nbgrader_id!r} twice")
        roster[nbgrader_id] = {column: (row.get(column) or "").strip()
                               for column in STUDENT_COLUMNS}
    return roster


def assignment_title(name: str, canvas_id: int | None) -> str:
    """A column title Canvas matches to its assignment: ``name (id)``, or ``name`` alone."""
    return name if canvas_id is None else f"{name} ({canvas_id})"


def points(value: float) -> str:
    """A score as Canvas reads it: plain decimals, no float noise (``9.5``, ``12``)."""
    return f"{float(value):.6f}".rstrip("0").rstrip(".")


def student_score(gradebook: Gradebook, assignment: str, student: str) -> float:
    """The score nbgrader's plain export gives: score less late penalty, at least 0; 0
    without a submission."""
    try:
        submission = gradebook.find_submission(assignment, student)
    except MissingEntry:
        return 0.0
    return max(0.0, submission.score - submission.late_submission_penalty)


class CanvasExportPlugin(ExportPlugin):
    """Writes the gradebook as a CSV that Canvas's gradebook import reads (see the module
    docstring)."""

    assignment_ids = Dict(value_trait=Integer(), default_value={},
                          help="nbgrader assignment name -> Canvas assignment id (the number "
                          "in the assignment's Canvas URL).").tag(config=True)
    roster = Unicode("", help="A CSV mapping nbgrader student ids to Canvas students, e.g. "
                     "the gradebook export downloaded from Canvas.").tag(config=True)
    roster_key = Unicode("SIS Login ID", help="The roster column that holds the nbgrader "
                         "student id.").tag(config=True)

    def export(self, gradebook: Gradebook) -> None:
        destination = self.to or DEFAULT_FILE
        roster = read_roster(self.roster, self.roster_key) if self.roster else None
        assignments = [a for a in gradebook.assignments
                       if not self.assignment or a.name in map(str, self.assignment)]
        students = [s for s in gradebook.students
                    if not self.student or s.id in map(str, self.student)]
        self._warn_unmatched(assignments, students, roster)
        self.log.info("Exporting grades for Canvas to %s", destination)
        with open(destination, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow([*STUDENT_COLUMNS, *(assignment_title(
                a.name, self.assignment_ids.get(a.name)) for a in assignments)])
            writer.writerow([POINTS_POSSIBLE, *[""] * (len(STUDENT_COLUMNS) - 1),
                             *(points(a.max_score) for a in assignments)])
            for student in students:
                columns = self._student_columns(student, roster)
                writer.writerow([*(columns[c] for c in STUDENT_COLUMNS), *(
                    points(student_score(gradebook, a.name, student.id))
                    for a in assignments)])

    def _student_columns(self, student, roster) -> dict[str, str]:
        """The roster's columns for ``student``; where it has none, Canvas's sortable name
        from nbgrader's, and the nbgrader id as the login Canvas matches on."""
        name = ", ".join(part for part in (student.last_name, student.first_name) if part)
        columns = {"Student": name or student.id, "ID": "", "SIS User ID": "",
                   "SIS Login ID": student.id, "Section": ""}
        known = (roster or {}).get(student.id, {})
        return {**columns, **{column: value for column, value in known.items() if value}}

    def _warn_unmatched(self, assignments, students, roster) -> None:
        untitled = [a.name for a in assignments if a.name not in self.assignment_ids]
        if untitled:
            self.log.warning("No Canvas assignment id for %s (CanvasExportPlugin."
                             "assignment_ids): Canvas matches these columns by title, or "
                             "creates new assignments", ", ".join(untitled))
        if roster is not None:
            unknown = sorted(s.id for s in students if s.id not in roster)
            if unknown:
                self.log.warning("Not in the Canvas roster %s, written with their nbgrader "
                                 "id as SIS Login ID: %s", self.roster, ", ".join(unknown))
