"""Grading on the Celery queue with real parts: Debian's redis-server on a free port, workers
started as an instructor starts them (``python -m bnlib.grading.cli worker``) and the
coordinator's own command line. A worker SIGKILLed mid-run, a submission that kills every
worker that grades it, a broker that goes away: every submission ends up graded once, with
the local executor's scores, or failed and flagged, and a rerun finishes the class."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from nbformat import v4
from traitlets.config import Config

from bnlib.grading import cli
from bnlib.grading.executors import (
    MAX_DELIVERIES,
    QUEUE,
    TASK,
    CeleryExecutor,
    LocalExecutor,
    deliveries_key,
    lost_message,
    make_job,
)
from tests.grading.test_hostile import HOSTILE, gradebook_rows, make_course

pytestmark = pytest.mark.slow

#: Correct, wrong, broken and hostile submissions that the sandbox judges quickly.
CLASS = ["correct", "released_unmodified", "invalid_json", "missing_notebook", "schema_errors",
         "duplicate_grade_id", "test_cells_deleted", "test_cell_edited", "override_allclose",
         "override_sys_modules", "returns_list", "imports_torch", "mutates_input",
         "os_exit_cell", "segfault_cell", "sys_exit_in_function", "syntax_error", "warnings",
         "network", "snoop_files", "magics", "script_in_answer", "nondeterminism",
         "fake_grade_cell"]
#: Seconds before the job of a vanished worker is delivered again (production: an hour).
VISIBILITY = 20
#: Makes the worker process that grades the student "poison" die, as a crash would.
POISON = """
import os, signal
import bnlib.grading.executors as executors

_judge = executors.judge


def judge(job):
    if job["student"] == "poison":
        os.kill(os.getpid(), signal.SIGKILL)
    return _judge(job)


executors.judge = judge
"""
WAIT = 600  # generous: the suite must pass beside two CPU hogs


class Worker:
    """``python -m bnlib.grading.cli worker`` in its own process group, logging to a file."""

    def __init__(self, broker: str, log: Path, env: dict | None = None):
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bnlib.grading.cli", "worker", "--broker", broker,
             "--concurrency", "1", "--visibility-timeout", str(VISIBILITY)],
            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
            env={**cli.nbgrader_env(), **(env or {})})

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self) -> None:
        wait_for(lambda: " ready." in self.text(), f"worker never ready:\n{self.text()}")

    def jobs(self, event: str) -> list[str]:
        """Ids of the jobs this worker logged as ``received`` or ``succeeded``."""
        return re.findall(rf"Task bnlib\.grading\.judge\[([^\]]+)\] {event}", self.text())

    def kill(self) -> None:
        """SIGKILL the worker and its pool, as a power loss would."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.kill()


def wait_for(condition, message: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.1)


def grade(course: Path, *options: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "bnlib.grading.cli", "grade", "--course", str(course), *options],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**cli.nbgrader_env(), **(env or {})})


def finish(coordinator: subprocess.Popen) -> tuple[int, str, str]:
    out, err = coordinator.communicate(timeout=WAIT)
    return coordinator.returncode, out, err


def latest(course: Path) -> dict:
    return json.loads((course / "grading" / "results" / "latest.json").read_text())


@pytest.fixture
def workers():
    started = []
    yield lambda *args, **kwargs: started.append(Worker(*args, **kwargs)) or started[-1]
    for worker in started:
        worker.stop()


@pytest.fixture(scope="module")
def local_rows(tmp_path_factory):
    """The class graded by the local executor: the scores the queue must give."""
    course = make_course(tmp_path_factory.mktemp("local"), CLASS)
    code, out, err = finish(grade(course, "--jobs", "2"))
    assert code == 1, err  # the broken submissions need attention
    return gradebook_rows(course)


def test_a_class_is_graded_once_with_local_scores_while_a_worker_is_killed(
        redis_server, workers, local_rows, tmp_path):
    course = make_course(tmp_path / "course", CLASS)
    first = workers(redis_server.url, tmp_path / "first.log")
    second = workers(redis_server.url, tmp_path / "second.log")
    first.wait_ready()
    second.wait_ready()
    coordinator = grade(course, "--executor", "celery", "--broker", redis_server.url)
    wait_for(lambda: len(first.jobs("received")) > len(first.jobs("succeeded")) >= 1,
             f"the first worker never got a second job:\n{first.text()}")
    first.kill()
    lost = set(first.jobs("received")) - set(first.jobs("succeeded"))
    code, out, err = finish(coordinator)
    assert code == 1, err
    assert len(lost) == 1
    assert lost <= set(second.jobs("succeeded"))  # delivered again, graded by the other worker
    statuses = [s["student"] for s in latest(course)["students"]]
    assert sorted(statuses) == sorted(CLASS)  # each submission recorded once
    assert gradebook_rows(course) == local_rows
    assert f"{len(CLASS)} submissions, 2 need attention" in out


def poisoned_course(tmp_path):
    """A course with a correct student and "poison", whose grading process POISON kills;
    returns it and the folder to put on PYTHONPATH for the kill to happen."""
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(POISON)
    course = make_course(tmp_path / "course", ["correct"])
    shutil.copytree(HOSTILE / "submissions" / "correct",
                    course / "grading" / "submitted" / "poison" / "bn_forward")
    return course, inject


def test_a_submission_that_kills_every_worker_fails_after_bounded_deliveries(
        redis_server, workers, tmp_path):
    course, inject = poisoned_course(tmp_path)
    worker = workers(redis_server.url, tmp_path / "worker.log", env={"PYTHONPATH": str(inject)})
    worker.wait_ready()
    code, out, err = finish(grade(course, "--executor", "celery", "--broker", redis_server.url))
    assert code == 1, err
    statuses = {s["student"]: s for s in latest(course)["students"]}
    assert statuses["poison"]["status"] == "failed"
    assert statuses["poison"]["messages"] == [lost_message(MAX_DELIVERIES)]
    rows = gradebook_rows(course)
    assert all(score is None and flagged for score, flagged in rows["poison"].values())
    assert rows["correct"]["test_hidden"] == (4.0, False)
    poison = [job for job in worker.jobs("received") if ":poison:" in job]
    assert len(poison) == MAX_DELIVERIES + 1 and len(set(poison)) == 1
    assert redis_server.client().llen(QUEUE) == 0  # not on the queue any more


def test_the_local_executor_also_gives_up_on_a_submission_that_kills_its_process(tmp_path):
    course, inject = poisoned_course(tmp_path)
    code, out, err = finish(grade(course, "--jobs", "2", env={"PYTHONPATH": str(inject)}))
    assert code == 1, err
    statuses = {s["student"]: s for s in latest(course)["students"]}
    assert statuses["poison"]["messages"] == [lost_message(MAX_DELIVERIES)]
    assert statuses["correct"]["score"] == 10.0


def test_a_broker_that_goes_away_stops_the_run_and_a_rerun_finishes_the_class(
        redis_server, workers, tmp_path):
    students = ["correct", "released_unmodified", "missing_notebook"]
    course = make_course(tmp_path / "course", students)
    coordinator = grade(course, "--executor", "celery", "--broker", redis_server.url)
    client = redis_server.client()
    wait_for(lambda: client.llen(QUEUE) == 2, "the jobs never reached the queue")
    redis_server.stop()  # no worker took them: nothing was judged
    code, out, err = finish(coordinator)
    assert code == 2 and out == ""
    assert f"error: the broker at {redis_server.url} does not answer" in err
    assert "The run stopped: 1 of 3 submissions were recorded" in err
    assert "run the same command again to finish the class" in err
    record = latest(course)
    assert record["not_graded"] == ["bn_forward/correct", "bn_forward/released_unmodified"]
    rows = gradebook_rows(course)
    assert "correct" not in rows and "released_unmodified" not in rows  # nothing half-written
    assert not (course / "grading" / "autograded" / "correct").exists()

    redis_server.start()
    workers(redis_server.url, tmp_path / "worker.log").wait_ready()
    code, out, err = finish(grade(course, "--executor", "celery", "--broker", redis_server.url))
    assert code == 1, err
    assert {s["student"]: s["score"] for s in latest(course)["students"]} == {
        "correct": 10.0, "released_unmodified": 0.0, "missing_notebook": 0.0}


def test_a_job_delivered_twice_leaves_one_result_and_is_recorded_once(
        redis_server, workers, tmp_path):
    nb = v4.new_notebook(cells=[v4.new_code_cell("print('judged')")])
    job = make_job("bn_forward", "twice", {"bn_forward": nb}, Config())
    worker = workers(redis_server.url, tmp_path / "worker.log")
    worker.wait_ready()
    with CeleryExecutor(redis_server.url) as executor:
        executor.submit(job, 60)
        executor.app.send_task(TASK, args=[job, 60], task_id=job["id"], queue=QUEUE)  # again
        wait_for(lambda: len(worker.jobs("succeeded")) == 2, worker.text())
        results = executor.results(wait=0)
    assert worker.jobs("received") == [job["id"], job["id"]]
    assert [r["id"] for r in results] == [job["id"]]  # one result for the coordinator
    assert "judged" in results[0]["notebooks"]["bn_forward"]
    client = redis_server.client()
    assert client.get(deliveries_key(job["id"])) == b"2"
    assert len(client.keys("celery-task-meta-*")) == 1  # one stored result


def test_the_celery_executor_needs_a_broker(capsys):
    assert cli.main(["grade", "--executor", "celery"]) == 2
    assert "--executor celery needs --broker redis://HOST:PORT/DB" in capsys.readouterr().err


def sandbox_servers(pid: int) -> set[tuple[int, float]]:
    """(pid, start time) of each pre-started sandbox server under process ``pid``; the
    sandboxes forked from a server run the same command line and are not counted."""
    found = set()
    for process in psutil.Process(pid).children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            if "--serve" in process.cmdline() and "--serve" not in process.parent().cmdline():
                found.add((process.pid, process.create_time()))
    return found


def next_result(executor) -> dict:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        for result in executor.results(wait=1.0):
            return result
    raise AssertionError("the job was never judged")


def judge_in_turn(executor, judging_pid, students: list[str]) -> list[set]:
    """Judge one small submission per student, one after the other; the sandbox servers under
    the judging process after each."""
    nb = v4.new_notebook(cells=[v4.new_code_cell("import numpy\nprint(numpy.ones(2).sum())")])
    servers = []
    for student in students:
        job = make_job("bn_forward", student, {"bn_forward": nb}, Config())
        executor.submit(job, 120)
        result = next_result(executor)
        assert "2.0" in result["notebooks"]["bn_forward"]
        servers.append(sandbox_servers(judging_pid()))
    return servers


def test_a_local_judging_process_starts_its_sandbox_server_once_and_reuses_it():
    with LocalExecutor(1) as executor:
        first, second = judge_in_turn(executor, lambda: executor.processes[0].proc.pid,
                                      ["first", "second"])
    assert len(first) == 1
    assert second == first  # the second submission started no server


def test_a_celery_worker_starts_its_sandbox_server_once_and_reuses_it(
        redis_server, workers, tmp_path):
    worker = workers(redis_server.url, tmp_path / "worker.log")
    worker.wait_ready()
    with CeleryExecutor(redis_server.url) as executor:
        first, second = judge_in_turn(executor, lambda: worker.proc.pid, ["first", "second"])
    assert len(first) == 1
    assert second == first
