"""The sandbox: what student code can and cannot do, and that the trusted side always gets an
answer. Each test runs real child processes."""

from __future__ import annotations

import os
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from bnlib.grading.sandbox import (
    CheckJob,
    Limits,
    Sandbox,
    clean_text,
    describe_exit,
    isolation_available,
)

DRIVERS = textwrap.dedent('''
    import numpy as np

    def double(functions, case):
        out = next(iter(functions.values()))(case["x"])
        return {"out": np.array(out, copy=True), "scale": np.array(case["scale"])}

    DRIVERS = {"double": double}
''')

REPO = Path(__file__).resolve().parents[2]
needs_isolation = pytest.mark.skipif(not isolation_available(),
                                     reason="namespaces and a private uid need root on Linux")


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    drivers = tmp_path_factory.mktemp("drivers") / "drivers.py"
    drivers.write_text(DRIVERS)
    limits = Limits(cell_timeout=2, check_timeout=2, total_timeout=60, memory=1 << 30,
                    processes=32, output_cap=2000, grace=1.0)
    return Sandbox(limits, drivers_file=drivers)


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
    assert "did not finish within 2 s" in outcome.cells["0"].error["evalue"]
    assert outcome.cells["1"].stdout == "next\n"


def test_loop_that_blocks_the_alarm_is_killed_and_skipped(sandbox):
    outcome = run_cells(sandbox, """
        import signal
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
        while True:
            pass
    """, "print('next')")
    assert "did not finish within 2 s" in outcome.cells["0"].error["evalue"]
    assert outcome.cells["1"].stdout == "next\n"
    assert outcome.attempts == 2


def test_memory_bomb_reports_out_of_memory(sandbox):
    outcome = run_cells(sandbox, "x = bytearray(8 << 30)", "print('next')")
    assert "out of memory" in outcome.cells["0"].error["evalue"]
    assert outcome.cells["1"].stdout == "next\n"


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
    assert "did not finish within 2 s" in str(outcome.checks["k"].results[0]["error"])


def test_helpers():
    assert describe_exit(3) == "exit code 3"
    assert describe_exit(-11) == "exit code -11, SIGSEGV"
    assert clean_text("a\x00b\udcff", 10) == "ab?"
    assert clean_text("x" * 20, 5).startswith("xxxxx\n... [output truncated: 15")


@needs_isolation
def test_no_process_survives_a_run(sandbox):
    outcome = run_cells(sandbox, """
        import os
        print(os.getuid())
        if os.fork() == 0:
            os.setsid()  # leaves the process group: only the uid sweep finds it
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


def test_without_namespaces_the_audit_hook_still_blocks(tmp_path):
    """The fallback where the OS gives no namespaces (not root, not Linux)."""
    secret = tmp_path / "gradebook.db"
    secret.write_text("hidden tests live here")
    plain = Sandbox(Limits(cell_timeout=5, total_timeout=60), isolate=False)
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
    assert outcome.isolation == ["audit hook refusing sockets and reads under hidden folders"]


def test_forged_and_oversized_results_cannot_hurt_the_grader(sandbox):
    """Student code can write into its own output folder; what it writes is only data."""
    check = CheckJob("k", "double", ("f",), [{"x": np.ones(2), "scale": 1}])
    source = textwrap.dedent("""
        import glob, os, numpy as np
        out = glob.glob(os.path.expanduser("~/../grader/out"))[0]
        zeros = np.zeros(200_000_000, dtype=np.uint8)  # 200 MB, compresses to almost nothing
        def f(x):
            np.savez_compressed(os.path.join(out, "check-0-0.npz"), out=zeros)
            with open(os.path.join(out, "check-0.json"), "w") as status:
                status.write('{"phase": "end", "missing": []}')
            with open(os.path.join(out, "progress.jsonl"), "a") as log:
                log.write('{"phase": "done"}\\n')
            os._exit(0)
    """)
    outcome = sandbox.run([("0", source)], [check])
    result = outcome.checks["k"].results[0]
    assert str(result["error"]) == "the result is too large to be checked"
    assert set(result) == {"error"}


def test_symlinked_outputs_are_not_followed(sandbox, tmp_path):
    """A link planted in the output folder must not make the grader read a host file."""
    secret = tmp_path / "secret.json"
    secret.write_text('{"stdout": "host secret", "stderr": "", "error": null}')
    source = textwrap.dedent(f"""
        import glob, os
        out = glob.glob(os.path.expanduser("~/../grader/out"))[0]
        os.symlink({str(secret)!r}, os.path.join(out, "cell-1.json"))
        os._exit(0)
    """)
    outcome = sandbox.run([("0", "print('first')"), ("1", source)], [])
    assert "host secret" not in str(outcome.cells)


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
    plain = Sandbox(Limits(cell_timeout=5, total_timeout=60), isolate=False)
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
