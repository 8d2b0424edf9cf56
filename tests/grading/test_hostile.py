"""The hostile corpus through the real pipeline: ``nbgrader autograde`` on the whole class in
one batch, then ``python -m bnlib.grading.cli grade`` (a re-grade) on the same course, with
a real SQLite gradebook, then feedback, formgrader's page, export and zip_collect. Expectations
live in hostile/cases.json; a case marked ``"isolation": true`` needs the namespaces (root on
Linux) for its message."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbgrader.api import Gradebook

from bnlib.grading import cli
from bnlib.grading.sandbox import isolation_available

HOSTILE = Path(__file__).resolve().parent / "hostile"
REPO = HOSTILE.parents[2]
CASES = json.loads((HOSTILE / "cases.json").read_text())
TESTS = ("test_batchnorm_forward", "test_spatial", "test_hidden")
FAST_LIMITS = """
c.GradingLimits.cell_timeout = 3
c.GradingLimits.check_timeout = 5
c.GradingLimits.memory_mb = 1024
"""

pytestmark = pytest.mark.slow


def nbgrader(course: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=course,
                          capture_output=True, text=True, env=cli.nbgrader_env())


def make_course(root: Path, students: list[str]) -> Path:
    """A course folder using this repository's nbgrader_config.py, with ``students``
    submitting the corpus notebooks of the same name."""
    root.mkdir(parents=True, exist_ok=True)
    config = (REPO / "nbgrader_config.py").read_text() + FAST_LIMITS
    (root / "nbgrader_config.py").write_text(config)
    shutil.copytree(HOSTILE / "source", root / "solutions")
    result = nbgrader(root, "generate_assignment", "bn_forward", "--force")
    assert result.returncode == 0, result.stderr
    for student in students:
        shutil.copytree(HOSTILE / "submissions" / student,
                        root / "grading" / "submitted" / student / "bn_forward")
    return root


def gradebook_rows(course: Path) -> dict[str, dict[str, tuple]]:
    """student -> grade_id -> (auto_score, needs_manual_grade)."""
    rows = {}
    with Gradebook(f"sqlite:///{course / 'grading' / 'gradebook.db'}") as gradebook:
        for student in gradebook.students:
            try:
                notebook = gradebook.find_submission_notebook("bn_forward", "bn_forward",
                                                              student.id)
            except Exception:  # noqa: BLE001 - a student without a submission has no rows
                rows[student.id] = {}
                continue
            rows[student.id] = {g.name: (g.auto_score, g.needs_manual_grade)
                                for g in notebook.grades}
    return rows


def notebook_text(course: Path, student: str) -> str:
    path = course / "grading" / "autograded" / student / "bn_forward" / "bn_forward.ipynb"
    if not path.exists():
        return ""
    parts = []
    for cell in nbformat.read(path, 4).cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", "") + output.get("ename", "") + ": "
                         + output.get("evalue", ""))
    return "\n".join(parts)


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    """Grade the class twice: stock command first, then the class-wide CLI."""
    root = make_course(tmp_path_factory.mktemp("course"), sorted(CASES))
    plain = nbgrader(root, "autograde", "bn_forward")
    plain_rows = gradebook_rows(root)
    for case in CASES:  # collected again: the first run repaired some files in place
        folder = root / "grading" / "submitted" / case / "bn_forward"
        shutil.rmtree(folder)
        shutil.copytree(HOSTILE / "submissions" / case, folder)
    record = cli.grade_class(cli.Course(root), ["bn_forward"], jobs=2, timeout=600)
    return {"root": root, "plain": plain, "plain_rows": plain_rows, "record": record,
            "statuses": {s["student"]: s for s in record["students"]},
            "rows": gradebook_rows(root)}


@pytest.mark.parametrize("case", sorted(CASES))
def test_case_scores_status_and_message(course, case):
    expected = CASES[case]
    status = course["statuses"][case]
    rows = course["rows"][case]
    assert status["status"] == expected["status"], status["messages"]
    assert {t: rows[t][0] for t in TESTS} == expected["scores"]
    text = "\n".join(status["messages"]) + "\n" + notebook_text(course["root"], case)
    if expected.get("isolation") and not isolation_available():
        pytest.skip("this case's message needs the namespaces (root on Linux)")
    assert re.search(expected["message"], text), text[-3000:]
    flagged = {t: rows[t][1] for t in TESTS}
    if expected["status"] == "graded":
        assert not any(flagged.values())  # autograded scores stand on their own
    else:
        assert all(flagged.values())  # a 0 for a file problem is flagged for staff


def test_stock_command_grades_every_gradable_student_in_one_batch(course):
    """One `nbgrader autograde` for the whole class: the run reports the unreadable files but
    grades everyone else exactly as the class-wide run does."""
    failed = set(re.findall(r"for student '([^']+)'", course["plain"].stdout
                            + course["plain"].stderr))
    assert failed == {"invalid_json", "truncated", "renamed_notebook"}
    for case, expected in CASES.items():
        rows = course["plain_rows"].get(case, {})
        if expected["status"] == "graded":
            assert {t: rows[t][0] for t in TESTS} == expected["scores"], case
        else:  # nothing gradable: no score, or no score flagged for manual grading
            assert all(score is None and flag for score, flag in rows.values()), case


def test_gradebook_holds_exactly_the_expected_rows(course):
    rows = course["rows"]
    assert set(rows) == set(CASES)
    for case, grades in rows.items():
        assert set(grades) == {*TESTS, "written"}, case
        assert grades["written"][0] in (None, 0.0)  # the written answer is graded by hand


def test_summary_lists_every_failure_and_versions(course):
    text = cli.summary(course["record"])
    for case, expected in CASES.items():
        if expected["status"] != "graded":
            assert re.search(rf"bn_forward/{case}: {expected['status']}", text)
    assert f"{len(CASES)} submissions, 4 need attention" in text
    versions = course["record"]["versions"]
    assert {"numpy", "torch", "nbgrader", "bnlib", "python"} <= set(versions)
    assert "not installed" not in {versions[k] for k in ("numpy", "nbgrader")}


def test_gradebook_backed_up_and_results_recorded(course):
    root = course["root"]
    backup = Path(course["record"]["gradebook_backup"])
    assert backup.parent == root / "grading" / "backups" and backup.stat().st_size > 0
    latest = json.loads((root / "grading" / "results" / "latest.json").read_text())
    assert latest["versions"] == course["record"]["versions"]
    assert len(latest["students"]) == len(CASES)


def test_rejected_files_are_kept_untouched(course):
    for case in ("invalid_json", "truncated"):
        submitted = course["root"] / "grading" / "submitted" / case / "bn_forward"
        original = HOSTILE / "submissions" / case / "bn_forward.ipynb"
        assert (submitted / "bn_forward.ipynb").read_bytes() == original.read_bytes()


def test_feedback_has_no_hidden_tests(course):
    root = course["root"]
    for student in ("released_unmodified", "correct"):
        result = nbgrader(root, "generate_feedback", "bn_forward", "--student", student,
                          "--force")
        assert result.returncode == 0, result.stderr
        html = (root / "grading" / "feedback" / student / "bn_forward" /
                "bn_forward.html").read_text()
        assert "test_hidden" in html or "Points" in html
        assert "seed=" not in html and "edge_cases" not in html
        assert "BEGIN HIDDEN" not in html
        assert "not recognized" not in result.stdout + result.stderr  # no config warnings


def assert_inert(html: str) -> None:
    """The student's answer is in the page, and none of its HTML is live."""
    assert "the population variance is used" in html
    assert "<script>alert" not in html
    assert not re.search(r"<[^>]*\bonerror\s*=", html)  # as a real attribute, not as text
    assert not re.search(r"""(href|src)\s*=\s*["']?\s*javascript:""", html)


def test_feedback_and_formgrader_show_student_html_as_text(course):
    root = course["root"]
    result = nbgrader(root, "generate_feedback", "bn_forward", "--student", "script_in_answer",
                      "--force")
    assert result.returncode == 0, result.stderr
    assert_inert((root / "grading" / "feedback" / "script_in_answer" / "bn_forward" /
                  "bn_forward.html").read_text())
    # formgrader's page for a submission, built as its handler builds it
    from nbconvert.exporters import HTMLExporter
    from nbgrader.server_extensions.formgrader import handlers
    from traitlets.config.loader import PyFileConfigLoader

    config = PyFileConfigLoader("nbgrader_config.py", path=str(root)).load_config()
    config.HTMLExporter.template_name = "formgrade"
    config.HTMLExporter.extra_template_basedirs = [handlers.template_path]
    page, _ = HTMLExporter(config=config).from_filename(
        str(root / "grading" / "autograded" / "script_in_answer" / "bn_forward" /
            "bn_forward.ipynb"),
        resources={"assignment_id": "bn_forward", "notebook_id": "bn_forward", "index": 0,
                   "submission_id": "s", "total": 1, "base_url": "", "student": "s",
                   "last_name": "", "first_name": "", "notebook_path": "s"})
    assert_inert(page)


def test_untouched_notebooks_need_no_repair(course):
    for student in ("correct", "released_unmodified"):
        status = course["statuses"][student]
        assert not [m for m in status["messages"] if "restored" in m or "repaired" in m], \
            status["messages"]
    release = course["root"] / "exercises" / "bn_forward" / "bn_forward.ipynb"
    ok, lines = cli.validate(release, release)
    assert not [line for line in lines if line.startswith(("repaired", "warning"))], lines


def test_export_writes_under_the_grading_folder(course):
    root = course["root"]
    result = nbgrader(root, "export")
    assert result.returncode == 0, result.stderr
    grades = (root / "grading" / "grades.csv").read_text()
    assert not (root / "grades.csv").exists()
    assert grades.startswith("assignment,duedate,timestamp,student_id")
    assert "\nbn_forward,,," in grades and "correct" in grades


def test_zip_collect_collects_the_documented_layout(course, tmp_path):
    """An LMS download as nbgrader_config.py documents it: zip files in
    grading/downloaded/<assignment>/archive/, notebooks named <student>_<notebook>.ipynb."""
    import zipfile

    root = make_course(tmp_path / "zipcourse", [])
    archive = root / "grading" / "downloaded" / "bn_forward" / "archive"
    archive.mkdir(parents=True)
    notebook = (HOSTILE / "submissions" / "correct" / "bn_forward.ipynb").read_bytes()
    with zipfile.ZipFile(archive / "class.zip", "w") as bundle:
        bundle.writestr("alice_bn_forward.ipynb", notebook)
        bundle.writestr("bob_bn_forward.ipynb", notebook)
    result = nbgrader(root, "zip_collect", "bn_forward")
    assert result.returncode == 0, result.stderr
    for student in ("alice", "bob"):
        collected = root / "grading" / "submitted" / student / "bn_forward" / "bn_forward.ipynb"
        assert collected.read_bytes() == notebook


def test_grade_finds_the_course_it_is_run_in(course, tmp_path):
    """From a course's subfolder it grades that course; outside any course it stops."""
    command = [sys.executable, "-m", "bnlib.grading.cli", "grade", "--student", "correct"]
    inside = subprocess.run(command, cwd=course["root"] / "grading", capture_output=True,
                            text=True, env=cli.nbgrader_env())
    assert inside.returncode == 0, inside.stderr
    assert inside.stdout.startswith(f"course: {course['root']}\n")
    outside = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True,
                             env=cli.nbgrader_env())
    assert outside.returncode == 2 and outside.stdout == ""
    assert f"no nbgrader_config.py in {tmp_path} or a folder above it" in outside.stderr


def test_second_run_is_refused_while_one_holds_the_lock(course, capsys):
    root = course["root"]
    with cli.grading_lock(root / "grading" / ".grading.lock"):
        code = cli.main(["grade", "--course", str(root), "--student", "correct"])
    assert code == 2
    assert "another grading run is in progress (pid" in capsys.readouterr().err


def test_failed_regrade_clears_and_flags_old_scores(tmp_path):
    root = make_course(tmp_path / "course", ["correct"])
    course = cli.Course(root)
    first = cli.grade_class(course, ["bn_forward"], jobs=1, timeout=600)
    assert any("readable by every user" in line for line in first["exposed_folders"])
    assert "submission folder(s) open to other users" in cli.summary(first)
    for folder in [root / "grading" / "submitted", *(root / "grading" / "submitted").rglob("*")]:
        if folder.is_dir():
            folder.chmod(0o700)
    assert cli.exposed_folders(course) == []
    assert {t: v[0] for t, v in gradebook_rows(root)["correct"].items() if t in TESTS} == {
        "test_batchnorm_forward": 3.0, "test_spatial": 3.0, "test_hidden": 4.0}
    record = cli.grade_class(course, ["bn_forward"], jobs=1, timeout=0.5)
    assert record["students"][0]["status"] == "failed"
    assert "grading took more than 0.5 s" in "".join(record["students"][0]["messages"])
    rows = gradebook_rows(root)["correct"]
    assert all(rows[t] == (None, True) for t in TESTS)


def test_validate_agrees_with_the_grader(course, capsys):
    release = course["root"] / "exercises" / "bn_forward" / "bn_forward.ipynb"
    submissions = HOSTILE / "submissions"
    ok, lines = cli.validate(submissions / "correct" / "bn_forward.ipynb", release)
    assert ok and any("passed: batchnorm_forward matches the reference" in x for x in lines)
    ok, lines = cli.validate(submissions / "released_unmodified" / "bn_forward.ipynb", release)
    assert not ok and any("NotImplementedError" in x for x in lines)
    ok, lines = cli.validate(submissions / "test_cells_deleted" / "bn_forward.ipynb", release)
    assert not ok and any("was missing" in x for x in lines)
    code = cli.main(["validate", str(submissions / "invalid_json" / "bn_forward.ipynb"),
                     "--release", str(release)])
    out = capsys.readouterr().out
    assert code == 1 and "not a readable notebook: invalid JSON" in out
    assert "not a readable notebook: invalid JSON" in "".join(
        course["statuses"]["invalid_json"]["messages"])
