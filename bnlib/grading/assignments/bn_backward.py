"""Assignment bn_backward: batchnorm_backward (staged graph) and batchnorm_backward_alt."""

from __future__ import annotations

import numpy as np

from bnlib import numpy as bnp
from bnlib.grading.assignments.bn_forward import (
    forward_cases,
    forward_edge_cases,
    judge_forward,
    with_function,
)
from bnlib.grading.checks import (
    Check,
    Verdict,
    compare,
    edge_cases,
    f64,
    failure_from_driver,
    fixed_cases,
    gradient_hypotheses,
    parameter_gradients,
    random_cases,
    text,
)

ASSIGNMENT = "bn_backward"
FUNCTIONS = ("batchnorm_forward", "batchnorm_backward", "batchnorm_backward_alt")


def reference_gradients(case: dict):
    _, cache = bnp.batchnorm_forward(f64(case, "x"), f64(case, "gamma"), f64(case, "beta"),
                                     case["eps"])
    return bnp.batchnorm_backward(f64(case, "dout"), cache)


def judge_forward_then_backward(case: dict, result: dict) -> Verdict:
    """The student's forward must be right before its cache can feed the backward."""
    function = case["function"]
    failure = failure_from_driver(result, function)
    if failure:
        return failure
    returned = text(result, "returned")
    if returned.startswith("batchnorm_forward:"):
        return Verdict(False, f"batchnorm_forward must return a tuple (out, cache); it returned "
                              f"{returned.split(': ', 1)[1]}")
    forward = judge_forward(dict(case, function="batchnorm_forward"),
                            dict(result, returned=np.array("tuple of 2")))
    if not forward.passed:
        return Verdict(False, f"fix batchnorm_forward first (its cache feeds {function}): "
                              f"{forward.message}", forward.diagnosed)
    if returned not in ("tuple of 3", "list of 3"):
        return Verdict(False, f"{function} must return a tuple (dx, dgamma, dbeta); it returned "
                              f"{returned or 'nothing'}")
    dx, dgamma, dbeta = reference_gradients(case)
    verdict = parameter_gradients(result, case, function, dgamma, dbeta, (0,))
    if verdict:
        return verdict
    verdict = compare(result, "dx", dx, function, case, gradient_hypotheses(axis=0),
                      lambda got: {})
    return verdict or Verdict(True, f"{function} is correct")


def backward_cases(function: str):
    def make(seed):
        cases = fixed_cases((8, 4)) if seed is None else random_cases(seed)
        return [dict(c, forward="batchnorm_forward", function=function) for c in cases]
    return make


def backward_edge_cases(seed):
    cases = edge_cases(seed)
    return [dict(c, forward="batchnorm_forward", function=function)
            for c in cases for function in FUNCTIONS[1:]]


CHECKS = [
    Check(ASSIGNMENT, "batchnorm_forward", FUNCTIONS[:1], "normalize_forward",
          "batchnorm_forward matches the reference", forward_cases, judge_forward),
    Check(ASSIGNMENT, "batchnorm_forward_edge_cases", FUNCTIONS[:1], "normalize_forward",
          "batchnorm_forward handles N = 2, a constant feature and float32",
          lambda seed: with_function(forward_edge_cases(seed), "batchnorm_forward"),
          judge_forward),
    Check(ASSIGNMENT, "batchnorm_backward", FUNCTIONS[:2], "normalize_backward",
          "batchnorm_backward matches the reference gradients",
          backward_cases("batchnorm_backward"), judge_forward_then_backward),
    Check(ASSIGNMENT, "batchnorm_backward_alt", (FUNCTIONS[0], FUNCTIONS[2]),
          "normalize_backward", "batchnorm_backward_alt matches the reference gradients",
          backward_cases("batchnorm_backward_alt"), judge_forward_then_backward),
    Check(ASSIGNMENT, "backward_edge_cases", FUNCTIONS, "normalize_backward",
          "both backward passes handle N = 2, a constant feature and float32",
          backward_edge_cases, judge_forward_then_backward),
]
