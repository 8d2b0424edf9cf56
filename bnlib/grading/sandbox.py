"""Run untrusted student code in a separate, limited process.

The trusted side (``Sandbox.run``) writes a job into a private temporary directory, starts a
fresh interpreter on *this very file* (``python -I -S sandbox.py --child DIR``) and reads the
results back as JSON text and ``.npz`` arrays loaded with ``allow_pickle=False``. This module
imports only the standard library at top level so it can run where ``bnlib`` is not importable.

What the child gets (see ``README`` "What is isolated"):

- resource limits: ``RLIMIT_CPU``, ``RLIMIT_AS``, ``RLIMIT_NPROC``, ``RLIMIT_FSIZE``,
  ``RLIMIT_CORE = 0``, and a wall-clock limit per step enforced by the parent, which kills the
  whole process group (and, when it runs as a private uid, every process of that uid);
- an empty environment (``PATH``, ``HOME`` and ``TMPDIR`` pointing into the private directory,
  one BLAS/OpenMP thread), ``cwd`` in the private directory, ``python -I -S`` with a
  ``sys.path`` of the standard library and the site-packages that hold NumPy/PyTorch only;
- as root on Linux: new network and mount namespaces (no network; the course folder, the
  repository, home and temporary folders and every top-level folder outside the operating
  system's own hidden under empty tmpfs mounts) and a private,
  unprivileged uid, so ``RLIMIT_NPROC`` applies and nothing else on the host is writable;
- everywhere: an audit hook that refuses sockets, and file opens under the hidden folders
  (best effort only without root: Python code can be escaped with ``ctypes``).

A job is a list of code cells, run in order in one namespace, then a list of checks: for each
check, ``drivers.DRIVERS[driver](functions, case)`` is called on inputs computed beforehand by
the trusted side. Every step has its own time limit. A step that ends the process (``os._exit``,
a crash, a timeout the child cannot interrupt) is recorded and the job is restarted without it,
so one bad cell costs only that cell.
"""

from __future__ import annotations

import functools
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

#: Exit code the child uses when its own setup fails (never a student's doing).
SETUP_FAILED = 71
_CHILD_DIR_NAME = "grader"
_HOME_DIR_NAME = "home"


@dataclass
class Limits:
    """Resource limits of one sandboxed process; times in seconds, sizes in bytes."""

    cell_timeout: float = 20.0
    check_timeout: float = 30.0
    total_timeout: float = 300.0
    memory: int = 2 << 30
    processes: int = 64
    file_size: int = 16 << 20
    output_cap: int = 20_000
    tmpfs_size: int = 64 << 20
    grace: float = 3.0


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
    """Make untrusted text safe to store: valid UTF-8, no NULs, at most ``cap`` characters."""
    text = text.encode("utf-8", "replace").decode("utf-8", "replace").replace("\x00", "")
    if len(text) > cap:
        text = text[:cap] + f"\n... [output truncated: {len(text) - cap} more characters]"
    return text


# ----------------------------------------------------------------------------------------------
# trusted side
# ----------------------------------------------------------------------------------------------


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
    """True where the child can get namespaces and a private uid: Linux, running as root, and
    allowed to unshare (a container without CAP_SYS_ADMIN is not). Probed once per process."""
    if not (sys.platform.startswith("linux") and os.geteuid() == 0
            and Path("/proc/self").exists()):
        return False
    probe = ("import ctypes, sys; "
             f"sys.exit(ctypes.CDLL(None).unshare({_CLONE_NEWNS | _CLONE_NEWNET}) != 0)")
    try:
        result = subprocess.run([os.path.realpath(sys.executable), "-I", "-S", "-c", probe],
                                capture_output=True, timeout=30, env={})
    except (OSError, subprocess.SubprocessError):
        return False
    return result.returncode == 0


def python_paths() -> list[str]:
    """The sys.path the child gets: the standard library and the site-packages holding NumPy."""
    import sysconfig

    paths = [p for p in sys.path if p and p.startswith(sys.base_prefix) and Path(p).exists()]
    stdlib = sysconfig.get_paths()["stdlib"]
    if stdlib not in paths:
        paths.insert(0, stdlib)
    try:
        import numpy
    except ImportError:  # pragma: no cover - numpy is a dependency of bnlib
        return paths
    site = str(Path(numpy.__file__).resolve().parent.parent)
    return [*paths, site]


# Top-level folders an interpreter needs; every other one is hidden (other checkouts of the
# course, data folders, service sockets under /run).
SYSTEM_DIRS = {"bin", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "sbin", "sys",
               "usr"}


def _hidden_dirs(extra: list[str]) -> list[str]:
    """Folders the child must not see: repository, its parent, homes, temporary folders, and
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


class _CappedReader(threading.Thread):
    """Drain a pipe, keeping at most ``cap`` bytes, so a flood of output cannot block or bloat."""

    def __init__(self, stream, cap: int):
        super().__init__(daemon=True)
        self.stream, self.cap, self.data, self.dropped = stream, cap, bytearray(), 0

    def run(self) -> None:
        while chunk := self.stream.read(65536):
            room = self.cap - len(self.data)
            self.data += chunk[:max(room, 0)]
            self.dropped += max(len(chunk) - max(room, 0), 0)

    def text(self) -> str:
        text = self.data.decode("utf-8", "replace")
        return text + (f"\n... [{self.dropped} more bytes dropped]" if self.dropped else "")


class Sandbox:
    """Runs jobs in limited child processes; see the module docstring for what is isolated."""

    def __init__(self, limits: Limits | None = None, drivers_file: str | os.PathLike | None = None,
                 hide: list[str] | None = None, isolate: bool | None = None):
        self.limits = limits or Limits()
        self.drivers_file = Path(drivers_file) if drivers_file else None
        self.hide = _hidden_dirs(hide or [])
        self.isolate = isolation_available() if isolate is None else isolate

    def run(self, cells: list[tuple[str, str]], checks: list[CheckJob],
            preload: tuple[str, ...] = ("numpy",)) -> JobOutcome:
        """Run ``cells`` (id, Python source) in order, then the checks; never raises for student
        behaviour. Each step is tried once; a step that kills the process is skipped on restart."""
        cell_outcomes: dict[str, CellOutcome] = {}
        check_outcomes: dict[str, CheckOutcome] = {}
        skip_cells: set[str] = set()
        process_output, isolation, attempts = "", [], 0
        max_attempts = len(cells) + len(checks) + 2
        started = time.monotonic()
        while attempts < max_attempts:
            attempts += 1
            pending = [c for c in checks if c.key not in check_outcomes]
            left = self.limits.total_timeout - (time.monotonic() - started)
            if left <= 0:
                break
            run = self._run_once(cells, skip_cells, pending, preload, left)
            isolation = run["isolation"] or isolation
            process_output += run["output"]
            for cid, outcome in run["cells"].items():
                cell_outcomes.setdefault(cid, outcome)
            check_outcomes.update(run["checks"])
            culprit = run["culprit"]
            if culprit is None:
                break
            kind, ident, message = culprit
            if kind == "cell":
                skip_cells.add(ident)
                cell_outcomes[ident] = CellOutcome(
                    *_keep_streams(cell_outcomes.get(ident)),
                    error={"ename": "ProcessEnded", "evalue": message, "traceback": [message]})
            elif kind == "check":
                check_outcomes[ident] = CheckOutcome(failure=message)
            else:  # the process died outside any step: give up on what is left
                for check in pending:
                    check_outcomes.setdefault(check.key, CheckOutcome(failure=message))
                break
        for check in checks:
            check_outcomes.setdefault(check.key, CheckOutcome(
                failure="this check did not run: grading stopped before it (the notebook's "
                        f"time limit of {self.limits.total_timeout:.0f} s was used up, or your "
                        "code ended the process)"))
        cap = self.limits.output_cap
        return JobOutcome(cell_outcomes, check_outcomes, clean_text(process_output, cap),
                          isolation, attempts)

    # -- one child process ---------------------------------------------------------------------

    def _run_once(self, cells, skip_cells, checks, preload, time_left) -> dict:
        workdir = Path(tempfile.mkdtemp(prefix="bnlib-sandbox-"))
        # as root, the private folder is a small tmpfs: student code cannot fill the host disk
        mounted = self.isolate and _mount_tmpfs(workdir, 4 * self.limits.tmpfs_size)
        try:
            uid = self._prepare(workdir, cells, skip_cells, checks, preload)
            return self._supervise(workdir, uid, cells, checks, time_left)
        finally:
            if mounted:
                _unmount(workdir)
            shutil.rmtree(workdir, ignore_errors=True)

    def _prepare(self, workdir: Path, cells, skip_cells, checks, preload) -> int | None:
        import numpy as np

        grader = workdir / _CHILD_DIR_NAME
        (grader / "out").mkdir(parents=True)
        (workdir / _HOME_DIR_NAME).mkdir()
        shutil.copy(__file__, grader / "sandbox.py")
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
        job = {"cells": [{"id": cid, "source": src} for cid, src in cells],
               "skip_cells": sorted(skip_cells), "checks": check_specs,
               "preload": list(preload), "sys_path": python_paths(),
               "limits": self.limits.__dict__, "hide": self.hide, "isolate": self.isolate,
               "keep": [sys.base_prefix, *python_paths()[-1:]]}
        uid = None
        if self.isolate:
            # a fresh unprivileged uid per run: RLIMIT_NPROC then counts only this run's
            # processes, and other runs' folders (mode 0700) are unreadable
            uid = 100_000 + int.from_bytes(os.urandom(3), "big") % 800_000
            job["uid"] = uid
        (grader / "job.json").write_text(json.dumps(job))
        os.chmod(workdir, 0o700)
        if uid is not None:
            for path in [workdir, *workdir.rglob("*")]:
                os.chown(path, uid, uid)
        return uid

    def _supervise(self, workdir: Path, uid, cells, checks, time_left) -> dict:
        grader = workdir / _CHILD_DIR_NAME
        home = workdir / _HOME_DIR_NAME
        env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "TMPDIR": str(home),
               "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
               "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}
        python = os.path.realpath(sys.executable)
        proc = subprocess.Popen(
            [python, "-I", "-S", str(grader / "sandbox.py"), "--child", str(workdir)],
            cwd=home, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True)
        reader = _CappedReader(proc.stdout, self.limits.output_cap)
        reader.start()
        progress = grader / "out" / "progress.jsonl"
        step, step_seen, killed_for = None, time.monotonic(), None
        start = time.monotonic()
        while proc.poll() is None:
            time.sleep(0.05)
            current = _last_started_step(progress)
            if current != step:
                step, step_seen = current, time.monotonic()
            limit = self._step_limit(step) + self.limits.grace
            now = time.monotonic()
            if now - step_seen > limit or now - start > time_left:
                killed_for = "timeout" if now - step_seen > limit else "total"
                break
        _kill(proc, uid)  # also when it exited: its forked children may still be running
        proc.wait()
        if uid is not None:
            _kill_uid(uid)  # forked children that left the process group
        reader.join(timeout=5)
        output = reader.text()
        if proc.returncode == SETUP_FAILED:
            raise RuntimeError(f"the grading sandbox could not start:\n{output}")
        outcome = {"output": output, "isolation": _read_json(grader / "out" / "isolation.json")
                   or [], "cells": {}, "checks": {}, "culprit": None}
        _collect(grader / "out", cells, checks, outcome, self.limits.output_cap)
        finished = _finished(progress)
        if killed_for is None and proc.returncode == 0 and finished:
            return outcome
        step = _last_started_step(progress) if not finished else None
        if killed_for == "timeout" and step is not None:
            message = (f"your code did not finish within {self._step_limit(step):.0f} s "
                       "(infinite loop or very slow code?)")
        elif killed_for == "total":
            message = "grading stopped: the time limit for the whole notebook was used up"
        elif proc.returncode == -signal.SIGKILL or proc.returncode == -signal.SIGXCPU:
            message = ("your code was stopped: out of memory or CPU time "
                       f"({describe_exit(proc.returncode)})")
        else:
            message = f"your code ended the process ({describe_exit(proc.returncode)})"
        if step is None:
            outcome["culprit"] = ("process", None, message)
        else:
            outcome["culprit"] = (step[0], step[1], message)
        return outcome

    def _step_limit(self, step) -> float:
        if step is None:
            return 60.0  # interpreter start and imports
        return self.limits.cell_timeout if step[0] == "cell" else self.limits.check_timeout


def _mount_tmpfs(path: Path, size: int) -> bool:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    options = f"size={size},nr_inodes=4096,mode=0700".encode()
    return libc.mount(b"tmpfs", str(path).encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV,
                      options) == 0


def _unmount(path: Path) -> None:
    import ctypes

    ctypes.CDLL(None, use_errno=True).umount2(str(path).encode(), 2)  # MNT_DETACH


def _keep_streams(outcome: CellOutcome | None) -> tuple[str, str]:
    return (outcome.stdout, outcome.stderr) if outcome else ("", "")


def _read_untrusted(path: Path, limit: int = 32 << 20) -> bytes:
    """Bytes of a file the child wrote: never through a symlink (the child could point one at
    any file this trusted process can read), only a regular file, at most ``limit`` bytes."""
    import stat

    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path.name} is not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            return handle.read(limit)
    finally:
        os.close(fd)


def _read_json(path: Path):
    try:
        return json.loads(_read_untrusted(path).decode("utf-8", errors="replace"))
    except (OSError, ValueError):
        return None


def _progress_lines(progress: Path) -> list[dict]:
    try:
        raw = _read_untrusted(progress)[-65536:].decode("utf-8", "replace")
    except OSError:
        return []
    lines = []
    for line in raw.splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            continue
    return lines


def _last_started_step(progress: Path):
    open_step = None
    for event in _progress_lines(progress):
        if not isinstance(event, dict):
            continue
        if event.get("phase") == "start":
            open_step = (event.get("kind"), event.get("id"))
        elif event.get("phase") == "end":
            open_step = None
    return open_step


def _finished(progress: Path) -> bool:
    return any(isinstance(e, dict) and e.get("phase") == "done" for e in _progress_lines(progress))


def _collect(out: Path, cells, checks, outcome: dict, cap: int) -> None:
    """Read what the child wrote; anything malformed counts as absent (the child is untrusted)."""
    for index, (cid, _) in enumerate(cells):
        data = _read_json(out / f"cell-{index}.json")
        if not isinstance(data, dict):
            continue
        error = data.get("error")
        if isinstance(error, dict):
            trace = error.get("traceback")
            error = {"ename": clean_text(str(error.get("ename", "Error")), 200),
                     "evalue": clean_text(str(error.get("evalue", "")), cap),
                     "traceback": [clean_text(str(line), cap) for line in trace][:50]
                     if isinstance(trace, list) else []}
        else:
            error = None
        outcome["cells"][cid] = CellOutcome(clean_text(str(data.get("stdout", "")), cap),
                                            clean_text(str(data.get("stderr", "")), cap), error)
    for index, check in enumerate(checks):
        status = _read_json(out / f"check-{index}.json")
        if not isinstance(status, dict) or status.get("phase") != "end":
            continue
        missing = status.get("missing")
        if isinstance(missing, list) and missing:
            outcome["checks"][check.key] = CheckOutcome(missing=[str(m) for m in missing])
            continue
        results = []
        for case_index in range(len(check.cases)):
            results.append(_load_result(out / f"check-{index}-{case_index}.npz"))
        outcome["checks"][check.key] = CheckOutcome(results=results)


#: Largest uncompressed result the trusted side will load (a compressed .npz could expand).
MAX_RESULT_BYTES = 64 << 20


def _load_result(path: Path) -> dict:
    import zipfile

    import numpy as np

    try:
        raw = io.BytesIO(_read_untrusted(path))
        with zipfile.ZipFile(raw) as archive:
            if sum(info.file_size for info in archive.infolist()) > MAX_RESULT_BYTES:
                return {"error": np.array("the result is too large to be checked")}
        with np.load(raw, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a malformed result
        return {"error": np.array(f"the result could not be read back: {type(exc).__name__}")}


def _kill(proc: subprocess.Popen, uid) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_uid(uid: int) -> None:
    """SIGKILL every process of ``uid`` until none is left (they may fork while we look)."""
    for _ in range(50):
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("Uid:") and int(line.split()[1]) == uid:
                    pids.append(int(entry.name))
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)


# ----------------------------------------------------------------------------------------------
# child side: everything below runs in the sandboxed interpreter (stdlib + numpy only)
# ----------------------------------------------------------------------------------------------

_CLONE_NEWNS, _CLONE_NEWNET = 0x00020000, 0x40000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_REMOUNT = 1, 2, 4, 32
_MS_BIND, _MS_REC, _MS_PRIVATE = 4096, 16384, 1 << 18


def _confine(job: dict, workdir: str) -> list[str]:
    """As root: private network and mount namespaces, hidden folders, then drop to ``uid``."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    def call(result, what):
        if result != 0:
            raise OSError(ctypes.get_errno(), f"{what}: {os.strerror(ctypes.get_errno())}")

    call(libc.unshare(_CLONE_NEWNS | _CLONE_NEWNET), "unshare")
    call(libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None), "make / private")
    keep = [p for p in dict.fromkeys([*job["keep"], workdir]) if os.path.isdir(p)]
    keep_fds = {p: os.open(p, os.O_RDONLY | os.O_DIRECTORY) for p in keep}
    hidden = []
    size = f"size={job['limits']['tmpfs_size']},mode=0755".encode()
    for path in sorted(job["hide"], key=len):
        if any(path.startswith(h + "/") for h in hidden) or not os.path.isdir(path):
            continue
        call(libc.mount(b"tmpfs", path.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV, size),
             f"hide {path}")
        hidden.append(path)
    for path, fd in keep_fds.items():
        if not any(path == h or path.startswith(h + "/") for h in hidden):
            continue
        os.makedirs(path, exist_ok=True)
        source = f"/proc/self/fd/{fd}".encode()
        call(libc.mount(source, path.encode(), None, _MS_BIND | _MS_REC, None), f"bind {path}")
        if path != workdir:
            call(libc.mount(None, path.encode(), None,
                            _MS_BIND | _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID, None),
                 f"read-only {path}")
    for fd in keep_fds.values():
        os.close(fd)
    uid = job["uid"]
    # the student's scratch space (cwd, HOME, TMPDIR) is its own small tmpfs, so filling it
    # never stops this process from writing its results next to it
    scratch = f"size={job['limits']['tmpfs_size']},nr_inodes=4096,mode=0700,uid={uid},gid={uid}"
    call(libc.mount(b"tmpfs", os.path.join(workdir, _HOME_DIR_NAME).encode(), b"tmpfs",
                    _MS_NOSUID | _MS_NODEV, scratch.encode()), "scratch tmpfs")
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    return ["network namespace (no network)", "mount namespace hiding " + ", ".join(hidden),
            f"private uid {uid}"]


def _die_with_parent() -> None:
    """SIGKILL this process when the grader that started it dies (Linux; set after setuid,
    which clears it). Without it a killed grader would leave a looping child behind."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(SETUP_FAILED)


def _set_limits(limits: dict) -> None:
    import resource

    cpu = int(limits["total_timeout"]) + 5
    for name, value in (("RLIMIT_AS", limits["memory"]), ("RLIMIT_CPU", cpu),
                        ("RLIMIT_NPROC", limits["processes"]),
                        ("RLIMIT_FSIZE", limits["file_size"]), ("RLIMIT_CORE", 0)):
        resource.setrlimit(getattr(resource, name), (value, value))


def _install_audit_hook(hidden: list[str], allowed: list[str]) -> None:
    """Refuse sockets and opening files under hidden folders other than ``allowed`` ones
    (second line of defence, or the only one where namespaces are not available)."""
    blocked_events = {"socket.connect", "socket.bind", "socket.getaddrinfo", "socket.sendto",
                      "socket.gethostbyname", "socket.__new__"}
    hidden_prefixes = tuple(os.path.realpath(h) + "/" for h in hidden)
    allowed_prefixes = tuple(os.path.realpath(a) + "/" for a in allowed)

    def hook(event, args):
        if event in blocked_events:
            raise PermissionError("network access is not allowed while grading")
        if event in ("open", "os.listdir", "os.scandir") and args \
                and isinstance(args[0], str | bytes):
            # realpath: a symlink in the private folder must not lead to a hidden one
            path = os.path.realpath(os.fsdecode(args[0])) + "/"
            if path.startswith(hidden_prefixes) and not path.startswith(allowed_prefixes):
                raise PermissionError(f"reading {path[:-1]} is not allowed while grading")

    sys.addaudithook(hook)


class _StepTimeout(BaseException):
    """Raised by SIGALRM; a BaseException so ``except Exception`` in student code misses it."""


class _CappedText:
    """A write-only text stream that keeps the first ``cap`` characters."""

    def __init__(self, cap: int):
        self.parts, self.size, self.cap, self.dropped = [], 0, cap, 0

    def write(self, text) -> int:
        text = str(text)
        room = self.cap - self.size
        if room > 0:
            self.parts.append(text[:room])
            self.size += min(len(text), room)
        self.dropped += max(len(text) - max(room, 0), 0)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def value(self) -> str:
        more = f"\n... [output truncated: {self.dropped} more characters]" if self.dropped else ""
        return "".join(self.parts) + more


class _Child:
    def __init__(self, workdir: str, job: dict):
        self.workdir, self.job = workdir, job
        self.out = os.path.join(workdir, _CHILD_DIR_NAME, "out")
        self.progress_fd = os.open(os.path.join(self.out, "progress.jsonl"),
                                   os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.dumps, self.write, self.open = json.dumps, os.write, open

    def event(self, **event) -> None:
        self.write(self.progress_fd, (self.dumps(event) + "\n").encode())

    def dump(self, name: str, data: dict) -> None:
        with self.open(os.path.join(self.out, name), "w", encoding="utf-8") as handle:
            handle.write(self.dumps(data, ensure_ascii=True))

    def timed(self, seconds: float, function):
        def on_alarm(signum, frame):
            raise _StepTimeout()

        signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            return function()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)

    def run_cells(self, namespace: dict) -> None:
        import traceback

        limits = self.job["limits"]
        for index, cell in enumerate(self.job["cells"]):
            if cell["id"] in self.job["skip_cells"]:
                continue
            self.event(kind="cell", id=cell["id"], phase="start")
            out, err = _CappedText(limits["output_cap"]), _CappedText(limits["output_cap"])
            error = None
            sys.stdout, sys.stderr = out, err
            try:
                code = compile(cell["source"], f"<cell {cell['id']}>", "exec")
                self.timed(limits["cell_timeout"], lambda code=code: exec(code, namespace))
            except _StepTimeout:
                error = _error("TimeoutError", f"this cell did not finish within "
                               f"{limits['cell_timeout']:.0f} s (infinite loop or very slow code?)")
            except SystemExit as exc:
                error = _error("ProcessEnded", f"your code ended the process (exit code "
                               f"{exc.code if isinstance(exc.code, int) else 1}): "
                               "do not call sys.exit() or exit() in a notebook")
            except MemoryError:
                error = _error("MemoryError", "out of memory: your code needed more than "
                               f"{limits['memory'] >> 20} MiB")
            except BaseException as exc:  # noqa: BLE001 - report anything the cell raised
                lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
                error = {"ename": type(exc).__name__, "evalue": str(exc)[:2000],
                         "traceback": [line for line in lines if "sandbox.py" not in line][-20:]}
            finally:
                sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
            self.dump(f"cell-{index}.json",
                      {"stdout": out.value(), "stderr": err.value(), "error": error})
            self.event(kind="cell", id=cell["id"], phase="end")

    def run_checks(self, namespace: dict) -> None:
        import importlib.util

        import numpy as np

        if not self.job["checks"]:
            return
        spec = importlib.util.spec_from_file_location(
            "_grading_drivers", os.path.join(self.workdir, _CHILD_DIR_NAME, "drivers.py"))
        drivers = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(drivers)
        table = dict(drivers.DRIVERS)
        savez, arrays = np.savez, np.load(os.path.join(self.workdir, _CHILD_DIR_NAME,
                                                       "cases.npz"), allow_pickle=False)
        cases_data = {name: arrays[name] for name in arrays.files}
        limits = self.job["limits"]
        for index, check in enumerate(self.job["checks"]):
            self.event(kind="check", id=check["key"], phase="start")
            missing = [name for name in check["functions"] if name not in namespace]
            if not missing:
                functions = {name: namespace[name] for name in check["functions"]}
                driver = table[check["driver"]]
                # one time budget for all cases of a check: a loop that times out on the first
                # case does not get another full budget on each of the others
                deadline = time.monotonic() + limits["check_timeout"]
                for case_index, spec in enumerate(check["cases"]):
                    case = {name: cases_data[v["array"]].copy() if "array" in v else v["value"]
                            for name, v in spec.items()}
                    result = self.call_driver(driver, functions, case, limits,
                                              deadline - time.monotonic())
                    path = os.path.join(self.out, f"check-{index}-{case_index}.npz")
                    try:
                        savez(path, **result)
                    except BaseException as exc:  # noqa: BLE001 - a result we cannot store
                        savez(path, error=np.array(f"result not storable: {type(exc).__name__}"))
            self.dump(f"check-{index}.json", {"phase": "end", "missing": missing})
            self.event(kind="check", id=check["key"], phase="end")

    def call_driver(self, driver, functions, case, limits, seconds_left: float) -> dict:
        import numpy as np

        sys.stdout = sys.stderr = _CappedText(1000)  # prints in graded functions are not shown
        try:
            if seconds_left <= 0:
                raise _StepTimeout()
            result = self.timed(seconds_left, lambda: driver(functions, case))
            if not isinstance(result, dict):
                raise TypeError("driver returned a non-dict")
            return {str(k): np.asarray(v) for k, v in result.items()}
        except _StepTimeout:
            return {"error": np.array(f"TimeoutError: your code did not finish within "
                                      f"{limits['check_timeout']:.0f} s")}
        except MemoryError:
            return {"error": np.array("MemoryError: out of memory: your code needed more than "
                                      f"{limits['memory'] >> 20} MiB")}
        except SystemExit as exc:
            return {"error": np.array(f"ProcessEnded: your code ended the process (exit code "
                                      f"{exc.code if isinstance(exc.code, int) else 1})")}
        except BaseException as exc:  # noqa: BLE001
            return {"error": np.array(f"{type(exc).__name__}: {str(exc)[:500]}")}
        finally:
            sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__


def _error(ename: str, evalue: str) -> dict:
    return {"ename": ename, "evalue": evalue, "traceback": [f"{ename}: {evalue}"]}


def _child_main(workdir: str) -> int:
    try:
        with open(os.path.join(workdir, _CHILD_DIR_NAME, "job.json"), encoding="utf-8") as f:
            job = json.load(f)
        isolation = _confine(job, workdir) if job.get("isolate") else []
        _die_with_parent()
        _set_limits(job["limits"])
        sys.path[:] = job["sys_path"]
        os.chdir(os.path.join(workdir, _HOME_DIR_NAME))
        for module in job["preload"]:
            __import__(module)
        if "torch" in job["preload"]:
            sys.modules["torch"].set_num_threads(1)
        import traceback  # noqa: F401 - imported before the hook, used for cell errors

        _install_audit_hook(job["hide"], [*job["keep"], workdir])
        isolation.append("audit hook refusing sockets and reads under hidden folders")
        child = _Child(workdir, job)
        child.dump("isolation.json", isolation)  # type: ignore[arg-type]
    except Exception as exc:  # noqa: BLE001 - setup errors are the grader's, not the student's
        print(f"sandbox setup failed: {type(exc).__name__}: {exc}", file=sys.__stderr__)
        return SETUP_FAILED
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    child.run_cells(namespace)
    child.run_checks(namespace)
    child.event(phase="done")
    sys.__stdout__.flush()
    return 0


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--child":
    os._exit(_child_main(sys.argv[2]))
