"""Run untrusted student code in a separate, limited process, one step at a time.

``Sandbox.run`` writes a job into a private folder, starts ``bnlib/grading/harness.py`` there
(``python -I -S``, the standard library and the site-packages holding NumPy only) and drives
it: it sends each step (a cell, then a check) as a command, starts that step's clock when it
sends it, and reads the reply, a cell's output or a check's results as ``.npz`` arrays loaded
with ``allow_pickle=False``. Progress is the trusted side's own: nothing the student's code
writes gives a step more time (see the harness's docstring for the protocol).

What the sandbox gets (README "What is isolated"): resource limits for the whole process tree
(a control group where the machine allows it, else rlimits and sampling by this process);
limits on every step in CPU time with a wall-clock backstop; an empty environment; as root on
Linux, new mount, network and PID namespaces and a private uid; everywhere, an audit hook that
refuses sockets, reads under the hidden folders and the packages an assignment forbids.

A step that ends the process (``os._exit``, a crash, a timeout the harness cannot interrupt) is
recorded and the job is restarted without it, so one bad cell costs only that cell.
"""

from __future__ import annotations

import functools
import io
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bnlib.grading import harness
from bnlib.grading.cgroups import ControlGroup, ControlGroupUnavailable, ProcessTree
from bnlib.grading.limits import GradingLimits

#: How often (seconds) a running step's CPU time and memory are looked at.
TICK = 0.1
#: Largest JSON header of a reply frame, bytes (a cell's capped output, escaped, fits easily).
MAX_HEADER_BYTES = 16 << 20
#: Bytes read from the reply pipe at once.
READ_SIZE = 1 << 20
#: What a step is told whose code answered in the harness's place and went on running.
FORGED_REPLY = ("your code sent the grader a reply in the harness's place and went on running: "
                "this step is not graded")
#: The first uid of the private uids the sandboxes run as, and how many there are.
FIRST_UID, UIDS = 100_000, 800_000


@dataclass
class CheckJob:
    """A check to run in the sandbox: ``cases`` are dicts of str -> ndarray | int | float | str."""

    key: str
    driver: str
    functions: tuple[str, ...]
    cases: list[dict]


@dataclass
class CellOutcome:
    """What one student cell printed and how it ended (``error``: ename, evalue, traceback)."""

    stdout: str = ""
    stderr: str = ""
    error: dict | None = None


@dataclass
class CheckOutcome:
    """``results`` (one dict of arrays per case), or ``failure``: a message for the student."""

    results: list[dict] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    failure: str | None = None


@dataclass
class JobOutcome:
    cells: dict[str, CellOutcome]
    checks: dict[str, CheckOutcome]
    process_output: str
    isolation: list[str]
    attempts: int


def clean_text(text: str, cap: int) -> str:
    """Make untrusted text safe to store: at most ``cap`` characters (cut first, so no work
    depends on the full length), valid UTF-8, no NULs."""
    more = len(text) - cap
    text = text[:cap].encode("utf-8", "replace").decode("utf-8", "replace").replace("\x00", "")
    return text + (f"\n... [output truncated: {more} more characters]" if more > 0 else "")


def describe_exit(returncode: int) -> str:
    """Say in words how a process ended, e.g. "exit code 3" or "signal SIGSEGV"."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"exit code {returncode}, {name}"
    return f"exit code {returncode}"


@functools.cache
def isolation_available() -> bool:
    """True where the sandbox can get namespaces and a private uid: Linux, running as root, and
    allowed to unshare and mount a /proc (a container without CAP_SYS_ADMIN is not). Probed
    once per process, with the harness's own code."""
    if not (sys.platform.startswith("linux") and os.geteuid() == 0
            and Path("/proc/self").exists()):
        return False
    try:
        result = subprocess.run([os.path.realpath(sys.executable), "-I", "-S", harness.__file__,
                                 "--probe"], capture_output=True, timeout=30, env={})
    except (OSError, subprocess.SubprocessError):
        return False
    return result.returncode == 0


def python_paths() -> list[str]:
    """The sys.path the sandbox gets: the standard library and the site-packages of NumPy."""
    import sysconfig

    import numpy

    paths = [p for p in sys.path if p and p.startswith(sys.base_prefix) and Path(p).exists()]
    stdlib = sysconfig.get_paths()["stdlib"]
    if stdlib not in paths:
        paths.insert(0, stdlib)
    return [*paths, str(Path(numpy.__file__).resolve().parent.parent)]


def package_folders(names) -> dict[str, str]:
    """Folder (or file) of each installed top-level package in ``names`` -> its name; found
    without importing it."""
    import importlib.util

    found = {}
    for name in names:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        if spec is None:
            continue
        for location in spec.submodule_search_locations or [spec.origin]:
            if location and os.path.exists(location):
                found[os.path.realpath(location)] = name
    return found


# Top-level folders an interpreter needs; every other one is hidden (other checkouts of the
# course, data folders, service sockets under /run).
SYSTEM_DIRS = {"bin", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "sbin", "sys",
               "usr"}


def _hidden_dirs(extra: list[str]) -> list[str]:
    """Folders the sandbox must not see: repository, its parent, homes, temporary folders, and
    every top-level folder that is not part of the operating system."""
    repo = Path(__file__).resolve().parents[2]
    top_level = [p for p in Path("/").iterdir()
                 if p.name not in SYSTEM_DIRS and p.is_dir() and not p.is_symlink()]
    candidates = [repo, repo.parent, Path.home(), Path("/home"), Path("/root"),
                  Path(tempfile.gettempdir()), Path("/tmp"), Path("/var/tmp"), Path("/dev/shm"),
                  *sorted(top_level), *map(Path, extra)]
    found = []
    for path in candidates:
        path = path.resolve()
        if path != Path("/") and path.is_dir() and str(path) not in found:
            found.append(str(path))
    return found


class ProtocolViolation(Exception):
    """The sandbox sent something the harness never sends: the student's code wrote it."""


class _Replies:
    """Frames read from the sandbox's reply pipe, without ever blocking for long."""

    def __init__(self, fd: int, max_payload: int):
        os.set_blocking(fd, False)
        self.fd, self.max_payload, self.buffer, self.closed = fd, max_payload, bytearray(), False

    def next(self, timeout: float) -> tuple[dict, bytes] | None:
        """The next complete frame, waiting at most ``timeout`` seconds for one; None if none."""
        frame = self._parse()
        if frame is None and not self.closed:
            if select.select([self.fd], [], [], timeout)[0]:
                self._read()
            frame = self._parse()
        return frame

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.fd, READ_SIZE)
            except BlockingIOError:
                return
            if not chunk:
                self.closed = True
                return
            self.buffer += chunk
            if len(self.buffer) > MAX_HEADER_BYTES + self.max_payload + harness.FRAME_HEADER.size:
                return  # parse what is there first

    def _parse(self) -> tuple[dict, bytes] | None:
        size = harness.FRAME_HEADER.size
        if len(self.buffer) < size:
            return None
        header_size, payload_size = harness.FRAME_HEADER.unpack_from(self.buffer)
        if header_size > MAX_HEADER_BYTES or payload_size > self.max_payload:
            raise ProtocolViolation(f"a reply of {header_size + payload_size} bytes")
        end = size + header_size + payload_size
        if len(self.buffer) < end:
            return None
        try:
            header = json.loads(bytes(self.buffer[size:size + header_size]))
        except ValueError:
            raise ProtocolViolation("a reply that is not JSON") from None
        if not isinstance(header, dict):
            raise ProtocolViolation("a reply that is not a JSON object")
        payload = bytes(self.buffer[size + header_size:end])
        del self.buffer[:end]
        return header, payload


class _Child:
    """One sandboxed process tree: its pipes, its control group (or process tree), and how
    to stop all of it."""

    def __init__(self, workdir: Path, uid, group: ControlGroup | None, limits: GradingLimits):
        commands_read, self.commands = os.pipe()
        replies, replies_write = os.pipe()
        env = {"PATH": "/usr/bin:/bin", "HOME": str(workdir / harness.HOME_DIR),
               "TMPDIR": str(workdir / harness.HOME_DIR), "LANG": "C.UTF-8",
               "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}
        script = workdir / harness.GRADER_DIR / "harness.py"
        self.proc = subprocess.Popen(
            [os.path.realpath(sys.executable), "-I", "-S", str(script), str(workdir),
             str(commands_read), str(replies_write)],
            cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True,
            pass_fds=(commands_read, replies_write))
        os.close(commands_read)
        os.close(replies_write)
        self.output = _CappedReader(self.proc.stdout, limits.output_chars)
        self.output.start()
        self.replies = _Replies(replies, limits.result_mb << 20)
        self.uid, self.group, self.limits = uid, group, limits
        self.tree = ProcessTree(self.proc.pid)
        self.exit_code: int | None = None  # how the worker ended, as its namespace's init saw it
        self.ready = self.halted = False
        self.next_sample = time.monotonic() + TICK

    def unread_commands(self) -> int:
        """Bytes of commands the harness has not read yet."""
        import fcntl
        import termios

        try:
            return int.from_bytes(fcntl.ioctl(self.commands, termios.FIONREAD, bytes(4)),
                                  sys.byteorder)
        except OSError:
            return 0

    def send(self, command: dict) -> bool:
        try:
            os.write(self.commands, (json.dumps(command) + "\n").encode())
            return True
        except OSError:  # the sandbox is gone
            return False

    def next(self, timeout: float) -> tuple[dict, bytes] | None:
        frame = self.replies.next(timeout)
        if frame is not None and frame[0].get("kind") == "exit":
            self.exit_code = frame[0].get("code") if isinstance(frame[0].get("code"), int) \
                else None
            return None
        return frame

    def ended(self) -> bool:
        return self.replies.closed or self.proc.poll() is not None or self.exit_code is not None

    def cpu_seconds(self) -> float:
        return self.group.cpu_seconds() if self.group else self.tree.cpu_seconds()

    def over_memory(self) -> bool:
        """Without a control group the memory limit of the whole tree is checked here."""
        return self.group is None and self.tree.memory_bytes() > self.limits.memory_mb << 20

    def out_of_memory(self, oom_kills_before: int) -> bool:
        return self.group is not None and self.group.oom_kills() > oom_kills_before

    def halt(self) -> int:
        """Kill every process of the sandbox (also when it exited: forked children may be
        running); return how the worker ended."""
        if not self.halted:
            self.halted = True
            if self.group is not None:
                self.group.kill()
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.proc.wait()
            if self.uid is not None and self.group is None:
                _kill_uid(self.uid)  # forked children that left the process group
            self.output.join(timeout=5)
        return self.exit_code if self.exit_code is not None else self.proc.returncode

    def close(self) -> None:
        self.halt()
        os.close(self.commands)
        os.close(self.replies.fd)


class _StepClock:
    """The time one step has used: wall-clock from when it was sent, CPU time of the whole
    sandbox from its first sample on (the step had at most one tick before that)."""

    def __init__(self, child: _Child, cpu_limit: float, wall_limit: float):
        self.child, self.cpu_limit, self.wall_limit = child, cpu_limit, wall_limit
        self.started, self.cpu_start = time.monotonic(), None

    def cpu_used(self) -> float:
        cpu = self.child.cpu_seconds()
        if self.cpu_start is None:
            self.cpu_start = cpu - TICK
        return cpu - self.cpu_start


@dataclass
class _Run:
    """What one sandboxed process produced before it ended."""

    output: str = ""
    isolation: list[str] = field(default_factory=list)
    cells: dict[int, CellOutcome] = field(default_factory=dict)
    checks: dict[int, CheckOutcome] = field(default_factory=dict)
    culprit: tuple[str, int | None, str] | None = None  # (kind, index, message)
    unstarted: bool = False  # the culprit step was stopped before the harness read it


class Sandbox:
    """Runs jobs in limited child processes; see the module docstring for what is isolated."""

    def __init__(self, limits: GradingLimits | None = None,
                 drivers_file: str | os.PathLike | None = None, hide: list[str] | None = None,
                 isolate: bool | None = None, control_groups: bool = True):
        self.limits = limits or GradingLimits()
        self.drivers_file = Path(drivers_file) if drivers_file else None
        self.hide = _hidden_dirs(hide or [])
        self.isolate = isolation_available() if isolate is None else isolate
        self.control_groups = control_groups

    def run(self, cells: list[tuple[str, str]], checks: list[CheckJob],
            preload: tuple[str, ...] = ("numpy",),
            forbidden: dict[str, str] | None = None) -> JobOutcome:
        """Run ``cells`` (id, Python source) in order, then the checks; never raises for student
        behaviour. ``forbidden`` maps top-level packages student code may not import to the
        message it gets. A step that kills the process is skipped on restart."""
        cell_outcomes: dict[str, CellOutcome] = {}
        check_outcomes: dict[str, CheckOutcome] = {}
        skip: set[int] = set()
        output, isolation, attempts = "", [], 0
        deadline = time.monotonic() + self.limits.total_timeout
        while attempts < len(cells) + len(checks) + 2 and time.monotonic() < deadline:
            attempts += 1
            steps = [("cell", i) for i in range(len(cells)) if i not in skip] + [
                ("check", i) for i, c in enumerate(checks) if c.key not in check_outcomes]
            run = self._run_once(cells, checks, steps, preload, forbidden or {}, deadline)
            isolation = run.isolation or isolation
            output += run.output
            for index, outcome in run.cells.items():
                cell_outcomes.setdefault(cells[index][0], outcome)
            check_outcomes.update({checks[i].key: o for i, o in run.checks.items()})
            if run.culprit is None:
                break
            kind, index, message = run.culprit
            if kind == "cell":
                skip.add(index)
                cell_outcomes[cells[index][0]] = CellOutcome(
                    *_streams(cell_outcomes.get(cells[index][0])),
                    error={"ename": "ProcessEnded", "evalue": message, "traceback": [message]})
            elif kind == "check":
                check_outcomes[checks[index].key] = CheckOutcome(failure=message)
            else:  # the process died outside any step: give up on what is left
                for check in checks:
                    check_outcomes.setdefault(check.key, CheckOutcome(failure=message))
                break
        for check in checks:
            check_outcomes.setdefault(check.key, CheckOutcome(
                failure="this check did not run: grading stopped before it (the notebook's "
                        f"time limit of {self.limits.total_timeout:.0f} s was used up, or your "
                        "code ended the process)"))
        return JobOutcome(cell_outcomes, check_outcomes,
                          clean_text(output, self.limits.output_chars), isolation, attempts)

    # -- one sandboxed process -----------------------------------------------------------------

    def _run_once(self, cells, checks, steps, preload, forbidden, deadline) -> _Run:
        workdir = Path(tempfile.mkdtemp(prefix="bnlib-sandbox-"))
        group, child = None, None
        run = _Run()
        try:
            group, described = self._control_group(workdir.name)
            uid = self._prepare(workdir, cells, checks, preload, forbidden, group)
            child = _Child(workdir, uid, group, self.limits)
            self._drive(child, steps, deadline, run)
            run.isolation = [*run.isolation, described]
        finally:
            if child is not None:
                child.close()
                run.output = child.output.text()
                if not child.ready and child.halt() == harness.SETUP_FAILED:
                    raise RuntimeError(f"the grading sandbox could not start:\n{run.output}")
            if group is not None:
                group.remove()
            shutil.rmtree(workdir, ignore_errors=True)
        return run

    def _control_group(self, name: str) -> tuple[ControlGroup | None, str]:
        limits = self.limits
        fallback = (f"no control group ({{}}): rlimits per process ({limits.memory_mb} MiB "
                    f"address space, {limits.processes} processes), memory and CPU of the "
                    f"process tree sampled every {TICK:g} s")
        if not self.control_groups:
            return None, fallback.format("not used")
        try:
            group = ControlGroup.create(name, limits.memory_mb << 20, limits.processes,
                                        limits.cpus)
        except (ControlGroupUnavailable, OSError) as exc:
            return None, fallback.format(exc)
        return group, group.describe(limits.memory_mb << 20, limits.processes, limits.cpus)

    def _prepare(self, workdir: Path, cells, checks, preload, forbidden, group) -> int | None:
        import numpy as np

        grader = workdir / harness.GRADER_DIR
        grader.mkdir()
        (workdir / harness.HOME_DIR).mkdir()
        shutil.copy(harness.__file__, grader / "harness.py")
        if self.drivers_file is not None:
            shutil.copy(self.drivers_file, grader / "drivers.py")
        arrays, check_specs = {}, []
        for check in checks:
            specs = []
            for index, case in enumerate(check.cases):
                spec = {}
                for name, value in case.items():
                    if isinstance(value, np.ndarray | np.generic):
                        arrays[f"{check.key}/{index}/{name}"] = np.asarray(value)
                        spec[name] = {"array": f"{check.key}/{index}/{name}"}
                    else:
                        spec[name] = {"value": value}
                specs.append(spec)
            check_specs.append({"key": check.key, "driver": check.driver,
                                "functions": list(check.functions), "cases": specs})
        np.savez(grader / "cases.npz", **arrays)
        folders = package_folders(forbidden)
        job = {"cells": [{"id": cid, "source": src} for cid, src in cells],
               "checks": check_specs, "preload": list(preload), "sys_path": python_paths(),
               "limits": self.limits.as_dict(), "hide": self.hide, "isolate": self.isolate,
               "keep": [sys.base_prefix, *python_paths()[-1:]], "forbidden": forbidden,
               "forbidden_folders": {folder: forbidden[name] for folder, name in folders.items()},
               "control_group": group.procs_files if group else []}
        uid = None
        if self.isolate:
            # a fresh unprivileged uid per run: RLIMIT_NPROC then counts only this run's
            # processes, and nothing of the host is writable
            uid = FIRST_UID + int.from_bytes(os.urandom(3), "big") % UIDS
            job["uid"] = uid
        (grader / "job.json").write_text(json.dumps(job))
        if uid is None:
            os.chmod(workdir, 0o700)
        else:
            # root owns the grader's files (the student cannot change them); only the
            # sandbox's group may read them (the job holds the student's code)
            for path in [workdir, *workdir.rglob("*")]:
                os.chown(path, 0, uid)
                os.chmod(path, 0o750 if path.is_dir() else 0o640)
        return uid

    # -- driving the steps ---------------------------------------------------------------------

    def _drive(self, child: _Child, steps, deadline: float, run: _Run) -> None:
        """Wait for the harness, then send each step and collect its reply."""
        ready = self._await(child, "ready", None, self.limits.startup_timeout, deadline, run)
        if ready is None:
            return
        child.ready = True
        run.isolation = [str(line) for line in ready[0].get("isolation", [])][:20]
        previous = None
        for kind, index in steps:
            if not child.send({"run": kind, "index": index}):
                run.culprit = ("process", None, self._ended_message(child, 0))
                return
            reply = self._await(child, kind, index, self.limits.step_timeout(kind), deadline,
                                run)
            if reply is None:
                if run.unstarted and previous is not None:
                    # the harness never read this step: the reply to the one before was forged
                    # by code that kept running, which is that step's fault
                    run.culprit = (*previous, FORGED_REPLY)
                return
            previous = (kind, index)
        child.send({"run": "exit"})
        try:
            child.proc.wait(timeout=self.limits.grace)
        except subprocess.TimeoutExpired:
            pass

    def _await(self, child: _Child, kind: str, index, cpu_limit: float, deadline: float,
               run: _Run):
        """The reply that ends a step (collecting a check's results on the way), or None with
        ``run.culprit`` set when the step has to be stopped."""
        wall_limit = cpu_limit if kind == "ready" else cpu_limit * self.limits.wall_clock_factor
        clock = _StepClock(child, cpu_limit, wall_limit)
        oom_before = child.group.oom_kills() if child.group else 0
        culprit, results = "process" if kind == "ready" else kind, []
        while True:
            try:
                frame = child.next(TICK)
                if frame is None and child.ended():
                    frame = child.next(0)  # what it wrote before it ended
            except ProtocolViolation as exc:
                run.culprit = (culprit, index, f"your code wrote to the grader's channel ({exc}):"
                               " this step is not graded")
                return None
            if frame is not None:
                header, payload = frame
                if kind == "check" and header.get("kind") == "result" \
                        and header.get("check") == index:
                    results.append(_load_result(payload, self.limits))
                    continue
                if header.get("kind") == kind and header.get("index") == index:
                    self._record(kind, index, header, results, run)
                    return frame
                run.culprit = (culprit, index, "your code wrote to the grader's channel: this "
                               "step is not graded")
                return None
            if child.ended():
                run.culprit = (culprit, index, self._ended_message(child, oom_before))
                return None
            message = self._over_limit(child, clock, deadline)
            if message is not None:
                run.culprit = (culprit, index, message)
                run.unstarted = child.unread_commands() > 0
                return None

    def _over_limit(self, child: _Child, clock: _StepClock, deadline: float) -> str | None:
        """Once a tick: the message for a step past the notebook's time, its own wall-clock or
        CPU limit, or (without a control group) the memory limit; None while within them."""
        now = time.monotonic()
        if now < child.next_sample:  # sampled every tick, over quick steps too
            return None
        child.next_sample = now + TICK
        grace, memory_mb = self.limits.grace, self.limits.memory_mb
        if now > deadline:
            return "grading stopped: the time limit for the whole notebook was used up"
        if now - clock.started > clock.wall_limit + grace:
            return (f"your code did not finish within {clock.wall_limit:.0f} s (infinite loop, "
                    "very slow code, or waiting for something?)")
        if clock.cpu_used() > clock.cpu_limit + grace:
            return (f"your code did not finish within {clock.cpu_limit:.0f} s of CPU time "
                    "(infinite loop or very slow code?)")
        if child.over_memory():
            return (f"out of memory: your code and the processes it started used more than "
                    f"{memory_mb} MiB")
        return None

    def _record(self, kind: str, index: int, header: dict, results: list, run: _Run) -> None:
        cap, message_cap = self.limits.output_chars, self.limits.message_chars
        if kind == "cell":
            error = header.get("error")
            if isinstance(error, dict):
                trace = error.get("traceback")
                error = {"ename": clean_text(str(error.get("ename", "Error")), message_cap),
                         "evalue": clean_text(str(error.get("evalue", "")), cap),
                         "traceback": [clean_text(str(line), cap)
                                       for line in trace[:harness.TRACEBACK_LINES]]
                         if isinstance(trace, list) else []}
            else:
                error = None
            run.cells[index] = CellOutcome(clean_text(str(header.get("stdout", "")), cap),
                                           clean_text(str(header.get("stderr", "")), cap),
                                           error)
        elif kind == "check":
            missing = header.get("missing")
            if isinstance(missing, list) and missing:
                run.checks[index] = CheckOutcome(
                    missing=[clean_text(str(m), message_cap) for m in missing[:20]])
            else:
                run.checks[index] = CheckOutcome(results=results)

    def _ended_message(self, child: _Child, oom_before: int) -> str:
        code = child.halt()
        if child.out_of_memory(oom_before):
            return (f"out of memory: your code and the processes it started needed more than "
                    f"{self.limits.memory_mb} MiB")
        if code in (-signal.SIGKILL, -signal.SIGXCPU):
            return f"your code was stopped: out of memory or CPU time ({describe_exit(code)})"
        return f"your code ended the process ({describe_exit(code)})"


def _streams(outcome: CellOutcome | None) -> tuple[str, str]:
    return (outcome.stdout, outcome.stderr) if outcome else ("", "")


def _load_result(payload: bytes, limits: GradingLimits) -> dict:
    """A case's arrays from untrusted ``.npz`` bytes: size-checked before loading (a compressed
    file can expand), no pickles, and every string cut to ``limits.message_chars``."""
    import zipfile

    import numpy as np

    try:
        with zipfile.ZipFile(io.BytesIO(payload)) as archive:
            if sum(info.file_size for info in archive.infolist()) > limits.result_mb << 20:
                return {"error": np.array("the result is too large to be checked")}
        with np.load(io.BytesIO(payload), allow_pickle=False) as data:
            arrays = {name[:limits.message_chars]: data[name] for name in data.files}
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a malformed result
        return {"error": np.array(f"the result could not be read back: {type(exc).__name__}")}
    for name, array in arrays.items():
        if array.dtype.kind in "US" and array.size * array.dtype.itemsize > limits.message_chars:
            first = str(array.ravel()[0]) if array.size else ""
            arrays[name] = np.array(clean_text(first, limits.message_chars))
    return arrays


class _CappedReader:
    """Drain a pipe in a thread, keeping at most ``cap`` bytes, so a flood of output cannot
    block the sandbox or bloat this process."""

    def __init__(self, stream, cap: int):
        import threading

        self.stream, self.cap, self.data, self.dropped = stream, cap, bytearray(), 0
        self.thread = threading.Thread(target=self._drain, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)

    def _drain(self) -> None:
        while chunk := self.stream.read(65536):
            room = max(self.cap - len(self.data), 0)
            self.data += chunk[:room]
            self.dropped += len(chunk) - min(len(chunk), room)

    def text(self) -> str:
        text = self.data.decode("utf-8", "replace")
        return text + (f"\n... [{self.dropped} more bytes dropped]" if self.dropped else "")


def _kill_uid(uid: int) -> None:
    """SIGKILL every process of ``uid`` until none is left (they may fork while we look)."""
    for _ in range(50):
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if entry.stat().st_uid == uid:
                    pids.append(int(entry.name))
            except OSError:
                continue
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
