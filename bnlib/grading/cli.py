"""Grade a whole class, or validate one notebook, with the hardened pipeline.

    python -m bnlib.grading.cli grade [--assignment bn_forward] [--jobs 2] [--course DIR]
    python -m bnlib.grading.cli grade --executor celery --broker redis://HOST:6379/0
    python -m bnlib.grading.cli worker --broker redis://HOST:6379/0 --concurrency 2
    python -m bnlib.grading.cli validate my_notebook.ipynb [--release exercises/bn_forward/...]

The course is the folder given with ``--course``, else the nearest folder at or above the
current one that holds an ``nbgrader_config.py``; without one, ``grade`` stops and says so.

``grade`` is the coordinator. For each student and assignment it runs the pre-flight,
prepares a job (the notebooks as nbgrader's autograde hands them to its execute step), has
an executor judge it (``bnlib.grading.executors``: long-lived local processes by default, or
Celery workers on other machines), and records the result through nbgrader's autograde, in
this process: only the coordinator writes the gradebook and files, and one broken notebook
never stops the class. Around it: a lock (a second run waits for nothing, it stops), a
backup of the gradebook, a per-student status file, a summary listing every failure, and
the versions the results were produced with. Scores that a failed re-grade would leave
standing are cleared and flagged for staff.

``worker`` judges jobs from the queue on any machine that reaches the broker.

``validate`` is the student's side: the same pre-flight, then the notebook's visible tests
run exactly as the grader runs them.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import platform
import shutil
import sqlite3
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bnlib.grading import preflight as pf
from bnlib.grading.executors import (
    VISIBILITY_TIMEOUT,
    BrokerUnavailable,
    CeleryExecutor,
    LocalExecutor,
    make_job,
    run_worker,
)
from bnlib.grading.recording import nbgrader_reused

VERSIONED_PACKAGES = ("bnlib", "numpy", "torch", "nbgrader", "nbformat", "nbconvert", "ipython")


@dataclass
class StudentStatus:
    """Outcome of grading one student on one assignment."""

    student: str
    assignment: str
    status: str  # graded | missing | rejected | failed
    score: float | None = None
    max_score: float | None = None
    messages: list[str] = field(default_factory=list)
    seconds: float = 0.0


class GradingLocked(RuntimeError):
    """Another grading run holds the lock."""


class CourseNotSetUp(RuntimeError):
    """The course's nbgrader_config.py does not switch on hardened grading."""


def uses_hardened_grading(config) -> bool:
    from bnlib.grading.pipeline import IsolatedExecute

    return IsolatedExecute in list(config.Autograde.get("autograde_preprocessors", []))


@contextlib.contextmanager
def grading_lock(path: Path):
    """An exclusive, non-blocking fcntl lock: two grading runs never write one gradebook."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")  # noqa: SIM115 - held for the whole run
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise GradingLocked(f"another grading run is in progress ({holder}); "
                                "wait for it to finish") from exc
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} since {datetime.now(UTC).isoformat(timespec='seconds')}")
        handle.flush()
        yield
    finally:
        handle.close()


def backup_gradebook(db_path: Path, backup_dir: Path) -> Path | None:
    """A consistent copy of the SQLite gradebook (sqlite's backup API), timestamped."""
    if not db_path.exists():
        return None
    backup_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    target = backup_dir / f"gradebook-{stamp}.db"
    with contextlib.closing(sqlite3.connect(db_path)) as source, \
            contextlib.closing(sqlite3.connect(target)) as copy:
        source.backup(copy)
    return target


def versions() -> dict[str, str]:
    """Versions that can change scores or messages, recorded with every run."""
    from importlib import metadata

    found = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def find_course(start: Path) -> Path | None:
    """The nearest folder at or above ``start`` that holds an nbgrader_config.py."""
    start = start.resolve()
    for folder in [start, *start.parents]:
        if (folder / "nbgrader_config.py").is_file():
            return folder
    return None


class Course:
    """Paths of an nbgrader course laid out by this repository's nbgrader_config.py."""

    def __init__(self, root: Path):
        self.root = root.resolve()
        self.grading = self.root / "grading"
        self.submitted = self.grading / "submitted"
        self.db_path = self.grading / "gradebook.db"
        self.db_url = f"sqlite:///{self.db_path}"

    def config(self):
        """The course's nbgrader configuration, as nbgrader loads it from nbgrader_config.py."""
        from traitlets.config.loader import PyFileConfigLoader

        return PyFileConfigLoader("nbgrader_config.py", path=str(self.root)).load_config()

    def assignments(self) -> list[str]:
        source = self.root / "solutions"
        return sorted(p.name for p in source.iterdir() if p.is_dir()) if source.is_dir() else []

    def students(self, assignment: str) -> list[str]:
        if not self.submitted.is_dir():
            return []
        return sorted(p.name for p in self.submitted.iterdir()
                      if (p / assignment).is_dir())

    def notebooks(self, assignment: str) -> list[str]:
        from nbgrader.api import Gradebook, MissingEntry

        with Gradebook(self.db_url) as gradebook:
            try:
                return sorted(n.name for n in gradebook.find_assignment(assignment).notebooks)
            except MissingEntry:
                return []


def set_scores(course: Course, assignment: str, student: str, notebook: str | None,
               score: float | None) -> None:
    """Overwrite the auto scores of a submission and flag it for staff (needs manual grade)."""
    from nbgrader.api import Gradebook, MissingEntry

    with Gradebook(course.db_url) as gradebook:
        gradebook.update_or_create_student(student)
        try:
            submission = gradebook.find_submission(assignment, student)
        except MissingEntry:
            submission = gradebook.add_submission(assignment, student)
        for nb in submission.notebooks:
            if notebook is not None and nb.name != notebook:
                continue
            for grade in nb.grades:
                grade.auto_score = score
                grade.needs_manual_grade = True
        gradebook.db.commit()


def read_scores(course: Course, assignment: str, student: str) -> tuple[float, float]:
    from nbgrader.api import Gradebook

    with Gradebook(course.db_url) as gradebook:
        submission = gradebook.find_submission(assignment, student)
        return float(submission.score), float(submission.max_score)


@dataclass
class Submission:
    """One student's submission of one assignment, as the pre-flight found it."""

    status: StudentStatus
    expected: list[str]  # the assignment's notebooks
    to_grade: list[str]  # those submitted and readable
    unreadable: list[str]
    started: float
    prepared: dict = field(default_factory=dict)  # notebook name -> as it was judged

    @property
    def folder(self) -> tuple[str, str]:
        return self.status.assignment, self.status.student


def check_submission(course: Course, assignment: str, student: str) -> Submission:
    """The pre-flight of one submission: which notebooks are missing, unreadable, repaired."""
    started = time.monotonic()
    status = StudentStatus(student, assignment, "graded")
    folder = course.submitted / student / assignment
    expected = course.notebooks(assignment)
    if not expected:
        raise ValueError(f"assignment {assignment} is not in the gradebook: run "
                         f"`nbgrader generate_assignment {assignment}` first")
    status.messages += pf.check_folder(folder, expected)
    unreadable = []
    for name in expected:
        path = folder / f"{name}.ipynb"
        if not path.exists():
            continue
        try:
            report = pf.read_notebook(path)
        except pf.SubmissionRejected as exc:
            unreadable.append(name)
            status.messages.append(str(exc))
            continue
        status.messages += [f"{name}: repaired: {c}" for c in report.changes]
    to_grade = [n for n in expected if (folder / f"{n}.ipynb").exists() and n not in unreadable]
    return Submission(status, expected, to_grade, unreadable, started)


class _Lines(logging.Handler):
    """Keeps the messages logged to it."""

    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def prepare_job(course: Course, config, submission: Submission) -> dict:
    """The job of a submission: its notebooks as nbgrader's autograde hands them to its execute
    step (repaired by the pre-flight, then through the course's sanitize preprocessors), kept
    in ``submission.prepared``; the pre-flight's changes go to its messages."""
    from traitlets.utils.importstring import import_item

    assignment, student = submission.folder
    log, lines = logging.Logger("bnlib.grading.prepare"), _Lines()
    log.addHandler(lines)
    for name in submission.to_grade:
        nb = pf.read_notebook(course.submitted / student / assignment / f"{name}.ipynb").notebook
        resources = {"nbgrader": {"student": student, "assignment": assignment,
                                  "notebook": name, "db_url": course.db_url}}
        for step in config.Autograde.sanitize_preprocessors:
            step = import_item(step) if isinstance(step, str) else step
            nb, resources = step(config=config, log=log)(nb, resources)
        submission.prepared[name] = nb
    submission.status.messages += [line.split("pre-flight", 1)[1].lstrip(": ")
                                   for line in lines.lines if "pre-flight" in line]
    return make_job(assignment, student, submission.prepared, config)


def record(course: Course, config, submission: Submission, result: dict | None) -> StudentStatus:
    """Write one judged submission (``result`` of ``executors.judge``; None when nothing could
    be graded) to the gradebook and the autograded folder, through nbgrader; a failure clears
    and flags the old scores, never leaves them standing."""
    status = submission.status
    assignment, student = submission.folder
    if result is None:
        set_scores(course, assignment, student, None, 0.0)
    elif "error" in result:
        status.status = "failed"
        status.messages.append(result["error"])
        set_scores(course, assignment, student, None, None)
    else:
        ok, log = autograde_judged(config, submission, result["notebooks"])
        if not ok:
            status.status = "failed"
            status.messages.append("nbgrader autograde failed: " + _last_error(log))
            set_scores(course, assignment, student, None, None)
    for name in submission.expected:
        if name not in submission.to_grade:
            set_scores(course, assignment, student, name, 0.0)
            if status.status == "graded":
                status.status = "rejected" if name in submission.unreadable else "missing"
    if status.status != "failed":
        status.score, status.max_score = read_scores(course, assignment, student)
    status.seconds = round(time.monotonic() - submission.started, 2)
    return status


def autograde_judged(config, submission: Submission, judged: dict[str, str]) -> tuple[bool, str]:
    """nbgrader's autograde of one submission, in this process: its sanitize steps were run
    when the job was prepared, its execute step takes the prepared notebooks with the judged
    outputs. Returns whether it succeeded, and its log."""
    import copy

    from nbgrader.apps import NbGraderAPI

    from bnlib.grading.executors import JudgedOutputs
    from bnlib.grading.pipeline import IsolatedExecute

    merged = copy.deepcopy(config)
    merged.Autograde.sanitize_preprocessors = []
    merged.Autograde.autograde_preprocessors = [
        JudgedOutputs(submission.prepared, judged) if step is IsolatedExecute else step
        for step in config.Autograde.autograde_preprocessors]
    api = NbGraderAPI(config=merged)
    outcome = api.autograde(*submission.folder, force=True, create=True)
    return outcome["success"], outcome.get("log", "") + outcome.get("error", "")


def nbgrader_env() -> dict[str, str]:
    """The environment for nbgrader commands: this interpreter's bin folder first on PATH
    (nbgrader runs ``alembic`` from PATH), so an unactivated virtual environment works."""
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")])}


def _last_error(log: str) -> str:
    """The last error line of an nbgrader log (the most specific one), at most 300 characters."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    errors = [line for line in lines if "ERROR" in line or "Error" in line]
    return (errors or lines or ["no output"])[-1][-300:]


def exposed_folders(course: Course) -> list[str]:
    """Submission folders other users may write to (or, below the top, read): students must
    not reach each other's work through the file system."""
    import stat

    found = []
    if not course.submitted.is_dir():
        return found
    for folder in [course.submitted, *[p for p in course.submitted.rglob("*") if p.is_dir()]]:
        mode = folder.stat().st_mode
        others_write = mode & stat.S_IWOTH and not mode & stat.S_ISVTX
        others_read = folder != course.submitted and mode & stat.S_IROTH
        if others_write or others_read:
            found.append(f"{folder} is {'writable' if others_write else 'readable'} by every user")
    return found


def grade_class(course: Course, assignments: list[str], jobs: int, timeout: float,
                students: list[str] | None = None, executor=None) -> dict:
    """Grade every submitted student of every assignment on ``executor`` (default: a
    ``LocalExecutor`` of ``jobs`` processes, closed at the end; one passed in is left open);
    returns the run record, also written to
    grading/results/. A broker that stops answering stops the run: what was recorded stays,
    the record lists what was not graded, and ``BrokerUnavailable`` says how to finish."""
    with grading_lock(course.grading / ".grading.lock"):
        config = course.config()
        if not uses_hardened_grading(config):
            raise CourseNotSetUp(f"{course.root / 'nbgrader_config.py'} does not call "
                                 "configure_autograde(c): grade with `nbgrader autograde`")
        backup = backup_gradebook(course.db_path, course.grading / "backups")
        started = datetime.now(UTC)
        tasks = [(a, s) for a in assignments for s in course.students(a)
                 if students is None or s in students]
        statuses: dict[tuple[str, str], StudentStatus] = {}
        stopped = None
        try:
            with nbgrader_reused():
                if executor is not None:  # the caller's: it stays open for the next run
                    grade_on(executor, course, config, tasks, timeout, statuses)
                else:
                    with LocalExecutor(jobs) as pool:
                        grade_on(pool, course, config, tasks, timeout, statuses)
        except BrokerUnavailable as exc:
            stopped = exc
        record = {"course": str(course.root), "started": started.isoformat(timespec="seconds"),
                  "finished": datetime.now(UTC).isoformat(timespec="seconds"),
                  "gradebook_backup": str(backup) if backup else None,
                  "versions": versions(),
                  "students": [asdict(statuses[t]) for t in tasks if t in statuses],
                  "exposed_folders": exposed_folders(course)}
        if stopped is not None:
            record["stopped"] = str(stopped)
            record["not_graded"] = [f"{a}/{s}" for a, s in tasks if (a, s) not in statuses]
        results = course.grading / "results"
        results.mkdir(parents=True, exist_ok=True)
        stamp = started.strftime("%Y%m%dT%H%M%SZ")
        (results / f"run-{stamp}.json").write_text(json.dumps(record, indent=2))
        shutil.copy(results / f"run-{stamp}.json", results / "latest.json")
        if stopped is not None:
            raise BrokerUnavailable(
                f"{stopped}. The run stopped: {len(statuses)} of {len(tasks)} submissions were "
                f"recorded; the other {len(tasks) - len(statuses)} were not touched (listed in "
                f"{results / 'latest.json'}). Start the broker and run the same command again "
                "to finish the class.") from stopped
        return record


def grade_on(executor, course: Course, config, tasks: list[tuple[str, str]], timeout: float,
             statuses: dict) -> None:
    """Pre-flight and prepare each submission, keep up to ``executor.capacity`` jobs in
    flight, and record each result as it comes in (a second result of one job is ignored)."""
    waiting = deque(tasks)
    in_flight: dict[str, Submission] = {}
    while waiting or in_flight:
        while waiting and len(in_flight) < executor.capacity:
            assignment, student = waiting.popleft()
            try:
                submission = check_submission(course, assignment, student)
                job = prepare_job(course, config, submission) if submission.to_grade else None
            except Exception as exc:  # noqa: BLE001 - one student's failure never stops the class
                statuses[(assignment, student)] = _failed(course, assignment, student, exc)
                continue
            if job is None:
                statuses[(assignment, student)] = _safe_record(course, config, submission, None)
                continue
            executor.submit(job, timeout)
            in_flight[job["id"]] = submission
        for result in executor.results(wait=1.0) if in_flight else []:
            submission = in_flight.pop(result["id"], None)
            if submission is not None:
                statuses[submission.folder] = _safe_record(course, config, submission, result)


def _safe_record(course: Course, config, submission: Submission, result) -> StudentStatus:
    try:
        return record(course, config, submission, result)
    except Exception as exc:  # noqa: BLE001 - one student's failure never stops the class
        return _failed(course, *submission.folder, exc)


def _failed(course: Course, assignment: str, student: str, exc: Exception) -> StudentStatus:
    with contextlib.suppress(Exception):
        set_scores(course, assignment, student, None, None)
    return StudentStatus(student, assignment, "failed",
                         messages=[f"grading failed: {type(exc).__name__}: {exc}"])


def summary(record: dict) -> str:
    """A table of every student and a list of every failure."""
    lines = [f"course: {record['course']}",
             f"{'assignment':<14} {'student':<24} {'status':<9} {'score':>13}"]
    failures = []
    for s in record["students"]:
        score = "-" if s["score"] is None else f"{s['score']:g} / {s['max_score']:g}"
        lines.append(f"{s['assignment']:<14} {s['student']:<24} {s['status']:<9} {score:>13}")
        if s["status"] != "graded":
            failures.append(f"  {s['assignment']}/{s['student']}: {s['status']}: "
                            + "; ".join(s["messages"][:3]))
    lines.append(f"{len(record['students'])} submissions, {len(failures)} need attention")
    if failures:
        lines.append("Failures (scores cleared or set to 0 and flagged 'needs manual grade'):")
        lines += failures
    exposed = record.get("exposed_folders", [])
    if exposed:
        lines.append(f"Warning: {len(exposed)} submission folder(s) open to other users "
                     "(chmod o-rwx): " + "; ".join(exposed[:3]))
    lines.append("versions: " + ", ".join(f"{k} {v}" for k, v in record["versions"].items()))
    return "\n".join(lines)


def validate(path: Path, release: Path | None) -> tuple[bool, list[str]]:
    """The student-side check: pre-flight plus the visible tests, run as the grader runs them."""
    import logging

    from bnlib.grading.pipeline import IsolatedExecute

    lines = []
    try:
        report = pf.read_notebook(path)
    except pf.SubmissionRejected as exc:
        return False, [str(exc)]
    reference = None
    if release is None:
        course = find_course(path.parent) or find_course(Path.cwd())
        candidate = course / "exercises" / path.stem / path.name if course else None
        release = candidate if candidate is not None and candidate.exists() else None
    if release is not None:
        reference = pf.Reference.from_notebook(pf.read_notebook(release).notebook)
    else:
        lines.append("no released notebook found to compare with: cells not checked")
    pf.preflight(report.notebook, reference, report)
    lines += [f"repaired when graded: {c}" for c in report.changes]
    lines += [f"warning: {w}" for w in report.warnings]
    runner = IsolatedExecute(hidden_only_cells_pass=True)
    runner.log.setLevel(logging.WARNING)
    nb, _ = runner.preprocess(report.notebook, {"nbgrader": {"student": "you",
                                                             "notebook": path.stem}})
    ok = True
    for index, cell in enumerate(nb.cells):
        if not pf.is_test_cell(cell):
            continue
        for output in cell.outputs:
            if output.output_type == "error":
                ok = False
                lines.append(f"test cell {index}: FAILED: {output.evalue}")
            elif output.output_type == "stream":
                lines.append(f"test cell {index}: {output.text.strip()}")
    return ok, lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bnlib.grading.cli", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    grade = commands.add_parser("grade", help="grade every submission of a class")
    grade.add_argument("--course", type=Path, help="the course folder (holds nbgrader_config.py); "
                       "default: the current folder or the nearest one above it")
    grade.add_argument("--assignment", action="append", help="repeatable; default: all")
    grade.add_argument("--student", action="append", help="repeatable; default: all")
    grade.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                       help="judging processes of the local executor")
    grade.add_argument("--timeout", type=float, default=1800.0,
                       help="seconds to judge one submission")
    grade.add_argument("--executor", choices=("local", "celery"), default="local",
                       help="local: processes on this machine; celery: workers on a queue")
    grade.add_argument("--broker", help="the Redis of the celery executor, redis://HOST:PORT/DB")
    worker = commands.add_parser("worker", help="judge submissions from the queue")
    worker.add_argument("--broker", required=True, help="redis://HOST:PORT/DB")
    worker.add_argument("--concurrency", type=int, default=os.cpu_count() or 1,
                        help="submissions judged at once")
    worker.add_argument("--visibility-timeout", type=float, default=VISIBILITY_TIMEOUT,
                        help="seconds before the job of a worker that vanished is delivered "
                        "again; longer than the coordinator's --timeout")
    worker.add_argument("--loglevel", default="INFO")
    check = commands.add_parser("validate", help="check a notebook before submitting it")
    check.add_argument("notebook", type=Path)
    check.add_argument("--release", type=Path, help="the released notebook to compare with")
    args = parser.parse_args(argv)
    if args.command == "validate":
        ok, lines = validate(args.notebook, args.release)
        print("\n".join(lines))
        print("OK: this notebook can be graded" if ok else "NOT OK: see the messages above")
        return 0 if ok else 1
    if args.command == "worker":
        run_worker(args.broker, args.concurrency, args.visibility_timeout, args.loglevel)
        return 0
    if (args.executor == "celery") != (args.broker is not None):
        print("error: --executor celery needs --broker redis://HOST:PORT/DB, and --broker "
              "goes with --executor celery only", file=sys.stderr)
        return 2
    root = args.course or find_course(Path.cwd())
    if root is None or not (root / "nbgrader_config.py").is_file():
        print(f"error: no nbgrader_config.py in {(root or Path.cwd()).resolve()}"
              f"{'' if args.course else ' or a folder above it'}: run this in a course folder "
              "or pass --course DIR", file=sys.stderr)
        return 2
    course = Course(root)
    executor = CeleryExecutor(args.broker) if args.broker else LocalExecutor(args.jobs)
    try:
        with executor:
            record = grade_class(course, args.assignment or course.assignments(), args.jobs,
                                 args.timeout, args.student, executor)
    except (GradingLocked, CourseNotSetUp, BrokerUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary(record))
    return 0 if all(s["status"] == "graded" for s in record["students"]) else 1


if __name__ == "__main__":
    sys.exit(main())
