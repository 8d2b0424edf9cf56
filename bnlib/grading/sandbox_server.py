"""The pre-started sandbox server: a sandbox costs a fork, not an interpreter and its imports.

Starting ``python -I -S harness.py`` and importing NumPy (and PyTorch for ``bn_torch``) is most
of what a sandbox costs. ``SandboxServer`` starts that interpreter once per grading process and
set of preloaded packages, on ``harness.py --serve``; it imports the packages and then forks
one child per job. The child takes the descriptors, session, environment and arguments a fresh
harness would have, and then runs the harness's ``main`` exactly as a fresh process does: it
joins its control group, enters its namespaces, drops to its private uid, sets its rlimits and
installs the audit hook, then serves the same trusted pipe protocol. So:

- what the server imported is shared with each child copy-on-write: a child's changes to a
  module, or anything else, stay in that child;
- the student's namespace, the random generators and the harness's state are each child's
  own; only the protocol's descriptors survive the fork (stdin is /dev/null, stdout and
  stderr the output pipe, 3 the commands, 4 the replies);
- the server never runs student code and never reads a job; it is single-threaded (PyTorch's
  thread pool is never started there), so forking it is safe;
- it exits when the grading process closes its channel (also when that process is killed),
  and its children die with it.

A server that has died is started again for the next job; a job whose server died under it is
run again (``ServerGone``). Where no server can be had (no pidfd, or a package that starts a
thread on import) ``ServerUnavailable`` says why, and the sandbox starts fresh processes.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading

from bnlib.grading import harness

#: Seconds the server may take to fork a sandbox and say so.
FORK_TIMEOUT = 30.0


class ServerUnavailable(RuntimeError):
    """No pre-started server for these packages on this machine (the message says why)."""


class ServerGone(RuntimeError):
    """The server stopped (killed, crashed); a new one is started for the next job."""


@functools.cache
def prestarted_available() -> bool:
    """Whether this machine can run a server: Linux with pidfds and descriptor passing."""
    if not (sys.platform.startswith("linux") and hasattr(os, "pidfd_open")
            and hasattr(socket, "send_fds")):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:  # a kernel older than 5.3
        return False
    return True


def _channel_pair() -> tuple[socket.socket, socket.socket]:
    """A socket pair that keeps message boundaries, so threads can share one end."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def _readable(sock: socket.socket, timeout: float | None) -> bool:
    """Whether ``sock`` can be read within ``timeout`` seconds (None: wait); ``poll``, which
    takes descriptors of any number, unlike ``select``."""
    waiting = select.poll()
    waiting.register(sock, select.POLLIN)
    return bool(waiting.poll(None if timeout is None else timeout * 1000))


def _receive(sock: socket.socket, timeout: float, fds: int = 0) -> tuple[dict | None, list]:
    """One JSON message and its descriptors; (None, []) on end of file or timeout."""
    if not _readable(sock, timeout):
        return None, []
    try:
        data, received, _, _ = socket.recv_fds(sock, 1 << 16, fds)
    except OSError:
        return None, []
    return (json.loads(data) if data else None), received


class ForkedProcess:
    """A sandbox forked by the server, with the part of ``subprocess.Popen``'s interface the
    sandbox uses (``pid``, ``stdout``, ``poll``, ``wait``, ``kill``, ``returncode``). Its exit
    code comes from the server, which reaps it; ``server_lost`` is True when the server ended
    first (the sandbox then died with it)."""

    def __init__(self, pid: int, pidfd: int, status: socket.socket, stdout):
        self.pid, self.pidfd, self.status, self.stdout = pid, pidfd, status, stdout
        self.returncode: int | None = None
        self.server_lost = False

    def poll(self) -> int | None:
        if self.returncode is None and _readable(self.status, 0):
            self._read_exit()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            if not _readable(self.status, timeout):
                raise subprocess.TimeoutExpired("sandbox", timeout)
            self._read_exit()
        return self.returncode

    def kill(self) -> None:
        """SIGKILL through the pidfd, which cannot reach another process that reuses the pid."""
        if self.returncode is None:
            try:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _read_exit(self) -> None:
        message, _ = _receive(self.status, 0)
        self.server_lost = message is None
        self.returncode = -signal.SIGKILL if message is None else int(message["exit"])
        self.status.close()
        os.close(self.pidfd)


class SandboxServer:
    """One pre-started ``harness.py --serve`` process (see the module docstring)."""

    def __init__(self, preload: tuple[str, ...], sys_path: list[str], env: dict[str, str],
                 startup_timeout: float):
        self.preload = tuple(preload)
        ours, theirs = _channel_pair()
        with theirs:
            self.proc = subprocess.Popen(
                [os.path.realpath(sys.executable), "-I", "-S", harness.__file__, "--serve",
                 str(theirs.fileno()), json.dumps({"preload": list(preload),
                                                   "sys_path": sys_path})],
                cwd="/", env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True, pass_fds=(theirs.fileno(),))
        self.channel, self.pid = ours, self.proc.pid
        ready, _ = _receive(ours, startup_timeout)
        if ready is None or "error" in ready:
            self.close()
            why = ready["error"] if ready else (
                f"it did not start within {startup_timeout:.0f} s"
                if self.proc.returncode == -signal.SIGKILL
                else f"it ended (exit code {self.proc.returncode})")
            raise ServerUnavailable(f"no pre-started sandbox with {', '.join(preload)}: {why}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def start(self, workdir: str, env: dict[str, str], commands_read: int,
              replies_write: int) -> ForkedProcess:
        """Fork a sandbox that reads commands from ``commands_read`` and replies on
        ``replies_write`` (the caller closes its copies); raise ``ServerGone`` if the server
        has stopped."""
        output_read, output_write = os.pipe()
        ours, theirs = _channel_pair()
        request = json.dumps({"workdir": str(workdir), "env": env}).encode()
        try:
            socket.send_fds(self.channel, [request],
                            [commands_read, replies_write, output_write, theirs.fileno()])
            forked, fds = _receive(ours, FORK_TIMEOUT, fds=1)
        except OSError:
            forked, fds = None, []
        finally:
            theirs.close()
            os.close(output_write)
        if forked is None or len(fds) != 1:
            ours.close()
            os.close(output_read)
            self.proc.kill()  # dead, or hung: the next job gets a new one
            raise ServerGone(f"the sandbox server (pid {self.pid}) has stopped")
        return ForkedProcess(forked["pid"], fds[0], ours, os.fdopen(output_read, "rb"))

    def close(self) -> None:
        """Stop the server: it exits when its channel closes, its sandboxes with it."""
        self.channel.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


_servers: dict[tuple[str, ...], SandboxServer] = {}
_servers_lock = threading.Lock()


def sandbox_server(preload: tuple[str, ...], sys_path: list[str], env: dict[str, str],
                   startup_timeout: float) -> SandboxServer:
    """This process's server for ``preload``, started (or started again) if need be."""
    with _servers_lock:
        server = _servers.get(tuple(preload))
        if server is None or not server.alive():
            if server is not None:
                server.close()
            server = _servers[tuple(preload)] = SandboxServer(preload, sys_path, env,
                                                              startup_timeout)
        return server


def running_servers() -> list[int]:
    """The pids of this process's live servers."""
    return [server.pid for server in list(_servers.values()) if server.alive()]


def close_servers() -> None:
    with _servers_lock:
        for server in _servers.values():
            server.close()
        _servers.clear()


def _forget_servers() -> None:
    """In a forked grading process: the parent's servers are the parent's; start our own."""
    global _servers_lock
    _servers.clear()
    _servers_lock = threading.Lock()


atexit.register(close_servers)
os.register_at_fork(after_in_child=_forget_servers)
