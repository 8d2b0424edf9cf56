"""Assignment bn_pitfalls: two myths of chapter 9 refuted, and one of its bugs avoided.

A batch of one in training mode gives beta, not zero; gamma is a standard deviation, not a
variance (BN can undo itself); channels-last images need their statistics over (N, H, W).
Graded against ``bnlib.numpy`` and :mod:`bnlib.experiments.pitfalls`.
"""

from __future__ import annotations

import numpy as np

from bnlib import numpy as bnp
from bnlib.experiments import pitfalls
from bnlib.grading import checks
from bnlib.grading.checks import AUTOGRAD_LIBRARIES, Assignment, Check, Function, Mistake, f64

# --- single_sample_outputs -------------------------------------------------------------------

def single_case(rng, d, label, eps=1e-5, kind="plain"):
    """x of shape (1, D), a batch of one sample; running statistics of a trained layer."""
    case = checks.make_case(rng, (1, d), label, eps=eps, kind=kind)
    del case["dout"]
    dtype = case["x"].dtype
    return dict(case, running_mean=rng.normal(0.0, 1.0, d).astype(dtype),
                running_var=rng.uniform(0.2, 3.0, d).astype(dtype))


def single_cases(seed):
    rng = np.random.default_rng(901 if seed is None else seed)
    if seed is None:
        return [single_case(rng, 4, "eps = 1e-05"), single_case(rng, 3, "eps = 0.25", eps=0.25)]
    return [single_case(rng, int(rng.integers(2, 9)), "random width, eps = 0.1", eps=0.1),
            single_case(rng, int(rng.integers(2, 9)), "float32", kind="float32")]


def training_mode_output(case):
    """Training-mode BN of the batch of one: bnlib, like torch, refuses a batch with one value
    per feature, so it normalizes two copies of the sample, whose statistics are the sample's."""
    twins = np.concatenate([f64(case, "x")] * 2)
    return bnp.batchnorm_forward(twins, f64(case, "gamma"), f64(case, "beta"), case["eps"])[0][:1]


def eval_mode_output(case, root=True):
    """Eval-mode BN; ``root=False``: divided by the running variance itself."""
    mean, var = f64(case, "running_mean"), f64(case, "running_var")
    denominator = np.sqrt(var + case["eps"]) if root else var + case["eps"]
    return f64(case, "gamma") * (f64(case, "x") - mean) / denominator + f64(case, "beta")


TRAIN_HYPOTHESES: list[checks.Hypothesis] = [
    ("train_out is zero, as the quoted tutorial claims; but a batch of one is normalized to "
     "xhat = (x - x) / sqrt(0 + eps) = 0, so training-mode BN returns gamma * 0 + beta: beta",
     lambda case: np.zeros(np.shape(case["x"]))),
    ("train_out is gamma: xhat of a batch of one is 0, not 1, so the output is gamma * 0 + beta",
     lambda case: f64(case, "gamma")[None] + 0.0),
]

EVAL_HYPOTHESES: list[checks.Hypothesis] = [
    ("eval_out is beta: you normalized with the statistics of the batch (training mode); eval "
     "mode uses running_mean and running_var, so the output of a sample does not depend on the "
     "batch it comes in", training_mode_output),
    ("eval_out divides by running_var + eps; running_var is a variance, so divide by "
     "sqrt(running_var + eps)", lambda case: eval_mode_output(case, root=False)),
    ("eval_out without beta: eval mode returns gamma * xhat + beta, xhat from the running "
     "statistics", lambda case: eval_mode_output(case) - f64(case, "beta")),
    *checks.eps_hypotheses(eval_mode_output),
]


def judge_single(case: dict, result: dict) -> checks.Verdict | None:
    ref_eval = bnp.batchnorm_inference(*(f64(case, key) for key in (
        "x", "gamma", "beta", "running_mean", "running_var")), case["eps"])
    function = case["function"]
    return (checks.compare(result, "train_out", training_mode_output(case), function, case,
                           TRAIN_HYPOTHESES)
            or checks.compare(result, "eval_out", ref_eval, function, case, EVAL_HYPOTHESES))


# --- identity_parameters ---------------------------------------------------------------------

def identity_case(rng, shape, label, eps=1e-5, kind="plain"):
    case = checks.make_case(rng, shape, label, eps=eps, kind=kind)
    return {key: case[key] for key in ("x", "eps", "label", "kind", "rtol", "atol")}


def identity_cases(seed):
    rng = np.random.default_rng(902 if seed is None else seed)
    if seed is None:
        return [identity_case(rng, (8, 3), "eps = 1e-05"),
                identity_case(rng, (6, 4), "eps = 0.25", eps=0.25)]
    return [identity_case(rng, checks.random_shape(rng, 2), "random shape, eps = 0.1", eps=0.1),
            identity_case(rng, checks.square_shape(rng, 2), "square shape"),
            identity_case(rng, (2, int(rng.integers(2, 7))), "N = 2"),
            identity_case(rng, checks.random_shape(rng, 2), "float32", kind="float32")]


def identity_variant(case, *, ddof=0, eps=True, root=True, axis=0):
    """(gamma, beta) under a mistake, in float64."""
    x = f64(case, "x")
    var = x.var(axis=axis, ddof=ddof) + (case["eps"] if eps else 0.0)
    return (np.sqrt(var) if root else var), x.mean(axis=axis)


def gamma_of(**mistake):
    return lambda case: identity_variant(case, **mistake)[0]


PER_SAMPLE = ("you took the statistics over axis 1, one per sample; BN's are per feature, over "
              "the batch (axis 0)")

GAMMA_HYPOTHESES: list[checks.Hypothesis] = [
    ("gamma is the variance (plus eps); BN divides by the standard deviation sqrt(var + eps), so "
     "gamma, which multiplies xhat, must be sqrt(var + eps) to undo it: gamma sets the output's "
     "standard deviation, |gamma|, and its variance is gamma^2", gamma_of(root=False)),
    ("gamma is the standard deviation without eps; BN divides by sqrt(var + eps), so gamma must "
     "be sqrt(var + eps) for BN to give x back exactly", gamma_of(eps=False)),
    ("gamma uses the unbiased variance (ddof=1); BN normalizes with the biased variance of the "
     "batch, so gamma = sqrt(x.var(axis=0) + eps)", gamma_of(ddof=1)),
    ("gamma is x's mean: gamma and beta are swapped (gamma scales, beta shifts), so gamma = "
     "sqrt(var + eps) and beta = mean", lambda case: identity_variant(case)[1]),
    (PER_SAMPLE, gamma_of(axis=1)),
]

BETA_HYPOTHESES: list[checks.Hypothesis] = [
    ("beta is x's standard deviation: gamma and beta are swapped (gamma scales, beta shifts), so "
     "beta = mean", lambda case: identity_variant(case)[0]),
    (PER_SAMPLE, lambda case: identity_variant(case, axis=1)[1]),
]


def judge_identity(case: dict, result: dict) -> checks.Verdict | None:
    gamma, beta = pitfalls.identity_parameters(f64(case, "x"), case["eps"])
    function = case["function"]
    return (checks.compare(result, "gamma", gamma, function, case, GAMMA_HYPOTHESES)
            or checks.compare(result, "beta", beta, function, case, BETA_HYPOTHESES))


# --- batchnorm_channels_last -----------------------------------------------------------------

def channels_last_case(rng, shape, label, eps=1e-5, kind="plain"):
    """x of shape (N, H, W, C) whose channels (the last axis) differ in mean and spread."""
    case = checks.make_case(rng, shape, label, eps=eps, kind=kind, spread_axes=(3,),
                            constant=(Ellipsis, int(rng.integers(shape[3]))), features=shape[3])
    del case["dout"]
    return case


def channels_last_cases(seed):
    rng = np.random.default_rng(903 if seed is None else seed)
    if seed is None:
        return [channels_last_case(rng, (4, 3, 3, 3), "H = W = C"),
                channels_last_case(rng, (2, 4, 5, 3), "eps = 0.25", eps=0.25)]
    shape = (int(rng.integers(2, 6)), *rng.choice(np.arange(2, 7), 3, replace=False).tolist())
    side = int(rng.integers(2, 5))
    return [channels_last_case(rng, shape, "random shape, eps = 0.1", eps=0.1),
            channels_last_case(rng, (int(rng.integers(2, 6)), side, side, side), "H = W = C"),
            channels_last_case(rng, (2, *shape[1:]), "a constant channel", kind="constant"),
            channels_last_case(rng, (int(rng.integers(2, 6)), *shape[1:]), "float32",
                               kind="float32")]


def channels_last_over(axes):
    """BN of (N, H, W, C) with the statistics over ``axes`` and gamma, beta on the last axis."""
    return lambda case: checks.affine(checks.normalized(case["x"], axes, case["eps"]),
                                      case["gamma"], case["beta"], channel_axis=-1)


def as_channels_first(case):
    """The bug chapter 9 shows: channels-first BN on a channels-last array (axis 1 = H)."""
    if np.shape(case["x"])[1] != len(case["gamma"]):
        raise ValueError("H differs from C: channels-first BN would raise here")
    return bnp.batchnorm_forward(f64(case, "x"), f64(case, "gamma"), f64(case, "beta"),
                                 case["eps"])[0]


CHANNEL_AXES = (0, 1, 2)
CHANNELS_LAST_HYPOTHESES: list[checks.Hypothesis] = [
    ("you normalized over axis 1 as if x were (N, C, H, W): here axis 1 is H, and since H = C "
     "nothing complained; the channels are on the last axis, so take the statistics over "
     "axis=(0, 1, 2)", as_channels_first),
    ("you took the statistics over axis=(0, 2, 3), as if x were (N, C, H, W): for (N, H, W, C) "
     "those axes are N, W and C; the channels are on the last axis, so take them over "
     "axis=(0, 1, 2)", channels_last_over((0, 2, 3))),
    ("you normalized each sample and channel over H and W only (instance norm); BN also "
     "averages over the batch: axis=(0, 1, 2)", channels_last_over((1, 2))),
    ("you normalized over the batch axis only, one statistic per position and channel; BN "
     "averages over N, H and W: axis=(0, 1, 2)", channels_last_over((0,))),
    *checks.normalization_hypotheses(CHANNEL_AXES, channel_axis=-1),
]


def judge_channels_last(case: dict, result: dict) -> checks.Verdict | None:
    channels_first = f64(case, "x").transpose(0, 3, 1, 2)
    ref = bnp.batchnorm_forward(channels_first, f64(case, "gamma"), f64(case, "beta"),
                                case["eps"])[0].transpose(0, 2, 3, 1)
    return checks.compare(result, "out", ref, case["function"], case, CHANNELS_LAST_HYPOTHESES,
                          checks.normalization_facts(case, CHANNEL_AXES, channel_axis=-1))


ASSIGNMENT = Assignment("bn_pitfalls", chapter=9, forbidden_imports=AUTOGRAD_LIBRARIES,
                        functions=(
    Function("single_sample_outputs(x, gamma, beta, running_mean, running_var, eps=1e-5) "
             "-> (train_out, eval_out)", (
                 Check("single_sample_outputs", "single_sample_outputs gives beta in training "
                       "mode and the running-statistics output in eval mode", single_cases,
                       judge_single),), (
        Mistake("one_sample_gives_zero", "training-mode output without beta: zero",
                (("train_out = gamma * (x - mean) / np.sqrt(var + eps) + beta",
                  "train_out = gamma * (x - mean) / np.sqrt(var + eps)"),),
                "returns gamma * 0 + beta"),
        Mistake("one_sample_without_eps", "the variance of one sample, 0, without eps",
                (("train_out = gamma * (x - mean) / np.sqrt(var + eps)",
                  "train_out = gamma * (x - mean) / np.sqrt(var)"),),
                "contains NaN or inf"),
        Mistake("eval_with_batch_statistics", "eval mode normalizing with the batch's statistics",
                (("eval_out = gamma * (x - running_mean) / np.sqrt(running_var + eps) + beta",
                  "eval_out = gamma * (x - mean) / np.sqrt(var + eps) + beta"),),
                "eval mode uses running_mean and running_var"),
    )),
    Function("identity_parameters(x, eps=1e-5) -> (gamma, beta)", (
        Check("identity_parameters", "identity_parameters makes training-mode BN give x back",
              identity_cases, judge_identity),), (
        Mistake("gamma_is_variance", "gamma = var + eps, as if gamma learned the variance",
                (("gamma = np.sqrt(x.var(axis=0) + eps)", "gamma = x.var(axis=0) + eps"),),
                "gamma sets the output's standard deviation"),
        Mistake("gamma_without_eps", "gamma = the standard deviation without eps",
                (("gamma = np.sqrt(x.var(axis=0) + eps)", "gamma = x.std(axis=0)"),),
                "for BN to give x back exactly"),
        Mistake("gamma_unbiased", "gamma from the unbiased variance",
                (("gamma = np.sqrt(x.var(axis=0) + eps)",
                  "gamma = np.sqrt(x.var(axis=0, ddof=1) + eps)"),),
                "gamma uses the unbiased variance"),
    )),
    Function("batchnorm_channels_last(x, gamma, beta, eps=1e-5) -> out", (
        Check("batchnorm_channels_last", "batchnorm_channels_last normalizes each channel of an "
              "(N, H, W, C) batch", channels_last_cases, judge_channels_last),), (
        Mistake("channels_first_code", "code written for (N, C, H, W) run on (N, H, W, C)",
                (("    mean = x.mean(axis=(0, 1, 2))\n    var = x.var(axis=(0, 1, 2))\n"
                  "    out = gamma * (x - mean) / np.sqrt(var + eps) + beta\n",
                  "    mean = x.mean(axis=(0, 2, 3), keepdims=True)\n"
                  "    var = x.var(axis=(0, 2, 3), keepdims=True)\n"
                  "    gamma, beta = gamma.reshape(1, -1, 1, 1), beta.reshape(1, -1, 1, 1)\n"
                  "    out = gamma * (x - mean) / np.sqrt(var + eps) + beta\n"),),
                "as if x were (N, C, H, W)"),
        Mistake("channels_last_instance_norm", "statistics per sample over H and W",
                (("x.mean(axis=(0, 1, 2))", "x.mean(axis=(1, 2), keepdims=True)"),
                 ("x.var(axis=(0, 1, 2))", "x.var(axis=(1, 2), keepdims=True)")),
                "(instance norm)"),
        Mistake("channels_last_unbiased", "normalizing with the unbiased variance",
                (("x.var(axis=(0, 1, 2))", "x.var(axis=(0, 1, 2), ddof=1)"),),
                "unbiased variance (ddof=1)"),
    )),
))
