"""What a sandbox's processes use, counted over all of them, and how they are all stopped.

``ControlGroup``: one control group per sandbox, so the memory, CPU and process limits hold for
every process the student's code starts together, not for each process on its own. It is
created where the machine allows it (as root, or in a delegated hierarchy):

- cgroup v2 (the unified hierarchy, with the memory, cpu and pids controllers):
  ``<mount>/bnlib-grading/<sandbox>``; the controllers are enabled for ``bnlib-grading`` in the
  root's ``cgroup.subtree_control``;
- cgroup v1 (hosts that mount the memory, cpu, cpuacct and pids controllers as v1
  hierarchies): the same limits, one folder per controller, under the grader's own group.

``ProcessTree`` is the fallback without either: the descendants of the sandbox's first process,
found in ``/proc``; their CPU time and proportional memory (PSS) are summed by the trusted side
when it samples them, and nothing caps how much CPU they take meanwhile.
"""

from __future__ import annotations

import functools
import os
import signal
import time
from pathlib import Path

#: The folder, in each hierarchy, that holds one control group per running sandbox.
BASE = "bnlib-grading"
#: CFS period of the CPU limit, microseconds.
CPU_PERIOD_US = 100_000
#: The sandbox's first process and its namespace's init count against the process limit too.
SUPERVISORS = 2
#: How long (seconds) the last processes of a stopped sandbox may take to exit.
EXIT_WAIT = 5.0
_POLL = 0.02
_CONTROLLERS = ("memory", "cpu", "pids")


class ControlGroupUnavailable(OSError):
    """The machine gives this process no control group it can write (the reason says why)."""


@functools.cache
def _mounts() -> tuple[tuple[str, str, frozenset], ...]:
    """(mount point, filesystem type, options) of every cgroup hierarchy."""
    found = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, point, kind, options, *_ = line.split()
        if kind in ("cgroup", "cgroup2"):
            found.append((point, kind, frozenset(options.split(","))))
    return tuple(found)


def _own_paths() -> dict[str, str]:
    """Controller (or "" for v2) -> this process's group in that hierarchy."""
    paths = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path
    return paths


def _write(path: Path, value: str) -> None:
    with open(path, "w") as handle:
        handle.write(value)


def _counter(path: Path, key: str) -> int:
    """The number after ``key`` in a flat-keyed file such as memory.events or smaps_rollup."""
    for line in path.read_text().splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == key:
            return int(fields[1])
    return 0


class ControlGroup:
    """One sandbox's control group: ``create``, let the sandbox's first process join it (it
    writes its pid into ``procs_files``), read what it used, ``kill`` and ``remove``."""

    def __init__(self, version: int, folders: dict[str, Path]):
        self.version, self.folders = version, folders

    @classmethod
    def create(cls, name: str, memory_bytes: int, processes: int, cpus: float) -> ControlGroup:
        if not (Path("/proc/self/mounts").exists() and _mounts()):
            raise ControlGroupUnavailable("no cgroup hierarchy is mounted")
        v2 = next((point for point, kind, _ in _mounts() if kind == "cgroup2"), None)
        reasons = []
        if v2 is not None:
            available = set(Path(v2, "cgroup.controllers").read_text().split())
            if set(_CONTROLLERS) <= available:
                return cls._create_v2(Path(v2), name, memory_bytes, processes, cpus)
            absent = ", ".join(sorted(set(_CONTROLLERS) - available))
            reasons.append(f"cgroup v2 at {v2} has no {absent} controller")
        try:
            return cls._create_v1(name, memory_bytes, processes, cpus)
        except ControlGroupUnavailable as exc:
            raise ControlGroupUnavailable("; ".join([*reasons, str(exc)])) from None

    @classmethod
    def _create_v2(cls, mount: Path, name, memory_bytes, processes, cpus) -> ControlGroup:
        enable = " ".join(f"+{c}" for c in _CONTROLLERS)
        try:
            (mount / BASE).mkdir(exist_ok=True)
            for parent in (mount, mount / BASE):
                _write(parent / "cgroup.subtree_control", enable)
            leaf = mount / BASE / name
            leaf.mkdir()
        except OSError as exc:
            raise ControlGroupUnavailable(f"cgroup v2 at {mount} is not writable here "
                                          f"({exc.strerror})") from None
        group = cls(2, {"": leaf})
        try:
            _write(leaf / "memory.max", str(memory_bytes))
            if (leaf / "memory.swap.max").exists():
                _write(leaf / "memory.swap.max", "0")
            _write(leaf / "pids.max", str(processes + SUPERVISORS))
            _write(leaf / "cpu.max", f"{int(cpus * CPU_PERIOD_US)} {CPU_PERIOD_US}")
        except OSError:
            group.remove()
            raise
        return group

    @classmethod
    def _create_v1(cls, name, memory_bytes, processes, cpus) -> ControlGroup:
        points = {}
        for point, kind, options in _mounts():
            for controller in ("memory", "cpu", "cpuacct", "pids"):
                if kind == "cgroup" and controller in options:
                    points[controller] = point
        missing = sorted({"memory", "cpu", "cpuacct", "pids"} - set(points))
        if missing:
            raise ControlGroupUnavailable(f"no cgroup v1 {', '.join(missing)} controller")
        own = _own_paths()
        folders = {c: Path(points[c], own.get(c, "/").lstrip("/"), BASE, name) for c in points}
        group = cls(1, folders)
        try:
            for folder in set(folders.values()):
                folder.mkdir(parents=True)
        except OSError as exc:
            group.remove()
            raise ControlGroupUnavailable(f"cgroup v1 is not writable here ({exc.strerror})"
                                          ) from None
        try:
            memory = folders["memory"]
            _write(memory / "memory.limit_in_bytes", str(memory_bytes))
            if (memory / "memory.memsw.limit_in_bytes").exists():  # no swap either
                _write(memory / "memory.memsw.limit_in_bytes", str(memory_bytes))
            _write(folders["pids"] / "pids.max", str(processes + SUPERVISORS))
            _write(folders["cpu"] / "cpu.cfs_period_us", str(CPU_PERIOD_US))
            _write(folders["cpu"] / "cpu.cfs_quota_us", str(int(cpus * CPU_PERIOD_US)))
        except OSError:
            group.remove()
            raise
        return group

    def describe(self, memory_bytes: int, processes: int, cpus: float) -> str:
        return (f"control group (cgroup v{self.version}) for the whole process tree: "
                f"{memory_bytes >> 20} MiB, {cpus:g} CPU, {processes} processes")

    @property
    def procs_files(self) -> list[str]:
        return sorted({str(folder / "cgroup.procs") for folder in self.folders.values()})

    def cpu_seconds(self) -> float:
        if self.version == 2:
            return _counter(self.folders[""] / "cpu.stat", "usage_usec") / 1e6
        return int((self.folders["cpuacct"] / "cpuacct.usage").read_text()) / 1e9

    def oom_kills(self) -> int:
        if self.version == 2:
            return _counter(self.folders[""] / "memory.events", "oom_kill")
        return _counter(self.folders["memory"] / "memory.oom_control", "oom_kill")

    def pids(self) -> list[int]:
        folder = self.folders.get("") or self.folders["pids"]
        try:
            return [int(p) for p in (folder / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def kill(self) -> None:
        """SIGKILL every process in the group, and wait until they are gone."""
        kill_file = self.folders.get("", Path("/nonexistent")) / "cgroup.kill"
        deadline = time.monotonic() + EXIT_WAIT
        while (pids := self.pids()) and time.monotonic() < deadline:
            if kill_file.exists():
                _write(kill_file, "1")
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(_POLL)

    def remove(self) -> None:
        for folder in set(self.folders.values()):
            deadline = time.monotonic() + EXIT_WAIT
            while folder.exists():
                try:
                    folder.rmdir()
                except OSError:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(_POLL)


class ProcessTree:
    """The fallback without a control group: the processes descended from ``root_pid``.

    A process that leaves the tree (a double fork re-parents to the host's init) is no longer
    counted; inside a PID namespace every orphan stays in the tree, under the namespace's init.
    """

    def __init__(self, root_pid: int):
        self.root_pid = root_pid
        self.tick = os.sysconf("SC_CLK_TCK")

    def _stats(self) -> dict[int, tuple[int, list[str]]]:
        """pid -> (parent pid, the fields of /proc/<pid>/stat after the command name); empty
        without /proc (off Linux: then only the wall-clock limits and per-process timers act)."""
        stats = {}
        if not os.path.isdir("/proc"):
            return stats
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                text = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            fields = text[text.rindex(")") + 2:].split()
            stats[int(entry.name)] = (int(fields[1]), fields)
        return stats

    def members(self) -> dict[int, list[str]]:
        stats = self._stats()
        children: dict[int, list[int]] = {}
        for pid, (parent, _) in stats.items():
            children.setdefault(parent, []).append(pid)
        found, todo = {}, [self.root_pid]
        while todo:
            pid = todo.pop()
            if pid in stats and pid not in found:
                found[pid] = stats[pid][1]
                todo += children.get(pid, [])
        return found

    def cpu_seconds(self) -> float:
        # utime, stime, cutime, cstime: a child's time moves to its parent when it is reaped
        ticks = sum(sum(int(f) for f in fields[11:15]) for fields in self.members().values())
        return ticks / self.tick

    def memory_bytes(self) -> int:
        total = 0
        for pid in self.members():
            try:
                total += _counter(Path(f"/proc/{pid}/smaps_rollup"), "Pss:") << 10
            except (OSError, ValueError):
                continue
        return total
