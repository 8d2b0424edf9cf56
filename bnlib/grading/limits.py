"""Every limit of hardened grading, in one place.

``GradingLimits`` is an nbgrader-configurable class: set a limit in ``nbgrader_config.py`` as
``c.GradingLimits.cell_timeout = 10``. The sandbox (``bnlib.grading.sandbox``) and the
autograde preprocessor (``bnlib.grading.pipeline.IsolatedExecute``) both read it; the
constants below are its defaults.

Time limits count CPU time, so a busy machine does not fail a student: a step that gets half
a core runs twice as long in wall-clock time and is still within its limit. Code that uses no
CPU (sleeping, blocked on a pipe) is stopped by a wall-clock backstop of ``wall_clock_factor``
times the CPU limit.
"""

from __future__ import annotations

from traitlets import Float, Integer
from traitlets.config import Configurable

CELL_TIMEOUT = 20.0
CHECK_TIMEOUT = 60.0
TOTAL_TIMEOUT = 600.0
WALL_CLOCK_FACTOR = 3.0
STARTUP_TIMEOUT = 60.0
GRACE = 3.0
MEMORY_MB = 2048
PROCESSES = 64
CPUS = 1.0
FILE_SIZE_MB = 16
SCRATCH_MB = 64
SCRATCH_FILES = 4096
OUTPUT_CHARS = 20_000
MESSAGE_CHARS = 2_000
ANSWER_CHARS = 50_000
RESULT_MB = 64


def _limit(default, help: str):
    trait = Float if isinstance(default, float) else Integer
    return trait(default, help=help).tag(config=True)


class GradingLimits(Configurable):
    """The limits one sandboxed notebook runs under (see the module docstring)."""

    cell_timeout = _limit(CELL_TIMEOUT, "CPU seconds one student cell may use.")
    check_timeout = _limit(CHECK_TIMEOUT, "CPU seconds all cases of one check may use together.")
    total_timeout = _limit(TOTAL_TIMEOUT, "Wall-clock seconds for one whole notebook, restarts "
                           "included: the longest one student can hold up those after them.")
    wall_clock_factor = _limit(WALL_CLOCK_FACTOR, "A step's wall-clock backstop, as a multiple "
                               "of its CPU limit (code that sleeps uses no CPU).")
    startup_timeout = _limit(STARTUP_TIMEOUT, "Wall-clock seconds for the sandbox to start "
                             "(interpreter, NumPy, PyTorch).")
    grace = _limit(GRACE, "Seconds past a limit before the sandbox is killed, for it to stop "
                   "the step itself.")
    memory_mb = _limit(MEMORY_MB, "Memory of the whole sandbox (every process it starts, with a "
                       "control group), MiB.")
    processes = _limit(PROCESSES, "Processes and threads the sandbox may run at once.")
    cpus = _limit(CPUS, "CPU cores the sandbox may keep busy at once (with a control group).")
    file_size_mb = _limit(FILE_SIZE_MB, "Largest file the student's code may write, MiB.")
    scratch_mb = _limit(SCRATCH_MB, "Size of the student's scratch folder (a tmpfs, as root), "
                        "MiB.")
    scratch_files = _limit(SCRATCH_FILES, "Files the scratch folder may hold (its inodes); "
                           "cells use none, their output comes back through a pipe.")
    output_chars = _limit(OUTPUT_CHARS, "Characters of output kept per cell.")
    message_chars = _limit(MESSAGE_CHARS, "Characters kept of any other text from the sandbox "
                           "(an error message, a type name) before the grader looks at it.")
    answer_chars = _limit(ANSWER_CHARS, "Characters of a student's markdown cell (a written "
                          "answer) rendered in formgrader and the feedback.")
    result_mb = _limit(RESULT_MB, "Largest result of one case, uncompressed, MiB.")

    def as_dict(self) -> dict:
        """The limits as plain values, for the sandboxed process (which has no traitlets)."""
        return {name: getattr(self, name) for name in sorted(self.trait_names(config=True))}

    def step_timeout(self, kind: str) -> float:
        """The CPU limit of a step: ``"cell"`` or ``"check"``."""
        return self.cell_timeout if kind == "cell" else self.check_timeout
