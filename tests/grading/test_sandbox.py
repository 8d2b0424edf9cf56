"""The sandbox: what student code can and cannot do, and that the trusted side always gets an
answer. Each test runs real child processes.

Where the machine offers them (root on Linux, a writable cgroup hierarchy) the tests use the
real namespaces and control group; the fallback tests turn them off and run everywhere. Limits
are CPU time with a wall-clock backstop, and each test's margins hold on a busy machine.
"""

from __future__ import annotations

import os
import subprocess
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from bnlib.grading.cgroups import ControlGroup, ControlGroupUnavailable
from bnlib.grading.limits import GradingLimits
from bnlib.grading.sandbox import (
    FORGED_REPLY,
    CheckJob,
    Sandbox,
    clean_text,
    describe_exit,
    isolation_available,
)
from tests.grading.hostile.build_corpus import TREE_MEMORY

DRIVERS = textwrap.dedent('''
    import numpy as np

    def double(functions, case):
        out = next(iter(functions.values()))(case["x"])
        return {"out": np.array(out, copy=True), "scale": np.array(case["scale"])}

    DRIVERS = {"double": double}
''')

REPO = Path(__file__).resolve().parents[2]
LIMITS = {"cell_timeout": 2, "check_timeout": 2, "total_timeout": 120, "memory_mb": 1024,
          "processes": 32, "output_chars": 2000, "grace": 1.0}


def control_group_available() -> bool:
    try:
        ControlGroup.create("bnlib-test-probe", 1 << 30, 8, 1.0).remove()
    except (ControlGroupUnavailable, OSError):
        return False
    return True


needs_isolation = pytest.mark.skipif(not isolation_available(),
                                     reason="namespaces and a private uid need root on Linux")
needs_control_group = pytest.mark.skipif(not control_group_available(),
                                         reason="no writable cgroup hierarchy here")


@pytest.fixture(scope="module")
def drivers(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("drivers") / "drivers.py"
    path.write_text(DRIVERS)
    return path


@pytest.fixture(scope="module")
def sandbox(drivers):
    """The machine's best: namespaces and a control group where available."""
    return Sandbox(GradingLimits(**LIMITS), drivers_file=drivers)


def run_cells(sandbox, *sources):
    cells = [(str(i), textwrap.dedent(src)) for i, src in enumerate(sources)]
    return sandbox.run(cells, [])


def test_cells_share_a_namespace_and_capture_output(sandbox):
    outcome = run_cells(sandbox, "x = 40", "print(x + 2)",
                        "import sys; print('oops', file=sys.stderr)")
    assert outcome.cells["1"].stdout == "42\n"
    assert outcome.cells["2"].stderr == "oops\n"
    assert outcome.cells["0"].error is None


def test_an_error_is_recorded_and_execution_goes_on(sandbox):
    outcome = run_cells(sandbox, "1 / 0", "print('after')")
    assert outcome.cells["0"].error["ename"] == "ZeroDivisionError"
    assert outcome.cells["1"].stdout == "after\n"


def test_environment_is_empty_and_cwd_private(sandbox):
    outcome = run_cells(sandbox, """
        import os
        print(sorted(os.environ))
        print(os.getcwd() == os.environ["HOME"] == os.environ["TMPDIR"])
        print(os.listdir("."))
    """)
    lines = outcome.cells["0"].stdout.splitlines()
    names = eval(lines[0])  # a printed list of str
    assert "PATH" in names and not [n for n in names if "TOKEN" in n or n.startswith("VIRTUAL")]
    assert lines[1:] == ["True", "[]"]


def test_bnlib_and_the_repository_are_not_importable(sandbox):
    outcome = run_cells(sandbox, "import bnlib", "import bnlib.grading.checks",
                        "import sys; print([p for p in sys.path if 'site-packages' not in p "
                        "and 'python3' not in p])")
    assert outcome.cells["0"].error["ename"] == "ModuleNotFoundError"
    assert outcome.cells["1"].error["ename"] == "ModuleNotFoundError"
    assert outcome.cells["2"].stdout == "[]\n"


def test_network_is_blocked(sandbox):
    outcome = run_cells(sandbox, """
        import socket
        socket.create_connection(("127.0.0.1", 9), timeout=1)
    """)
    assert outcome.cells["0"].error is not None
    assert outcome.cells["0"].error["ename"] in {"PermissionError", "OSError",
                                                  "ConnectionRefusedError"}


def test_repository_and_temporary_files_cannot_be_read(sandbox, tmp_path):
    secret = tmp_path / "gradebook.db"
    secret.write_text("hidden tests live here")
    outcome = run_cells(sandbox, f"print(open({str(secret)!r}).read())",
                        f"print(open({str(REPO / 'pyproject.toml')!r}).read())")
    assert outcome.cells["0"].error is not None
    assert outcome.cells["1"].error is not None
    assert "hidden tests" not in outcome.cells["0"].stdout


def test_writes_outside_the_private_folder_fail(sandbox):
    target = REPO / "written_by_student.txt"
    outcome = run_cells(sandbox, f"open({str(target)!r}, 'w').write('x')",
                        "open('/etc/written_by_student', 'w').write('x')")
    assert outcome.cells["0"].error is not None and outcome.cells["1"].error is not None
    assert not target.exists() and not Path("/etc/written_by_student").exists()


def test_infinite_loop_times_out_and_the_rest_runs(sandbox):
    outcome = run_cells(sandbox, "while True: pass", "print('next')")
    assert "this cell did not finish within" in outcome.cells["0"].error["evalue"]
    assert outcome.cells["1"].stdout == "next\n"
    assert outcome.attempts == 1  # interrupted inside the sandbox, no restart


def test_loop_that_blocks_the_timers_is_killed_and_skipped(sandbox):
    outcome = run_cells(sandbox, """
        import signal
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
        signal.signal(signal.SIGPROF, signal.SIG_IGN)
        while True:
            pass
    """, "print('next')")
    assert "did not finish within" in outcome.cells["0"].error["evalue"]
    assert outcome.cells["1"].stdout == "next\n"
    assert outcome.attempts == 2


def test_sleeping_code_meets_the_wall_clock_backstop(sandbox):
    outcome = run_cells(sandbox, "import time\ntime.sleep(10**6)", "print('next')")
    assert "did not finish within 6 s (is it waiting or sleeping?)" in \
        outcome.cells["0"].error["evalue"]
    assert outcome.cells["1"].stdout == "next\n"


def test_limits_count_the_cpu_time_of_every_process(drivers):
    """A cell that sleeps while its children spin uses no CPU itself: the whole tree's CPU
    time is what stops it (the wall-clock backstop is set far out of the way)."""
    limits = GradingLimits(**{**LIMITS, "wall_clock_factor": 30.0})
    outcome = Sandbox(limits, drivers_file=drivers).run([("0", textwrap.dedent("""
        import os, time
        for _ in range(4):
            if os.fork() == 0:
                while True:
                    pass
        time.sleep(10**6)
    """)), ("1", "print('next')")], [])
    assert "did not finish within 2 s of CPU time" in outcome.cells["0"].error["evalue"]
    assert outcome.cells["1"].stdout == "next\n"


def test_forged_reply_cannot_give_a_cell_more_time(sandbox):
    """Code that answers for the harness and keeps running loses its cell; the next cell is
    graded as usual (its time was not given away)."""
    outcome = run_cells(sandbox, "print('first')", """
        import json, os, signal, struct, sys
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
        signal.signal(signal.SIGPROF, signal.SIG_IGN)
        header = json.dumps({"kind": "cell", "index": 1, "stdout": "all good",
                             "stderr": "", "error": None}).encode()
        os.write(int(sys.argv[3]), struct.pack(">II", len(header), 0) + header)
        while True:
            pass
    """, "print('next')")
    assert outcome.cells["1"].error["evalue"] == FORGED_REPLY
    assert outcome.cells["0"].stdout == "first\n" and outcome.cells["2"].stdout == "next\n"


def test_garbage_on_the_grader_channel_fails_only_that_cell(sandbox):
    outcome = run_cells(sandbox, """
        import os, sys
        os.write(int(sys.argv[3]), b"\\xff" * 64)
    """, "print('next')")
    assert "wrote to the grader's channel" in outcome.cells["0"].error["evalue"]
    assert outcome.cells["1"].stdout == "next\n"


def test_memory_bomb_reports_out_of_memory(sandbox):
    outcome = run_cells(sandbox, "x = bytearray(8 << 30)", "print('next')")
    assert "out of memory" in outcome.cells["0"].error["evalue"]
    assert outcome.cells["1"].stdout == "next\n"


@needs_control_group
def test_memory_limit_holds_for_the_whole_process_tree(drivers):
    """Four forked children of 500 MiB each under a 1024 MiB limit."""
    outcome = Sandbox(GradingLimits(**{**LIMITS, "cell_timeout": 10}),
                      drivers_file=drivers).run([("0", textwrap.dedent(TREE_MEMORY))], [])
    # the control group's out-of-memory killer takes children until the rest fit
    assert int(outcome.cells["0"].stdout.split()[2]) >= 2
    assert "control group" in outcome.isolation[-1]


def test_without_a_control_group_the_tree_memory_is_sampled(drivers):
    outcome = Sandbox(GradingLimits(**{**LIMITS, "cell_timeout": 10}), drivers_file=drivers,
                      control_groups=False).run([("0", textwrap.dedent(TREE_MEMORY)),
                                                 ("1", "print('next')")], [])
    assert outcome.cells["0"].error["evalue"] == (
        "out of memory: your code and the processes it started used more than 1024 MiB")
    assert outcome.cells["1"].stdout == "next\n"
    assert outcome.isolation[-1].startswith("no control group (not used): rlimits per process")


@needs_control_group
def test_the_control_group_holds_the_configured_limits(sandbox):
    outcome = run_cells(sandbox, """
        from pathlib import Path
        mounts = {}
        for line in Path("/proc/self/mounts").read_text().splitlines():
            _, point, kind, options, *_ = line.split()
            for controller in [""] if kind == "cgroup2" else options.split(","):
                mounts[controller] = point
        for line in Path("/proc/self/cgroup").read_text().split():
            _, controllers, group = line.split(":", 2)
            for controller in controllers.split(",") if controllers else [""]:
                for name in ("memory.limit_in_bytes", "memory.max", "pids.max",
                             "cpu.cfs_quota_us", "cpu.max"):
                    path = Path(mounts.get(controller, "/none"), group.lstrip("/"), name)
                    if controller in ("", name.split(".")[0]) and path.exists():
                        print(name, path.read_text().strip())
    """)
    values = dict(line.split(" ", 1) for line in outcome.cells["0"].stdout.splitlines())
    assert values.get("memory.limit_in_bytes", values.get("memory.max")) == str(1024 << 20)
    assert values["pids.max"] == "34"  # 32 for the student, the sandbox's first process and init
    assert values.get("cpu.cfs_quota_us", values.get("cpu.max", "").split(" ")[0]) == "100000"


@needs_isolation
def test_fork_bomb_is_contained(sandbox):
    outcome = run_cells(sandbox, """
        import os
        children = 0
        try:
            for _ in range(10_000):
                if os.fork() == 0:
                    import time
                    time.sleep(60)
                    os._exit(0)
                children += 1
        except OSError as exc:
            print("stopped after", children, type(exc).__name__)
    """, "print('next')")
    assert outcome.cells["0"].stdout.startswith("stopped after")
    assert int(outcome.cells["0"].stdout.split()[2]) < 40
    assert outcome.cells["1"].stdout == "next\n"


@needs_isolation
def test_other_processes_are_invisible(sandbox):
    """A private /proc: another student's grading (here, a process whose command line names
    them) cannot be seen from inside."""
    other = subprocess.Popen(["sleep", "60", "other-student-id"])
    try:
        outcome = run_cells(sandbox, """
            import os
            lines = []
            for pid in sorted(p for p in os.listdir("/proc") if p.isdigit()):
                try:
                    lines.append(open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\\0", b" "))
                except OSError:
                    pass
            print(os.getpid(), len(lines), b"other-student-id" in b"".join(lines))
        """)
    finally:
        other.kill()
        other.wait()
    pid, processes, seen = outcome.cells["0"].stdout.split()
    assert seen == "False" and int(processes) <= 3  # init and the worker (and its lister)
    assert int(pid) == 2


def test_os_exit_and_sys_exit_are_reported_and_grading_goes_on(sandbox):
    outcome = run_cells(sandbox, "import sys; sys.exit(4)", "import os; os._exit(3)",
                        "print('still graded')")
    assert "ended the process (exit code 4)" in outcome.cells["0"].error["evalue"]
    assert "ended the process (exit code 3)" in outcome.cells["1"].error["evalue"]
    assert outcome.cells["2"].stdout == "still graded\n"


def test_segfault_is_reported(sandbox):
    outcome = run_cells(sandbox, "import ctypes; ctypes.string_at(0)", "print('next')")
    assert "SIGSEGV" in outcome.cells["0"].error["evalue"]
    assert outcome.cells["1"].stdout == "next\n"


def test_huge_and_binary_output_is_capped_and_decoded(sandbox):
    outcome = run_cells(sandbox, "print('x' * 10**7)", "print('\\udcff\\x00\\x1b[31m')",
                        "import os; os.write(1, b'\\xff\\xfe' * 100000)")
    assert len(outcome.cells["0"].stdout) < 2200 and "truncated" in outcome.cells["0"].stdout
    outcome.cells["1"].stdout.encode("utf-8")  # valid UTF-8, no lone surrogates
    assert "\x00" not in outcome.cells["1"].stdout
    assert len(outcome.process_output) < 2200


def test_ten_thousand_cells_run_without_a_file_each(sandbox):
    outcome = sandbox.run([(str(i), f"x{i % 7} = {i}") for i in range(10_000)]
                          + [("last", "print(x3 + x4)")], [])
    assert len(outcome.cells) == 10_001 and outcome.attempts == 1
    last = {i % 7: i for i in range(10_000)}  # what each x<k> holds after the last cell
    assert outcome.cells["last"].stdout == f"{last[3] + last[4]}\n"


def test_checks_run_on_trusted_inputs_and_return_plain_arrays(sandbox):
    x = np.arange(6.0).reshape(2, 3)
    check = CheckJob("k", "double", ("f",), [{"x": x, "scale": 2}, {"x": -x, "scale": 3}])
    outcome = sandbox.run([("0", "def f(x):\n    return x * 2")], [check])
    results = outcome.checks["k"].results
    np.testing.assert_array_equal(results[0]["out"], x * 2)
    np.testing.assert_array_equal(results[1]["out"], -x * 2)
    assert int(results[1]["scale"]) == 3


def test_missing_function_is_reported(sandbox):
    check = CheckJob("k", "double", ("f",), [{"x": np.ones(2), "scale": 1}])
    outcome = sandbox.run([("0", "def g(x):\n    return x")], [check])
    assert outcome.checks["k"].missing == ["f"]


def test_check_that_ends_the_process_fails_alone(sandbox):
    checks = [CheckJob("bad", "double", ("f",), [{"x": np.ones(2), "scale": 1}]),
              CheckJob("good", "double", ("g",), [{"x": np.ones(2), "scale": 1}])]
    source = "import os\ndef f(x):\n    os._exit(9)\ndef g(x):\n    return x"
    outcome = sandbox.run([("0", source)], checks)
    assert outcome.checks["bad"].failure == "your code ended the process (exit code 9)"
    np.testing.assert_array_equal(outcome.checks["good"].results[0]["out"], np.ones(2))


def test_check_that_loops_forever_times_out(sandbox):
    check = CheckJob("k", "double", ("f",), [{"x": np.ones(2), "scale": 1}])
    outcome = sandbox.run([("0", "def f(x):\n    while True: pass")], [check])
    assert "did not finish within" in str(outcome.checks["k"].results[0]["error"])


def test_helpers():
    assert describe_exit(3) == "exit code 3"
    assert describe_exit(-11) == "exit code -11, SIGSEGV"
    assert clean_text("a\x00b\udcff", 10) == "ab?"
    assert clean_text("x" * 20, 5) == "xxxxx\n... [output truncated: 15 more characters]"


@needs_isolation
def test_no_process_survives_a_run(sandbox):
    outcome = run_cells(sandbox, """
        import os
        print(os.getuid())
        if os.fork() == 0:
            os.setsid()  # leaves the process group
            import time
            time.sleep(300)
    """)
    uid = int(outcome.cells["0"].stdout.split()[0])
    assert uid != os.getuid()
    leftovers = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and entry.stat().st_uid == uid:
                leftovers.append(entry.name)
        except OSError:
            continue
    assert leftovers == []


@needs_isolation
def test_the_grader_files_are_read_only_to_student_code(sandbox):
    outcome = run_cells(sandbox, """
        import os, sys
        open(os.path.join(sys.argv[1], "grader", "drivers.py"), "a").write("hacked")
    """)
    assert outcome.cells["0"].error["ename"] in {"PermissionError", "OSError"}


FORBIDDEN = {"torch": "bn_backward is a NumPy assignment: importing torch is not allowed; "
                      "write the computation yourself"}
IMPORT_ATTEMPTS = ["import torch", "import importlib\nimportlib.import_module('torch.nn')",
                   "__import__('torch')",
                   "import importlib.util, sys\n"
                   "spec = importlib.util.find_spec('numpy')\n"
                   "site = spec.submodule_search_locations[0].rsplit('/', 1)[0]\n"
                   "open(site + '/torch/__init__.py').read()",
                   "import numpy\nprint('numpy', numpy.ones(2).sum())"]


@pytest.mark.parametrize("isolate", [pytest.param(True, marks=needs_isolation), False])
def test_forbidden_packages_cannot_be_imported(drivers, isolate):
    outcome = Sandbox(GradingLimits(**LIMITS), drivers_file=drivers, isolate=isolate).run(
        [(str(i), source) for i, source in enumerate(IMPORT_ATTEMPTS)], [], forbidden=FORBIDDEN)
    for index in range(4):
        assert outcome.cells[str(index)].error["evalue"] == FORBIDDEN["torch"], index
    assert outcome.cells["4"].stdout == "numpy 2.0\n"


def test_without_namespaces_the_audit_hook_still_blocks(tmp_path):
    """The fallback where the OS gives no namespaces (not root, not Linux)."""
    secret = tmp_path / "gradebook.db"
    secret.write_text("hidden tests live here")
    plain = Sandbox(GradingLimits(cell_timeout=5, total_timeout=60), isolate=False,
                    control_groups=False)
    outcome = plain.run([("0", "import bnlib"),
                         ("1", f"print(open({str(secret)!r}).read())"),
                         ("2", "import socket\nsocket.create_connection(('127.0.0.1', 9))"),
                         ("3", "import os\nprint(os.getuid())"),
                         ("4", f"import os\nos.symlink({str(tmp_path)!r}, 'link')\n"
                               "print(open('link/gradebook.db').read())"),
                         ("5", f"import os\nprint(os.listdir({str(tmp_path)!r}))")], [])
    assert outcome.cells["0"].error["ename"] == "ModuleNotFoundError"
    assert "not allowed while grading" in outcome.cells["1"].error["evalue"]
    assert "network access is not allowed" in outcome.cells["2"].error["evalue"]
    assert outcome.cells["3"].stdout == f"{os.getuid()}\n"
    assert "not allowed while grading" in outcome.cells["4"].error["evalue"]
    assert "not allowed while grading" in outcome.cells["5"].error["evalue"]
    assert outcome.isolation[0] == "audit hook refusing sockets and reads under hidden folders"


FORGED_RESULTS = """
    import io, json, os, struct, sys
    import numpy as np

    def send(header, payload=b""):
        data = json.dumps(header).encode()
        os.write(int(sys.argv[3]), struct.pack(">II", len(data), len(payload)) + data + payload)

    def f(x):
        bomb = io.BytesIO()
        np.savez_compressed(bomb, out=np.zeros(64 << 20, dtype=np.uint8))  # packs to 64 KiB
        send({"kind": "result", "check": 0, "case": 0}, bomb.getvalue())
        long = io.BytesIO()
        np.savez(long, error=np.array("f raised MemoryError" + "a" * 4_000_000))
        send({"kind": "result", "check": 0, "case": 1}, long.getvalue())
        send({"kind": "check", "index": 0, "missing": []})
        os._exit(0)
"""


def test_forged_and_oversized_results_cannot_hurt_the_grader(drivers):
    """Student code can write to the reply pipe; what it writes is only data, cut to size
    before the trusted side does anything with it."""
    limits = GradingLimits(**{**LIMITS, "result_mb": 32, "check_timeout": 20})
    check = CheckJob("k", "double", ("f",), [{"x": np.ones(2), "scale": 1}] * 2)
    outcome = Sandbox(limits, drivers_file=drivers).run(
        [("0", textwrap.dedent(FORGED_RESULTS))], [check])
    bomb, long = outcome.checks["k"].results
    assert set(bomb) == {"error"} and str(bomb["error"]) == "the result is too large to be checked"
    assert set(long) == {"error"} and str(long["error"]).startswith("f raised MemoryError")
    assert len(str(long["error"])) < 2100


@needs_isolation
def test_private_folder_is_size_limited(sandbox):
    outcome = run_cells(sandbox, """
        import os
        written = 0
        try:
            for i in range(1000):
                with open(f"junk{i}", "wb") as f:
                    f.write(b"x" * (8 << 20))
                written += 8
        except OSError as exc:
            print("stopped at", written, "MiB:", type(exc).__name__)
    """)
    assert outcome.cells["0"].stdout.startswith("stopped at")
    assert int(outcome.cells["0"].stdout.split()[2]) <= 64


def test_forked_children_are_killed_when_the_run_ends():
    plain = Sandbox(GradingLimits(cell_timeout=5, total_timeout=60), isolate=False,
                    control_groups=False)
    outcome = plain.run([("0", "import os, time\npid = os.fork()\n"
                               "if pid == 0:\n    time.sleep(300)\nprint(pid)")], [])
    pid = int(outcome.cells["0"].stdout.split()[0])
    for _ in range(50):
        try:
            state = Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0]
        except (OSError, IndexError):
            break  # gone
        if state in ("Z", "X"):
            break  # killed, waiting to be reaped by init
        time.sleep(0.1)
    else:
        pytest.fail(f"forked child {pid} is still running")
