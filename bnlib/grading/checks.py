"""Checks behind the exercises: how a graded function is declared, its cases, and the diagnosis.

A graded function is declared once, in its assignment's module (``assignments/<name>.py``), as a
:class:`Function`: its signature (as the student sees it), its :class:`Check` s and the
:class:`Mistake` s that plant common errors into the solution. Every list the rest of the project
uses (``bnlib.grading.CHECKS``, ``SIGNATURES``, ``ASSIGNMENTS``, the mistake catalogue, the
Makefile's assignments) is derived from these declarations.

A :class:`Check` is trusted code. ``cases(seed)`` builds deterministic inputs (``seed=None``:
the fixed cases a visible test shows; an int: the random battery a hidden test runs).
``judge(case, result)`` compares what a driver (:mod:`bnlib.grading.drivers`) returned with the
reference in :mod:`bnlib.numpy` (or ``torch.nn`` for the PyTorch assignment). Before any value is
compared it checks, for every graded function, what holds whatever the formula: the code did not
raise, it returned what the signature says, and it left its inputs as they were (the driver sends
the inputs back; they are compared here with the case, which the trusted side kept). When values
differ, the judge recomputes the reference under each common mistake; the mistake whose output
matches is named in the message.

Tolerances (stated to students in the notebooks): a case passes when
``|got - ref| <= atol * max(1, max|ref|) + rtol * |ref|``, with rtol = 1e-6, atol = 1e-8 for
float64 inputs and rtol = 1e-4, atol = 1e-5 for float32 inputs; the float32 case with mean 1e3
and std 0.1 uses rtol = 1e-3, atol = 2e-2, which a two-pass float32 computation meets and a
one-pass one (E[x^2] - E[x]^2) does not. Outputs must have the dtype of the inputs.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from bnlib.grading.drivers import parse_signature
from bnlib.numpy import channel_view, reduction_axes

FLOAT64_TOL = {"rtol": 1e-6, "atol": 1e-8}
FLOAT32_TOL = {"rtol": 1e-4, "atol": 1e-5}
FLOAT32_OFFSET_TOL = {"rtol": 1e-3, "atol": 2e-2}
OFFSET_LABEL = "float32 batch with mean 1e3 and std 0.1"

# Libraries that compute gradients or normalizations for the student: the NumPy assignments
# exist to make students write these themselves, so student code may not import them there.
AUTOGRAD_LIBRARIES = ("autograd", "chainer", "functorch", "jax", "jaxlib", "keras", "mxnet",
                      "paddle", "sympy", "tensorflow", "tinygrad", "torch")


# ---------------------------------------------------------------------------------------------
# Verdicts.

@dataclass
class Verdict:
    """Outcome of judging one case. ``diagnosed``: the message names a specific mistake;
    ``kind``: the kind of case it judged (see :func:`combine`)."""

    passed: bool
    message: str
    diagnosed: bool = False
    kind: str = ""


#: Explanations that hold when the only failing cases are of one kind and others pass.
ONLY_THESE_FAIL = {
    "offset": "Only the float32 batch with a large mean fails: compute the variance in two "
              "passes, mean((x - mean)**2), not E[x**2] - E[x]**2, whose two large terms cancel "
              "(catastrophic cancellation) and lose every digit",
    "rank": "Only the inputs with 3 or 5 dimensions fail: batch norm takes its statistics over "
            "every axis but 1 whatever the number of dimensions, (N, C), (N, C, L), "
            "(N, C, H, W) or (N, C, D, H, W): dims = [0, *range(2, x.dim())]",
}


def combine(verdicts: list[Verdict]) -> Verdict:
    """One verdict for a check: pass if all pass, else the first diagnosed failure, else the
    first failure, explained when every failing case is of one kind and another kind passed."""
    failures = [v for v in verdicts if not v.passed]
    if not failures:
        return Verdict(True, verdicts[0].message if verdicts else "no cases")
    diagnosed = [v for v in failures if v.diagnosed]
    if diagnosed:
        return diagnosed[0]
    first = failures[0]
    failing_kinds = {v.kind for v in failures}
    passing_kinds = {v.kind for v in verdicts if v.passed}
    if len(failing_kinds) == 1 and first.kind in ONLY_THESE_FAIL and passing_kinds:
        return Verdict(False, f"{first.message}. {ONLY_THESE_FAIL[first.kind]}", True, first.kind)
    return first


# ---------------------------------------------------------------------------------------------
# Declarations: a graded function with its checks and mistakes, an assignment of them.

@dataclass(frozen=True)
class Mistake:
    """A common mistake: ``plant`` is (old, new) replacements applied to the solution
    notebook's code cells (each ``old`` occurring exactly once), ``diagnosis`` the words the
    feedback must then contain. ``caught_by="sandbox"``: caught when student code runs in the
    grading sandbox (a forbidden import), not by the checks."""

    name: str
    description: str
    plant: tuple[tuple[str, str], ...]
    diagnosis: str
    caught_by: str = "checks"
    assignment: str = ""  # set by the Assignment that declares it

    @property
    def id(self) -> str:
        return f"{self.assignment}.{self.name}"


@dataclass(frozen=True)
class Check:
    """One graded property of a graded function: ``make_cases(seed)`` and
    ``judge_case(case, result)`` (which sees only results that passed the generic checks).

    ``after``: the graded function whose output feeds this one (a backward's forward): the
    driver calls it first, and its own judge must pass first. The remaining fields are set by
    the ``Assignment`` from the declaration."""

    name: str
    description: str
    make_cases: Callable[[int | None], list[dict]] = field(repr=False)
    judge_case: Callable[[dict, dict], Verdict] = field(repr=False)
    after: str = ""
    assignment: str = ""
    functions: tuple[str, ...] = ()
    driver: str = "call"
    stamp: tuple[tuple[str, str], ...] = ()  # (key, value) added to every case
    inputs: tuple[str, ...] = ()  # case arrays the student's code receives
    returns: tuple[tuple[str, str, tuple[str, ...]], ...] = ()  # (result key, function, names)
    forward_judge: Callable[[dict, dict], Verdict] | None = field(default=None, repr=False)

    def cases(self, seed: int | None = None) -> list[dict]:
        cases = [dict(case, **dict(self.stamp)) for case in self.make_cases(seed)]
        if self.driver == "forward_then_backward":
            cases = [dict(case, **other_inputs(case)) for case in cases]
        return cases

    def judge(self, case: dict, result: dict) -> Verdict:
        """Judge any result dict without raising: a malformed result is a failed verdict."""
        try:
            verdict = self._judge(case, result)
        except Exception as error:  # noqa: BLE001 - a malformed result must not crash grading
            verdict = Verdict(False, f"your result could not be checked ({type(error).__name__}: "
                                     f"{error}); return arrays of the documented shapes")
        verdict.kind = str(case.get("kind", ""))
        return verdict

    def _judge(self, case: dict, result: dict) -> Verdict:
        if not isinstance(result, dict):
            return Verdict(False, f"the driver returned {type(result).__name__}, not a dict")
        failure = raised(result, case)
        for key, function, names in self.returns:
            failure = failure or wrong_structure(result, key, function, names)
        failure = (failure or modified_inputs(result, case, self.inputs)
                   or self.forward_failure(case, result))
        return (failure or self.judge_case(case, result)
                or Verdict(True, f"{case['function']} is correct"))

    def forward_failure(self, case: dict, result: dict) -> Verdict | None:
        """The forward's own verdict, when its output feeds this check and is wrong."""
        if not self.after:
            return None
        forward = self.forward_judge(dict(case, function=self.after), result)
        if forward is None or forward.passed:
            return None
        return Verdict(False, f"fix {self.after} first (its cache feeds {case['function']}): "
                              f"{forward.message}", forward.diagnosed)


@dataclass(frozen=True)
class Function:
    """A graded function (or class): the signature students see, its checks, its mistakes.

    ``signature``: ``"name(params) -> returns"`` for a function, which the generic ``call``
    driver reads; for a class, a sentence naming it, with its own ``driver`` and ``inputs``
    (the case arrays that driver hands to student code)."""

    signature: str
    checks: tuple[Check, ...]
    mistakes: tuple[Mistake, ...] = ()
    driver: str = "call"
    inputs: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return re.match(r"(?:class )?(\w+)", self.signature)[1]

    @property
    def parameters(self) -> tuple[str, ...]:
        return self.inputs or sum(parse_signature(self.signature)[1:3], ())

    @property
    def returns(self) -> tuple[str, ...]:
        return () if self.driver != "call" else parse_signature(self.signature)[3]


@dataclass(frozen=True)
class Assignment:
    """An assignment: its graded functions, in notebook order, and the libraries its student
    code may not import. ``chapter``: the course chapter it belongs to (orders assignments)."""

    name: str
    chapter: int
    functions: tuple[Function, ...]
    forbidden_imports: tuple[str, ...] = ()

    def function(self, name: str) -> Function:
        for function in self.functions:
            if function.name == name:
                return function
        raise KeyError(f"{self.name} declares no graded function {name!r}")

    @property
    def checks(self) -> tuple[Check, ...]:
        return tuple(self.bind(check, function) for function in self.functions
                     for check in function.checks)

    @property
    def mistakes(self) -> tuple[Mistake, ...]:
        return tuple(dataclasses.replace(m, assignment=self.name) for f in self.functions
                     for m in f.mistakes)

    def bind(self, check: Check, function: Function) -> Check:
        """The check with everything the declaration implies filled in."""
        stamp = {"function": function.name, "signature": function.signature}
        inputs, returns = function.parameters, [("returned", function.name, function.returns)]
        driver, forward_judge, functions = function.driver, None, (function.name,)
        if check.after:
            forward = self.function(check.after)
            stamp.update(forward=forward.name, forward_signature=forward.signature)
            inputs = (*forward.parameters, *inputs)
            returns.insert(0, ("forward.returned", forward.name, forward.returns))
            driver, forward_judge = "forward_then_backward", forward.checks[0].judge_case
            functions = (forward.name, function.name)
        return dataclasses.replace(
            check, assignment=self.name, functions=functions, driver=driver,
            stamp=tuple(stamp.items()), inputs=inputs, returns=tuple(returns),
            forward_judge=forward_judge)


# ---------------------------------------------------------------------------------------------
# What holds whatever the formula: no exception, the promised return value, inputs unchanged.

def text(result: dict, key: str) -> str:
    return str(np.asarray(result[key]).item()) if key in result else ""


def main_input(case: dict) -> str | None:
    """The input array a failure is located by: x, batches or W, else the graded function's
    first parameter when it is an array (``z`` of ``saturated_fraction(z, threshold=4.0)``)."""
    for key in ("x", "batches", "W"):
        if key in case:
            return key
    try:
        first = parse_signature(str(case.get("signature")))[1][:1]
    except ValueError:  # a class, declared by a sentence
        return None
    return first[0] if first and isinstance(case.get(first[0]), np.ndarray) else None


def where(case: dict) -> str:
    """Where a failure happened, e.g. 'for x of shape (8, 4) (eps = 1e-05)'; a case without an
    input array is named by its label alone, e.g. 'for lr = 0.5, weight_decay = 0.01'."""
    key = main_input(case)
    if key is None:
        return f"for {case['label']}"
    return f"for {key} of shape {tuple(np.shape(case[key]))} ({case['label']})"


def raised(result: dict, case: dict) -> Verdict | None:
    """A failed verdict when student code raised (the driver's message, with where)."""
    error = text(result, "error").rstrip(": ")
    if not error:
        return None
    hint = ""
    if "NotImplementedError" in error:
        hint = " (replace `raise NotImplementedError()` with your code)"
    return Verdict(False, f"{error}{hint}, {where(case)}")


def modified_inputs(result: dict, case: dict, inputs: tuple[str, ...]) -> Verdict | None:
    """A failed verdict when an input array came back different from the trusted copy."""
    names = [name for name in inputs if isinstance(case.get(name), np.ndarray)]
    changed = []
    for name in names:
        after = result.get(f"input.{name}")
        if after is None:
            return Verdict(False, f"{case['function']}: the grader could not read back the "
                                  f"input {name} after your code ran")
        before = case[name]
        if (np.shape(after) != before.shape or np.asarray(after).dtype != before.dtype
                or not np.array_equal(after, before, equal_nan=True)):
            changed.append(name)
    if not changed:
        return None
    return Verdict(False, f"{case['function']} modified its input {', '.join(changed)} in place "
                          f"(for example `x -= mean` or `out = x; out *= ...`): the caller's "
                          f"arrays must not change, so compute into a new array (`x - mean`).",
                   diagnosed=True)


def wrong_structure(result: dict, key: str, function: str,
                    names: tuple[str, ...]) -> Verdict | None:
    """A failed verdict when a function that must return a tuple ``names`` did not."""
    returned = text(result, key)
    if len(names) < 2 or returned in (f"tuple of {len(names)}", f"list of {len(names)}"):
        return None
    return Verdict(False, f"{function} must return a tuple ({', '.join(names)}); it returned "
                          f"{returned or 'nothing'}")


# ---------------------------------------------------------------------------------------------
# Comparing values.

def case_dtype(case: dict) -> np.dtype:
    """The dtype every output must have: the dtype of the main input."""
    return np.asarray(case[main_input(case)]).dtype


def close(got: np.ndarray, ref: np.ndarray, tolerance: dict) -> bool:
    """The tolerance stated in the module docstring; shapes must match exactly."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    if got.shape != ref.shape or not np.all(np.isfinite(got)):
        return False
    scale = max(1.0, float(np.max(np.abs(ref), initial=0.0)))
    return bool(np.all(np.abs(got - ref) <=
                       tolerance["atol"] * scale + tolerance["rtol"] * np.abs(ref)))


def dtype_hint(expected: np.dtype, got: np.dtype) -> str:
    if expected == np.float32:
        return ("a float64 array or np.float64 scalar mixed into the computation, or "
                ".astype(np.float64), promotes the result; NumPy keeps float32 when every "
                "operand is float32 or a Python number")
    return "do not cast to a lower precision: compute in the input's dtype"


def validate_array(result: dict, key: str, shape: tuple, function: str, dtype: np.dtype,
                   expected_type: str = "numpy.ndarray") -> tuple[np.ndarray | None, str]:
    """(array, "") if ``result[key]`` is a finite array of ``shape`` and ``dtype``; else
    (None, why)."""
    want = f"{function} must return {key} as a {expected_type} of shape {shape} and dtype {dtype}"
    kind = text(result, f"{key}.type")
    if not kind:
        return None, f"{want}; it returned nothing for {key} ({text(result, 'returned')})"
    if kind != expected_type:
        return None, f"{want}; got {kind}"
    if key not in result:
        return None, f"{want}; got a {kind} that is not numeric"
    got = np.asarray(result[key])
    if got.shape != tuple(shape):
        return None, f"{want}; got shape {got.shape}"
    if got.dtype.kind != "f":
        return None, f"{want}; got dtype {got.dtype}"
    if got.dtype != dtype:
        return None, (f"{function} must return {key} in the dtype of its input ({dtype}); yours "
                      f"is {got.dtype}: {dtype_hint(dtype, got.dtype)}")
    if not np.all(np.isfinite(got)):
        return None, (f"{function}: {key} contains NaN or inf (the square root of a negative "
                      f"variance, or a division by zero: with a constant feature the variance "
                      f"is 0, so eps must be inside the square root, sqrt(var + eps))")
    return got, ""


Hypothesis = tuple[str, Callable[[dict], np.ndarray]]

#: What a hypothesis raises for a case it does not apply to (another shape, the same eps, ...).
DOES_NOT_APPLY = (ValueError, IndexError, KeyError, ZeroDivisionError, FloatingPointError)


def diagnose(got: np.ndarray, case: dict, hypotheses: list[Hypothesis],
             facts: Callable[[np.ndarray], dict]) -> str:
    """The first hypothesis message whose recomputed output matches ``got``, else ''.

    A message may quote the case's scalars (``{eps}``, ``{momentum}``, ...) and ``facts(got)``."""
    scalars = {k: v for k, v in case.items() if isinstance(v, int | float | str)}
    for message, recompute in hypotheses:
        try:
            if close(got, recompute(case), case):
                return message.format(**scalars, **facts(got))
        except DOES_NOT_APPLY:
            continue
    return ""


def mismatch(got: np.ndarray, ref: np.ndarray, key: str, function: str, case: dict) -> str:
    """Generic message: the largest difference and where it is."""
    diff = np.abs(np.asarray(got, np.float64) - ref)
    index = np.unravel_index(int(np.argmax(diff)), diff.shape) if diff.size else ()
    return (f"{function}: {key} is wrong {where(case)}: largest difference {diff.max():.3g} at "
            f"index {tuple(int(i) for i in index)} (yours {got[index]:.6g}, expected "
            f"{ref[index]:.6g})")


def no_facts(got: np.ndarray) -> dict:
    return {}


def compare(result: dict, key: str, ref: np.ndarray, function: str, case: dict,
            hypotheses: list[Hypothesis] = (), facts: Callable[[np.ndarray], dict] = no_facts,
            expected_type: str = "numpy.ndarray", dtype: np.dtype | None = None
            ) -> Verdict | None:
    """None when ``result[key]`` matches ``ref``; else a verdict naming the likely mistake.

    A result of another shape is still matched against the hypotheses (a wrong reshape)."""
    dtype = case_dtype(case) if dtype is None else dtype
    got, problem = validate_array(result, key, ref.shape, function, dtype, expected_type)
    if got is None:
        raw = np.asarray(result.get(key, np.nan))
        shaped = raw.dtype.kind == "f" and raw.ndim and raw.shape != ref.shape
        diagnosis = diagnose(raw, case, list(hypotheses), no_facts) if shaped else ""
        if diagnosis:
            return Verdict(False, f"{problem}: {diagnosis}", diagnosed=True)
        return Verdict(False, problem, diagnosed="dtype of its input" in problem)
    if close(got, ref, case):
        return None
    diagnosis = diagnose(got, case, list(hypotheses), facts)
    if diagnosis:
        return Verdict(False, f"{function} {where(case)}: {diagnosis}", diagnosed=True)
    message = mismatch(got, ref, key, function, case)
    if dtype == np.float64 and close(got, ref, FLOAT32_TOL):
        return Verdict(False, f"{message}: your values agree with the reference only to float32 "
                              f"accuracy; something computes in lower precision (a cast to "
                              f"float32 or float16): keep the input's float64 throughout",
                       diagnosed=True)
    return Verdict(False, message)


def compare_number(result: dict, key: str, ref: float, function: str, case: dict,
                   hypotheses: list[Hypothesis] = (), unit: str = "") -> Verdict | None:
    """None when ``result[key]`` is a real number (int or float) that matches ``ref``; else a
    verdict naming the mistake whose recomputed number (or array: one number per row, say)
    matches, or saying how far it is."""
    value = np.asarray(result.get(key, np.nan))
    if value.shape != () or value.dtype.kind not in "iuf" or not np.isfinite(value):
        kind = text(result, f"{key}.type") or "nothing"
        problem = f"{function} must return {key} as one finite number; got {kind} {where(case)}"
        numbers = value.ndim and value.dtype.kind in "iuf"
        diagnosis = diagnose(value, case, list(hypotheses), no_facts) if numbers else ""
        if diagnosis:
            return Verdict(False, f"{problem}: {diagnosis}", diagnosed=True)
        return Verdict(False, problem)
    got = float(value)
    if close(got, ref, case):
        return None
    diagnosis = diagnose(np.asarray(got), case, list(hypotheses), no_facts)
    if diagnosis:
        return Verdict(False, f"{function} {where(case)}: {diagnosis}", diagnosed=True)
    return Verdict(False, f"{function}: {key} is wrong {where(case)}: yours is {got:.6g}"
                          f"{unit}, expected {ref:.6g}{unit}")


# ---------------------------------------------------------------------------------------------
# Cases. Each is a dict of str -> np.ndarray | int | float | bool | str, with 'label', 'kind'
# ('plain', 'constant', 'offset', 'float32' or 'rank'), 'rtol' and 'atol'.

def tolerance(kind: str) -> dict:
    return {"offset": FLOAT32_OFFSET_TOL, "float32": FLOAT32_TOL}.get(kind, FLOAT64_TOL)


def case_dtype_of(kind: str):
    return np.float32 if kind in ("offset", "float32") else np.float64


def sample_input(rng: np.random.Generator, shape: tuple, kind: str, spread_axes: tuple[int, ...],
                 constant: tuple = ()) -> np.ndarray:
    """x of ``shape`` for a case of ``kind``: scales and offsets that differ along
    ``spread_axes``; for 'constant', ``x[constant]`` is one value; for 'offset', float32 with
    mean 1e3 and std 0.1."""
    if kind == "offset":
        return (1e3 + 0.1 * rng.normal(size=shape)).astype(np.float32)
    spread = tuple(n if axis in spread_axes else 1 for axis, n in enumerate(shape))
    x = rng.normal(size=shape) * rng.uniform(0.3, 3.0, spread) + rng.normal(0.0, 2.0, spread)
    if kind == "constant":
        x[constant] = rng.normal(0.0, 2.0)
    return x.astype(case_dtype_of(kind))


def params(rng: np.random.Generator, channels: int, dtype=np.float64):
    """gamma != 1 (some negative) and beta != 0, so an affine mistake always shows."""
    gamma = rng.uniform(0.5, 2.0, channels) * rng.choice([-1.0, 1.0], channels, p=[0.2, 0.8])
    beta = rng.normal(0.0, 1.0, channels) + 0.5
    return gamma.astype(dtype), beta.astype(dtype)


def make_case(rng: np.random.Generator, shape: tuple, label: str, *, eps: float = 1e-5,
              kind: str = "plain", spread_axes: tuple[int, ...] = (1,), constant: tuple = (),
              features: int | None = None) -> dict:
    """x of ``shape`` (see :func:`sample_input`), gamma and beta of ``features`` entries
    (default: shape[1]), dout; by default one channel (axis 1) is constant."""
    dtype = case_dtype_of(kind)
    if kind == "constant" and not constant:
        constant = (slice(None), int(rng.integers(shape[1])))
    x = sample_input(rng, shape, kind, spread_axes, constant)
    gamma, beta = params(rng, shape[1] if features is None else features, dtype)
    return {"x": x, "gamma": gamma, "beta": beta, "dout": rng.normal(size=shape).astype(dtype),
            "eps": float(eps), "label": label, "kind": kind, **tolerance(kind)}


def fixed_cases(shape: tuple, **kwargs) -> list[dict]:
    """The visible cases: eps = 1e-5 and a large eps = 0.25 (so eps mistakes show)."""
    rng = np.random.default_rng(2024)
    return [make_case(rng, shape, "eps = 1e-05", **kwargs),
            make_case(rng, shape, "eps = 0.25", eps=0.25, **kwargs)]


def random_shape(rng: np.random.Generator, ndim: int, n: int | None = None) -> tuple:
    batch = int(rng.integers(3, 17)) if n is None else n
    if ndim == 2:
        return (batch, int(rng.integers(2, 7)))
    return (batch, *(int(rng.integers(2, 5)) for _ in range(ndim - 1)))


def square_shape(rng: np.random.Generator, ndim: int) -> tuple:
    """Every axis of one length: code that finds an axis by its length picks the wrong one."""
    return (int(rng.integers(3, 7)) if ndim == 2 else int(rng.integers(2, 5)),) * ndim


def random_cases(seed: int, ndim: int = 2, **kwargs) -> list[dict]:
    """Hidden battery part 1: a random non-square shape (eps = 1e-5) and a square one
    (eps = 0.1)."""
    rng = np.random.default_rng(seed)
    shape = random_shape(rng, ndim)
    while len(set(shape)) < len(shape):  # distinct lengths, so no axis can be mistaken
        shape = random_shape(rng, ndim)
    return [make_case(rng, shape, "random shape, eps = 1e-05", **kwargs),
            make_case(rng, square_shape(rng, ndim), "square shape, eps = 0.1", eps=0.1,
                      **kwargs)]


def edge_cases(seed: int | None, ndim: int = 2, **kwargs) -> list[dict]:
    """Hidden battery part 2 (visible: N = 2 and float32 only): N = 2, float32, a constant
    feature, the float32 batch with a large mean."""
    rng = np.random.default_rng(7 if seed is None else seed)
    cases = [make_case(rng, random_shape(rng, ndim, n=2), "N = 2", **kwargs),
             make_case(rng, random_shape(rng, ndim), "float32", kind="float32", **kwargs)]
    if seed is None:
        return cases
    return cases + [
        make_case(rng, random_shape(rng, ndim), "a constant feature", kind="constant", **kwargs),
        make_case(rng, random_shape(rng, ndim), OFFSET_LABEL, kind="offset", **kwargs)]


def other_inputs(case: dict) -> dict:
    """A second input of the same shape and dtype (``other.<name>``), for a second forward call
    before the backward: its statistics differ from the first one's, its parameters do not."""
    x = np.asarray(case["x"])
    same = {f"other.{k}": case[k] for k in ("gamma", "beta", "num_groups") if k in case}
    return {"other.x": (x[::-1] * 1.5 + 0.5).astype(x.dtype), **same}


def other_case(case: dict) -> dict:
    """The case with the ``other.`` inputs in place of the first ones."""
    return dict(case, **{k[len("other."):]: v for k, v in case.items() if k.startswith("other.")})


def f64(case: dict, key: str) -> np.ndarray:
    return np.asarray(case[key], np.float64)


# ---------------------------------------------------------------------------------------------
# Recomputations under a hypothesis (float64), shared by the assignments.

def normalized(x: np.ndarray, axes: tuple[int, ...], eps: float, *, ddof: int = 0,
               eps_place: str = "inside") -> np.ndarray:
    """(x - mean) / sqrt(var + eps) over ``axes``; the variants put eps or the root elsewhere."""
    x = np.asarray(x, np.float64)
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, ddof=ddof, keepdims=True)
    if eps_place == "outside":
        return (x - mean) / (np.sqrt(var) + eps)
    if eps_place == "no_sqrt":
        return (x - mean) / (var + eps)
    return (x - mean) / np.sqrt(var + eps)


def affine(xhat: np.ndarray, gamma, beta, channel_axis: int = 1) -> np.ndarray:
    """gamma * xhat + beta with gamma, beta broadcast along ``channel_axis`` (-1: trailing)."""
    gamma, beta = np.asarray(gamma, np.float64), np.asarray(beta, np.float64)
    if channel_axis == -1:
        return gamma * xhat + beta
    return channel_view(gamma, xhat.ndim) * xhat + channel_view(beta, xhat.ndim)


def other_eps(change: Callable[[float], float]) -> Callable[[dict], dict]:
    """The case with eps changed; ValueError when the change leaves it as it is."""
    def case_with(case):
        eps = change(case["eps"])
        if eps == case["eps"]:
            raise ValueError("same eps: not a distinct hypothesis")
        return dict(case, eps=eps)
    return case_with


# Mistakes about eps, as changes of the eps a correct formula uses: (message, change).
EPS_MISTAKES = [
    ("eps is added twice (for example var + eps, then sqrt(var + eps) again): add it once, "
     "inside the square root", other_eps(lambda eps: 2 * eps)),
    ("your output ignores the eps argument (it matches eps = 1e-05 while eps = {eps:g} was "
     "passed): use the eps you are given", other_eps(lambda eps: 1e-5)),
    ("eps is missing (your output matches eps = 0): use sqrt(var + eps)",
     other_eps(lambda eps: 0.0)),
]


def eps_hypotheses(correct: Callable[[dict], np.ndarray]) -> list[Hypothesis]:
    """The correct formula recomputed with each eps mistake of :data:`EPS_MISTAKES`."""
    return [(message, lambda case, change=change: correct(change(case)))
            for message, change in EPS_MISTAKES]


def normalization_hypotheses(axes: tuple[int, ...], channel_axis: int = 1) -> list[Hypothesis]:
    """Mistakes any mean/variance normalization over ``axes`` can make."""

    def variant(**kwargs):
        def recompute(case):
            return affine(normalized(case["x"], axes, case["eps"], **kwargs), case["gamma"],
                          case["beta"], channel_axis)
        return recompute

    def swapped(case):
        return variant()(dict(case, gamma=case["beta"], beta=case["gamma"]))

    return [
        ("your output has per-{unit} variance {xhat_var:.3f} at {count} = {n} (after undoing "
         "gamma and beta; expected about 1): you may be normalizing with the unbiased "
         "variance (ddof=1); normalization uses the biased one (divide by the count, np.var's "
         "default ddof=0)", variant(ddof=1)),
        ("eps is outside the square root: divide by sqrt(var + eps), not sqrt(var) + eps",
         variant(eps_place="outside")),
        ("you divided by var + eps: divide by the standard deviation, sqrt(var + eps)",
         variant(eps_place="no_sqrt")),
        ("gamma and beta are swapped: out = gamma * xhat + beta (gamma scales, beta shifts)",
         swapped),
        ("your output is xhat without gamma and beta: return gamma * xhat + beta",
         lambda case: normalized(case["x"], axes, case["eps"])),
        *eps_hypotheses(variant()),
    ]


def normalization_facts(case: dict, axes: tuple[int, ...], channel_axis: int = 1):
    """Facts a message may quote: the count n, eps, the variance of the undone output."""
    x = np.asarray(case["x"])
    n = int(np.prod([x.shape[a] for a in axes]))

    def facts(got: np.ndarray) -> dict:
        undone = affine(got, 1.0 / f64(case, "gamma"), -f64(case, "beta") / f64(case, "gamma"),
                        channel_axis)
        return {"n": n, "xhat_var": float(np.median(undone.var(axis=axes))),
                "unit": "sample" if 0 not in axes else "feature",
                "count": {(0,): "N", (1,): "D"}.get(tuple(axes), "N * H * W")}

    return facts


# ---------------------------------------------------------------------------------------------
# Gradients.

def gradient_hypotheses(axes: tuple[int, ...] | None = None, channel_axis: int = 1,
                        wrong_axes: tuple[tuple[str, tuple[int, ...]], ...] = (),
                        view: Callable[[dict], tuple] | None = None) -> list[Hypothesis]:
    """Mistakes in dx of a normalization whose statistics run over ``axes`` (None: batch
    norm's, every axis but 1).

    ``wrong_axes``: (message, axes) pairs, the mean terms of dx taken over these wrong axes.
    ``view``: the shape ``view(case)`` that x is reshaped to before the statistics are taken
    (group norm's (N, G, C // G, H, W)); ``axes`` and ``wrong_axes`` are axes of that view.
    """

    def parts(case):
        x, dout = f64(case, "x"), f64(case, "dout")
        gamma = affine(np.ones_like(x), case["gamma"], np.zeros_like(case["gamma"]),
                       channel_axis)
        if view is not None:
            x, dout, gamma = (a.reshape(view(case)) for a in (x, dout, gamma))
        over = reduction_axes(x) if axes is None else axes
        mean = x.mean(axis=over, keepdims=True)
        inv_std = 1.0 / np.sqrt(x.var(axis=over, keepdims=True) + case["eps"])
        xhat = (x - mean) * inv_std
        return xhat, inv_std, dout * gamma, gamma, over

    def dx_with(mean_term=1.0, var_term=1.0, scale_by_gamma=True, count=False, over=None,
                bessel=False):
        def recompute(case):
            xhat, inv_std, dxhat, gamma, axes_of_x = parts(case)
            over_ = axes_of_x if over is None else over
            if not scale_by_gamma:
                dxhat = dxhat / gamma
            n = xhat.size // np.prod([xhat.shape[a] for a in range(xhat.ndim)
                                      if a not in over_])
            reduce = np.sum if count else np.mean
            factor = n / (n - 1) if bessel else 1.0
            dx = inv_std * (dxhat - mean_term * reduce(dxhat, axis=over_, keepdims=True)
                            - var_term * factor * xhat
                            * reduce(dxhat * xhat, axis=over_, keepdims=True))
            return dx.reshape(np.shape(case["x"]))
        return recompute

    hypotheses: list[Hypothesis] = [
        ("dx is missing the term xhat * mean(dxhat * xhat), the gradient that flows through "
         "the variance (in the staged graph: the dvar contribution)", dx_with(var_term=0.0)),
        ("dx is missing the term mean(dxhat), the gradient that flows through the mean (in the "
         "staged graph: the dmu contribution)", dx_with(mean_term=0.0)),
        ("dx = gamma * dout / std treats the mean and the variance as constants; both depend on "
         "x, so dx needs the mean(dxhat) and xhat * mean(dxhat * xhat) terms",
         dx_with(mean_term=0.0, var_term=0.0)),
        ("dx lacks the factor gamma: the gradient into xhat is dxhat = dout * gamma",
         dx_with(scale_by_gamma=False)),
        ("the batch terms of dx are sums, not means: divide them by N (the gradient of a mean "
         "carries 1/N)", dx_with(count=True)),
        ("the variance term of dx is half what it should be: d var / d x = 2 (x - mean) / N "
         "(the factor 2 is missing)", dx_with(var_term=0.5)),
        ("the variance term of dx has the wrong sign: dvar = sum(dxhat * (x - mean)) * -0.5 * "
         "(var + eps)**-1.5", dx_with(var_term=-1.0)),
        ("the variance term of dx divides by N - 1: the forward pass uses the biased variance, "
         "so d var / d x = 2 (x - mean) / N", dx_with(bessel=True)),
    ]
    return [(message, dx_with(over=over)) for message, over in wrong_axes] + hypotheses


def parameter_gradients(result: dict, case: dict, function: str, ref_dgamma: np.ndarray,
                        ref_dbeta: np.ndarray, expected_type: str = "numpy.ndarray"
                        ) -> Verdict | None:
    """Check dgamma and dbeta, naming swaps, a missing xhat and a wrong summation axis."""
    sum_axes = reduction_axes(case["x"])  # the batch axes, for batch and layer norm alike
    for key, ref in (("dgamma", ref_dgamma), ("dbeta", ref_dbeta)):
        got, problem = validate_array(result, key, ref.shape, function, case_dtype(case),
                                      expected_type)
        if got is None:
            if key in result and np.ndim(result[key]) == 1 and len(result[key]) != len(ref):
                problem += (f": {key} has one entry per feature, so sum over the batch "
                            f"(axis={sum_axes[0] if len(sum_axes) == 1 else sum_axes}), not over "
                            f"the features")
            return Verdict(False, problem, diagnosed="sum over the batch" in problem
                           or "dtype of its input" in problem)
    dgamma, dbeta = np.asarray(result["dgamma"]), np.asarray(result["dbeta"])
    if close(dgamma, ref_dbeta, case) and close(dbeta, ref_dgamma, case):
        return Verdict(False, f"{function} {where(case)}: dgamma and dbeta are swapped, the "
                              f"gradients in the wrong order: return one gradient per input, in "
                              f"the order of the inputs (dx, dgamma, dbeta)", diagnosed=True)
    dout, x = f64(case, "dout"), f64(case, "x")
    dgamma_hypotheses: list[Hypothesis] = [
        ("dgamma must be sum(dout * xhat) over the batch; yours is sum(dout): the factor xhat "
         "is missing", lambda c: ref_dbeta),
        ("dgamma must be sum(dout * xhat); yours is sum(dout * x): use the normalized xhat, "
         "not the input x", lambda c: (dout * x).sum(axis=sum_axes)),
    ]
    return (compare(result, "dgamma", ref_dgamma, function, case, dgamma_hypotheses,
                    expected_type=expected_type)
            or compare(result, "dbeta", ref_dbeta, function, case, expected_type=expected_type))


STALE_CACHE = ("{function} ignores its cache argument: its gradients are those of the LAST "
               "forward call, not of the forward that made the cache it was given (a global "
               "variable?); compute everything from cache")


def gradient_judge(reference: Callable[[dict], tuple], dx_hypotheses: list[Hypothesis],
                   expected_type: str = "numpy.ndarray",
                   every_gradient: list[tuple[str, Callable[[dict], tuple]]] = ()):
    """A judge of (dx, dgamma, dbeta) against ``reference(case) -> (dx, dgamma, dbeta)``.

    ``every_gradient``: mistakes that change all three gradients, (message, recompute) with
    ``recompute(case) -> (dx, dgamma, dbeta)``, named when all three match; a backward that
    ignores its cache is always one of them."""

    def judge(case: dict, result: dict) -> Verdict | None:
        function = case["function"]
        dx, dgamma, dbeta = reference(case)
        verdict = (parameter_gradients(result, case, function, dgamma, dbeta, expected_type)
                   or compare(result, "dx", dx, function, case, dx_hypotheses,
                              expected_type=expected_type))
        if not verdict:
            return None
        mistakes = list(every_gradient)
        if "other.x" in case:
            mistakes.append((STALE_CACHE.format(function=function),
                             lambda c: reference(other_case(c))))
        for message, recompute in mistakes:
            if gradients_match(result, case, recompute):
                return Verdict(False, f"{function} {where(case)}: {message}", diagnosed=True)
        return verdict

    return judge


def gradients_match(result: dict, case: dict, recompute: Callable[[dict], tuple]) -> bool:
    """True when dx, dgamma and dbeta all equal those of ``recompute(case)``."""
    keys = ("dx", "dgamma", "dbeta")
    if not all(k in result for k in keys):
        return False
    try:
        expected = recompute(case)
    except DOES_NOT_APPLY:
        return False
    return all(close(result[k], ref, case) for k, ref in zip(keys, expected, strict=True))


# ---------------------------------------------------------------------------------------------
# Running statistics.

KERAS_MOMENTUM = ("your running statistics follow the Keras momentum convention (momentum "
                  "weights the old value: running = momentum * running + (1 - momentum) * "
                  "batch); in PyTorch momentum weights the new batch: running = (1 - momentum) "
                  "* running + momentum * batch")
BIASED_RUNNING_VAR = ("running_var must be updated with the unbiased batch variance (Bessel's "
                      "correction: times n / (n - 1), n = {count}, the number of values per "
                      "feature), as torch.nn's batch norm does; you used the biased variance "
                      "that normalizes the batch")


def ignored_momentum(default: float) -> str:
    """The message for an update that uses ``default`` whatever momentum it is given."""
    return (f"your update ignores the momentum argument (it matches momentum = {default:g} "
            "while momentum = {momentum:g} was given): use the momentum you are given")


HARD_CODED_MOMENTUM = ignored_momentum(0.1)
# The same two mistakes, made where Keras' convention is asked for.
TORCH_MOMENTUM = ("your running statistics follow PyTorch's momentum convention (momentum "
                  "weights the new batch: running = (1 - momentum) * running + momentum * "
                  "batch); in Keras momentum is a decay that weights the old value: running = "
                  "momentum * running + (1 - momentum) * batch")
UNBIASED_RUNNING_VAR = ("Keras stores the biased batch variance (divide by n = {count}, the "
                        "number of values per feature, np.var's default ddof=0); you applied "
                        "Bessel's correction n / (n - 1), as PyTorch does")


def running_statistics(batches, mean, var, momentum: float, *, keras: bool = False,
                       bessel: str = "all") -> tuple[np.ndarray, np.ndarray]:
    """(running_mean, running_var) after a training step on each batch in turn, in float64.

    PyTorch's convention by default; ``keras=True`` (momentum weights the old value) with
    ``bessel="none"`` (the biased variance) is Keras' convention; ``bessel="batch"`` (n / (n - 1)
    with n = N) is a mistake in either."""
    mean, var = np.array(mean, np.float64), np.array(var, np.float64)
    new = 1.0 - momentum if keras else momentum
    for batch in np.asarray(batches, np.float64):
        axes = reduction_axes(batch)
        n = {"all": batch.size // batch.shape[1], "batch": batch.shape[0], "none": 0}[bessel]
        batch_var = batch.var(axis=axes) * (n / (n - 1) if n else 1.0)
        mean = (1 - new) * mean + new * batch.mean(axis=axes)
        var = (1 - new) * var + new * batch_var
    return mean, var
