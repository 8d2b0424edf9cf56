"""The assignments: one module per assignment, each declaring ``ASSIGNMENT``
(a :class:`bnlib.grading.checks.Assignment`). A new module here is a new assignment."""

from __future__ import annotations

import importlib
import pkgutil

from bnlib.grading.checks import Assignment


def declared() -> tuple[Assignment, ...]:
    """Every module's ``ASSIGNMENT``, in the order of the course's chapters."""
    modules = [importlib.import_module(f"{__name__}.{info.name}")
               for info in pkgutil.iter_modules(__path__) if not info.name.startswith("_")]
    return tuple(sorted((m.ASSIGNMENT for m in modules), key=lambda a: a.chapter))
