"""Checks behind the exercises: inputs, the reference answer, and a diagnosis of what is wrong.

A :class:`Check` is trusted code. ``cases(seed)`` builds deterministic inputs (``seed=None``:
the fixed cases a visible test shows; an int: the random battery a hidden test runs, with
random shapes, N = 2, a constant feature and a float32 batch of mean 1e3 and std 0.1).
``judge(case, result)`` compares what a driver (:mod:`bnlib.grading.drivers`) returned with
the reference in :mod:`bnlib.numpy` (or ``torch.nn`` for the PyTorch assignment) and, when they
differ, recomputes the reference under each common mistake; the mistake whose output matches
is named in the message.

Tolerances (stated to students in the notebooks): a float64 case passes when
``|got - ref| <= atol * max(1, max|ref|) + rtol * |ref|`` with rtol = 1e-6, atol = 1e-8; the
float32 case with mean 1e3 and std 0.1 uses rtol = 1e-3, atol = 2e-2, which a two-pass float32
computation meets and a one-pass one (E[x^2] - E[x]^2) does not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

FLOAT64_TOL = {"rtol": 1e-6, "atol": 1e-8}
FLOAT32_OFFSET_TOL = {"rtol": 1e-3, "atol": 2e-2}
OFFSET_LABEL = "float32 batch with mean 1e3 and std 0.1"


@dataclass
class Verdict:
    """Outcome of judging one case. ``diagnosed``: the message names a specific mistake."""

    passed: bool
    message: str
    diagnosed: bool = False


def combine(verdicts: list[Verdict]) -> Verdict:
    """One verdict for a check: pass if all pass, else the first diagnosed failure (or first)."""
    failures = [v for v in verdicts if not v.passed]
    if not failures:
        return Verdict(True, verdicts[0].message if verdicts else "no cases")
    diagnosed = [v for v in failures if v.diagnosed]
    return (diagnosed or failures)[0]


@dataclass(frozen=True)
class Check:
    """One graded property of an assignment (see the module docstring)."""

    assignment: str
    name: str
    functions: tuple[str, ...]
    driver: str
    description: str
    make_cases: Callable[[int | None], list[dict]] = field(repr=False)
    judge_case: Callable[[dict, dict], Verdict] = field(repr=False)

    def cases(self, seed: int | None = None) -> list[dict]:
        return self.make_cases(seed)

    def judge(self, case: dict, result: dict) -> Verdict:
        """Judge any result dict without raising: a malformed result is a failed verdict."""
        if not isinstance(result, dict):
            return Verdict(False, f"the driver returned {type(result).__name__}, not a dict")
        try:
            return self.judge_case(case, result)
        except Exception as error:  # noqa: BLE001 - a malformed result must not crash grading
            return Verdict(False, f"your result could not be checked ({type(error).__name__}: "
                                  f"{error}); return NumPy arrays of the documented shapes")


# ---------------------------------------------------------------------------------------------
# Shared helpers: case facts, result validation, comparison, hypotheses.

def text(result: dict, key: str) -> str:
    return str(np.asarray(result[key]).item()) if key in result else ""


def where(case: dict) -> str:
    """Where a failure happened, e.g. 'for x of shape (8, 4) (eps = 1e-05)'."""
    key = next(k for k in ("x", "batches", "W") if k in case)
    return f"for {key} of shape {tuple(np.shape(case[key]))} ({case['label']})"


def close(got: np.ndarray, ref: np.ndarray, case: dict) -> bool:
    """The tolerance stated in the module docstring; shapes must match exactly."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    if got.shape != ref.shape or not np.all(np.isfinite(got)):
        return False
    scale = max(1.0, float(np.max(np.abs(ref), initial=0.0)))
    return bool(np.all(np.abs(got - ref) <= case["atol"] * scale + case["rtol"] * np.abs(ref)))


def failure_from_driver(result: dict, function: str) -> Verdict | None:
    """A failed verdict when student code raised or mutated an input, else None."""
    error = text(result, "error").rstrip(": ")
    if error:
        hint = ""
        if "NotImplementedError" in error:
            hint = " (replace `raise NotImplementedError()` with your code)"
        return Verdict(False, f"{error}{hint}")
    mutated = text(result, "mutated")
    if mutated:
        names = mutated.replace(",", ", ")
        return Verdict(
            False,
            f"{function} modified its input {names} in place (for example `x -= mean` or "
            f"`out = x; out *= ...`): the caller's arrays must not change, so compute into a "
            f"new array (`x - mean`).",
            diagnosed=True,
        )
    return None


def validate_array(result: dict, key: str, shape: tuple, function: str,
                   expected_type: str = "numpy.ndarray") -> tuple[np.ndarray | None, str]:
    """(array, "") if ``result[key]`` is a finite float array of ``shape``; else (None, why)."""
    want = f"{function} must return {key} as a {expected_type} of shape {shape} with a float dtype"
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
    if not np.all(np.isfinite(got)):
        return None, (f"{function}: {key} contains NaN or inf (a division by zero? with a constant "
                      f"feature the variance is 0, so eps must be inside the square root: "
                      f"sqrt(var + eps))")
    return got, ""


def returned_pair(result: dict, function: str, names: str) -> str:
    """Message when a function that must return a pair returned something else, else ''."""
    returned = text(result, "returned")
    if returned in ("tuple of 2", "list of 2"):
        return ""
    return f"{function} must return a tuple {names}; it returned {returned or 'nothing'}"


def pair_failure(result: dict, function: str, names: str) -> Verdict | None:
    """A failed verdict when the student's code raised, mutated an input, or did not return
    the pair ``names``; None when the result can be compared."""
    failure = failure_from_driver(result, function)
    if failure:
        return failure
    problem = returned_pair(result, function, names)
    return Verdict(False, problem) if problem else None


Hypothesis = tuple[str, Callable[[dict], np.ndarray]]


def diagnose(got: np.ndarray, case: dict, hypotheses: list[Hypothesis], facts: dict) -> str:
    """The first hypothesis message whose recomputed output matches ``got``, else ''."""
    for message, recompute in hypotheses:
        try:
            alternative = recompute(case)
        except (ValueError, IndexError, ZeroDivisionError, FloatingPointError):
            continue
        if close(got, alternative, case):
            return message.format(**facts)
    return ""


def mismatch(got: np.ndarray, ref: np.ndarray, key: str, function: str, case: dict) -> str:
    """Generic message: the largest difference and where it is."""
    diff = np.abs(np.asarray(got, np.float64) - ref)
    index = np.unravel_index(int(np.argmax(diff)), diff.shape) if diff.size else ()
    return (f"{function}: {key} is wrong {where(case)}: largest difference {diff.max():.3g} at "
            f"index {tuple(int(i) for i in index)} (yours {got[index]:.6g}, expected "
            f"{ref[index]:.6g})")


def compare(result: dict, key: str, ref: np.ndarray, function: str, case: dict,
            hypotheses: list[Hypothesis], facts: Callable[[np.ndarray], dict],
            expected_type: str = "numpy.ndarray") -> Verdict | None:
    """None when ``result[key]`` matches ``ref``; else a verdict naming the likely mistake."""
    got, problem = validate_array(result, key, ref.shape, function, expected_type)
    if got is None:
        return Verdict(False, problem)
    if close(got, ref, case):
        return None
    diagnosis = diagnose(got, case, hypotheses, facts(got))
    if diagnosis:
        return Verdict(False, f"{function} {where(case)}: {diagnosis}", diagnosed=True)
    message = mismatch(got, ref, key, function, case)
    if case.get("kind") == "offset":
        message += (". Only the float32 batch with a large mean fails: compute the variance in "
                    "two passes, mean((x - mean)**2), not E[x**2] - E[x]**2, whose two large "
                    "terms cancel (catastrophic cancellation) and lose every digit")
        return Verdict(False, message, diagnosed=True)
    return Verdict(False, message)


# ---------------------------------------------------------------------------------------------
# Cases. Each is a dict of str -> np.ndarray | int | float | str, with 'label', 'rtol', 'atol'.

def channel_axes(ndim: int) -> tuple[int, ...]:
    """Axes BN takes statistics over: every axis but axis 1."""
    return (0, *range(2, ndim))


def per_channel(v: np.ndarray, ndim: int) -> np.ndarray:
    return np.asarray(v, np.float64).reshape((1, -1) + (1,) * (ndim - 2))


def params(rng: np.random.Generator, channels: int, dtype=np.float64):
    """gamma != 1 (some negative) and beta != 0, so an affine mistake always shows."""
    gamma = rng.uniform(0.5, 2.0, channels) * rng.choice([-1.0, 1.0], channels, p=[0.2, 0.8])
    beta = rng.normal(0.0, 1.0, channels) + 0.5
    return gamma.astype(dtype), beta.astype(dtype)


def make_case(rng: np.random.Generator, shape: tuple, label: str, *, eps: float = 1e-5,
              kind: str = "plain", channels_axis: int = 1) -> dict:
    """x of ``shape`` with per-channel scales and offsets, gamma, beta, dout."""
    channels = shape[channels_axis]
    scales = rng.uniform(0.3, 3.0, channels)
    offsets = rng.normal(0.0, 2.0, channels)
    view = [1] * len(shape)
    view[channels_axis] = channels
    x = rng.normal(size=shape) * scales.reshape(view) + offsets.reshape(view)
    dtype = np.float64
    tol = FLOAT64_TOL
    if kind == "constant":
        index = [slice(None)] * len(shape)
        index[channels_axis] = int(rng.integers(channels))
        x[tuple(index)] = offsets[index[channels_axis]]
    if kind == "offset":
        x = 1e3 + 0.1 * rng.normal(size=shape)
        dtype, tol = np.float32, FLOAT32_OFFSET_TOL
    gamma, beta = params(rng, channels, dtype)
    return {
        "x": x.astype(dtype), "gamma": gamma, "beta": beta,
        "dout": rng.normal(size=shape).astype(dtype),
        "eps": float(eps), "label": label, "kind": kind, **tol,
    }


def fixed_cases(shape: tuple, **kwargs) -> list[dict]:
    """The visible cases: eps = 1e-5 and a large eps = 0.25 (so eps mistakes show)."""
    rng = np.random.default_rng(2024)
    return [make_case(rng, shape, "eps = 1e-05", **kwargs),
            make_case(rng, shape, "eps = 0.25", eps=0.25, **kwargs)]


def random_shape(rng: np.random.Generator, ndim: int, n: int | None = None) -> tuple:
    batch = int(rng.integers(3, 17)) if n is None else n
    if ndim == 2:
        return (batch, int(rng.integers(2, 7)))
    return (batch, int(rng.integers(2, 5)), int(rng.integers(2, 5)), int(rng.integers(2, 5)))


def random_cases(seed: int, ndim: int = 2, **kwargs) -> list[dict]:
    """Hidden battery part 1: random shapes, eps = 1e-5 and eps = 0.1."""
    rng = np.random.default_rng(seed)
    return [make_case(rng, random_shape(rng, ndim), "random shape, eps = 1e-05", **kwargs),
            make_case(rng, random_shape(rng, ndim), "random shape, eps = 0.1", eps=0.1, **kwargs)]


def edge_cases(seed: int | None, ndim: int = 2, **kwargs) -> list[dict]:
    """Hidden battery part 2 (visible: N = 2 only): N = 2, a constant feature, float32 offset."""
    rng = np.random.default_rng(7 if seed is None else seed)
    cases = [make_case(rng, random_shape(rng, ndim, n=2), "N = 2", **kwargs)]
    if seed is None:
        return cases
    cases.append(make_case(rng, random_shape(rng, ndim), "a constant feature", kind="constant",
                           **kwargs))
    cases.append(make_case(rng, random_shape(rng, ndim), OFFSET_LABEL, kind="offset", **kwargs))
    return cases


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
    if channel_axis == -1:
        return np.asarray(gamma, np.float64) * xhat + np.asarray(beta, np.float64)
    return per_channel(gamma, xhat.ndim) * xhat + per_channel(beta, xhat.ndim)


def normalization_hypotheses(axes: tuple[int, ...], channel_axis: int = 1) -> list[Hypothesis]:
    """Mistakes any mean/variance normalisation over ``axes`` can make."""

    def with_eps(eps):
        def recompute(case):
            if case["eps"] == eps:
                raise ValueError("same eps: not a distinct hypothesis")
            return affine(normalized(case["x"], axes, eps), case["gamma"], case["beta"],
                          channel_axis)
        return recompute

    def swapped(case):
        xhat = normalized(case["x"], axes, case["eps"])
        return affine(xhat, case["beta"], case["gamma"], channel_axis)

    def no_affine(case):
        return normalized(case["x"], axes, case["eps"])

    def inside(**kwargs):
        def recompute(case):
            return affine(normalized(case["x"], axes, case["eps"], **kwargs), case["gamma"],
                          case["beta"], channel_axis)
        return recompute

    return [
        ("your output has per-{unit} variance {xhat_var:.3f} at {count} = {n} (after undoing "
         "gamma and beta; expected about 1): you may be normalising with the unbiased "
         "variance (ddof=1); normalisation uses the biased one (divide by the count, np.var's "
         "default ddof=0)", inside(ddof=1)),
        ("eps is outside the square root: divide by sqrt(var + eps), not sqrt(var) + eps",
         inside(eps_place="outside")),
        ("you divided by var + eps: divide by the standard deviation, sqrt(var + eps)",
         inside(eps_place="no_sqrt")),
        ("gamma and beta are swapped: out = gamma * xhat + beta (gamma scales, beta shifts)",
         swapped),
        ("your output is xhat without gamma and beta: return gamma * xhat + beta", no_affine),
        ("your output ignores the eps argument (it matches eps = 1e-05 while eps = {eps:g} was "
         "passed): use the eps you are given", with_eps(1e-5)),
        ("your output ignores eps (it matches eps = 0): use sqrt(var + eps)", with_eps(0.0)),
    ]


def normalization_facts(case: dict, axes: tuple[int, ...], channel_axis: int = 1):
    """Facts a message may quote: the count n, eps, the variance of the undone output."""
    x = np.asarray(case["x"])
    n = int(np.prod([x.shape[a] for a in axes]))

    def facts(got: np.ndarray) -> dict:
        gamma = np.asarray(case["gamma"], np.float64)
        beta = np.asarray(case["beta"], np.float64)
        if channel_axis == -1:
            undone = (got - beta) / gamma
        else:
            undone = (got - per_channel(beta, got.ndim)) / per_channel(gamma, got.ndim)
        return {"n": n, "eps": case["eps"], "xhat_var": float(np.median(undone.var(axis=axes))),
                "unit": "sample" if 0 not in axes else "feature",
                "count": {(0,): "N", (1,): "D"}.get(tuple(axes), "N * H * W")}

    return facts


def gradient_hypotheses(axis: int, reduce_axis: int | None = None) -> list[Hypothesis]:
    """Mistakes in dx of a normalisation whose statistics run over ``axis`` (2-D inputs).

    ``reduce_axis``: if given, the batch terms taken over this (wrong) axis instead.
    """

    def parts(case):
        x, gamma, dout = f64(case, "x"), f64(case, "gamma"), f64(case, "dout")
        mean = x.mean(axis=axis, keepdims=True)
        inv_std = 1.0 / np.sqrt(x.var(axis=axis, keepdims=True) + case["eps"])
        xhat = (x - mean) * inv_std
        g = gamma if axis == 0 else gamma[None, :]
        return xhat, inv_std, dout * g, g

    def dx_with(mean_term=1.0, var_term=1.0, scale_by_gamma=True, count=False, over=axis):
        def recompute(case):
            xhat, inv_std, dxhat, g = parts(case)
            if not scale_by_gamma:
                dxhat = dxhat / g
            reduce = np.sum if count else np.mean
            return inv_std * (dxhat - mean_term * reduce(dxhat, axis=over, keepdims=True)
                              - var_term * xhat * reduce(dxhat * xhat, axis=over, keepdims=True))
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
    ]
    if reduce_axis is not None:
        hypotheses.insert(0, (
            "the means in dx run over the batch (axis 0): layer norm's statistics are per "
            "sample, so the terms mean(dxhat) and mean(dxhat * xhat) run over axis 1 "
            "(keepdims=True)", dx_with(over=reduce_axis)))
    return hypotheses


def parameter_gradients(result: dict, case: dict, function: str, ref_dgamma: np.ndarray,
                        ref_dbeta: np.ndarray, sum_axes: tuple[int, ...],
                        expected_type: str = "numpy.ndarray") -> Verdict | None:
    """Check dgamma and dbeta, naming swaps, a missing xhat and a wrong summation axis."""
    for key, ref in (("dgamma", ref_dgamma), ("dbeta", ref_dbeta)):
        got, problem = validate_array(result, key, ref.shape, function, expected_type)
        if got is None:
            if key in result and np.ndim(result[key]) == 1 and len(result[key]) != len(ref):
                problem += (f": {key} has one entry per feature, so sum over the batch "
                            f"(axis={sum_axes[0] if len(sum_axes) == 1 else sum_axes}), not over "
                            f"the features")
            return Verdict(False, problem, diagnosed="sum over the batch" in problem)
    dgamma, dbeta = np.asarray(result["dgamma"]), np.asarray(result["dbeta"])
    if close(dgamma, ref_dbeta, case) and close(dbeta, ref_dgamma, case):
        return Verdict(False, f"{function} {where(case)}: dgamma and dbeta are swapped: return "
                              f"them in the order (dx, dgamma, dbeta)", diagnosed=True)
    dout, x = f64(case, "dout"), f64(case, "x")
    dgamma_hypotheses: list[Hypothesis] = [
        ("dgamma must be sum(dout * xhat) over the batch; yours is sum(dout): the factor xhat "
         "is missing", lambda c: ref_dbeta),
        ("dgamma must be sum(dout * xhat); yours is sum(dout * x): use the normalised xhat, "
         "not the input x", lambda c: (dout * x).sum(axis=sum_axes)),
    ]
    return (compare(result, "dgamma", ref_dgamma, function, case, dgamma_hypotheses,
                    lambda got: {}, expected_type)
            or compare(result, "dbeta", ref_dbeta, function, case, [], lambda got: {},
                       expected_type))
