"""Assignment bn_forward: batchnorm_forward on (N, D), spatial_batchnorm_forward on (N, C, H, W)."""

from __future__ import annotations

import dataclasses

import numpy as np

from bnlib import numpy as bnp
from bnlib.grading import checks
from bnlib.grading.checks import AUTOGRAD_LIBRARIES, Assignment, Check, Function, Mistake, f64


def reference_out(case: dict) -> np.ndarray:
    return bnp.batchnorm_forward(f64(case, "x"), f64(case, "gamma"), f64(case, "beta"),
                                 case["eps"])[0]


def over(axes: tuple[int, ...]):
    """Batch norm with the statistics over ``axes``."""
    def recompute(case):
        xhat = checks.normalized(case["x"], axes, case["eps"])
        return checks.affine(xhat, case["gamma"], case["beta"])
    return recompute


def square_only(recompute):
    """The hypothesis only where x is square: there, finding an axis by its length fails."""
    def on_square(case):
        if len(set(np.shape(case["x"]))) > 1:
            raise ValueError("not a square input")
        return recompute(case)
    return on_square


def as_rows(x: np.ndarray) -> np.ndarray:
    """(N, C, H, W) -> (N * H * W, C): the rows that the (N, D) functions take."""
    return x.transpose(0, 2, 3, 1).reshape(-1, x.shape[1])


def from_rows(rows: np.ndarray, shape: tuple, axes: tuple[int, ...] | None = (0, 3, 1, 2)):
    """Rows back to ``shape`` (N, C, H, W) through (N, H, W, C) and ``transpose(axes)``;
    ``axes=None``: reshaped straight to ``shape``."""
    if axes is None:
        return rows.reshape(shape)
    n, c, h, w = shape
    return rows.reshape(n, h, w, c).transpose(axes)


#: Wrong ways from rows back to (N, C, H, W): (message, the transpose used, None for none).
WRONG_WAYS_BACK = (
    ("you transposed back with the permutation you used on the way in: the inverse of "
     "transpose(0, 2, 3, 1) is transpose(0, 3, 1, 2)", (0, 2, 3, 1)),
    ("you transposed back with transpose(0, 3, 2, 1), which exchanges H and W: the inverse "
     "of transpose(0, 2, 3, 1) is transpose(0, 3, 1, 2)", (0, 3, 2, 1)),
    ("you reshaped the rows straight back to (N, C, H, W), but they are in (N, H, W, C) order: "
     "reshape them to (N, H, W, C), then transpose(0, 3, 1, 2)", None),
)


def wrong_ways_back(rows_of) -> list[checks.Hypothesis]:
    """The right rows, ``rows_of(case)``, taken back to (N, C, H, W) in each wrong way."""
    return [(message, lambda c, axes=axes: from_rows(rows_of(c), np.shape(c["x"]), axes))
            for message, axes in WRONG_WAYS_BACK]


def no_transpose(case):
    x = f64(case, "x")
    rows = x.reshape(-1, x.shape[1])  # the mistake: C is not the last axis yet
    out = bnp.batchnorm_forward(rows, f64(case, "gamma"), f64(case, "beta"), case["eps"])[0]
    return out.reshape(x.shape)


AXIS_BY_LENGTH = ("x is square here, and your output is normalized over axis 1: the batch axis "
                  "is always axis 0, so do not find it by matching gamma's length")


def axis_hypotheses(ndim: int) -> list[checks.Hypothesis]:
    """Statistics over the wrong axes."""
    if ndim == 2:
        return [(AXIS_BY_LENGTH, square_only(over((1,)))),
                ("you took the mean and variance over axis 1 (each sample's features); batch "
                 "norm takes them over the batch, axis 0: one mean and variance per feature",
                 over((1,)))]
    return [
        ("you reshaped x to (-1, C) without moving C last, which mixes channels: transpose "
         "first, x.transpose(0, 2, 3, 1).reshape(-1, C), and transpose back at the end",
         no_transpose),
        *wrong_ways_back(lambda case: as_rows(reference_out(case))),
        ("you normalized each sample and channel over H and W only (that is instance norm); "
         "batch norm also averages over the batch: axis=(0, 2, 3)", over((2, 3))),
        ("you normalized over the batch axis only, one statistic per channel and position; "
         "batch norm averages over N, H and W: axis=(0, 2, 3)", over((0,))),
        ("you took the statistics per sample over (C, H, W) (that is layer norm); batch norm "
         "takes one mean and variance per channel over axis=(0, 2, 3)", over((1, 2, 3))),
    ]


def judge_forward(case: dict, result: dict) -> checks.Verdict | None:
    ndim = np.ndim(case["x"])
    axes = bnp.reduction_axes(case["x"])
    return checks.compare(result, "out", reference_out(case), case["function"], case,
                          checks.normalization_hypotheses(axes) + axis_hypotheses(ndim),
                          checks.normalization_facts(case, axes))


def forward_cases(seed):
    return checks.fixed_cases((8, 4)) if seed is None else checks.random_cases(seed)


def spatial_cases(seed):
    if seed is None:
        return checks.fixed_cases((4, 3, 2, 5))
    return checks.random_cases(seed, ndim=4) + checks.edge_cases(seed + 1, ndim=4)


#: Graded here and, as the source of the backward's cache, in bn_backward.
BATCHNORM_FORWARD = Function("batchnorm_forward(x, gamma, beta, eps=1e-5) -> (out, cache)", (
    Check("batchnorm_forward", "batchnorm_forward matches the reference", forward_cases,
          judge_forward),
    Check("batchnorm_forward_edge_cases",
          "batchnorm_forward handles N = 2, float32, a constant feature and a large mean",
          checks.edge_cases, judge_forward),
))

#: Graded here and, as the source of the spatial backward's cache, in bn_backward.
SPATIAL_BATCHNORM_FORWARD = Function(
    "spatial_batchnorm_forward(x, gamma, beta, eps=1e-5) -> (out, cache)", (
        Check("spatial_batchnorm_forward", "spatial_batchnorm_forward matches the reference",
              spatial_cases, judge_forward),))

ASSIGNMENT = Assignment("bn_forward", chapter=3, forbidden_imports=AUTOGRAD_LIBRARIES, functions=(
    dataclasses.replace(BATCHNORM_FORWARD, mistakes=(
        Mistake("wrong_axis",
                "mean and variance over the features of each sample (axis 1) instead of the "
                "batch",
                (("x.mean(axis=0)", "x.mean(axis=1, keepdims=True)"),
                 ("(xc ** 2).mean(axis=0)", "(xc ** 2).mean(axis=1, keepdims=True)")),
                "over axis 1"),
        Mistake("feature_axis_by_length",
                "the batch axis found as the axis whose length is not len(gamma)",
                (("    mean = x.mean(axis=0)\n",
                  "    axis = 1 - x.shape.index(len(gamma))\n"
                  "    mean = x.mean(axis=axis, keepdims=True)\n"),
                 ("(xc ** 2).mean(axis=0)", "(xc ** 2).mean(axis=axis, keepdims=True)")),
                "do not find it by matching gamma's length"),
        Mistake("unbiased_variance", "normalizing with the unbiased variance (ddof=1)",
                (("var = (xc ** 2).mean(axis=0)",
                  "var = (xc ** 2).sum(axis=0) / (x.shape[0] - 1)"),),
                "unbiased variance (ddof=1)"),
        Mistake("eps_outside_sqrt", "sqrt(var) + eps instead of sqrt(var + eps)",
                (("1.0 / np.sqrt(var + eps)", "1.0 / (np.sqrt(var) + eps)"),),
                "eps is outside the square root"),
        Mistake("eps_added_twice", "eps added to the variance and again under the root",
                (("var = (xc ** 2).mean(axis=0)", "var = (xc ** 2).mean(axis=0) + eps"),),
                "eps is added twice"),
        Mistake("gamma_beta_swapped", "beta * xhat + gamma",
                (("out = gamma * xhat + beta", "out = beta * xhat + gamma"),),
                "gamma and beta are swapped"),
        Mistake("no_sqrt", "dividing by the variance, not the std",
                (("1.0 / np.sqrt(var + eps)", "1.0 / (var + eps)"),),
                "divide by the standard deviation"),
        Mistake("inplace", "subtracting the mean from x in place",
                (("xc = x - mean", "xc = x\n    xc -= mean"),),
                "modified its input x in place"),
        Mistake("one_pass_variance",
                "variance as E[x^2] - E[x]^2, which cancels in float32 with a large mean",
                (("var = (xc ** 2).mean(axis=0)", "var = (x ** 2).mean(axis=0) - mean ** 2"),),
                "catastrophic cancellation"),
        Mistake("float64_output", "a float32 batch normalized and returned in float64",
                (("    mean = x.mean(axis=0)\n",
                  "    x = x.astype(np.float64)\n    mean = x.mean(axis=0)\n"),),
                "in the dtype of its input"),
        Mistake("float32_accumulation", "a float64 batch normalized in float32",
                (("    mean = x.mean(axis=0)\n",
                  "    x32 = x.astype(np.float32)  # half the memory\n"
                  "    mean = x32.mean(axis=0)\n"),
                 ("xc = x - mean", "xc = x32 - mean")),
                "only to float32 accuracy"),
    )),
    dataclasses.replace(SPATIAL_BATCHNORM_FORWARD, mistakes=(
        Mistake("spatial_no_transpose", "reshaping (N, C, H, W) to (-1, C) without moving C last",
                (("x.transpose(0, 2, 3, 1).reshape(-1, C)", "x.reshape(-1, C)"),
                 ("out_rows.reshape(N, H, W, C).transpose(0, 3, 1, 2)",
                  "out_rows.reshape(N, C, H, W)")),
                "without moving C last"),
        Mistake("spatial_wrong_inverse_transpose",
                "transposing back with the forward permutation (0, 2, 3, 1)",
                (("out_rows.reshape(N, H, W, C).transpose(0, 3, 1, 2)",
                  "out_rows.reshape(N, H, W, C).transpose(0, 2, 3, 1)"),),
                "the inverse of transpose(0, 2, 3, 1)"),
    )),
))
