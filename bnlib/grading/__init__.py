"""bnlib.grading: the checks that the exercises' test cells call.

In a notebook::

    from bnlib.grading import check
    check("bn_forward", "batchnorm_forward", globals())             # visible test: fixed cases
    check("bn_forward", "batchnorm_forward", globals(), seed=4821)  # hidden test: random battery

``check`` looks the graded functions up in the namespace, runs them on the check's cases
(through :mod:`bnlib.grading.drivers`), judges each result against the reference
(:mod:`bnlib.grading.checks`), prints one line on success and raises ``AssertionError`` with a
message that names the likely mistake on failure.
"""

from __future__ import annotations

from bnlib.grading.assignments import declared
from bnlib.grading.checks import AUTOGRAD_LIBRARIES, Check, Verdict, combine
from bnlib.grading.drivers import DRIVERS

_DECLARED = declared()

ASSIGNMENTS: tuple[str, ...] = tuple(a.name for a in _DECLARED)

CHECKS: dict[tuple[str, str], Check] = {
    (c.assignment, c.name): c for a in _DECLARED for c in a.checks
}

SIGNATURES: dict[str, str] = {f.name: f.signature for a in _DECLARED for f in a.functions}

FORBIDDEN_IMPORTS: dict[str, tuple[str, ...]] = {a.name: a.forbidden_imports for a in _DECLARED}


def forbidden_imports(assignment: str) -> tuple[str, ...]:
    """Top-level packages that student code of ``assignment`` may not import."""
    if assignment not in FORBIDDEN_IMPORTS:
        raise KeyError(f"no assignment {assignment!r}")
    return FORBIDDEN_IMPORTS[assignment]


def forbidden_import_message(assignment: str, module: str) -> str:
    """What a student is told when their code imports a forbidden ``module``."""
    return (f"{assignment} is a NumPy assignment: importing {module} is not allowed; write the "
            f"computation yourself")


def find_functions(check_spec: Check, namespace: dict) -> dict:
    """The graded names from ``namespace``; AssertionError naming the first missing one."""
    functions = {}
    for name in check_spec.functions:
        if name not in namespace:
            raise AssertionError(f"define {SIGNATURES[name]} in this notebook (run the cell "
                                 f"that defines it first)")
        functions[name] = namespace[name]
    return functions


def run_check(assignment: str, name: str, namespace: dict, seed: int | None = None) -> Verdict:
    """Run one check in this process and return its combined verdict."""
    try:
        spec = CHECKS[(assignment, name)]
    except KeyError:
        raise KeyError(f"no check {name!r} in assignment {assignment!r}") from None
    functions = find_functions(spec, namespace)
    driver = DRIVERS[spec.driver]
    return combine([spec.judge(case, driver(functions, case)) for case in spec.cases(seed)])


def check(assignment: str, name: str, namespace: dict, seed: int | None = None) -> None:
    """Grade ``name`` of ``assignment`` on the functions in ``namespace`` (see module doc)."""
    verdict = run_check(assignment, name, namespace, seed)
    if not verdict.passed:
        raise AssertionError(verdict.message)
    spec = CHECKS[(assignment, name)]
    print(f"passed: {spec.description}" + (" (hidden cases)" if seed is not None else ""))


__all__ = ["ASSIGNMENTS", "AUTOGRAD_LIBRARIES", "CHECKS", "SIGNATURES", "Check", "Verdict",
           "check", "combine", "forbidden_import_message", "forbidden_imports", "run_check"]
