"""The side of grading that runs inside the sandbox, around the student's code.

``bnlib.grading.sandbox`` copies this file into a private folder and starts it as
``python -I -S harness.py WORKDIR COMMANDS_FD REPLIES_FD``. It imports only the standard
library at top level (``bnlib`` is not importable there) and then serves the trusted side's
commands, one step at a time::

    trusted side                          harness
    ------------                          -------
                                          sets up, replies {"kind": "ready", ...}
    {"run": "cell", "index": i}    --->   runs cell i, replies {"kind": "cell", "index": i, ...}
    {"run": "check", "index": j}   --->   one {"kind": "result"} frame (+ .npz bytes) per case,
                                          then {"kind": "check", "index": j, "missing": [...]}
    {"run": "exit"}                --->   exits

Commands are JSON lines; replies are frames: 8 bytes (two big-endian uint32: header and
payload lengths), a JSON header, then the payload. The trusted side starts each step's clock
when it sends the command and sends each step once, so nothing the student's code writes can
give a step more time: a reply it forges only ends its own step early, without results.

As root on Linux the first process (P0) unshares mount, network and PID namespaces, hides the
host's folders, and forks the namespace's init (P1), which mounts a private ``/proc`` and forks
the worker (P2); the worker drops to a private uid and runs the student's code. When the worker
ends, P1 reports how and exits, which ends every process left in the namespace.
"""

from __future__ import annotations

import io
import json
import os
import signal
import struct
import sys
import time

#: Exit code of a process whose own setup failed (never the student's doing).
SETUP_FAILED = 71
#: A reply frame starts with the lengths of its JSON header and of its payload.
FRAME_HEADER = struct.Struct(">II")
#: Folder names inside the sandbox's private folder.
GRADER_DIR, HOME_DIR = "grader", "home"
#: Lines of a student's traceback kept.
TRACEBACK_LINES = 20

_CLONE_NEWNS, _CLONE_NEWPID, _CLONE_NEWNET = 0x00020000, 0x20000000, 0x40000000
NAMESPACES = _CLONE_NEWNS | _CLONE_NEWNET | _CLONE_NEWPID
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_REMOUNT = 1, 2, 4, 8, 32
_MS_BIND, _MS_REC, _MS_PRIVATE = 4096, 16384, 1 << 18
_PR_SET_PDEATHSIG = 1


def encode_frame(header: dict, payload: bytes = b"") -> bytes:
    data = json.dumps(header, ensure_ascii=True).encode()
    return FRAME_HEADER.pack(len(data), len(payload)) + data + payload


# ----------------------------------------------------------------------------------------------
# setting up: namespaces, processes, privileges, limits
# ----------------------------------------------------------------------------------------------


def _libc():
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        import ctypes

        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _mount_tmpfs(libc, path: str, options: str) -> None:
    _check(libc.mount(b"tmpfs", path.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV,
                      options.encode()), f"tmpfs on {path}")


def confine(job: dict, workdir: str) -> list[str]:
    """As root (P0): new mount, network and PID namespaces; the host's folders hidden under
    empty tmpfs mounts, the ones the interpreter needs bound back read-only, the forbidden
    packages hidden again, and a small scratch tmpfs for the student."""
    libc, limits = _libc(), job["limits"]
    empty = f"size={limits['scratch_mb'] << 20},mode=0755"
    _check(libc.unshare(NAMESPACES), "unshare")
    _check(libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None), "make / private")
    # opened before hiding: the folders stay reachable through these descriptors
    keep = {p: os.open(p, os.O_RDONLY | os.O_DIRECTORY)
            for p in dict.fromkeys([*job["keep"], workdir]) if os.path.isdir(p)}
    hidden = _hide(libc, job["hide"], empty)
    _bind_back_read_only(libc, keep, hidden)
    packages = _hide_packages(libc, job["forbidden_folders"], empty)
    uid = job["uid"]
    _mount_tmpfs(libc, os.path.join(workdir, HOME_DIR),
                 f"size={limits['scratch_mb'] << 20},nr_inodes={limits['scratch_files']},"
                 f"mode=0700,uid={uid},gid={uid}")
    described = ["network namespace (no network)", "PID namespace (a private /proc)",
                 "mount namespace hiding " + ", ".join(hidden)]
    if packages:
        described.append("forbidden packages hidden: " + ", ".join(packages))
    return described


def _hide(libc, paths: list[str], options: str) -> list[str]:
    """An empty tmpfs over each folder (the outermost of nested ones); the folders hidden."""
    hidden = []
    for path in sorted(paths, key=len):
        if os.path.isdir(path) and not any(path.startswith(h + "/") for h in hidden):
            _mount_tmpfs(libc, path, options)
            hidden.append(path)
    return hidden


def _bind_back_read_only(libc, keep: dict[str, int], hidden: list[str]) -> None:
    """Each kept folder (an open descriptor) that a hidden one covers, back in place,
    read-only."""
    for path, fd in keep.items():
        if any(path == h or path.startswith(h + "/") for h in hidden):
            os.makedirs(path, exist_ok=True)
            _check(libc.mount(f"/proc/self/fd/{fd}".encode(), path.encode(), None,
                              _MS_BIND | _MS_REC, None), f"bind {path}")
            _check(libc.mount(None, path.encode(), None,
                              _MS_BIND | _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID, None),
                   f"read-only {path}")
        os.close(fd)


def _hide_packages(libc, folders: dict[str, str], options: str) -> list[str]:
    """An empty tmpfs over each forbidden package, holding only an ``__init__.py`` that raises
    its message (an empty folder would import as an empty namespace package)."""
    hidden = [folder for folder in folders if os.path.isdir(folder)]
    for folder in hidden:
        _mount_tmpfs(libc, folder, options)
        with open(os.path.join(folder, "__init__.py"), "w") as stub:
            stub.write(f"raise ImportError({folders[folder]!r})\n")
    return hidden


def can_confine() -> bool:
    """Whether this process may do what ``confine`` and ``split_into_namespace_processes`` do:
    unshare the namespaces, and mount a /proc in a child of the new PID namespace (some
    containers allow the first and not the second)."""
    libc = _libc()
    if libc.unshare(NAMESPACES) != 0 or \
            libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
        return False
    child = os.fork()
    if child == 0:
        mounted = libc.mount(b"proc", b"/proc", b"proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, None)
        os._exit(0 if mounted == 0 else 1)
    return os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]) == 0


def _die_with_parent() -> None:
    """SIGKILL this process when its parent dies (Linux). Set again after setuid, which
    clears it: without it a killed grader would leave a looping child behind."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    _libc().prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(SETUP_FAILED)


def _pass_on(status: int) -> None:
    """End this process the way the process whose wait ``status`` this is ended."""
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code & 0xFF)


def split_into_namespace_processes(replies_fd: int, commands_fd: int) -> None:
    """P0 forks P1 (PID 1 of the new namespace), P1 forks P2 (the worker); only P2 returns.

    P0 and P1 stay root and run no student code: P0 waits and ends as P1 ended; P1 mounts the
    namespace's own /proc, reaps orphans, and when the worker ends sends its exit status and
    exits, which kills every process left in the namespace."""
    init = os.fork()
    if init:  # P0
        os.close(replies_fd)
        os.close(commands_fd)
        _pass_on(os.waitpid(init, 0)[1])
    _die_with_parent()
    _check(_libc().mount(b"proc", b"/proc", b"proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, None),
           "mount /proc")
    worker = os.fork()
    if worker:  # P1
        os.close(commands_fd)
        while True:
            pid, status = os.wait()
            if pid == worker:
                os.write(replies_fd, encode_frame(
                    {"kind": "exit", "code": os.waitstatus_to_exitcode(status)}))
                os._exit(0)
    _die_with_parent()


def drop_privileges(uid: int) -> None:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    _die_with_parent()


def join_control_group(procs_files: list[str]) -> None:
    for path in procs_files:
        with open(path, "w") as handle:
            handle.write(str(os.getpid()))


def set_limits(limits: dict) -> None:
    import resource

    cpu = int(limits["total_timeout"]) + 1  # every step has its own, smaller limit
    for name, value in (("RLIMIT_AS", limits["memory_mb"] << 20), ("RLIMIT_CPU", cpu),
                        ("RLIMIT_NPROC", limits["processes"]),
                        ("RLIMIT_FSIZE", limits["file_size_mb"] << 20), ("RLIMIT_CORE", 0)):
        resource.setrlimit(getattr(resource, name), (value, value))


def install_audit_hook(hidden: list[str], allowed: list[str], forbidden: dict[str, str],
                       forbidden_folders: dict[str, str]) -> None:
    """Refuse sockets, file access under hidden folders other than ``allowed`` ones, and the
    forbidden packages (by import name and by folder). An audit hook cannot be removed: the
    only way around it is ``ctypes``, which the namespaces back up as root."""
    blocked_events = {"socket.connect", "socket.bind", "socket.getaddrinfo", "socket.sendto",
                      "socket.gethostbyname", "socket.__new__"}
    hidden_prefixes = tuple(os.path.realpath(h) + "/" for h in hidden)
    allowed_prefixes = tuple(os.path.realpath(a) + "/" for a in allowed)
    package_prefixes = {os.path.realpath(f) + "/": m for f, m in forbidden_folders.items()}
    realpath, fsdecode = os.path.realpath, os.fsdecode

    def hook(event, args):
        if event in blocked_events:
            raise PermissionError("network access is not allowed while grading")
        if event == "import" and args and isinstance(args[0], str):
            message = forbidden.get(args[0].partition(".")[0])
            if message:
                raise ImportError(message)
        if event in ("open", "os.listdir", "os.scandir", "ctypes.dlopen") and args \
                and isinstance(args[0], str | bytes):
            # realpath: a symlink in the private folder must not lead to a hidden one
            path = realpath(fsdecode(args[0])) + "/"
            for prefix, message in package_prefixes.items():
                if path.startswith(prefix):
                    raise ImportError(message)
            if path.startswith(hidden_prefixes) and not path.startswith(allowed_prefixes):
                raise PermissionError(f"reading {path[:-1]} is not allowed while grading")

    sys.addaudithook(hook)


# ----------------------------------------------------------------------------------------------
# running the steps
# ----------------------------------------------------------------------------------------------


class _StepTimeout(BaseException):
    """Raised by the step timers; a BaseException so ``except Exception`` in student code
    misses it. ``args[0]`` is the signal: SIGPROF for CPU time, SIGALRM for wall-clock time."""


class CappedText:
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


def _error(ename: str, evalue: str) -> dict:
    return {"ename": ename, "evalue": evalue, "traceback": [f"{ename}: {evalue}"]}


def _exit_code(exc: SystemExit) -> int:
    return exc.code if isinstance(exc.code, int) else 1


class Harness:
    """Serves the trusted side's commands: runs cells in one namespace, then checks."""

    def __init__(self, job: dict, workdir: str, commands_fd: int, replies_fd: int):
        self.job, self.workdir, self.limits = job, workdir, job["limits"]
        self.grader = os.path.join(workdir, GRADER_DIR)
        self.commands = os.fdopen(commands_fd, "r", encoding="utf-8")
        self.replies_fd = replies_fd
        self.namespace = {"__name__": "__main__", "__builtins__": __builtins__}
        self.drivers = self.cases = None
        # bound now: student code may replace json.dumps or os.write for everyone else
        self.write, self.encode, self.monotonic = os.write, encode_frame, time.monotonic

    def send(self, header: dict, payload: bytes = b"") -> None:
        data = memoryview(self.encode(header, payload))
        while data:
            data = data[self.write(self.replies_fd, data):]

    def serve(self) -> None:
        for line in self.commands:
            command = json.loads(line)
            if command["run"] == "cell":
                self.send(self.run_cell(command["index"]))
            elif command["run"] == "check":
                self.run_check(command["index"])
            else:
                return

    def timed(self, cpu_seconds: float, function):
        """Run ``function``, interrupting it after ``cpu_seconds`` of CPU time or the wall-clock
        backstop, whichever comes first."""

        def on_timer(signum, frame):
            raise _StepTimeout(signum)

        signal.signal(signal.SIGPROF, on_timer)
        signal.signal(signal.SIGALRM, on_timer)
        if cpu_seconds <= 0:
            raise _StepTimeout(signal.SIGPROF)
        signal.setitimer(signal.ITIMER_PROF, cpu_seconds)
        signal.setitimer(signal.ITIMER_REAL, cpu_seconds * self.limits["wall_clock_factor"])
        try:
            return function()
        finally:
            signal.setitimer(signal.ITIMER_PROF, 0)
            signal.setitimer(signal.ITIMER_REAL, 0)

    def timeout_message(self, timeout: float, error: _StepTimeout) -> str:
        if error.args[0] == signal.SIGALRM:
            wall = timeout * self.limits["wall_clock_factor"]
            return f"did not finish within {wall:.0f} s (is it waiting or sleeping?)"
        return (f"did not finish within {timeout:.0f} s of CPU time (infinite loop or very "
                "slow code?)")

    def compile_cell(self, source: str, name: str):
        """Python code for a notebook cell; IPython syntax (%magic, !shell) is converted here,
        in the student's time, only for cells that are not plain Python."""
        try:
            return compile(source, name, "exec")
        except SyntaxError as plain_error:
            try:
                from IPython.core.inputtransformer2 import TransformerManager
            except ImportError:
                raise plain_error from None
            return compile(TransformerManager().transform_cell(source), name, "exec")

    def run_cell(self, index: int) -> dict:
        import traceback

        cell, cap = self.job["cells"][index], self.limits["output_chars"]
        out, err = CappedText(cap), CappedText(cap)
        error = None
        sys.stdout, sys.stderr = out, err
        timeout = self.limits["cell_timeout"]
        try:
            self.timed(timeout, lambda: exec(self.compile_cell(cell["source"],
                                                               f"<cell {cell['id']}>"),
                                             self.namespace))
        except _StepTimeout as exc:
            error = _error("TimeoutError", "this cell " + self.timeout_message(timeout, exc))
        except SystemExit as exc:
            error = _error("ProcessEnded", f"your code ended the process (exit code "
                           f"{_exit_code(exc)}): do not call sys.exit() or exit() in a notebook")
        except MemoryError:
            error = _error("MemoryError", "out of memory: your code needed more than "
                           f"{self.limits['memory_mb']} MiB")
        except BaseException as exc:  # noqa: BLE001 - report anything the cell raised
            lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
            error = {"ename": type(exc).__name__,
                     "evalue": str(exc)[:self.limits["message_chars"]],
                     "traceback": [line for line in lines
                                   if "harness.py" not in line][-TRACEBACK_LINES:]}
        finally:
            sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
        return {"kind": "cell", "index": index, "stdout": out.value(), "stderr": err.value(),
                "error": error}

    def load_drivers(self) -> None:
        import importlib.util

        import numpy as np

        spec = importlib.util.spec_from_file_location(
            "_grading_drivers", os.path.join(self.grader, "drivers.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        self.drivers = dict(module.DRIVERS)
        with np.load(os.path.join(self.grader, "cases.npz"), allow_pickle=False) as arrays:
            self.cases = {name: arrays[name] for name in arrays.files}

    def run_check(self, index: int) -> None:
        if self.drivers is None:
            self.load_drivers()
        check = self.job["checks"][index]
        missing = [name for name in check["functions"] if name not in self.namespace]
        if not missing:
            functions = {name: self.namespace[name] for name in check["functions"]}
            driver = self.drivers[check["driver"]]
            # one CPU budget for all cases of a check: a loop that times out on the first case
            # does not get another full budget on each of the others
            budget_end = time.process_time() + self.limits["check_timeout"]
            for case_index, spec in enumerate(check["cases"]):
                case = {name: self.cases[v["array"]].copy() if "array" in v else v["value"]
                        for name, v in spec.items()}
                result = self.call_driver(driver, functions, case,
                                          budget_end - time.process_time())
                self.send({"kind": "result", "check": index, "case": case_index},
                          self.pack(result))
        self.send({"kind": "check", "index": index, "missing": missing})

    def call_driver(self, driver, functions, case, seconds_left: float) -> dict:
        import numpy as np

        sys.stdout = sys.stderr = CappedText(0)  # prints in graded functions are not shown
        limits = self.limits
        try:
            result = self.timed(seconds_left, lambda: driver(functions, case))
            if not isinstance(result, dict):
                raise TypeError("driver returned a non-dict")
            return {str(k): np.asarray(v) for k, v in result.items()}
        except _StepTimeout as exc:
            message = ("TimeoutError: your code "
                       + self.timeout_message(limits["check_timeout"], exc))
        except MemoryError:
            message = ("MemoryError: out of memory: your code needed more than "
                       f"{limits['memory_mb']} MiB")
        except SystemExit as exc:
            message = f"ProcessEnded: your code ended the process (exit code {_exit_code(exc)})"
        except BaseException as exc:  # noqa: BLE001
            message = f"{type(exc).__name__}: {str(exc)[:limits['message_chars']]}"
        finally:
            sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
        return {"error": np.array(message)}

    def pack(self, result: dict) -> bytes:
        import numpy as np

        buffer = io.BytesIO()
        try:
            np.savez(buffer, **result)
        except BaseException as exc:  # noqa: BLE001 - a result we cannot store
            buffer = io.BytesIO()
            np.savez(buffer, error=np.array(f"result not storable: {type(exc).__name__}"))
        return buffer.getvalue()


def main(workdir: str, commands_fd: int, replies_fd: int) -> int:
    try:
        with open(os.path.join(workdir, GRADER_DIR, "job.json"), encoding="utf-8") as handle:
            job = json.load(handle)
        join_control_group(job["control_group"])
        isolation = []
        if job["isolate"]:
            import resource

            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # P0 re-raises the worker's signal
            _die_with_parent()
            isolation = confine(job, workdir)
            split_into_namespace_processes(replies_fd, commands_fd)
            drop_privileges(job["uid"])
            isolation.append(f"private uid {job['uid']}")
        else:
            _die_with_parent()
        set_limits(job["limits"])
        sys.path[:] = job["sys_path"]
        os.chdir(os.path.join(workdir, HOME_DIR))
        for module in job["preload"]:
            __import__(module)
        if "torch" in job["preload"]:
            sys.modules["torch"].set_num_threads(1)
        import traceback  # noqa: F401 - imported before the hook, used for cell errors

        install_audit_hook(job["hide"], [*job["keep"], workdir], job["forbidden"],
                           job["forbidden_folders"])
        isolation.append("audit hook refusing sockets and reads under hidden folders"
                         + (", and imports of " + ", ".join(sorted(job["forbidden"]))
                            if job["forbidden"] else ""))
        harness = Harness(job, workdir, commands_fd, replies_fd)
        harness.send({"kind": "ready", "isolation": isolation})
    except Exception as exc:  # noqa: BLE001 - setup errors are the grader's, not the student's
        print(f"sandbox setup failed: {type(exc).__name__}: {exc}", file=sys.__stderr__)
        return SETUP_FAILED
    harness.serve()
    sys.__stdout__.flush()
    return 0


if __name__ == "__main__" and sys.argv[1:] == ["--probe"]:
    os._exit(0 if can_confine() else 1)
elif __name__ == "__main__" and len(sys.argv) == 4:
    os._exit(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
