"""Hardened autograding inside nbgrader: ``nbgrader autograde`` keeps working, scores do not
come from the student's interpreter.

``configure_autograde(c)`` (called at the end of ``nbgrader_config.py``) keeps nbgrader's own
preprocessors for everything but execution:

    sanitize:  ClearOutput, PreflightCells, OverwriteKernelspec, OverwriteCells, CheckCellMetadata
    autograde: IsolatedExecute, IgnorePattern, ClearMetadataPreprocessor, LimitOutput,
               SaveAutoGrades, AssignLatePenalties, CheckCellMetadata, SanitizeStudentHTML

``PreflightCells`` replaces ``DeduplicateIds`` (which lets one copied test cell abort a batch):
it restores deleted and edited test cells from the gradebook and logs every change.
``SanitizeStudentHTML`` (nbconvert's ``SanitizeHTML``, switched on) makes the student's
markdown inert in the autograded notebook, which formgrader and the feedback both render.
``IsolatedExecute`` replaces ``Execute``:

1. in this (trusted) process, it finds the ``check(...)`` calls of every test cell with ``ast``
   and computes their inputs, before any student code runs;
2. it runs the student's code cells (never the test cells) in ``bnlib.grading.sandbox``, one
   step at a time, then the drivers on those inputs, and gets plain arrays back; the packages
   the notebook's assignments forbid (``bnlib.grading.forbidden_imports``) cannot be imported
   there;
3. it judges the arrays here, against bnlib's reference, and writes the verdict into the test
   cell's outputs: a stream on success, an error (ename, evalue, traceback = the message) on
   failure, which is exactly what nbgrader's ``SaveAutoGrades`` scores. Student cells get their
   own captured output; their warnings and errors never reach a test cell, so they cost nothing.
"""

from __future__ import annotations

import ast
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from nbconvert.preprocessors import ClearMetadataPreprocessor, Preprocessor
from nbconvert.preprocessors.sanitize import SanitizeHTML
from nbformat import v4
from nbgrader.api import Gradebook, MissingEntry
from nbgrader.preprocessors import (
    AssignLatePenalties,
    CheckCellMetadata,
    ClearHiddenTests,
    ClearOutput,
    IgnorePattern,
    LimitOutput,
    NbGraderPreprocessor,
    OverwriteCells,
    OverwriteKernelspec,
    SaveAutoGrades,
)
from traitlets import Bool, List, Unicode

from bnlib.grading import preflight as pf
from bnlib.grading.limits import GradingLimits
from bnlib.grading.preflight import is_test_cell
from bnlib.grading.sandbox import CheckJob, Sandbox, clean_text

MARKER = "# --- hardened autograding ---"

#: Defines ``get_ipython`` in the sandbox so cells converted from %magics do not crash.
IPYTHON_STUB = '''
class _GradingShell:
    """Stands in for IPython while grading: magics and shell commands do nothing."""

    def run_line_magic(self, name, line, *args, **kwargs):
        print(f"[%{name} is ignored while grading]")

    def run_cell_magic(self, name, line, cell, *args, **kwargs):
        if name in ("time", "timeit", "capture", "prun"):
            exec(cell, globals())
        else:
            print(f"[%%{name} is ignored while grading]")

    def system(self, *args, **kwargs):
        print("[shell commands are ignored while grading]")

    getoutput = system

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def get_ipython():
    return _GRADING_SHELL


_GRADING_SHELL = _GradingShell()
'''


@dataclass(frozen=True)
class CheckCall:
    """One ``check(assignment, name, namespace, seed=...)`` call found in a test cell."""

    assignment: str
    name: str
    seed: int | None


@dataclass
class CheckPlan:
    """What the trusted side prepared: per test cell, its (key, call) entries or messages."""

    tests: dict[int, list] = field(default_factory=dict)
    jobs: list[CheckJob] = field(default_factory=list)
    cases: dict[str, list[dict]] = field(default_factory=dict)
    checks: dict[str, object] = field(default_factory=dict)
    assignments: set[str] = field(default_factory=set)


class UngradableTestCell(ValueError):
    """A test cell the hardened grader cannot run (the instructor must fix the source)."""


def find_check_calls(source: str) -> list[CheckCall]:
    """The ``check(...)`` calls of a test cell, in order; literal arguments only.

    >>> find_check_calls('check("bn_forward", "forward_basic", globals(), seed=3)')
    [CheckCall(assignment='bn_forward', name='forward_basic', seed=3)]
    """
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise UngradableTestCell(f"the test cell is not valid Python: {exc.msg}") from exc
    calls = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
        if name != "check":
            continue
        if len(node.args) < 2 or not all(isinstance(a, ast.Constant) and isinstance(a.value, str)
                                         for a in node.args[:2]):
            raise UngradableTestCell("check(...) needs literal assignment and check names")
        seed = None
        for keyword in node.keywords:
            if keyword.arg == "seed":
                if not (isinstance(keyword.value, ast.Constant)
                        and isinstance(keyword.value.value, int | type(None))):
                    raise UngradableTestCell("check(..., seed=...) needs a literal integer seed")
                seed = keyword.value.value
        call = CheckCall(node.args[0].value, node.args[1].value, seed)
        calls.append(((node.lineno, node.col_offset), call))
    return [call for _, call in sorted(calls, key=lambda pair: pair[0])]  # source order


def _stream(text: str, name: str = "stdout"):
    return v4.new_output("stream", name=name, text=text)


def _error(ename: str, message: str):
    # the traceback is the message only: a traceback would quote the (hidden) test source
    return v4.new_output("error", ename=ename, evalue=message, traceback=[f"{ename}: {message}"])


class IsolatedExecute(NbGraderPreprocessor):
    """nbgrader preprocessor that grades a notebook without running student code in-process.

    Its limits are ``GradingLimits``' (``c.GradingLimits.cell_timeout = 10``, ...)."""

    hidden_only_cells_pass = Bool(
        False, help="A test cell without check(...) calls passes with a note: the released "
        "notebook's cells that hold only hidden tests (used by validate).").tag(config=True)
    isolate = Bool(None, allow_none=True,
                   help="Namespaces and a private uid (None: where running as root on Linux)."
                   ).tag(config=True)
    control_groups = Bool(True, help="A control group per sandbox where the machine allows "
                          "it (else rlimits and sampling).").tag(config=True)

    def preprocess(self, nb, resources):
        from bnlib.grading import drivers as drivers_module

        started = time.monotonic()
        label = _label(resources)
        limits = GradingLimits(parent=self)
        plan = self._plan_checks(nb, label)  # trusted inputs, before any student code runs
        code_cells = [("__setup__", IPYTHON_STUB)] + [
            (str(index), cell.source) for index, cell in enumerate(nb.cells)
            if cell.cell_type == "code" and not is_test_cell(cell)]
        needs_torch = any(job.driver.startswith("torch") for job in plan.jobs)
        sandbox = Sandbox(limits, drivers_file=drivers_module.__file__, isolate=self.isolate,
                          control_groups=self.control_groups)
        outcome = sandbox.run(code_cells, plan.jobs,
                              preload=("numpy", "torch") if needs_torch else ("numpy",),
                              forbidden=forbidden_packages(plan.assignments))
        self.log.info("%s: ran in the sandbox (%s) in %.1f s, %d process(es)", label,
                      "; ".join(outcome.isolation) or "no isolation", time.monotonic() - started,
                      outcome.attempts)
        failed_cells = self._write_student_outputs(nb, outcome)
        for index, entries in plan.tests.items():
            nb.cells[index].outputs = self._verdict_outputs(
                entries, outcome, plan.cases, plan.checks, failed_cells, limits)
            nb.cells[index].execution_count = index + 1
        return nb, resources

    def _plan_checks(self, nb, label: str) -> CheckPlan:
        """Find every test cell's check calls and compute their cases (in this process)."""
        from bnlib.grading import CHECKS

        plan = CheckPlan()
        for index, cell in enumerate(nb.cells):
            if not is_test_cell(cell):
                continue
            try:
                calls = find_check_calls(cell.source)
            except UngradableTestCell as exc:
                self.log.error("%s: test cell %d cannot be graded: %s", label, index, exc)
                plan.tests[index] = [f"this test cell cannot be graded ({exc}); tell your "
                                     "instructor"]
                continue
            if not calls and not self.hidden_only_cells_pass:
                self.log.error("%s: test cell %d holds no check(...) call", label, index)
                plan.tests[index] = ["this test cell holds no check(...) call the grader can "
                                     "run; tell your instructor"]
                continue
            plan.tests[index] = []
            for number, call in enumerate(calls):
                check = CHECKS.get((call.assignment, call.name))
                if check is None:
                    self.log.error("%s: unknown check %r", label, call)
                    plan.tests[index].append(f"unknown check {call.assignment}/{call.name}; "
                                             "tell your instructor")
                    continue
                key = f"{index}-{number}"
                plan.assignments.add(call.assignment)
                plan.cases[key] = check.cases(call.seed)
                plan.checks[key] = check
                plan.jobs.append(CheckJob(key, check.driver, tuple(check.functions),
                                          plan.cases[key]))
                plan.tests[index].append((key, call))
        return plan

    def _write_student_outputs(self, nb, outcome) -> list[str]:
        failed = []
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code" or is_test_cell(cell):
                continue
            result = outcome.cells.get(str(index))
            cell.execution_count = index + 1
            cell.outputs = []
            if result is None:
                continue
            if result.stdout:
                cell.outputs.append(_stream(result.stdout))
            if result.stderr:
                cell.outputs.append(_stream(result.stderr, "stderr"))
            if result.error:
                cell.outputs.append(v4.new_output("error", **result.error))
                failed.append(f"cell {index} raised {result.error['ename']}: "
                              f"{result.error['evalue'][:200]}")
        return failed

    def _verdict_outputs(self, entries, outcome, cases, checks_by_key, failed_cells,
                         limits: GradingLimits) -> list:
        passed, failures = [], []
        for entry in entries:
            if isinstance(entry, str):
                failures.append(entry)
                continue
            key, call = entry
            message = _judge(checks_by_key[key], cases[key], outcome.checks.get(key),
                             failed_cells, limits)
            if message is None:
                hidden = " (hidden cases)" if call.seed is not None else ""
                passed.append(f"passed: {checks_by_key[key].description}{hidden}")
            else:
                failures.append(message)
        if failures:
            return [_error("AssertionError", "\n".join(failures))]
        if not passed:
            return [_stream("the tests of this cell are hidden: they run when it is graded\n")]
        return [_stream("\n".join(passed) + "\n")]


def _judge(check, cases: list[dict], result, failed_cells: list[str],
           limits: GradingLimits) -> str | None:
    """None when every case passes, else the message ``check(...)`` would raise in a kernel."""
    from bnlib.grading import SIGNATURES
    from bnlib.grading.checks import combine

    if result is None:
        return "this check could not be run (grading stopped before it)"
    if result.failure:
        return result.failure
    if result.missing:
        hint = f" ({failed_cells[0]})" if failed_cells else ""
        name = result.missing[0]
        return (f"define {SIGNATURES.get(name, name)} in this notebook: it does not exist after "
                f"running your cells{hint}")
    if len(result.results) != len(cases):
        return "some cases of this check returned no result"
    verdict = combine([check.judge(case, data) for case, data in zip(cases, result.results,
                                                                          strict=True)])
    if verdict.passed:
        return None
    return explain_process_errors(verdict.message[:limits.output_chars], limits.memory_mb)


def explain_process_errors(message: str, memory_mb: int) -> str:
    """Say "ran out of memory" and "ended the process" where a driver reports the exception
    ("f raised MemoryError: ...", "f raised SystemExit: 3"); one pass over each line, no
    regular expression, so the work grows with the length of the message and no faster."""
    return "\n".join(_explain_line(line, memory_mb) for line in message.split("\n"))


def _explain_line(line: str, memory_mb: int) -> str:
    before, found, after = line.partition(" raised ")
    function = before.rsplit(" ", 1)[-1]
    if not found or not function.isidentifier():
        return line
    place = after[after.rfind(", for "):] if ", for " in after else ""  # the check's "where"
    exception, _, detail = after.removesuffix(place).partition(":")
    prefix = before[:len(before) - len(function)]
    if exception.rsplit(".", 1)[-1].endswith("MemoryError"):
        return f"{prefix}{function} ran out of memory (the limit is {memory_mb} MiB){place}"
    if exception == "SystemExit":
        code = detail.strip().split(" ", 1)[0] or "0"
        return (f"{prefix}{function} ended the process (exit code {code}){place}: do not call "
                "sys.exit() or exit() in graded code")
    return line


def forbidden_packages(assignments) -> dict[str, str]:
    """Packages that every assignment of the notebook forbids -> the message student code gets
    when it imports one (the NumPy assignments exist to make students write what they do)."""
    from bnlib.grading import forbidden_import_message, forbidden_imports

    rules = {}
    for assignment in sorted(assignments):
        try:
            rules[assignment] = set(forbidden_imports(assignment))
        except KeyError:  # an unknown check, reported in its test cell
            continue
    if not rules:
        return {}
    first = next(iter(rules))
    return {name: forbidden_import_message(first, name)
            for name in sorted(set.intersection(*rules.values()))}


def _label(resources) -> str:
    info = resources.get("nbgrader", {})
    return f"{info.get('student', '?')}/{info.get('assignment', '?')}/{info.get('notebook', '?')}"


class HideTestTracebacks(Preprocessor):
    """Feedback: replace the traceback of a failed test cell by its one-line message.

    A traceback quotes the line that failed, and in a test cell that line may be a hidden test;
    the message (written by bnlib.grading) is what the student needs.
    """

    enabled = Bool(True)  # nbconvert preprocessors are off unless enabled

    def preprocess_cell(self, cell, resources, index):
        if is_test_cell(cell):
            for output in cell.get("outputs", []):
                if output.get("output_type") == "error":
                    output["traceback"] = [f"{output['ename']}: {output['evalue']}"]
        return cell, resources


class StripHiddenTests(ClearHiddenTests):
    """nbgrader's ClearHiddenTests, declaring the ``display_data_priority`` setting that
    nbconvert's HTML exporter gives every preprocessor (nbgrader's own class warns, on every
    feedback run, that it does not recognise it)."""

    display_data_priority = List(Unicode(), config=True)


#: What rendered Markdown needs, and nothing that runs code: tags, their attributes, and the
#: link schemes an href or src may use.
MARKDOWN_TAGS = frozenset({
    "a", "abbr", "b", "blockquote", "br", "code", "del", "div", "em", "h1", "h2", "h3", "h4",
    "h5", "h6", "hr", "i", "img", "li", "ol", "p", "pre", "span", "strong", "sub", "sup", "table",
    "tbody", "td", "th", "thead", "tr", "ul"})
MARKDOWN_ATTRIBUTES = {"a": ["href", "title"], "img": ["src", "alt", "title"], "*": ["class", "id"]}
LINK_SCHEMES = frozenset({"http", "https", "mailto"})


def sanitized_markdown(source: str, cap: int) -> str:
    """A student's Markdown as inert HTML: cut to ``cap`` characters, rendered as nbconvert
    renders it, cleaned with bleach (``<script>`` and ``onerror=`` escaped, ``javascript:``
    links dropped), and kept on one line inside a ``<div>`` so that rendering it again as
    Markdown (formgrader and the feedback do) passes it through unchanged."""
    import html

    import bleach
    from nbconvert.filters.markdown_mistune import markdown2html_mistune

    source = clean_text(source, cap)
    try:
        rendered = markdown2html_mistune(source)
    except Exception:  # noqa: BLE001 - e.g. a missing attachment: show the text as it is
        rendered = f"<pre>{html.escape(source)}</pre>"
    cleaned = bleach.clean(rendered, tags=MARKDOWN_TAGS, attributes=MARKDOWN_ATTRIBUTES,
                           protocols=LINK_SCHEMES)
    return '<div class="student-markdown">' + cleaned.replace("\n", "&#10;") + "</div>"


class SanitizeStudentHTML(SanitizeHTML):
    """nbconvert's SanitizeHTML (bleach), switched on, for what formgrader and the feedback
    render: every markdown cell but the locked ones (restored from the gradebook) becomes
    ``sanitized_markdown``; raw cells and HTML outputs are cleaned as nbconvert cleans them."""

    enabled = Bool(True)

    def preprocess_cell(self, cell, resources, index):
        locked = cell.get("metadata", {}).get("nbgrader", {}).get("locked")
        if cell.cell_type == "markdown" and not locked:
            cell.source = sanitized_markdown(cell.source,
                                             GradingLimits(parent=self).answer_chars)
            return cell, resources
        return super().preprocess_cell(cell, resources, index)


class PreflightCells(NbGraderPreprocessor):
    """Sanitize step: dedupe grade_ids, restore deleted/edited graded cells from the gradebook."""

    def preprocess(self, nb, resources):
        info = resources["nbgrader"]
        with Gradebook(info["db_url"]) as gradebook:
            try:
                reference = pf.Reference.from_gradebook(gradebook, info["notebook"],
                                                        info["assignment"])
            except MissingEntry:
                reference = None
        report = pf.preflight(nb, reference)
        for line in report.changes:
            self.log.warning("%s: pre-flight: %s", _label(resources), line)
        for line in report.warnings:
            self.log.warning("%s: pre-flight warning: %s", _label(resources), line)
        return nb, resources


class RepairSubmittedFiles:
    """``pre_convert_hook``: repair submitted notebooks' format before nbgrader reads them.

    A notebook that needs repair is backed up to ``backup_dir/<student>/<assignment>/`` first;
    an unreadable one is left untouched (nbgrader then reports that student and goes on).
    """

    def __init__(self, backup_dir: str | Path):
        self.backup_dir = Path(backup_dir)

    def __call__(self, assignment, student, notebooks, **_):
        for path in map(Path, notebooks):
            try:
                report = pf.read_notebook(path)
            except pf.SubmissionRejected:
                continue
            if report.changes:
                folder = self.backup_dir / str(student) / path.parent.name
                folder.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, folder / path.name)
                nbformat.write(report.notebook, path)


def configure_autograde(c, **limits) -> None:
    """Switch ``nbgrader autograde`` to hardened grading; keyword arguments set
    ``GradingLimits`` (``cell_timeout=10``, ``memory_mb=1024``, ...)."""
    c.Autograde.sanitize_preprocessors = [
        ClearOutput, PreflightCells, OverwriteKernelspec, OverwriteCells, CheckCellMetadata]
    c.Autograde.autograde_preprocessors = [
        IsolatedExecute, IgnorePattern, ClearMetadataPreprocessor, LimitOutput, SaveAutoGrades,
        AssignLatePenalties, CheckCellMetadata, SanitizeStudentHTML]
    root = Path(c.CourseDirectory.root or ".")
    c.Autograde.pre_convert_hook = RepairSubmittedFiles(root / "grading" / "preflight_backup")
    for name, value in limits.items():
        if name not in GradingLimits.class_trait_names(config=True):
            raise TypeError(f"configure_autograde() got an unknown limit {name!r}")
        setattr(c.GradingLimits, name, value)
