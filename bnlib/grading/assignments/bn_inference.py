"""Assignment bn_inference: running statistics, eval-mode BN, folding BN into a linear layer."""

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
    pair_failure,
    params,
)

ASSIGNMENT = "bn_inference"


# --- update_running_stats --------------------------------------------------------------------

def running_cases(seed):
    rng = np.random.default_rng(11 if seed is None else seed)
    shapes = [(8, 3), (5, 4)] if seed is None else [
        (int(rng.integers(3, 17)), int(rng.integers(2, 7))), (2, int(rng.integers(2, 7)))]
    cases = []
    for shape in shapes:
        momentum = 0.1 if seed is None else float(rng.uniform(0.05, 0.3))
        cases.append({
            "x": rng.normal(size=shape) * rng.uniform(0.5, 3, shape[1])
            + rng.normal(0, 2, shape[1]),
            "running_mean": rng.normal(size=shape[1]),
            "running_var": rng.uniform(0.5, 2.0, shape[1]),
            "momentum": momentum,
            "label": f"N = {shape[0]}, momentum = {momentum:.3g}",
            "kind": "plain", **FLOAT64_TOL,
        })
    return cases


def running_update(case: dict, *, unbiased: bool = True, keras: bool = False):
    """(new_mean, new_var) by the reference layer, or under a convention mistake."""
    if unbiased and not keras:
        layer = bnp.BatchNorm(case["x"].shape[1], momentum=case["momentum"])
        layer.running_mean = f64(case, "running_mean").copy()
        layer.running_var = f64(case, "running_var").copy()
        layer.train().forward(f64(case, "x"))
        return layer.running_mean, layer.running_var
    x = f64(case, "x")
    weight_new = 1.0 - case["momentum"] if keras else case["momentum"]
    var = x.var(axis=0, ddof=1 if unbiased else 0)
    return ((1 - weight_new) * f64(case, "running_mean") + weight_new * x.mean(axis=0),
            (1 - weight_new) * f64(case, "running_var") + weight_new * var)


KERAS = ("you used the Keras momentum convention, where momentum weights the old value "
         "(running = momentum * running + (1 - momentum) * batch); in PyTorch momentum weights "
         "the new batch: running = (1 - momentum) * running + momentum * batch")
BIASED = ("running_var must store the unbiased batch variance (Bessel's correction, "
          "x.var(axis=0, ddof=1)); you used the biased one, which training normalises with")


def judge_running(case: dict, result: dict) -> Verdict:
    function = "update_running_stats"
    failure = pair_failure(result, function, "(running_mean, running_var)")
    if failure:
        return failure
    ref_mean, ref_var = running_update(case)
    verdict = compare(result, "new_mean", ref_mean, function, case,
                      [(KERAS, lambda c: running_update(c, keras=True)[0])], lambda got: {})
    if verdict:
        return verdict
    var_hypotheses: list[Hypothesis] = [
        (BIASED, lambda c: running_update(c, unbiased=False)[1]),
        (KERAS, lambda c: running_update(c, keras=True)[1]),
        (KERAS + "; also, " + BIASED, lambda c: running_update(c, unbiased=False, keras=True)[1]),
    ]
    verdict = compare(result, "new_var", ref_var, function, case, var_hypotheses,
                      lambda got: {})
    return verdict or Verdict(True, f"{function} is correct")


# --- batchnorm_inference ---------------------------------------------------------------------

def inference_case(rng, shape, label, eps=1e-5, kind="plain"):
    channels = shape[1]
    gamma, beta = params(rng, channels)
    if kind == "offset":
        x = (1e3 + 0.1 * rng.normal(size=shape)).astype(np.float32)
        mean, var = 1e3 + 0.02 * rng.normal(size=channels), rng.uniform(0.005, 0.02, channels)
        dtype, tol = np.float32, FLOAT32_OFFSET_TOL
    else:
        x = rng.normal(size=shape) * 1.5 + 0.5
        mean, var = rng.normal(0, 1, channels), rng.uniform(0.2, 3.0, channels)
        dtype, tol = np.float64, FLOAT64_TOL
    return {"x": x, "gamma": gamma.astype(dtype), "beta": beta.astype(dtype),
            "running_mean": mean.astype(dtype), "running_var": var.astype(dtype),
            "eps": float(eps), "label": label, "kind": kind, **tol}


def inference_cases(seed):
    if seed is None:
        rng = np.random.default_rng(12)
        return [inference_case(rng, (6, 4), "eps = 1e-05"),
                inference_case(rng, (6, 4), "eps = 0.25", eps=0.25)]
    rng = np.random.default_rng(seed)
    return [
        inference_case(rng, (int(rng.integers(3, 17)), int(rng.integers(2, 7))), "random shape",
                       eps=0.1),
        inference_case(rng, (1, int(rng.integers(2, 7))), "N = 1"),
        inference_case(rng, (2, int(rng.integers(2, 5)), 3, 3), "(N, C, H, W) input"),
        inference_case(rng, (int(rng.integers(3, 9)), 3), OFFSET_LABEL, kind="offset"),
    ]


def eval_variant(case, eps=None, place="inside", swap=False):
    x, mean, var = f64(case, "x"), f64(case, "running_mean"), f64(case, "running_var")
    eps = case["eps"] if eps is None else eps
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mean, var = mean.reshape(shape), var.reshape(shape)
    denominator = {"inside": np.sqrt(var + eps), "outside": np.sqrt(var) + eps,
                   "no_sqrt": var + eps}[place]
    gamma, beta = (case["beta"], case["gamma"]) if swap else (case["gamma"], case["beta"])
    return affine((x - mean) / denominator, gamma, beta)


def batch_statistics_variant(case):
    if np.shape(case["x"])[0] * np.prod(np.shape(case["x"])[2:]) < 2:
        # N = 1: the batch variance is 0 and the output is beta (what a student's code gives).
        return affine(np.zeros(np.shape(case["x"])), case["gamma"], case["beta"])
    return bnp.batchnorm_forward(f64(case, "x"), f64(case, "gamma"), f64(case, "beta"),
                                 case["eps"])[0]


def judge_inference(case: dict, result: dict) -> Verdict:
    function = "batchnorm_inference"
    failure = failure_from_driver(result, function)
    if failure:
        return failure
    ref = bnp.batchnorm_inference(f64(case, "x"), f64(case, "gamma"), f64(case, "beta"),
                                  f64(case, "running_mean"), f64(case, "running_var"),
                                  case["eps"])
    hypotheses: list[Hypothesis] = [
        ("you normalised with the statistics of the batch x (training mode); at inference BN "
         "must use running_mean and running_var, so the output of one sample does not depend "
         "on the others", batch_statistics_variant),
        ("eps is outside the square root: divide by sqrt(running_var + eps)",
         lambda c: eval_variant(c, place="outside")),
        ("you divided by running_var + eps: running_var is a variance, divide by "
         "sqrt(running_var + eps)", lambda c: eval_variant(c, place="no_sqrt")),
        ("gamma and beta are swapped: out = gamma * xhat + beta", lambda c: eval_variant(
            c, swap=True)),
        ("your output ignores the eps argument (it matches eps = 1e-05): use the eps you are "
         "given", lambda c: eval_variant(c, eps=1e-5) if c["eps"] != 1e-5 else None),
    ]
    verdict = compare(result, "out", ref, function, case, hypotheses, lambda got: {})
    return verdict or Verdict(True, f"{function} is correct")


# --- fold_batchnorm --------------------------------------------------------------------------

def fold_case(rng, d_in, d_out, label, eps=1e-5):
    gamma, beta = params(rng, d_out)
    return {"W": rng.normal(size=(d_in, d_out)), "b": rng.normal(size=d_out),
            "gamma": gamma, "beta": beta, "running_mean": rng.normal(size=d_out),
            "running_var": rng.uniform(0.2, 3.0, d_out), "eps": float(eps),
            "label": label, "kind": "plain", **FLOAT64_TOL}


def fold_cases(seed):
    rng = np.random.default_rng(13 if seed is None else seed)
    if seed is None:
        return [fold_case(rng, 4, 4, "D_in = D_out = 4"), fold_case(rng, 3, 5, "D_in = 3, "
                                                                             "D_out = 5")]
    d = int(rng.integers(2, 7))
    return [fold_case(rng, d, d, f"D_in = D_out = {d}", eps=0.1),
            fold_case(rng, int(rng.integers(2, 7)), int(rng.integers(7, 10)), "D_in < D_out"),
            fold_case(rng, int(rng.integers(7, 10)), int(rng.integers(2, 7)), "D_in > D_out")]


def fold_scale(case):
    return f64(case, "gamma") / np.sqrt(f64(case, "running_var") + case["eps"])


def judge_fold(case: dict, result: dict) -> Verdict:
    function = "fold_batchnorm"
    failure = pair_failure(result, function, "(W_folded, b_folded)")
    if failure:
        return failure
    W, b = f64(case, "W"), f64(case, "b")
    mean, beta = f64(case, "running_mean"), f64(case, "beta")
    ref_W, ref_b = bnp.fold_batchnorm(W, b, f64(case, "gamma"), beta, mean,
                                      f64(case, "running_var"), case["eps"])
    w_hypotheses: list[Hypothesis] = [
        ("you scaled the rows of W; BN acts on the outputs, so scale the columns of W, one per "
         "output feature: W * scale (scale has shape (D_out,))",
         lambda c: W * fold_scale(c)[:, None]),
        ("W_folded must be W * gamma / sqrt(running_var + eps); yours lacks the division by "
         "the standard deviation", lambda c: W * f64(c, "gamma")),
    ]
    b_hypotheses: list[Hypothesis] = [
        ("b_folded ignores the linear bias b: BN normalises x @ W + b, so b_folded = "
         "(b - running_mean) * scale + beta", lambda c: beta - mean * fold_scale(c)),
        ("b_folded forgets running_mean: b_folded = (b - running_mean) * scale + beta",
         lambda c: b * fold_scale(c) + beta),
        ("b_folded forgets beta: b_folded = (b - running_mean) * scale + beta",
         lambda c: (b - mean) * fold_scale(c)),
        ("b is not scaled: b_folded = (b - running_mean) * scale + beta, the linear bias is "
         "multiplied by scale too", lambda c: b - mean * fold_scale(c) + beta),
    ]
    verdict = (compare(result, "W_folded", ref_W, function, case, w_hypotheses, lambda g: {})
               or compare(result, "b_folded", ref_b, function, case, b_hypotheses, lambda g: {}))
    return verdict or Verdict(True, f"{function} is correct")


CHECKS = [
    Check(ASSIGNMENT, "update_running_stats", ("update_running_stats",), "running_stats",
          "update_running_stats follows PyTorch's convention", running_cases, judge_running),
    Check(ASSIGNMENT, "batchnorm_inference", ("batchnorm_inference",), "inference",
          "batchnorm_inference uses the running statistics", inference_cases, judge_inference),
    Check(ASSIGNMENT, "fold_batchnorm", ("fold_batchnorm",), "fold",
          "fold_batchnorm gives the same output as linear + eval-mode BN", fold_cases,
          judge_fold),
]
