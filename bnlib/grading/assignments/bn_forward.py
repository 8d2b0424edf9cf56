"""Assignment bn_forward: batchnorm_forward on (N, D), spatial_batchnorm_forward on (N, C, H, W)."""

from __future__ import annotations

import numpy as np

from bnlib import numpy as bnp
from bnlib.grading.checks import (
    Check,
    Hypothesis,
    Verdict,
    affine,
    channel_axes,
    compare,
    edge_cases,
    f64,
    fixed_cases,
    normalization_facts,
    normalization_hypotheses,
    normalized,
    pair_failure,
    random_cases,
)

ASSIGNMENT = "bn_forward"


def reference_out(case: dict) -> np.ndarray:
    return bnp.batchnorm_forward(f64(case, "x"), f64(case, "gamma"), f64(case, "beta"),
                                 case["eps"])[0]


def axis_hypotheses(ndim: int) -> list[Hypothesis]:
    """Statistics over the wrong axes."""
    def over(axes):
        def recompute(case):
            return affine(normalized(case["x"], axes, case["eps"]), case["gamma"], case["beta"])
        return recompute

    if ndim == 2:
        return [("you took the mean and variance over axis 1 (each sample's features); batch "
                 "norm takes them over the batch, axis 0: one mean and variance per feature",
                 over((1,)))]

    def no_transpose(case):
        x = f64(case, "x")
        rows = x.reshape(-1, x.shape[1])  # the mistake: C is not the last axis yet
        out = bnp.batchnorm_forward(rows, f64(case, "gamma"), f64(case, "beta"), case["eps"])[0]
        return out.reshape(x.shape)

    return [
        ("you reshaped x to (-1, C) without moving C last, which mixes channels: transpose "
         "first, x.transpose(0, 2, 3, 1).reshape(-1, C), and transpose back at the end",
         no_transpose),
        ("you normalised each sample and channel over H and W only (that is instance norm); "
         "batch norm also averages over the batch: axis=(0, 2, 3)", over((2, 3))),
        ("you normalised over the batch axis only, one statistic per channel and position; "
         "batch norm averages over N, H and W: axis=(0, 2, 3)", over((0,))),
        ("you took the statistics per sample over (C, H, W) (that is layer norm); batch norm "
         "takes one mean and variance per channel over axis=(0, 2, 3)", over((1, 2, 3))),
    ]


def judge_forward(case: dict, result: dict) -> Verdict:
    function = case["function"]
    failure = pair_failure(result, function, "(out, cache)")
    if failure:
        return failure
    ndim = np.ndim(case["x"])
    axes = channel_axes(ndim)
    hypotheses = normalization_hypotheses(axes) + axis_hypotheses(ndim)
    verdict = compare(result, "out", reference_out(case), function, case, hypotheses,
                      normalization_facts(case, axes))
    return verdict or Verdict(True, f"{function} is correct")


def with_function(cases: list[dict], function: str) -> list[dict]:
    return [dict(case, function=function) for case in cases]


def forward_cases(seed):
    cases = fixed_cases((8, 4)) if seed is None else random_cases(seed)
    return with_function(cases, "batchnorm_forward")


def forward_edge_cases(seed):
    return with_function(edge_cases(seed), "batchnorm_forward")


def spatial_cases(seed):
    if seed is None:
        return with_function(fixed_cases((4, 3, 2, 5)), "spatial_batchnorm_forward")
    cases = random_cases(seed, ndim=4) + edge_cases(seed + 1, ndim=4)
    return with_function(cases, "spatial_batchnorm_forward")


def forward_check(name: str, function: str, make_cases, description: str) -> Check:
    return Check(ASSIGNMENT, name, (function,), "normalize_forward", description,
                 make_cases, judge_forward)


CHECKS = [
    forward_check("batchnorm_forward", "batchnorm_forward", forward_cases,
                  "batchnorm_forward matches the reference"),
    forward_check("batchnorm_forward_edge_cases", "batchnorm_forward", forward_edge_cases,
                  "batchnorm_forward handles N = 2, a constant feature and float32"),
    forward_check("spatial_batchnorm_forward", "spatial_batchnorm_forward", spatial_cases,
                  "spatial_batchnorm_forward matches the reference"),
]
