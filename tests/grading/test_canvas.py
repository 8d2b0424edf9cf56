"""The Canvas export: ``nbgrader export --exporter=bnlib.grading.canvas.CanvasExportPlugin`` on a
real SQLite gradebook, read back the way Canvas's gradebook import reads a CSV (its
``GradebookImporter``: a header of Student, ID, [SIS User ID,] SIS Login ID, Section; one column
per assignment titled ``name (id)``; a "Points Possible" row; each student found by ID, then SIS
User ID, then SIS Login ID, then name)."""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from nbgrader.api import Gradebook

from bnlib.grading import cli
from bnlib.grading.canvas import RosterError, points, read_roster

REPO = Path(__file__).resolve().parents[2]
EXPORTER = "bnlib.grading.canvas.CanvasExportPlugin"
# nbgrader's own add_submission warns about its session; nothing of ours
pytestmark = pytest.mark.filterwarnings("ignore::sqlalchemy.exc.SAWarning")

# The Canvas course the grades go to: its assignments and its students.
CANVAS_ASSIGNMENTS = {4711: "BN forward", 4712: "BN in PyTorch"}
ASSIGNMENT_IDS = {"bn_forward": 4711, "bn_torch": 4712}
CANVAS_STUDENTS = [  # Canvas user id, name, sortable name, SIS user id, SIS login id, section
    (1001, "Ada Lovelace", "Lovelace, Ada", "A001", "ada", "Section 1"),
    (1002, "Alan Turing", "Turing, Alan", "A002", "aturing", "Section 2"),
    (1003, 'Grace "Amazing" Hopper', 'Hopper, Grace "Amazing"', "A003", "grace", "Section 1"),
]
# nbgrader's students: id, first name, last name; the ids are Canvas's SIS login ids
STUDENTS = [("ada", "Ada", "Lovelace"), ("aturing", "Alan", "Turing"),
            ("grace", 'Grace "Amazing"', "Hopper")]
MAX_SCORES = {"bn_forward": (3.0, 3.0, 4.0), "bn_torch": (5.0, 7.0)}


def make_gradebook(root: Path) -> None:
    """A course with two assignments: ada and grace submitted both (ada one late), aturing
    only bn_forward."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "nbgrader_config.py", root / "nbgrader_config.py")
    (root / "grading").mkdir(exist_ok=True)
    scores = {("ada", "bn_forward"): (3.0, 1.5, 4.0), ("ada", "bn_torch"): (5.0, 4.5),
              ("aturing", "bn_forward"): (0.0, 3.0, 2.25),
              ("grace", "bn_forward"): (3.0, 3.0, 4.0), ("grace", "bn_torch"): (0.0, 0.0)}
    with Gradebook(f"sqlite:///{root / 'grading' / 'gradebook.db'}") as gradebook:
        for assignment, maxima in MAX_SCORES.items():
            gradebook.add_assignment(assignment)
            gradebook.add_notebook(assignment, assignment)
            for index, max_score in enumerate(maxima):
                gradebook.add_grade_cell(f"test_{index}", assignment, assignment,
                                         max_score=max_score, cell_type="code")
        for student, first, last in STUDENTS:
            gradebook.add_student(student, first_name=first, last_name=last)
        for (student, assignment), cell_scores in scores.items():
            submission = gradebook.add_submission(assignment, student)
            for index, score in enumerate(cell_scores):
                gradebook.find_grade(f"test_{index}", assignment, assignment,
                                     student).manual_score = score
            if (student, assignment) == ("ada", "bn_torch"):
                submission.notebooks[0].late_submission_penalty = 2.0
        gradebook.db.commit()


@pytest.fixture(scope="module")
def graded(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("graded") / "course"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PATH", cli.nbgrader_env()["PATH"])  # nbgrader runs alembic from PATH
        make_gradebook(root)
    return root


@pytest.fixture
def root(graded, tmp_path) -> Path:
    """A fresh copy of the graded course."""
    return Path(shutil.copytree(graded, tmp_path / "course"))


def expected_scores(root: Path) -> dict[tuple[str, str], float]:
    """(student, assignment) -> score, as nbgrader's own CSV export computes it."""
    found = {}
    with Gradebook(f"sqlite:///{root / 'grading' / 'gradebook.db'}") as gradebook:
        for assignment in MAX_SCORES:
            for student, _, _ in STUDENTS:
                try:
                    submission = gradebook.find_submission(assignment, student)
                except Exception:  # noqa: BLE001 - MissingEntry: no submission scores 0
                    found[student, assignment] = 0.0
                    continue
                found[student, assignment] = max(
                    0.0, submission.score - submission.late_submission_penalty)
    return found


def write_config(root: Path, extra: str) -> None:
    with (root / "nbgrader_config.py").open("a") as handle:
        handle.write(extra)


def export(root: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "nbgrader", "export", *args], cwd=root,
                            capture_output=True, text=True, env=cli.nbgrader_env())
    assert result.returncode == 0, result.stderr
    return result


def canvas_import(path: Path) -> tuple[dict[int, str], dict[tuple[int, int], str]]:
    """Read a gradebook CSV as Canvas's importer does; return (points possible by Canvas
    assignment id, grade by (Canvas user id, Canvas assignment id)). Fails where Canvas would
    refuse the file, or would create a student or an assignment instead of finding it."""
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    header = rows[0]
    assert len(header) > 3 and re.search("Student", header[0]) and re.search("ID", header[1])
    student_columns = 3
    if re.search(r"SIS\s+Login\s+ID", header[2]):
        login_column, sis_column, student_columns = 2, None, 4
    else:
        assert re.search(r"SIS\s+User\s+ID", header[2]) and re.search(r"SIS\s+Login\s+ID",
                                                                      header[3])
        sis_column, login_column, student_columns = 2, 3, 5
    assert re.search("Section", header[student_columns - 1]), "Canvas: invalid header row"
    assignments = []
    for title in header[student_columns:]:
        match = re.fullmatch(r"(.*)\s\((\d+)\)", title)
        assert match and int(match[2]) in CANVAS_ASSIGNMENTS, f"a new assignment: {title}"
        assignments.append(int(match[2]))
    points_possible, grades = {}, {}
    by_id = {s[0]: s[0] for s in CANVAS_STUDENTS}
    by_sis = {s[3]: s[0] for s in CANVAS_STUDENTS}
    by_login = {s[4]: s[0] for s in CANVAS_STUDENTS}
    by_name = {name: s[0] for s in CANVAS_STUDENTS for name in s[1:3]}
    for row in rows[1:]:
        if re.search("Points Possible", row[0]):
            points_possible.update(zip(assignments, row[student_columns:], strict=True))
            continue
        user = (by_id.get(int(row[1])) if row[1].strip() else None) \
            or (by_sis.get(row[sis_column]) if sis_column is not None else None) \
            or by_login.get(row[login_column]) or by_name.get(row[0])
        assert user is not None, f"Canvas would add a new student: {row}"
        for assignment, grade in zip(assignments, row[student_columns:], strict=True):
            assert (user, assignment) not in grades
            grades[user, assignment] = grade
    return points_possible, grades


def canvas_user(student: str) -> int:
    return next(s[0] for s in CANVAS_STUDENTS if s[4] == student)


def assert_every_score_imported(root: Path, path: Path) -> None:
    points_possible, grades = canvas_import(path)
    assert points_possible == {ASSIGNMENT_IDS[a]: points(sum(m))
                               for a, m in MAX_SCORES.items()}
    expected = expected_scores(root)
    assert len(grades) == len(expected)
    for (student, assignment), score in expected.items():
        assert float(grades[canvas_user(student), ASSIGNMENT_IDS[assignment]]) == \
            pytest.approx(score), (student, assignment)


def write_roster(path: Path) -> None:
    """The roster as Canvas's own gradebook export gives it, Points Possible row included."""
    with path.open("w", newline="", encoding="utf-8-sig") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Student", "ID", "SIS User ID", "SIS Login ID", "Section",
                         "Quiz 1 (99)", "Current Score"])
        writer.writerow(["    Points Possible", "", "", "", "", "10", "(read only)"])
        for user, _, sortable, sis, login, section in CANVAS_STUDENTS:
            writer.writerow([sortable, user, sis, login, section, "7", "70"])


def test_export_with_a_roster_imports_every_score(root):
    write_roster(root / "grading" / "canvas_roster.csv")
    write_config(root, f"c.CanvasExportPlugin.assignment_ids = {ASSIGNMENT_IDS!r}\n"
                       "c.CanvasExportPlugin.roster = 'grading/canvas_roster.csv'\n")
    export(root, f"--exporter={EXPORTER}")
    path = root / "grading" / "canvas.csv"
    assert_every_score_imported(root, path)
    rows = list(csv.reader(path.open(newline="", encoding="utf-8")))
    assert rows[0] == ["Student", "ID", "SIS User ID", "SIS Login ID", "Section",
                       "bn_forward (4711)", "bn_torch (4712)"]
    assert rows[1] == ["Points Possible", "", "", "", "", "10", "12"]
    # Canvas's columns for each student come from the roster, matched on the SIS Login ID
    by_login = {row[3]: row for row in rows[2:]}
    assert by_login["ada"] == ["Lovelace, Ada", "1001", "A001", "ada", "Section 1", "8.5", "7.5"]
    assert by_login["aturing"][:5] == ["Turing, Alan", "1002", "A002", "aturing", "Section 2"]
    assert by_login["aturing"][5:] == ["5.25", "0"]  # no bn_torch submission scores 0


def test_export_without_a_roster_matches_on_the_login_id(root):
    write_config(root, f"c.CanvasExportPlugin.assignment_ids = {ASSIGNMENT_IDS!r}\n")
    result = export(root, f"--exporter={EXPORTER}")
    path = root / "grading" / "canvas.csv"
    assert_every_score_imported(root, path)
    rows = list(csv.reader(path.open(newline="", encoding="utf-8")))
    assert ['Hopper, Grace "Amazing"', "", "", "grace", ""] in [row[:5] for row in rows]
    assert "No Canvas assignment id" not in result.stderr


def test_plain_csv_export_stays_and_is_not_overwritten(root):
    export(root)
    plain = (root / "grading" / "grades.csv").read_text()
    assert plain.startswith("assignment,duedate,timestamp,student_id")
    export(root, f"--exporter={EXPORTER}", "--CanvasExportPlugin.to=elsewhere.csv")
    assert (root / "grading" / "grades.csv").read_text() == plain
    assert (root / "elsewhere.csv").read_text().startswith("Student,ID,SIS User ID")


def test_students_and_assignments_can_be_selected_and_ids_missing_are_reported(root):
    result = export(root, f"--exporter={EXPORTER}", "--assignment=bn_torch",
                    "--student=ada")
    rows = list(csv.reader((root / "grading" / "canvas.csv").open(newline="")))
    assert rows == [["Student", "ID", "SIS User ID", "SIS Login ID", "Section", "bn_torch"],
                    ["Points Possible", "", "", "", "", "12"],
                    ["Lovelace, Ada", "", "", "ada", "", "7.5"]]
    assert "No Canvas assignment id for bn_torch" in result.stderr


def test_students_missing_from_the_roster_are_reported(root):
    roster = root / "grading" / "canvas_roster.csv"
    roster.write_text("SIS Login ID,ID\nada,1001\n")
    write_config(root, "c.CanvasExportPlugin.roster = 'grading/canvas_roster.csv'\n")
    result = export(root, f"--exporter={EXPORTER}")
    assert "Not in the Canvas roster grading/canvas_roster.csv, written with their " \
           "nbgrader id as SIS Login ID: aturing, grace" in result.stderr
    rows = list(csv.reader((root / "grading" / "canvas.csv").open(newline="")))
    assert ["Lovelace, Ada", "1001", "", "ada", ""] in [row[:5] for row in rows]


def test_roster_errors_are_clear(tmp_path):
    roster = tmp_path / "roster.csv"
    with pytest.raises(RosterError, match=f"cannot read the Canvas roster {roster}: No such "
                                          "file or directory"):
        read_roster(roster, "SIS Login ID")
    roster.write_text("Student,ID,Login\nx,1,ada\n")
    with pytest.raises(RosterError, match=re.escape(
            f"the Canvas roster {roster} has no 'SIS Login ID' column (its columns: Student, "
            "ID, Login); set CanvasExportPlugin.roster_key")):
        read_roster(roster, "SIS Login ID")
    assert read_roster(roster, "Login") == {"ada": {
        "Student": "x", "ID": "1", "SIS User ID": "", "SIS Login ID": "", "Section": ""}}
    roster.write_text("SIS Login ID,ID\nada,1\nada,2\n")
    with pytest.raises(RosterError, match=f"the Canvas roster {roster} lists SIS Login ID "
                                          "'ada' twice"):
        read_roster(roster, "SIS Login ID")


def test_points_are_written_as_canvas_reads_them():
    assert [points(x) for x in (12.0, 9.5, 0.1 + 0.2, 0, 1234567.0, 100)] == [
        "12", "9.5", "0.3", "0", "1234567", "100"]
