"""Pre-flight of a submitted notebook: what is checked and repaired before any code runs.

The same checks run for instructors (inside ``nbgrader autograde`` and ``make grade``) and for
students (``python -m bnlib.grading.cli validate``), so a notebook that validates also grades.

1. the file is readable JSON (else the submission is rejected, the file is left untouched);
2. it is a valid nbformat 4 notebook: older versions are converted, schema errors are repaired
   by rebuilding every cell from what can be read (each repair is logged);
3. nbgrader cells match the reference (the gradebook for instructors, the released notebook
   for students): duplicated ``grade_id``\\ s are reduced to one cell, unknown ``grade_id``\\ s are
   stripped, edited test cells and edited metadata (cell type, points, flags) are restored,
   deleted test cells are put back;
4. student cells that import ``bnlib`` are flagged: ``bnlib`` is not available while grading.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from nbformat import v4

from bnlib.grading import links

#: The nbgrader roles a reference cell dictates (what an edit of the metadata could change).
_ROLES = ("grade", "solution", "locked", "task", "points")


class SubmissionRejected(ValueError):
    """The notebook cannot be graded at all (unreadable, not a notebook)."""


def is_test_cell(cell) -> bool:
    """A cell nbgrader grades by running it: graded code that is not a solution."""
    meta = cell.get("metadata", {}).get("nbgrader", {})
    return _is_test(cell.get("cell_type"), meta.get("grade"), meta.get("solution"))


def _is_test(cell_type, grade, solution) -> bool:
    return cell_type == "code" and bool(grade) and not solution


def _roles(meta: dict) -> dict:
    """What an nbgrader metadata dict says a cell is, with nbgrader's defaults filled in: an
    absent flag is False, and only graded cells and tasks carry points."""
    roles = {key: bool(meta.get(key)) for key in _ROLES if key != "points"}
    scored = roles["grade"] or roles["task"]
    roles["points"] = float(meta.get("points") or 0) if scored else None
    return roles


@dataclass
class ReferenceCell:
    """What a graded or locked cell must look like."""

    grade_id: str
    cell_type: str
    source: str
    grade: bool = False
    solution: bool = False
    locked: bool = False
    task: bool = False
    points: float = 0.0

    @property
    def is_test(self) -> bool:
        return _is_test(self.cell_type, self.grade, self.solution)

    def metadata(self) -> dict:
        """The cell's nbgrader metadata, laid out as nbgrader writes it."""
        meta = {"cell_type": self.cell_type, "grade": self.grade, "grade_id": self.grade_id,
                "locked": self.locked, "schema_version": 3, "solution": self.solution,
                "task": self.task}
        if self.grade or self.task:
            meta["points"] = self.points
        return meta


@dataclass
class Reference:
    """The reference cells of one notebook, in notebook order."""

    cells: list[ReferenceCell]

    def by_id(self) -> dict[str, ReferenceCell]:
        return {cell.grade_id: cell for cell in self.cells}

    @classmethod
    def from_notebook(cls, nb) -> Reference:
        """Reference from a source or released notebook (the student-side validate uses this)."""
        cells = []
        for cell in nb.cells:
            meta = cell.get("metadata", {}).get("nbgrader", {})
            if "grade_id" not in meta:
                continue
            cells.append(ReferenceCell(
                grade_id=meta["grade_id"], cell_type=cell.cell_type, source=cell.source,
                grade=bool(meta.get("grade")), solution=bool(meta.get("solution")),
                locked=bool(meta.get("locked")), task=bool(meta.get("task")),
                points=float(meta.get("points", 0) or 0)))
        return cls(cells)

    @classmethod
    def from_gradebook(cls, gradebook, notebook_id: str, assignment_id: str) -> Reference:
        """Reference from nbgrader's gradebook (source cells and their graded/solution roles)."""
        notebook = gradebook.find_notebook(notebook_id, assignment_id)
        grades = {c.name: c for c in notebook.grade_cells}
        tasks = {c.name: c for c in notebook.task_cells}
        solutions = {c.name for c in notebook.solution_cells}
        cells = []
        for source in notebook.source_cells:
            graded = grades.get(source.name) or tasks.get(source.name)
            cells.append(ReferenceCell(
                grade_id=source.name, cell_type=source.cell_type, source=source.source or "",
                grade=source.name in grades, solution=source.name in solutions,
                locked=bool(source.locked), task=source.name in tasks,
                points=float(graded.max_score) if graded is not None else 0.0))
        return cls(cells)


@dataclass
class Report:
    """What pre-flight found. ``changes`` were repaired; ``warnings`` cost nothing."""

    notebook: object
    changes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------
# reading and repairing the file
# ----------------------------------------------------------------------------------------------


def read_notebook(path: str | Path) -> Report:
    """Read ``path`` as an nbformat 4 notebook, repairing what can be repaired.

    Raises SubmissionRejected with a message for the student when the file cannot be used.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SubmissionRejected(f"file {path.name} could not be read: {exc.strerror}") from exc
    return parse_notebook(raw, path.name)


def parse_notebook(raw: bytes | str, name: str = "notebook") -> Report:
    """Parse notebook JSON text; see ``read_notebook``."""
    if isinstance(raw, bytes):
        text = raw.decode("utf-8", "replace")
    else:
        text = raw
    if not text.strip():
        raise SubmissionRejected(f"file {name} is empty: submit the notebook again")
    try:
        data = json.loads(text)
    except ValueError as exc:
        truncated = " (the file looks truncated)" if text.rstrip()[-1:] != "}" else ""
        raise SubmissionRejected(
            f"file {name} is not a readable notebook: invalid JSON at line "
            f"{getattr(exc, 'lineno', '?')}, column {getattr(exc, 'colno', '?')}{truncated}. "
            "Open it in Jupyter, save it, and submit it again.") from exc
    if not isinstance(data, dict) or not isinstance(data.get("cells", data.get("worksheets")),
                                                    list):
        raise SubmissionRejected(f"file {name} is JSON but not a Jupyter notebook (no cells)")
    report = Report(notebook=None)
    major = data.get("nbformat")
    if major != 4:
        try:
            nb = nbformat.reads(json.dumps(data), as_version=4)
            report.changes.append(f"converted from nbformat {major} to nbformat 4")
            data = json.loads(nbformat.writes(nb))
        except Exception as exc:  # noqa: BLE001 - any conversion failure means: rebuild below
            report.changes.append(f"nbformat {major} could not be converted ({exc}); rebuilt")
            if "worksheets" in data:
                sheets = data.get("worksheets") or [{}]
                data = {"cells": sheets[0].get("cells", []) if isinstance(sheets[0], dict) else []}
    try:
        # reads() joins line lists into strings, as nbformat.read does for nbgrader
        nb = nbformat.reads(json.dumps(data), as_version=4, capture_validation_error={})
        nbformat.validate(nb)
    except Exception as exc:  # noqa: BLE001 - any schema or parse problem: rebuild the cells
        report.changes.append(f"schema errors repaired ({_first_line(exc)})")
        nb = rebuild(data, report.changes)
    report.notebook = nb
    return report


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__


def _as_text(value) -> str:
    if isinstance(value, list):
        return "".join(str(part) for part in value)
    return value if isinstance(value, str) else ""


def rebuild(data: dict, changes: list[str]) -> nbformat.NotebookNode:
    """A valid nbformat 4 notebook holding every cell's type, source and metadata that can be
    read from ``data``; outputs are dropped (grading clears them anyway)."""
    nb = v4.new_notebook()
    metadata = data.get("metadata")
    if isinstance(metadata, dict):
        for key in ("kernelspec", "language_info"):
            if isinstance(metadata.get(key), dict):
                nb.metadata[key] = metadata[key]
    for index, cell in enumerate(data.get("cells") or []):
        if not isinstance(cell, dict):
            changes.append(f"cell {index}: not a cell object, dropped")
            continue
        kind = cell.get("cell_type")
        if kind not in ("code", "markdown", "raw"):
            changes.append(f"cell {index}: unknown cell type {_short(kind)}, kept as markdown")
            kind = "markdown"
        maker = {"code": v4.new_code_cell, "markdown": v4.new_markdown_cell,
                 "raw": v4.new_raw_cell}[kind]
        new = maker(source=_as_text(cell.get("source", cell.get("input", ""))))
        meta = cell.get("metadata")
        if isinstance(meta, dict):
            try:
                new.metadata = nbformat.from_dict(json.loads(json.dumps(meta)))
            except (TypeError, ValueError):
                changes.append(f"cell {index}: unreadable metadata dropped")
        nb.cells.append(new)
    nbformat.validate(nb)
    return nb


# ----------------------------------------------------------------------------------------------
# nbgrader cells
# ----------------------------------------------------------------------------------------------


def _short(value, cap: int = 80) -> str:
    """repr() of a value from the student's file, cut to ``cap`` characters first."""
    return repr(value[:cap] if isinstance(value, str) else type(value).__name__)


def _grade_id(cell) -> str | None:
    meta = cell.get("metadata", {}).get("nbgrader")
    if isinstance(meta, dict) and isinstance(meta.get("grade_id"), str):
        return meta["grade_id"]
    return None


def restore_cells(nb, reference: Reference, report: Report) -> None:
    """Make nbgrader cells agree with ``reference``; every change is appended to the report."""
    refs = reference.by_id()
    # 1. unknown grade_ids, and every copy of a grade_id but one
    positions: dict[str, list[int]] = {}
    for index, cell in enumerate(nb.cells):
        grade_id = _grade_id(cell)
        if grade_id is None:
            if "nbgrader" in cell.get("metadata", {}):
                del cell.metadata["nbgrader"]
            continue
        if grade_id not in refs:
            report.changes.append(f"cell {index}: unknown grade_id {_short(grade_id)} removed")
            del cell.metadata["nbgrader"]
            continue
        positions.setdefault(grade_id, []).append(index)
    for grade_id, found in positions.items():
        if len(found) == 1:
            continue
        ref = refs[grade_id]
        exact = [i for i in found if nb.cells[i].source == ref.source]
        keep = exact[0] if exact and (ref.locked or ref.is_test) else found[-1]
        for index in found:
            if index != keep:
                del nb.cells[index].metadata["nbgrader"]
        report.changes.append(
            f"grade_id {grade_id!r} appears {len(found)} times (a copied cell?): cell {keep} "
            "kept as the graded one, the copies are ordinary cells now")
        positions[grade_id] = [keep]
    # 2. cell type, metadata and (for locked cells) source restored
    for grade_id, (index,) in positions.items():
        _restore_cell(nb, index, refs[grade_id], report)
    # 3. graded and locked cells that are missing, put back after their predecessor
    present = set(positions)
    for order, ref in enumerate(reference.cells):
        if ref.grade_id in present or not (ref.grade or ref.locked or ref.task):
            continue
        cell = _new_cell(ref)
        at = len(nb.cells)
        for previous in reversed(reference.cells[:order]):
            where = [i for i, c in enumerate(nb.cells) if _grade_id(c) == previous.grade_id]
            if where:
                at = where[0] + 1
                break
        else:
            at = 0 if order == 0 else at
        nb.cells.insert(at, cell)
        present.add(ref.grade_id)
        what = "test cell" if ref.is_test else "cell"
        report.changes.append(f"{what} {ref.grade_id!r} was missing (deleted, or its metadata "
                              "removed): restored")


def _new_cell(ref: ReferenceCell):
    maker = v4.new_code_cell if ref.cell_type == "code" else v4.new_markdown_cell
    cell = maker(source=ref.source)
    cell.metadata["nbgrader"] = ref.metadata()
    if ref.locked:
        cell.metadata.update(editable=False, deletable=False)
    return cell


def _restore_cell(nb, index: int, ref: ReferenceCell, report: Report) -> None:
    cell = nb.cells[index]
    if cell.cell_type != ref.cell_type:
        report.changes.append(f"cell {ref.grade_id!r}: type changed to {cell.cell_type}, "
                              f"restored to {ref.cell_type}")
        replacement = _new_cell(ref) if ref.locked else (
            v4.new_code_cell if ref.cell_type == "code" else v4.new_markdown_cell)(cell.source)
        replacement.metadata = cell.metadata
        nb.cells[index] = cell = replacement
    old = dict(cell.metadata.get("nbgrader", {}))
    new = ref.metadata()
    before, after = _roles(old), _roles(new)
    changed = [key for key in _ROLES if before[key] != after[key]]
    if changed:
        report.changes.append(f"cell {ref.grade_id!r}: metadata {', '.join(changed)} edited, "
                              "restored")
    if "checksum" in old:
        new["checksum"] = old["checksum"]
    cell.metadata["nbgrader"] = new
    if (ref.locked or ref.is_test) and cell.source != ref.source:
        # the released copy lacks the hidden tests and links the published book: no edit
        if cell.source.strip() != as_released(ref.source).strip():
            report.changes.append(f"{'test cell' if ref.is_test else 'read-only cell'} "
                                  f"{ref.grade_id!r} was edited: restored")
        cell.source = ref.source


_HIDDEN_BLOCK = re.compile(r"^[ \t]*### BEGIN HIDDEN TESTS.*?^[ \t]*### END HIDDEN TESTS[^\n]*\n?",
                           re.MULTILINE | re.DOTALL)


def as_released(source: str) -> str:
    """``source`` as nbgrader releases it: hidden-test blocks and their markers removed,
    links to chapters pointing at the published book."""
    source = _HIDDEN_BLOCK.sub("", source)
    if links.CHAPTER_LINK.search(source):
        source = links.absolute_chapter_links(source, links.book_address())
    return source


def flag_bnlib_imports(nb, report: Report) -> None:
    """Warn about student cells that import bnlib: it is not importable while grading."""
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or is_test_cell(cell):
            continue
        if imports_bnlib(cell.source):
            report.warnings.append(
                f"cell {index} imports bnlib: bnlib is not available while your code is "
                "graded, so this cell will fail there; write the code yourself")


def imports_bnlib(source: str) -> bool:
    """Whether a statement of ``source`` imports bnlib; one pass over the text (it is the
    student's, of any size), so it never parses it."""
    for line in source.splitlines():
        for statement in line.split(";"):
            words = statement.replace(",", " ").split()
            if words[:1] == ["from"] and words[1:2] and words[1].split(".")[0] == "bnlib":
                return True
            if words[:1] == ["import"] and any(w.split(".")[0] == "bnlib" for w in words[1:]):
                return True
    return False


def preflight(nb, reference: Reference | None, report: Report | None = None) -> Report:
    """Run the nbgrader-cell checks on an already-read notebook (modified in place)."""
    report = report or Report(notebook=nb)
    report.notebook = nb
    if reference is not None:
        restore_cells(nb, reference, report)
    flag_bnlib_imports(nb, report)
    return report


def check_folder(folder: str | Path, expected: list[str]) -> list[str]:
    """Messages for expected notebooks missing from a submission folder (renamed or absent)."""
    folder = Path(folder)
    present = sorted(p.name for p in folder.glob("*.ipynb")) if folder.is_dir() else []
    problems = []
    for name in expected:
        filename = name if name.endswith(".ipynb") else f"{name}.ipynb"
        if filename in present:
            continue
        others = [p for p in present if p not in {f"{n}.ipynb" for n in expected}]
        hint = f" (found instead: {', '.join(others)}; was it renamed?)" if others else ""
        problems.append(f"file {filename} not found{hint}")
    return problems
