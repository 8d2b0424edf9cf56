"""The pre-started sandbox server: each sandbox is forked from one process that imported NumPy
(and PyTorch) once. Children must not see each other's state, a child killed by its limits
must leave the server usable, and a server that died is replaced. Real processes throughout;
where the machine offers them, the real namespaces and control group."""

from __future__ import annotations

import os
import re
import signal
import textwrap
import time
from pathlib import Path

import pytest

from bnlib.grading.limits import GradingLimits
from bnlib.grading.sandbox import ENVIRONMENT, Sandbox, python_paths
from bnlib.grading.sandbox_server import (
    SandboxServer,
    ServerUnavailable,
    prestarted_available,
    running_servers,
    sandbox_server,
)

pytestmark = pytest.mark.skipif(not prestarted_available(),
                                reason="the sandbox server needs Linux with pidfds")

LIMITS = {"cell_timeout": 2, "check_timeout": 2, "total_timeout": 120, "memory_mb": 1024,
          "processes": 32, "output_chars": 2000, "grace": 1.0}


def server_pid(preload=("numpy",)) -> int:
    return sandbox_server(preload, python_paths(), ENVIRONMENT, 60).pid


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


@pytest.fixture(scope="module")
def sandbox():
    return Sandbox(GradingLimits(**LIMITS), prestarted=True)


def run_cells(sandbox, *sources, **kwargs):
    return sandbox.run([(str(i), textwrap.dedent(s)) for i, s in enumerate(sources)], [],
                       **kwargs)


def reaped_cpu_seconds(pid: int) -> float:
    """CPU time of the children ``pid`` has reaped (cutime + cstime)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def test_sandboxes_are_forked_from_one_single_threaded_server(sandbox):
    run_cells(sandbox, "pass")
    pid = server_pid()
    before = reaped_cpu_seconds(pid)
    outcome = run_cells(sandbox, "print(sum(range(3 * 10**7)) > 0)")
    assert outcome.cells["0"].stdout == "True\n"
    assert server_pid() == pid and pid in running_servers()
    assert reaped_cpu_seconds(pid) - before > 0.2  # the sandbox was the server's child
    assert threads(pid) == 1


def test_children_do_not_see_each_others_state(sandbox):
    """Whatever one sandbox changes (modules the server imported, builtins, sys.modules, its
    files) is gone in the next; their random generators differ."""
    leaky = run_cells(sandbox, """
        import builtins, string, sys
        import numpy as np
        np.leak = "from the first student"
        np.mean = lambda *args, **kwargs: 42.0
        builtins.leak = True
        string.digits = "hacked"
        sys.modules["leak"] = np
        open("notes.txt", "w").write("first student's notes")
        print(np.random.randint(1 << 30), np.random.rand())
    """)
    clean = run_cells(sandbox, """
        import builtins, os, string, sys
        import numpy as np
        print(hasattr(np, "leak"), np.mean([1.0, 3.0]), hasattr(builtins, "leak"),
              string.digits, "leak" in sys.modules, os.listdir("."))
        print(np.random.randint(1 << 30), np.random.rand())
    """)
    assert leaky.cells["0"].error is None
    lines = clean.cells["0"].stdout.splitlines()
    assert lines[0] == "False 2.0 False 0123456789 False []"
    assert lines[1] != leaky.cells["0"].stdout.splitlines()[0]  # fresh random state


def test_only_the_protocols_descriptors_survive_the_fork(sandbox):
    outcome = run_cells(sandbox, """
        import os
        fds = sorted(int(fd) for fd in os.listdir("/proc/self/fd"))
        print(fds[:5], len(fds), os.readlink("/proc/self/fd/0"))
    """)
    # 0 /dev/null, 1 and 2 the output pipe, 3 commands, 4 replies, and the listing's own
    assert outcome.cells["0"].stdout == "[0, 1, 2, 3, 4] 6 /dev/null\n"


@pytest.mark.parametrize("source", [
    "x = bytearray(8 << 30)",
    "import signal\nsignal.signal(signal.SIGPROF, signal.SIG_IGN)\n"
    "signal.signal(signal.SIGALRM, signal.SIG_IGN)\nwhile True:\n    pass",
    "import os\nos._exit(3)",
    "import ctypes\nctypes.string_at(0)",
    "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)",
], ids=["memory", "cpu_time_kill", "os_exit", "segfault", "sigkill"])
def test_a_child_killed_by_its_limits_leaves_the_server_usable(sandbox, source):
    pid = server_pid()
    outcome = run_cells(sandbox, source, "print('next')")
    assert outcome.cells["0"].error is not None
    assert outcome.cells["1"].stdout == "next\n"
    assert server_pid() == pid and threads(pid) == 1
    assert run_cells(sandbox, "print('again')").cells["0"].stdout == "again\n"


def test_a_crashed_server_is_started_again(sandbox):
    run_cells(sandbox, "pass")
    old = server_pid()
    os.kill(old, signal.SIGKILL)
    outcome = run_cells(sandbox, "print('graded')")
    assert outcome.cells["0"].stdout == "graded\n" and outcome.attempts == 1
    assert server_pid() != old


def test_a_server_that_dies_during_a_run_costs_a_rerun_not_the_grade():
    """Without namespaces the sandbox can see its server; here it kills it (the second run,
    on a new server, finds the old one gone) and is graded in full."""
    plain = Sandbox(GradingLimits(**LIMITS), isolate=False, control_groups=False,
                    prestarted=True)
    old = server_pid()
    outcome = run_cells(plain, f"""
        import os, signal
        if os.getppid() == {old}:
            os.kill({old}, signal.SIGKILL)
            import time
            time.sleep(30)
        print("graded")
    """, "print('next')")
    assert outcome.cells["0"].stdout == "graded\n" and outcome.cells["1"].stdout == "next\n"
    assert outcome.attempts == 2 and server_pid() != old


def test_the_server_dies_with_the_grading_process(tmp_path):
    """A grading process killed outright leaves no server, and no sandbox, behind."""
    import subprocess
    import sys

    script = tmp_path / "grader.py"
    script.write_text(textwrap.dedent("""
        import os, sys, threading
        from bnlib.grading.limits import GradingLimits
        from bnlib.grading.sandbox import Sandbox
        from bnlib.grading.sandbox_server import running_servers
        sandbox = Sandbox(GradingLimits(cell_timeout=60, total_timeout=120), prestarted=True)
        threading.Thread(target=sandbox.run, args=([("0", "while True: pass")], []),
                         daemon=True).start()
        import time
        while not running_servers():
            time.sleep(0.1)
        print(running_servers()[0], flush=True)
        time.sleep(600)
    """))
    grader = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[2])
    server = int(grader.stdout.readline())
    time.sleep(1.0)  # the sandbox is running its loop
    grader.kill()
    grader.wait()
    deadline = time.monotonic() + 30
    while Path(f"/proc/{server}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{server}").exists()


def test_torch_is_imported_once_and_the_server_starts_no_threads(sandbox):
    outcome = run_cells(sandbox, """
        import torch
        print(torch.get_num_threads(), torch.ones(4).sum().item())
    """, preload=("numpy", "torch"))
    assert outcome.cells["0"].stdout == "1 4.0\n"
    assert threads(server_pid(("numpy", "torch"))) == 1


def test_fresh_processes_and_forked_ones_grade_alike():
    sources = ["x = 40", "print(x + 2)", "import sys; sys.exit(4)", "1 / 0",
               "import os; print(sorted(os.environ))", "print('last')"]
    outcomes = [run_cells(Sandbox(GradingLimits(**LIMITS), prestarted=prestarted), *sources)
                for prestarted in (False, True)]
    fresh, forked = ({k: (c.stdout, c.error and c.error["evalue"]) for k, c in o.cells.items()}
                     for o in outcomes)
    assert fresh == forked and fresh["1"] == ("42\n", None)
    fresh, forked = ([re.sub(r"uid \d+", "uid N", line) for line in o.isolation]
                     for o in outcomes)
    assert fresh == forked  # the same protections, word for word


def test_a_package_that_cannot_be_imported_is_reported():
    with pytest.raises(ServerUnavailable, match="no pre-started sandbox with numpy, "
                                                "no_such_package: ModuleNotFoundError"):
        SandboxServer(("numpy", "no_such_package"), python_paths(), ENVIRONMENT, 60)
