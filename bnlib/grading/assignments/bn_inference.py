"""Assignment bn_inference: running statistics, eval-mode BN, folding BN into a linear layer."""

from __future__ import annotations

import numpy as np

from bnlib import numpy as bnp
from bnlib.grading import checks
from bnlib.grading.checks import AUTOGRAD_LIBRARIES, Assignment, Check, Function, Mistake, f64

# --- update_running_stats, update_running_stats_keras ----------------------------------------

#: Each convention as the settings of :func:`checks.running_statistics`, and its momenta.
CONVENTIONS = {
    "pytorch": {"settings": {"keras": False, "bessel": "all"}, "fixed": (0.1, 0.3),
                "random": (0.05, 0.3), "seed": 11},
    "keras": {"settings": {"keras": True, "bessel": "none"}, "fixed": (0.9, 0.7),
              "random": (0.7, 0.95), "seed": 14},
}


def running_cases(seed, convention="pytorch"):
    rules = CONVENTIONS[convention]
    rng = np.random.default_rng(rules["seed"] if seed is None else seed)
    if seed is None:
        setups = list(zip(((8, 3), (5, 4)), rules["fixed"], strict=True))
    else:
        shapes = [(int(rng.integers(3, 17)), int(rng.integers(2, 7))), (2, int(rng.integers(2, 7)))]
        setups = [(shape, rng.uniform(*rules["random"])) for shape in shapes]
    return [{"x": checks.sample_input(rng, shape, "plain", (1,)),
             "running_mean": rng.normal(size=shape[1]),
             "running_var": rng.uniform(0.5, 2.0, shape[1]),
             "momentum": float(momentum), "convention": convention,
             "label": f"N = {shape[0]}, momentum = {momentum:.3g}", "kind": "plain",
             **checks.FLOAT64_TOL} for shape, momentum in setups]


def keras_cases(seed):
    return running_cases(seed, "keras")


def reference_update(case: dict):
    """(running_mean, running_var) of bnlib's BatchNorm layer after one training step."""
    layer = bnp.BatchNorm(case["x"].shape[1], momentum=case["momentum"],
                          convention=case["convention"])
    layer.running_mean = f64(case, "running_mean").copy()
    layer.running_var = f64(case, "running_var").copy()
    layer.train().forward(f64(case, "x"))
    return layer.running_mean, layer.running_var


def mistaken_update(case: dict, **mistake):
    """(running_mean, running_var) with ``mistake`` changing the settings of the case's
    convention (see :func:`checks.running_statistics`) or its momentum."""
    right = {**CONVENTIONS[case["convention"]]["settings"], "momentum": case["momentum"]}
    settings = {**right, **mistake}
    if settings == right:
        raise ValueError("the same update: not a distinct hypothesis")
    momentum = settings.pop("momentum")
    return checks.running_statistics(case["x"][None], case["running_mean"], case["running_var"],
                                     momentum, **settings)


#: Per convention: (message, mistake) for the mean, then the mistakes only the variance shows.
RUNNING_MISTAKES = {
    "pytorch": ([(checks.KERAS_MOMENTUM, {"keras": True}),
                 (checks.HARD_CODED_MOMENTUM, {"momentum": 0.1})],
                [(checks.BIASED_RUNNING_VAR, {"bessel": "none"}),
                 (f"{checks.KERAS_MOMENTUM}; also, {checks.BIASED_RUNNING_VAR}",
                  {"keras": True, "bessel": "none"})]),
    "keras": ([(checks.TORCH_MOMENTUM, {"keras": False}),
               (checks.ignored_momentum(0.99), {"momentum": 0.99})],
              [(checks.UNBIASED_RUNNING_VAR, {"bessel": "all"}),
               (f"{checks.TORCH_MOMENTUM}; also, {checks.UNBIASED_RUNNING_VAR}",
                {"keras": False, "bessel": "all"})]),
}


def running_hypotheses(convention: str, index: int) -> list[checks.Hypothesis]:
    """Mistakes in the running mean (index 0) or the running variance (index 1)."""
    for_mean, for_var_only = RUNNING_MISTAKES[convention]
    mistakes = for_mean if index == 0 else [for_var_only[0], *for_mean, *for_var_only[1:]]
    return [(message, lambda c, m=mistake: mistaken_update(c, **m)[index])
            for message, mistake in mistakes]


def judge_running(case: dict, result: dict) -> checks.Verdict | None:
    references = zip(("running_mean", "running_var"), reference_update(case), strict=True)
    for index, (key, ref) in enumerate(references):
        verdict = checks.compare(result, key, ref, case["function"], case,
                                 running_hypotheses(case["convention"], index),
                                 lambda got: {"count": "N"})
        if verdict:
            return verdict
    return None


# --- batchnorm_inference ---------------------------------------------------------------------

def inference_case(rng, shape, label, eps=1e-5, kind="plain"):
    """x with the case's statistics; running statistics near, not equal to, the batch's."""
    case = checks.make_case(rng, shape, label, eps=eps, kind=kind)
    channels, dtype = shape[1], case.pop("dout").dtype
    if kind == "offset":
        mean, var = 1e3 + 0.02 * rng.normal(size=channels), rng.uniform(0.005, 0.02, channels)
    else:
        mean, var = rng.normal(0, 1, channels), rng.uniform(0.2, 3.0, channels)
    return dict(case, running_mean=mean.astype(dtype), running_var=var.astype(dtype))


def inference_cases(seed):
    if seed is None:
        rng = np.random.default_rng(12)
        return [inference_case(rng, (6, 4), "eps = 1e-05"),
                inference_case(rng, (6, 4), "eps = 0.25", eps=0.25),
                inference_case(rng, (5, 3), "float32", kind="float32")]
    rng = np.random.default_rng(seed)
    return [
        inference_case(rng, (int(rng.integers(3, 17)), int(rng.integers(2, 7))), "random shape",
                       eps=0.1),
        inference_case(rng, (1, int(rng.integers(2, 7))), "N = 1"),
        inference_case(rng, (2, int(rng.integers(2, 5)), 3, 3), "(N, C, H, W) input"),
        inference_case(rng, (int(rng.integers(3, 9)), 3), checks.OFFSET_LABEL, kind="offset"),
    ]


def eval_variant(case, place="inside"):
    """Eval-mode BN with the running statistics, eps placed ``inside`` the root or not."""
    x = f64(case, "x")
    mean, var = bnp.channel_view(f64(case, "running_mean"), x.ndim), \
        bnp.channel_view(f64(case, "running_var"), x.ndim)
    denominator = {"inside": np.sqrt(var + case["eps"]), "outside": np.sqrt(var) + case["eps"],
                   "no_sqrt": var + case["eps"]}[place]
    return checks.affine((x - mean) / denominator, case["gamma"], case["beta"])


def batch_statistics_variant(case):
    x = f64(case, "x")
    if x.size // x.shape[1] < 2:
        # N = 1: the batch variance is 0 and the output is beta (what a student's code gives).
        return checks.affine(np.zeros(x.shape), case["gamma"], case["beta"])
    return bnp.batchnorm_forward(x, f64(case, "gamma"), f64(case, "beta"), case["eps"])[0]


INFERENCE_HYPOTHESES: list[checks.Hypothesis] = [
    ("you normalized with the statistics of the batch x (training mode); at inference BN "
     "must use running_mean and running_var, so the output of one sample does not depend "
     "on the others", batch_statistics_variant),
    ("eps is outside the square root: divide by sqrt(running_var + eps)",
     lambda c: eval_variant(c, place="outside")),
    ("you divided by running_var + eps: running_var is a variance, divide by "
     "sqrt(running_var + eps)", lambda c: eval_variant(c, place="no_sqrt")),
    ("gamma and beta are swapped: out = gamma * xhat + beta",
     lambda c: eval_variant(dict(c, gamma=c["beta"], beta=c["gamma"]))),
    *checks.eps_hypotheses(eval_variant),
]


def judge_inference(case: dict, result: dict) -> checks.Verdict | None:
    ref = bnp.batchnorm_inference(f64(case, "x"), f64(case, "gamma"), f64(case, "beta"),
                                  f64(case, "running_mean"), f64(case, "running_var"),
                                  case["eps"])
    return checks.compare(result, "out", ref, case["function"], case, INFERENCE_HYPOTHESES)


# --- fold_batchnorm --------------------------------------------------------------------------

def fold_case(rng, d_in, d_out, label, eps=1e-5):
    gamma, beta = checks.params(rng, d_out)
    return {"W": rng.normal(size=(d_in, d_out)), "b": rng.normal(size=d_out),
            "gamma": gamma, "beta": beta, "running_mean": rng.normal(size=d_out),
            "running_var": rng.uniform(0.2, 3.0, d_out), "eps": float(eps),
            "label": label, "kind": "plain", **checks.FLOAT64_TOL}


def fold_cases(seed):
    rng = np.random.default_rng(13 if seed is None else seed)
    if seed is None:
        return [fold_case(rng, 4, 4, "D_in = D_out = 4"),
                fold_case(rng, 3, 5, "D_in = 3, D_out = 5, eps = 0.25", eps=0.25)]
    d = int(rng.integers(2, 7))
    return [fold_case(rng, d, d, f"D_in = D_out = {d}", eps=0.1),
            fold_case(rng, int(rng.integers(2, 7)), int(rng.integers(7, 10)), "D_in < D_out"),
            fold_case(rng, int(rng.integers(7, 10)), int(rng.integers(2, 7)), "D_in > D_out")]


def folded(case):
    """(W_folded, b_folded) of the reference."""
    return bnp.fold_batchnorm(*(f64(case, k) for k in ("W", "b", "gamma", "beta",
                                                       "running_mean", "running_var")),
                              case["eps"])


def fold_scale(case):
    return f64(case, "gamma") / np.sqrt(f64(case, "running_var") + case["eps"])


W_HYPOTHESES: list[checks.Hypothesis] = [
    ("you scaled the rows of W; BN acts on the outputs, so scale the columns of W, one per "
     "output feature: W * scale (scale has shape (D_out,))",
     lambda c: f64(c, "W") * fold_scale(c)[:, None]),
    ("W_folded must be W * gamma / sqrt(running_var + eps); yours lacks the division by "
     "the standard deviation", lambda c: f64(c, "W") * f64(c, "gamma")),
    *checks.eps_hypotheses(lambda c: folded(c)[0]),
]

B_HYPOTHESES: list[checks.Hypothesis] = [
    ("b_folded ignores the linear bias b: BN normalizes x @ W + b, so b_folded = "
     "(b - running_mean) * scale + beta",
     lambda c: f64(c, "beta") - f64(c, "running_mean") * fold_scale(c)),
    ("b_folded forgets running_mean: b_folded = (b - running_mean) * scale + beta",
     lambda c: f64(c, "b") * fold_scale(c) + f64(c, "beta")),
    ("b_folded forgets beta: b_folded = (b - running_mean) * scale + beta",
     lambda c: (f64(c, "b") - f64(c, "running_mean")) * fold_scale(c)),
    ("b is not scaled: b_folded = (b - running_mean) * scale + beta, the linear bias is "
     "multiplied by scale too",
     lambda c: f64(c, "b") - f64(c, "running_mean") * fold_scale(c) + f64(c, "beta")),
    *checks.eps_hypotheses(lambda c: folded(c)[1]),
]


def judge_fold(case: dict, result: dict) -> checks.Verdict | None:
    ref_W, ref_b = folded(case)
    function = case["function"]
    return (checks.compare(result, "W_folded", ref_W, function, case, W_HYPOTHESES)
            or checks.compare(result, "b_folded", ref_b, function, case, B_HYPOTHESES))


ASSIGNMENT = Assignment("bn_inference", chapter=5, forbidden_imports=AUTOGRAD_LIBRARIES, functions=(
    Function("update_running_stats(running_mean, running_var, x, momentum=0.1) "
             "-> (running_mean, running_var)", (
                 Check("update_running_stats", "update_running_stats follows PyTorch's "
                       "convention", running_cases, judge_running),), (
        Mistake("running_var_biased", "running variance without Bessel's correction",
                (("batch_var = x.var(axis=0) * n / (n - 1)", "batch_var = x.var(axis=0)"),),
                "Bessel's correction"),
        Mistake("keras_momentum", "momentum weighting the old value (Keras' convention)",
                (("new_mean = (1 - momentum) * running_mean + momentum * batch_mean",
                  "new_mean = momentum * running_mean + (1 - momentum) * batch_mean"),
                 ("new_var = (1 - momentum) * running_var + momentum * batch_var",
                  "new_var = momentum * running_var + (1 - momentum) * batch_var")),
                "Keras momentum convention"),
        Mistake("hard_coded_momentum", "momentum fixed at 0.1 whatever the argument",
                (("    n = x.shape[0]\n", "    momentum = 0.1  # the usual value\n"
                                          "    n = x.shape[0]\n"),),
                "ignores the momentum argument"),
        Mistake("running_stats_inplace", "updating running_mean in place",
                (("new_mean = (1 - momentum) * running_mean + momentum * batch_mean",
                  "running_mean *= 1 - momentum\n    running_mean += momentum * batch_mean\n"
                  "    new_mean = running_mean"),),
                "modified its input running_mean in place"),
    )),
    Function("update_running_stats_keras(running_mean, running_var, x, momentum=0.99) "
             "-> (running_mean, running_var)", (
                 Check("update_running_stats_keras", "update_running_stats_keras follows Keras' "
                       "convention", keras_cases, judge_running),), (
        Mistake("keras_torch_momentum", "momentum weighting the new batch (PyTorch's convention)",
                (("new_mean = momentum * running_mean + (1 - momentum) * batch_mean",
                  "new_mean = (1 - momentum) * running_mean + momentum * batch_mean"),
                 ("new_var = momentum * running_var + (1 - momentum) * batch_var",
                  "new_var = (1 - momentum) * running_var + momentum * batch_var")),
                "follow PyTorch's momentum convention"),
        Mistake("keras_unbiased_variance", "running variance with Bessel's correction",
                (("batch_var = x.var(axis=0)\n", "batch_var = x.var(axis=0, ddof=1)\n"),),
                "Keras stores the biased batch variance"),
        Mistake("keras_hard_coded_momentum", "momentum fixed at 0.99 whatever the argument",
                (("    batch_mean = x.mean(axis=0)\n    batch_var = x.var(axis=0)\n",
                  "    momentum = 0.99  # Keras' default\n"
                  "    batch_mean = x.mean(axis=0)\n    batch_var = x.var(axis=0)\n"),),
                "it matches momentum = 0.99"),
    )),
    Function("batchnorm_inference(x, gamma, beta, running_mean, running_var, eps=1e-5) -> out", (
        Check("batchnorm_inference", "batchnorm_inference uses the running statistics",
              inference_cases, judge_inference),), (
        Mistake("batch_stats_in_inference",
                "inference normalizing with the statistics of the batch",
                (("    scale = gamma / np.sqrt(running_var + eps)\n",
                  "    axes = (0, *range(2, x.ndim))\n"
                  "    running_mean, running_var = x.mean(axis=axes), x.var(axis=axes)\n"
                  "    scale = gamma / np.sqrt(running_var + eps)\n"),),
                "statistics of the batch"),
        Mistake("eps_outside_sqrt", "sqrt(running_var) + eps",
                (("gamma / np.sqrt(running_var + eps)", "gamma / (np.sqrt(running_var) + eps)"),),
                "eps is outside the square root"),
        Mistake("float64_output", "float32 inputs answered in float64",
                (("    shape = (1, -1) + (1,) * (x.ndim - 2)\n",
                  "    shape = (1, -1) + (1,) * (x.ndim - 2)\n    x = x.astype(np.float64)\n"),),
                "in the dtype of its input"),
    )),
    Function("fold_batchnorm(W, b, gamma, beta, running_mean, running_var, eps=1e-5) "
             "-> (W_folded, b_folded)", (
                 Check("fold_batchnorm", "fold_batchnorm gives the same output as linear + "
                       "eval-mode BN", fold_cases, judge_fold),), (
        Mistake("fold_bias_without_b", "folded bias that forgets the linear layer's bias",
                (("b_folded = (b - running_mean) * gamma / std + beta",
                  "b_folded = beta - running_mean * gamma / std"),),
                "ignores the linear bias b"),
        Mistake("fold_rows", "scaling the rows of W, not its columns",
                (("W_folded = W * (gamma / std)", "W_folded = W * (gamma / std)[:, None]"),),
                "scale the columns of W"),
        Mistake("fold_without_eps", "the folded scale without eps",
                (("std = np.sqrt(running_var + eps)", "std = np.sqrt(running_var)"),),
                "eps is missing"),
    )),
))
