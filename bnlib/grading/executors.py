"""Where submissions are judged: long-lived processes on this machine, or workers on a queue.

The unit of work is a *job*: one student's submission of one assignment as nbgrader's
autograde hands it to its execute step (the submitted notebooks after the pre-flight and the
course's sanitize preprocessors), with the limits it is graded under. ``judge(job)`` runs
``IsolatedExecute`` on each notebook and returns them with their outputs: the verdicts in the
test cells, the student's output in theirs. It reads no course file and writes nothing; the
coordinator (``python -m bnlib.grading.cli grade``) records each result through nbgrader.

    LocalExecutor   ``processes`` long-lived processes on this machine (the default; no service)
    CeleryExecutor  a Celery queue on Redis; workers start with
                    ``python -m bnlib.grading.cli worker --broker URL`` on any machine that
                    reaches the broker and has the pinned environment

Nothing is lost and nothing is graded twice:

- A job is acknowledged only when its result is stored (``task_acks_late``); a worker that
  dies mid-job gives it back (``task_reject_on_worker_lost``), and the job of a worker that
  vanished (power loss) is delivered again after the broker's visibility timeout.
- Each delivery is counted in Redis (the local pool counts them itself): a submission that
  takes down every worker that grades it fails after ``MAX_DELIVERIES`` deliveries, with a
  message for staff, and is never tried again in that run.
- A job's id is its submission and the hash of its content: a job delivered twice has one
  stored result, and the coordinator records the first one it sees and ignores the other.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass

import nbformat
from nbconvert.preprocessors import Preprocessor

#: Deliveries of one job before it is failed without running it again.
MAX_DELIVERIES = 3
#: Seconds before the broker hands the job of a vanished worker to another one; must exceed
#: the longest job (the coordinator's ``--timeout``).
VISIBILITY_TIMEOUT = 3600.0
#: Seconds between a worker's looks for jobs whose worker vanished.
RESTORE_INTERVAL = 5
#: Seconds a job may run past its soft time limit before its worker process is killed.
HARD_LIMIT_GRACE = 30.0
#: Seconds results and delivery counts stay in Redis.
RESULT_TTL = 7 * 24 * 3600
#: Jobs the coordinator keeps on the queue at once (their notebooks are in its memory).
QUEUE_DEPTH = 256
QUEUE = "bnlib-grading"
TASK = "bnlib.grading.judge"
#: Seconds between two looks at the results of the jobs in flight.
POLL = 0.2
#: The limits and sandbox settings of the course that travel with each job.
JOB_SETTINGS = ("GradingLimits", "IsolatedExecute")


def make_job(assignment: str, student: str, notebooks: dict, config) -> dict:
    """A job for ``notebooks`` (name -> prepared notebook); its id is the submission and the
    hash of everything the verdict depends on."""
    settings = {name: dict(config[name]) for name in JOB_SETTINGS if name in config}
    job = {"assignment": assignment, "student": student, "settings": settings,
           "notebooks": {name: nbformat.writes(nb) for name, nb in sorted(notebooks.items())}}
    digest = hashlib.sha256(json.dumps(job, sort_keys=True).encode()).hexdigest()
    return {"id": f"{assignment}:{student}:{digest[:32]}", **job}


def judge(job: dict) -> dict:
    """Run every notebook of ``job`` in the sandbox and judge it: {"id", "notebooks"}, each
    notebook with its outputs (an executor that cannot judge it returns {"id", "error"}).
    Reads and writes no course file."""
    from traitlets.config import Config

    from bnlib.grading.pipeline import IsolatedExecute

    judged = {}
    for name, text in job["notebooks"].items():
        resources = {"nbgrader": {"student": job["student"], "assignment": job["assignment"],
                                  "notebook": name}}
        runner = IsolatedExecute(config=Config(job["settings"]))
        nb, _ = runner.preprocess(nbformat.reads(text, 4), resources)
        judged[name] = nbformat.writes(nb)
    return {"id": job["id"], "notebooks": judged}


def failure(job_id: str, message: str) -> dict:
    return {"id": job_id, "error": message}


def lost_message(deliveries: int) -> str:
    return (f"grading this submission stopped the worker that graded it, {deliveries} times "
            "(killed, out of memory or crashed): it is not tried again; grade it by hand")


def timeout_message(timeout: float) -> str:
    return f"grading took more than {timeout:g} s"


class JudgedOutputs(Preprocessor):
    """Autograde's execute step for a submission judged by ``judge``: the notebook becomes the
    one prepared for the job (``prepared``: name -> notebook), each code cell with the outputs
    of the judged notebook; judged cells that differ from the prepared ones are refused."""

    def __init__(self, prepared: dict, judged: dict[str, str], **kwargs):
        super().__init__(**kwargs)
        self.prepared, self.judged, self.enabled = prepared, judged, True

    def preprocess(self, nb, resources):
        name = resources["nbgrader"]["notebook"]
        nb = copy.deepcopy(self.prepared[name])
        judged = nbformat.reads(self.judged[name], 4)
        if _code(judged) != _code(nb):
            raise ValueError(f"{name}: the judged notebook is not the one sent to be judged")
        for cell, done in zip(nb.cells, judged.cells, strict=True):
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = done.outputs, done.execution_count
        return nb, resources


def _code(nb) -> list[tuple[str, str]]:
    return [(cell.cell_type, cell.source) for cell in nb.cells]


# -- local: long-lived processes on this machine ---------------------------------------------

@dataclass
class _Delivery:
    job: dict
    timeout: float
    deliveries: int = 0


class _Process:
    """One judging process (``serve``) and the job it holds."""

    def __init__(self):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from bnlib.grading.executors import serve; serve()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.delivery: _Delivery | None = None
        self.deadline = 0.0

    def give(self, delivery: _Delivery) -> None:
        delivery.deliveries += 1
        self.delivery, self.deadline = delivery, time.monotonic() + delivery.timeout
        self.proc.stdin.write(json.dumps(delivery.job) + "\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        """SIGTERM (the sandbox is cleaned up on the way out), then SIGKILL."""
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdin.close()
        self.proc.stdout.close()


def serve() -> None:
    """A local judging process: a job per line on stdin, its result per line on stdout."""
    results = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything else printed goes to stderr, not into the results
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # run the sandbox's cleanup
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the coordinator's to handle
    for line in sys.stdin:
        results.write(json.dumps(judge(json.loads(line))) + "\n")
        results.flush()


class LocalExecutor:
    """``processes`` judging processes, started once, sharing nothing with the coordinator; a
    process that dies is replaced and its job given to another one."""

    def __init__(self, processes: int):
        self.capacity = max(processes, 1)
        self.processes: list[_Process] = []
        self.waiting: deque[_Delivery] = deque()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def submit(self, job: dict, timeout: float) -> None:
        self.waiting.append(_Delivery(job, timeout))
        self._dispatch()

    def results(self, wait: float) -> list[dict]:
        """Results that came in within ``wait`` seconds (maybe none)."""
        busy = [p for p in self.processes if p.delivery is not None]
        readable = []
        if busy:
            wait = max(min(wait, min(p.deadline for p in busy) - time.monotonic()), 0)
            readable = select.select([p.proc.stdout for p in busy], [], [], wait)[0]
        done = []
        for process in busy:
            result = self._collect(process, process.proc.stdout in readable)
            if result is not None:
                done.append(result)
        self._dispatch()
        return done

    def _collect(self, process: _Process, readable: bool) -> dict | None:
        delivery = process.delivery
        line = process.proc.stdout.readline() if readable else ""
        if line.endswith("\n"):  # else it ended, maybe half-way through a result
            process.delivery = None
            return json.loads(line)
        alive = process.proc.poll() is None and not readable  # readable and empty: it ended
        if alive and time.monotonic() < process.deadline:
            return None
        process.stop()
        self.processes.remove(process)
        if alive:
            return failure(delivery.job["id"], timeout_message(delivery.timeout))
        if delivery.deliveries >= MAX_DELIVERIES:
            return failure(delivery.job["id"], lost_message(delivery.deliveries))
        self.waiting.appendleft(delivery)  # delivered again, as the broker would
        return None

    def _dispatch(self) -> None:
        while self.waiting:
            idle = [p for p in self.processes if p.delivery is None]
            if not idle and len(self.processes) < self.capacity:
                idle = [_Process()]
                self.processes += idle
            if not idle:
                return
            idle[0].give(self.waiting.popleft())

    def close(self) -> None:
        for process in self.processes:
            process.proc.stdin.close()  # the process reads EOF and returns
        for process in self.processes:
            try:
                process.proc.wait(10)
            except subprocess.TimeoutExpired:
                process.stop()
            process.proc.stdout.close()
        self.processes = []


# -- celery: a queue on Redis, workers anywhere ----------------------------------------------

class BrokerUnavailable(RuntimeError):
    """The broker (or the result store on it) does not answer."""


def celery_app(broker: str, visibility_timeout: float = VISIBILITY_TIMEOUT):
    """The Celery application of coordinator and workers: results on the broker's Redis."""
    from celery import Celery

    app = Celery("bnlib-grading", broker=broker, backend=broker, set_as_current=False)
    app.conf.update(
        task_acks_late=True, task_reject_on_worker_lost=True, worker_prefetch_multiplier=1,
        task_serializer="json", result_serializer="json", accept_content=["json"],
        task_default_queue=QUEUE, result_expires=RESULT_TTL,
        broker_transport_options={"visibility_timeout": visibility_timeout,
                                  "unacked_restore_interval": RESTORE_INTERVAL,
                                  "unacked_restore_throttle": 1},
        broker_connection_retry_on_startup=True, broker_connection_timeout=5,
        redis_socket_connect_timeout=5, redis_socket_timeout=30,
        worker_hijack_root_logger=False)
    app.task(name=TASK, bind=True)(judge_task)
    return app


def deliveries_key(job_id: str) -> str:
    return f"bnlib-grading:deliveries:{job_id}"


def judge_task(task, job: dict, timeout: float) -> dict:
    """The Celery task: count the delivery, give up on a job that keeps killing its workers,
    reuse a result already stored, else judge."""
    from celery.exceptions import SoftTimeLimitExceeded

    store = task.app.backend.client
    key = deliveries_key(job["id"])
    deliveries = store.incr(key)
    store.expire(key, RESULT_TTL)
    if deliveries > MAX_DELIVERIES:
        return failure(job["id"], lost_message(deliveries - 1))
    stored = task.app.backend.get_task_meta(task.request.id)
    if stored.get("status") == "SUCCESS":
        return stored["result"]  # delivered again after it was judged
    try:
        return judge(job)
    except SoftTimeLimitExceeded:
        return failure(job["id"], timeout_message(timeout))


def _broker_errors():
    from kombu.exceptions import OperationalError
    from redis.exceptions import RedisError

    return OSError, RedisError, OperationalError


class CeleryExecutor:
    """Jobs on the Celery queue ``QUEUE`` of the Redis at ``broker``."""

    def __init__(self, broker: str, capacity: int = QUEUE_DEPTH):
        from kombu.utils.url import maybe_sanitize_url

        self.app = celery_app(broker)
        self.where = maybe_sanitize_url(broker)
        self.capacity = capacity
        self.pending: dict[str, tuple] = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def submit(self, job: dict, timeout: float) -> None:
        with self._guard():
            self.app.backend.client.delete(deliveries_key(job["id"]))
            self.app.backend.forget(job["id"])  # a result of an earlier run is not this run's
            result = self.app.send_task(TASK, args=[job, timeout], task_id=job["id"], queue=QUEUE,
                                        soft_time_limit=timeout,
                                        time_limit=timeout + HARD_LIMIT_GRACE)
        self.pending[job["id"]] = (result, timeout)

    def results(self, wait: float) -> list[dict]:
        """Results that came in within ``wait`` seconds (maybe none)."""
        deadline = time.monotonic() + wait
        with self._guard():
            while True:
                done = [self._outcome(job_id) for job_id in self._ready()]
                if done or time.monotonic() >= deadline:
                    return done
                time.sleep(POLL)

    def _ready(self) -> list[str]:
        """The pending jobs whose results are in, asked in one round trip to the broker."""
        from celery import states

        ids, backend = list(self.pending), self.app.backend
        if not ids:
            return []
        stored = backend.mget([backend.get_key_for_task(job_id) for job_id in ids])
        return [job_id for job_id, meta in zip(ids, stored, strict=True)
                if meta is not None
                and backend.decode_result(meta)["status"] in states.READY_STATES]

    def _outcome(self, job_id: str) -> dict:
        from celery.exceptions import TimeLimitExceeded

        result, timeout = self.pending.pop(job_id)
        if result.successful():
            return result.result
        if isinstance(result.result, TimeLimitExceeded):
            return failure(job_id, timeout_message(timeout))
        return failure(job_id, f"the worker failed: {type(result.result).__name__}: "
                               f"{result.result}")

    @contextlib.contextmanager
    def _guard(self):
        try:
            yield
        except _broker_errors() as exc:
            raise BrokerUnavailable(f"the broker at {self.where} does not answer "
                                    f"({type(exc).__name__}: {exc})") from exc

    def close(self) -> None:
        self.pending = {}


def run_worker(broker: str, concurrency: int, visibility_timeout: float = VISIBILITY_TIMEOUT,
               loglevel: str = "INFO") -> None:
    """A Celery worker judging jobs from ``QUEUE``, ``concurrency`` at a time."""
    app = celery_app(broker, visibility_timeout)
    app.worker_main(["worker", f"--concurrency={concurrency}", "--pool=prefork",
                     f"--queues={QUEUE}", f"--loglevel={loglevel}", "--without-gossip",
                     "--without-mingle", f"--hostname=grading-{os.getpid()}@%h"])
