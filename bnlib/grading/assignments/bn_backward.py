"""Assignment bn_backward: batchnorm_backward (staged graph), batchnorm_backward_alt, and the
spatial pair on (N, C, H, W) built on them."""

from __future__ import annotations

from bnlib import numpy as bnp
from bnlib.grading import checks
from bnlib.grading.assignments.bn_forward import (
    BATCHNORM_FORWARD,
    SPATIAL_BATCHNORM_FORWARD,
    as_rows,
    spatial_cases,
    wrong_ways_back,
)
from bnlib.grading.checks import AUTOGRAD_LIBRARIES, Assignment, Check, Function, Mistake, f64


def reference_gradients(case: dict):
    _, cache = bnp.batchnorm_forward(f64(case, "x"), f64(case, "gamma"), f64(case, "beta"),
                                     case["eps"])
    return bnp.batchnorm_backward(f64(case, "dout"), cache)


judge_backward = checks.gradient_judge(reference_gradients, checks.gradient_hypotheses(axes=(0,)))


def backward_cases(seed):
    return checks.fixed_cases((8, 4)) if seed is None else checks.random_cases(seed)


def backward_checks(function: str) -> tuple[Check, ...]:
    return (Check(function, f"{function} matches the reference gradients", backward_cases,
                  judge_backward, after="batchnorm_forward"),
            Check(f"{function}_edge_cases",
                  f"{function} handles N = 2, float32, a constant feature and a large mean",
                  checks.edge_cases, judge_backward, after="batchnorm_forward"))


SIGNATURE = "(dout, cache) -> (dx, dgamma, dbeta)"


def dout_not_transposed(case: dict):
    """The gradients when dout is reshaped to (-1, C) without moving C last (and dx reshaped
    straight back): its rows are not the rows the forward pass cached."""
    x = f64(case, "x")
    _, cache = bnp.batchnorm_forward(as_rows(x), f64(case, "gamma"), f64(case, "beta"),
                                     case["eps"])
    dx, dgamma, dbeta = bnp.batchnorm_backward(f64(case, "dout").reshape(-1, x.shape[1]), cache)
    return dx.reshape(x.shape), dgamma, dbeta


judge_spatial_backward = checks.gradient_judge(
    reference_gradients,
    checks.gradient_hypotheses() + wrong_ways_back(lambda c: as_rows(reference_gradients(c)[0])),
    every_gradient=[("you reshaped dout to (-1, C) without moving C last, so its rows are not "
                     "the rows your forward pass cached: dout.transpose(0, 2, 3, 1).reshape(-1, "
                     "C), as in the forward, and dx back with .reshape(N, H, W, C).transpose(0, "
                     "3, 1, 2)", dout_not_transposed)])

ASSIGNMENT = Assignment("bn_backward", chapter=4, forbidden_imports=AUTOGRAD_LIBRARIES, functions=(
    BATCHNORM_FORWARD,
    Function(f"batchnorm_backward{SIGNATURE}", backward_checks("batchnorm_backward"), (
        Mistake("graph_missing_dvar", "staged graph: the path through the variance is dropped",
                (("    dxmu += 2 * xmu * dvar / N\n", ""),),
                "flows through the variance"),
        Mistake("graph_missing_factor_2", "staged graph: d var / d x without the factor 2",
                (("dxmu += 2 * xmu * dvar / N", "dxmu += xmu * dvar / N"),),
                "the factor 2 is missing"),
        Mistake("graph_bessel", "staged graph: d var / d x divided by N - 1",
                (("dxmu += 2 * xmu * dvar / N", "dxmu += 2 * xmu * dvar / (N - 1)"),),
                "divides by N - 1"),
        Mistake("graph_missing_dmean", "staged graph: the path through the mean is dropped",
                (("dx = dxmu + dmean / N", "dx = dxmu"),),
                "flows through the mean"),
        Mistake("dgamma_dbeta_swapped", "dgamma and dbeta exchanged",
                (("    dbeta = dout.sum(axis=0)\n    dgamma = (dout * xhat).sum(axis=0)",
                  "    dgamma = dout.sum(axis=0)\n    dbeta = (dout * xhat).sum(axis=0)"),),
                "dgamma and dbeta are swapped"),
        Mistake("cache_in_a_global",
                "forward keeps its cache in a global that backward reads instead of `cache`",
                (("    cache = (xhat, xmu, std, gamma)\n",
                  "    cache = (xhat, xmu, std, gamma)\n    global LAST_CACHE\n"
                  "    LAST_CACHE = cache\n"),
                 ("    xhat, xmu, std, gamma = cache\n    N = dout.shape[0]",
                  "    xhat, xmu, std, gamma = LAST_CACHE\n    N = dout.shape[0]")),
                "ignores its cache argument"),
        Mistake("torch_autograd", "gradients computed with torch's autograd",
                (("    xhat, xmu, std, gamma = cache\n    N = dout.shape[0]",
                  "    import torch\n"
                  "    xhat, xmu, std, gamma = cache\n    N = dout.shape[0]"),),
                "bn_backward is a NumPy assignment: importing torch is not allowed",
                caught_by="sandbox"),
    )),
    Function(f"batchnorm_backward_alt{SIGNATURE}", backward_checks("batchnorm_backward_alt"), (
        Mistake("alt_missing_xhat_term", "closed form without the xhat * mean(dxhat * xhat) term",
                ((" - xhat * (dxhat * xhat).mean(axis=0)", ""),),
                "flows through the variance"),
        Mistake("alt_missing_mean_term", "closed form without the mean(dxhat) term",
                (("dxhat - dxhat.mean(axis=0) - xhat", "dxhat - xhat"),),
                "flows through the mean"),
        Mistake("alt_dgamma_without_xhat", "dgamma = sum(dout)",
                (("dgamma = np.sum(dout * xhat, axis=0)", "dgamma = np.sum(dout, axis=0)"),),
                "the factor xhat is missing"),
    )),
    SPATIAL_BATCHNORM_FORWARD,
    Function(f"spatial_batchnorm_backward{SIGNATURE}", (
        Check("spatial_batchnorm_backward", "spatial_batchnorm_backward matches the reference "
              "gradients", spatial_cases, judge_spatial_backward,
              after="spatial_batchnorm_forward"),), (
        Mistake("spatial_backward_no_transpose",
                "spatial backward: dout reshaped to (-1, C) without moving C last",
                (("dout.transpose(0, 2, 3, 1).reshape(-1, C)", "dout.reshape(-1, C)"),
                 ("dx_rows.reshape(N, H, W, C).transpose(0, 3, 1, 2)",
                  "dx_rows.reshape(N, C, H, W)")),
                "its rows are not the rows your forward pass cached"),
        Mistake("spatial_backward_not_transposed_back",
                "spatial backward: dx rows reshaped straight to (N, C, H, W)",
                (("dx_rows.reshape(N, H, W, C).transpose(0, 3, 1, 2)",
                  "dx_rows.reshape(N, C, H, W)"),),
                "they are in (N, H, W, C) order"),
        Mistake("spatial_backward_wrong_inverse_transpose",
                "spatial backward: dx transposed back with the forward permutation",
                (("dx_rows.reshape(N, H, W, C).transpose(0, 3, 1, 2)",
                  "dx_rows.reshape(N, H, W, C).transpose(0, 2, 3, 1)"),),
                "the permutation you used on the way in"),
    )),
))
