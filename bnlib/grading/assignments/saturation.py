"""Assignment saturation: the saturated fraction of sigmoid inputs, with large weights and BN.

Graded against :mod:`bnlib.experiments.activations`, the module chapter 2 computes with, and
``bnlib.numpy.batchnorm_forward``.
"""

from __future__ import annotations

import numpy as np

from bnlib import numpy as bnp
from bnlib.experiments import activations
from bnlib.experiments.activations import SATURATION_THRESHOLD, saturated_fraction
from bnlib.grading import checks
from bnlib.grading.checks import AUTOGRAD_LIBRARIES, Assignment, Check, Function, Mistake, f64


def preactivations(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Sigmoid inputs of a layer with large weights: every unit has its own mean and spread,
    so both tails are saturated, unevenly."""
    units = shape[1]
    return rng.normal(size=shape) * rng.uniform(2.0, 8.0, units) + rng.normal(0.0, 4.0, units)


# --- saturated_fraction ----------------------------------------------------------------------

def fraction_case(rng, shape, threshold, label):
    return {"z": preactivations(rng, shape), "threshold": float(threshold),
            "label": f"{label}, threshold = {threshold:g}", "kind": "plain", **checks.FLOAT64_TOL}


def fraction_cases(seed):
    rng = np.random.default_rng(201 if seed is None else seed)
    if seed is None:
        return [fraction_case(rng, (16, 5), 4.0, "16 samples of 5 units"),
                fraction_case(rng, (12, 6), 2.5, "12 samples of 6 units")]
    shape = (int(rng.integers(8, 65)), int(rng.integers(3, 20)))
    square = (int(rng.integers(4, 12)),) * 2
    # a threshold other than 4, so that one fixed at 4 shows
    return [fraction_case(rng, shape, round(rng.uniform(1.0, 3.5), 2), "random shape"),
            fraction_case(rng, square, 4.0, "as many samples as units")]


def over_axis(axis: int):
    return lambda case: np.mean(np.abs(f64(case, "z")) > case["threshold"], axis=axis)


def hard_coded(case):
    if case["threshold"] == SATURATION_THRESHOLD:
        raise ValueError("the threshold is the usual one: not a distinct hypothesis")
    return np.float64(saturated_fraction(f64(case, "z")))


def positive_tail(case):
    return np.mean(f64(case, "z") > case["threshold"])


ONE_NUMBER = ("the saturated fraction is one number for the whole layer: the mean of "
              "|z| > threshold over every entry (np.mean without an axis), not {unit}")

FRACTION_HYPOTHESES: list[checks.Hypothesis] = [
    ("you counted only z > threshold: the negative tail is just as flat (sigmoid'(-z) = "
     "sigmoid'(z)), so a unit is saturated when |z| > threshold", positive_tail),
    ("your fraction ignores the threshold argument (it matches threshold = 4 while threshold = "
     "{threshold:g} was given): use the threshold you are given", hard_coded),
    ("that is the fraction of units that are NOT saturated, |z| <= threshold; return its "
     "complement, the mean of |z| > threshold",
     lambda case: 1.0 - saturated_fraction(f64(case, "z"), case["threshold"])),
    ("that is the number of saturated entries; the fraction divides it by their total, "
     "z.size: the mean of |z| > threshold",
     lambda case: np.sum(np.abs(f64(case, "z")) > case["threshold"], dtype=np.float64)),
    (ONE_NUMBER.format(unit="one per unit (axis=0)"), over_axis(0)),
    (ONE_NUMBER.format(unit="one per sample (axis=1)"), over_axis(1)),
]


def judge_fraction(case: dict, result: dict) -> checks.Verdict | None:
    ref = saturated_fraction(f64(case, "z"), case["threshold"])
    return checks.compare_number(result, "fraction", ref, case["function"], case,
                                 FRACTION_HYPOTHESES)


# --- saturated_fraction_after_bn -------------------------------------------------------------

def bn_case(rng, shape, label, gamma_scale=None, eps=1e-5):
    """z of a saturated layer; gamma = 1, beta = 0, or gamma of size about ``gamma_scale`` (some
    negative) and beta != 0."""
    d = shape[1]
    if gamma_scale is None:
        gamma, beta = np.ones(d), np.zeros(d)
    else:
        gamma = rng.uniform(0.5, 1.5, d) * gamma_scale * rng.choice([-1.0, 1.0], d, p=[0.2, 0.8])
        beta = rng.normal(0.0, 2.0, d)
    return {"z": preactivations(rng, shape), "gamma": gamma, "beta": beta, "eps": float(eps),
            "label": label, "kind": "plain", **checks.FLOAT64_TOL}


def bn_cases(seed):
    rng = np.random.default_rng(202 if seed is None else seed)
    if seed is None:
        return [bn_case(rng, (64, 6), "gamma = 1, beta = 0"),
                bn_case(rng, (48, 5), "gamma about 5, beta != 0", gamma_scale=5.0)]
    return [bn_case(rng, (int(rng.integers(16, 97)), int(rng.integers(3, 12))),
                    "random shape, gamma about 4", gamma_scale=4.0),
            bn_case(rng, (int(rng.integers(16, 97)), int(rng.integers(3, 12))),
                    "random shape, gamma about 6, eps = 0.1", gamma_scale=6.0, eps=0.1),
            bn_case(rng, (2, int(rng.integers(3, 12))), "N = 2, gamma about 5",
                    gamma_scale=5.0)]


def after_bn(case, axes=(0,), affine=True, swapped=False):
    """The saturated fraction of ``gamma * xhat + beta``, xhat over ``axes``."""
    z, gamma, beta = f64(case, "z"), f64(case, "gamma"), f64(case, "beta")
    xhat = checks.normalized(z, axes, case["eps"])
    if swapped:
        gamma, beta = beta, gamma
    return np.float64(saturated_fraction(gamma * xhat + beta if affine else xhat))


BN_HYPOTHESES: list[checks.Hypothesis] = [
    ("your fraction is that of z before BN; the sigmoid's inputs are BN's outputs, "
     "gamma * xhat + beta: measure those",
     lambda case: np.float64(saturated_fraction(f64(case, "z")))),
    ("your fraction is that of xhat, without gamma and beta; the sigmoid sees gamma * xhat + "
     "beta, and a large gamma puts units back into saturation", lambda case: after_bn(
         case, affine=False)),
    ("you normalized each sample over its units (axis 1); BN normalizes each unit over the "
     "batch (axis 0)", lambda case: after_bn(case, axes=(1,))),
    ("gamma and beta are swapped: the sigmoid's input is gamma * xhat + beta",
     lambda case: after_bn(case, swapped=True)),
]


def judge_bn(case: dict, result: dict) -> checks.Verdict | None:
    out = bnp.batchnorm_forward(f64(case, "z"), f64(case, "gamma"), f64(case, "beta"),
                                case["eps"])[0]
    return checks.compare_number(result, "fraction", saturated_fraction(out), case["function"],
                                 case, BN_HYPOTHESES)


# --- sigmoid_stack_saturation ----------------------------------------------------------------

def stack_case(rng, n, d, depth, weight_scale, use_batchnorm):
    """Input h ~ N(0, 1); weights with standard deviation weight_scale / sqrt(d)."""
    weights = rng.normal(0.0, weight_scale / np.sqrt(d), (depth, d, d))
    return {"h": rng.standard_normal((n, d)), "weights": weights,
            "use_batchnorm": bool(use_batchnorm),
            "label": f"{depth} layers of width {d}, weights {weight_scale:g}/sqrt({d})"
                     + (", with BN" if use_batchnorm else ""),
            "kind": "plain", **checks.FLOAT64_TOL}


def stack_cases(seed):
    rng = np.random.default_rng(203 if seed is None else seed)
    if seed is None:
        return [stack_case(rng, 64, 16, 4, 1.0, False), stack_case(rng, 64, 16, 4, 4.0, False),
                stack_case(rng, 64, 16, 4, 4.0, True)]
    n, d, depth = int(rng.integers(32, 97)), int(rng.integers(8, 25)), int(rng.integers(3, 7))
    scale = round(rng.uniform(3.0, 6.0), 1)
    return [stack_case(rng, n, d, depth, scale, False),
            stack_case(rng, n, d, depth, scale, True)]


def stack_fractions(case, transposed=False, use_batchnorm=None):
    """Each layer's saturated fraction in bnlib's stack, with W.T or another use_batchnorm."""
    weights = f64(case, "weights")
    preacts, _ = activations.sigmoid_stack_forward(
        f64(case, "h"), weights.transpose(0, 2, 1) if transposed else weights,
        case["use_batchnorm"] if use_batchnorm is None else use_batchnorm)
    return np.array([saturated_fraction(z) for z in preacts])


def miswired_fractions(case, sigmoid=True, measured_before_bn=False):
    """Each layer's saturated fraction in a stack that feeds z itself to the next layer, or
    counts z before BN."""
    h = f64(case, "h")
    ones, zeros = np.ones(h.shape[1]), np.zeros(h.shape[1])
    fractions = []
    for w in f64(case, "weights"):
        z = before = h @ w
        if case["use_batchnorm"]:
            z = bnp.batchnorm_forward(z, ones, zeros)[0]
        fractions.append(saturated_fraction(before if measured_before_bn else z))
        h = activations.sigmoid(z) if sigmoid else z
    return np.array(fractions)


def when_bn(recompute):
    """A hypothesis that differs from the right answer only in a network with BN."""
    def with_bn(case):
        if not case["use_batchnorm"]:
            raise ValueError("no BN here: not a distinct hypothesis")
        return recompute(case)
    return with_bn


STACK_HYPOTHESES: list[checks.Hypothesis] = [
    ("you multiplied by W.T; this stack computes z = h @ W, with W of shape (D_in, D_out) "
     "(torch.nn.Linear stores the transpose, so it computes x @ W.T)",
     lambda case: stack_fractions(case, transposed=True)),
    ("the next layer's input must be sigmoid(z): without the sigmoid, z grows layer after "
     "layer and the fractions are those of a linear stack",
     lambda case: miswired_fractions(case, sigmoid=False)),
    ("you measured z before BN; BN sits between h @ W and the sigmoid, so the sigmoid's inputs, "
     "whose saturation counts, are BN's outputs",
     when_bn(lambda case: miswired_fractions(case, measured_before_bn=True))),
    ("with use_batchnorm=True each layer normalizes z (gamma = 1, beta = 0) before the sigmoid; "
     "your fractions are those of the stack without BN",
     when_bn(lambda case: stack_fractions(case, use_batchnorm=False))),
]


def judge_stack(case: dict, result: dict) -> checks.Verdict | None:
    return checks.compare(result, "fractions", stack_fractions(case), case["function"], case,
                          STACK_HYPOTHESES)


ASSIGNMENT = Assignment("saturation", chapter=2, forbidden_imports=AUTOGRAD_LIBRARIES,
                        functions=(
    Function("saturated_fraction(z, threshold=4.0) -> fraction", (
        Check("saturated_fraction", "saturated_fraction counts |z| > threshold over the layer",
              fraction_cases, judge_fraction),), (
        Mistake("positive_tail_only", "only z > threshold counted",
                (("np.abs(z) > threshold", "z > threshold"),),
                "the negative tail is just as flat"),
        Mistake("threshold_ignored", "the threshold fixed at 4",
                (("np.abs(z) > threshold", "np.abs(z) > 4.0"),),
                "ignores the threshold argument"),
        Mistake("fraction_per_unit", "one fraction per unit instead of one for the layer",
                (("saturated.mean()", "saturated.mean(axis=0)"),),
                "one number for the whole layer"),
    )),
    Function("saturated_fraction_after_bn(z, gamma, beta, eps=1e-5) -> fraction", (
        Check("saturated_fraction_after_bn", "saturated_fraction_after_bn measures the sigmoid "
              "inputs BN produces", bn_cases, judge_bn),), (
        Mistake("bn_over_units", "BN statistics over each sample's units",
                (("mean = z.mean(axis=0)", "mean = z.mean(axis=1, keepdims=True)"),
                 ("var = z.var(axis=0)", "var = z.var(axis=1, keepdims=True)")),
                "normalized each sample over its units"),
        Mistake("bn_without_affine", "xhat measured, without gamma and beta",
                (("out = gamma * (z - mean) / np.sqrt(var + eps) + beta",
                  "out = (z - mean) / np.sqrt(var + eps)"),),
                "without gamma and beta"),
        Mistake("measured_before_bn", "the fraction of z, before BN",
                (("return saturated_fraction(out)", "return saturated_fraction(z)"),),
                "your fraction is that of z before BN"),
    )),
    Function("sigmoid_stack_saturation(h, weights, use_batchnorm=False) -> fractions", (
        Check("sigmoid_stack_saturation", "sigmoid_stack_saturation gives each layer's saturated "
              "fraction, with and without BN", stack_cases, judge_stack),), (
        Mistake("stack_transposed_weights", "z = h @ W.T",
                (("z = h @ W", "z = h @ W.T"),),
                "you multiplied by W.T"),
        Mistake("stack_without_sigmoid", "the next layer gets z, not sigmoid(z)",
                (("h = 1 / (1 + np.exp(-z))", "h = z"),),
                "the next layer's input must be sigmoid(z)"),
        Mistake("stack_measured_before_bn", "saturation of z measured before BN",
                (("        z = h @ W\n", "        z = h @ W\n"
                  "        fractions.append(saturated_fraction(z))\n"),
                 ("        fractions.append(saturated_fraction(z))\n        h = ",
                  "        h = ")),
                "you measured z before BN"),
    )),
))
