"""Assignment layer_norm: layernorm_forward / layernorm_backward on (N, D), groupnorm_forward."""

from __future__ import annotations

import numpy as np

from bnlib import numpy as bnp
from bnlib.grading.checks import (
    FLOAT32_OFFSET_TOL,
    FLOAT64_TOL,
    OFFSET_LABEL,
    Check,
    Hypothesis,
    Verdict,
    affine,
    compare,
    f64,
    failure_from_driver,
    gradient_hypotheses,
    normalization_facts,
    normalization_hypotheses,
    normalized,
    pair_failure,
    parameter_gradients,
    params,
    text,
)

ASSIGNMENT = "layer_norm"


def row_case(rng, shape, label, eps=1e-5, kind="plain"):
    """x of shape (N, D) whose rows have different means and scales; gamma, beta of shape (D,)."""
    n, d = shape
    x = rng.normal(size=shape) * rng.uniform(0.3, 3.0, (n, 1)) + rng.normal(0, 2, (n, 1))
    dtype, tol = np.float64, FLOAT64_TOL
    if kind == "constant":
        x[int(rng.integers(n))] = rng.normal()
    if kind == "offset":
        x, dtype, tol = 1e3 + 0.1 * rng.normal(size=shape), np.float32, FLOAT32_OFFSET_TOL
    gamma, beta = params(rng, d, dtype)
    return {"x": x.astype(dtype), "gamma": gamma, "beta": beta,
            "dout": rng.normal(size=shape).astype(dtype), "eps": float(eps), "label": label,
            "kind": kind, **tol}


def row_cases(seed):
    if seed is None:
        rng = np.random.default_rng(21)
        return [row_case(rng, (4, 6), "eps = 1e-05"), row_case(rng, (4, 6), "eps = 0.25",
                                                                eps=0.25)]
    rng = np.random.default_rng(seed)

    def shape(n=None):
        return (int(rng.integers(3, 9)) if n is None else n, int(rng.integers(3, 9)))

    return [row_case(rng, shape(), "random shape, eps = 0.1", eps=0.1),
            row_case(rng, shape(2), "N = 2"),
            row_case(rng, shape(), "a constant sample", kind="constant"),
            row_case(rng, shape(), OFFSET_LABEL, kind="offset")]


def with_function(cases, function, **extra):
    return [dict(case, function=function, **extra) for case in cases]


def ln_hypotheses() -> list[Hypothesis]:
    def over_batch(case):
        return affine(normalized(case["x"], (0,), case["eps"]), case["gamma"], case["beta"], -1)
    return [("you normalised over the batch axis (axis 0), which is batch norm; layer norm "
             "normalises each sample over its features: mean and var over axis 1 with "
             "keepdims=True", over_batch)] + normalization_hypotheses((1,), channel_axis=-1)


def judge_ln_forward(case: dict, result: dict) -> Verdict:
    function = "layernorm_forward"
    failure = pair_failure(result, function, "(out, cache)")
    if failure:
        return failure
    ref = bnp.layernorm_forward(f64(case, "x"), f64(case, "gamma"), f64(case, "beta"),
                                case["eps"])[0]
    verdict = compare(result, "out", ref, function, case, ln_hypotheses(),
                      normalization_facts(case, (1,), channel_axis=-1))
    return verdict or Verdict(True, f"{function} is correct")


def judge_ln_backward(case: dict, result: dict) -> Verdict:
    function = "layernorm_backward"
    failure = failure_from_driver(result, function)
    if failure:
        return failure
    returned = text(result, "returned")
    if returned.startswith("layernorm_forward:"):
        return Verdict(False, "layernorm_forward must return a tuple (out, cache)")
    forward = judge_ln_forward(case, dict(result, returned=np.array("tuple of 2")))
    if not forward.passed:
        return Verdict(False, f"fix layernorm_forward first (its cache feeds {function}): "
                              f"{forward.message}", forward.diagnosed)
    if returned not in ("tuple of 3", "list of 3"):
        return Verdict(False, f"{function} must return a tuple (dx, dgamma, dbeta); it returned "
                              f"{returned or 'nothing'}")
    _, cache = bnp.layernorm_forward(f64(case, "x"), f64(case, "gamma"), f64(case, "beta"),
                                     case["eps"])
    dx, dgamma, dbeta = bnp.layernorm_backward(f64(case, "dout"), cache)
    verdict = parameter_gradients(result, case, function, dgamma, dbeta, (0,))
    if verdict:
        return verdict
    verdict = compare(result, "dx", dx, function, case,
                      gradient_hypotheses(axis=1, reduce_axis=0), lambda got: {})
    return verdict or Verdict(True, f"{function} is correct")


# --- group norm ------------------------------------------------------------------------------

def group_case(rng, n, channels, groups, label, eps=1e-5, kind="plain"):
    shape = (n, channels, int(rng.integers(2, 5)), int(rng.integers(2, 5)))
    x = rng.normal(size=shape) * rng.uniform(0.3, 3.0, (1, channels, 1, 1)) \
        + rng.normal(0, 2, (1, channels, 1, 1))
    dtype, tol = np.float64, FLOAT64_TOL
    if kind == "constant":
        size = channels // groups
        x[0, :size] = 1.5  # the first group of the first sample is constant
    if kind == "offset":
        x, dtype, tol = 1e3 + 0.1 * rng.normal(size=shape), np.float32, FLOAT32_OFFSET_TOL
    gamma, beta = params(rng, channels, dtype)
    return {"x": x.astype(dtype), "gamma": gamma, "beta": beta, "num_groups": int(groups),
            "eps": float(eps), "label": f"{label}, num_groups = {groups}", "kind": kind, **tol}


def group_cases(seed):
    rng = np.random.default_rng(22 if seed is None else seed)
    if seed is None:
        cases = [group_case(rng, 2, 6, 2, "eps = 1e-05"), group_case(rng, 3, 8, 4, "eps = 0.25",
                                                                     eps=0.25)]
    else:
        def pick():
            return [(6, 2), (6, 3), (8, 2), (8, 4), (12, 3), (12, 4)][int(rng.integers(6))]
        cases = [group_case(rng, int(rng.integers(2, 5)), *pick(), "random shape", eps=0.1),
                 group_case(rng, 2, *pick(), "a constant group", kind="constant"),
                 group_case(rng, 3, *pick(), OFFSET_LABEL, kind="offset")]
    return with_function(cases, "groupnorm_forward")


def grouped(case, shape_of, axes):
    """Normalise x viewed as ``shape_of(N, C, G, H, W)`` over ``axes``; back to (N, C, H, W)."""
    x = f64(case, "x")
    n, c, h, w = x.shape
    view = x.reshape(shape_of(n, c, case["num_groups"], h, w))
    return affine(normalized(view, axes, case["eps"]).reshape(x.shape), case["gamma"],
                  case["beta"])


def interleaved(case):
    """Group g = channels g, g + G, g + 2G, ...: reshape (N, C // G, G, H, W), stats (1, 3, 4)."""
    return grouped(case, lambda n, c, g, h, w: (n, c // g, g, h, w), (1, 3, 4))


def gn_hypotheses() -> list[Hypothesis]:
    return [
        ("your groups take every num_groups-th channel (x.reshape(N, C // G, G, H, W)); a "
         "group is C // G consecutive channels: x.reshape(N, G, C // G, H, W), statistics over "
         "axes (2, 3, 4)", interleaved),
        ("you made groups of num_groups channels; num_groups is the number of groups, each of "
         "C // num_groups consecutive channels: x.reshape(N, G, C // G, H, W)",
         lambda c: grouped(c, lambda n, ch, g, h, w: (n, ch // g, g, h, w), (2, 3, 4))),
        ("you normalised each channel on its own (that is instance norm, num_groups = C): "
         "group the channels first, x.reshape(N, G, C // G, H, W)",
         lambda c: affine(normalized(c["x"], (2, 3), c["eps"]), c["gamma"], c["beta"])),
        ("you normalised over all channels at once (that is layer norm, num_groups = 1): "
         "normalise each of the num_groups groups separately",
         lambda c: affine(normalized(c["x"], (1, 2, 3), c["eps"]), c["gamma"], c["beta"])),
        ("you included the batch axis in the group statistics: group norm is per sample, "
         "statistics over axes (2, 3, 4) of x.reshape(N, G, C // G, H, W)",
         lambda c: grouped(c, lambda n, ch, g, h, w: (n, g, ch // g, h, w), (0, 2, 3, 4))),
        ("you may be normalising with the unbiased variance (ddof=1); group norm uses the "
         "biased one (divide by the group size C // G * H * W)", lambda c: gn_variant(c, ddof=1)),
        ("eps is outside the square root: divide by sqrt(var + eps), not sqrt(var) + eps",
         lambda c: gn_variant(c, place="outside")),
        ("gamma and beta are swapped: out = gamma * xhat + beta (gamma scales, beta shifts)",
         lambda c: gn_variant(c, swap=True)),
    ]


def gn_variant(case, ddof=0, place="inside", swap=False):
    """Correct groups, with a normalisation mistake."""
    x = f64(case, "x")
    n, c, h, w = x.shape
    g = case["num_groups"]
    xhat = normalized(x.reshape(n, g, c // g, h, w), (2, 3, 4), case["eps"], ddof=ddof,
                      eps_place=place).reshape(x.shape)
    gamma, beta = (case["beta"], case["gamma"]) if swap else (case["gamma"], case["beta"])
    return affine(xhat, gamma, beta)


def judge_gn(case: dict, result: dict) -> Verdict:
    function = "groupnorm_forward"
    failure = pair_failure(result, function, "(out, cache)")
    if failure:
        return failure
    ref = bnp.groupnorm_forward(f64(case, "x"), f64(case, "gamma"), f64(case, "beta"),
                                case["num_groups"], case["eps"])[0]
    verdict = compare(result, "out", ref, function, case, gn_hypotheses(), lambda got: {})
    return verdict or Verdict(True, f"{function} is correct")


CHECKS = [
    Check(ASSIGNMENT, "layernorm_forward", ("layernorm_forward",), "normalize_forward",
          "layernorm_forward matches the reference",
          lambda seed: with_function(row_cases(seed), "layernorm_forward"), judge_ln_forward),
    Check(ASSIGNMENT, "layernorm_backward", ("layernorm_forward", "layernorm_backward"),
          "normalize_backward", "layernorm_backward matches the reference gradients",
          lambda seed: with_function(row_cases(seed), "layernorm_backward",
                                     forward="layernorm_forward"), judge_ln_backward),
    Check(ASSIGNMENT, "groupnorm_forward", ("groupnorm_forward",), "normalize_forward",
          "groupnorm_forward matches the reference", group_cases, judge_gn),
]
