"""Assignment layer_norm: layernorm_forward / layernorm_backward on (N, D), groupnorm_forward /
groupnorm_backward on (N, C, H, W)."""

from __future__ import annotations

import numpy as np

from bnlib import numpy as bnp
from bnlib.grading import checks
from bnlib.grading.checks import AUTOGRAD_LIBRARIES, Assignment, Check, Function, Mistake, f64

# --- layer norm ------------------------------------------------------------------------------

def row_case(rng, shape, label, eps=1e-5, kind="plain"):
    """x of shape (N, D) whose rows have different means and scales; gamma, beta of shape (D,)."""
    return checks.make_case(rng, shape, label, eps=eps, kind=kind, spread_axes=(0,),
                            constant=(int(rng.integers(shape[0])),))


def row_cases(seed):
    if seed is None:
        rng = np.random.default_rng(21)
        return [row_case(rng, (4, 6), "eps = 1e-05"), row_case(rng, (4, 6), "eps = 0.25",
                                                                eps=0.25),
                row_case(rng, (3, 5), "float32", kind="float32")]
    rng = np.random.default_rng(seed)

    def shape(n=None):
        return (int(rng.integers(3, 9)) if n is None else n, int(rng.integers(3, 9)))

    return [row_case(rng, shape(), "random shape, eps = 0.1", eps=0.1),
            row_case(rng, shape(2), "N = 2"),
            row_case(rng, shape(), "a constant sample", kind="constant"),
            row_case(rng, shape(), checks.OFFSET_LABEL, kind="offset")]


def ln_hypotheses() -> list[checks.Hypothesis]:
    def over_batch(case):
        xhat = checks.normalized(case["x"], (0,), case["eps"])
        return checks.affine(xhat, case["gamma"], case["beta"], -1)
    return [("you normalized over the batch axis (axis 0), which is batch norm; layer norm "
             "normalizes each sample over its features: mean and var over axis 1 with "
             "keepdims=True", over_batch)] + checks.normalization_hypotheses((1,), channel_axis=-1)


def judge_ln_forward(case: dict, result: dict) -> checks.Verdict | None:
    ref = bnp.layernorm_forward(f64(case, "x"), f64(case, "gamma"), f64(case, "beta"),
                                case["eps"])[0]
    return checks.compare(result, "out", ref, case["function"], case, ln_hypotheses(),
                          checks.normalization_facts(case, (1,), channel_axis=-1))


def reference_ln_gradients(case: dict):
    _, cache = bnp.layernorm_forward(f64(case, "x"), f64(case, "gamma"), f64(case, "beta"),
                                     case["eps"])
    return bnp.layernorm_backward(f64(case, "dout"), cache)


judge_ln_backward = checks.gradient_judge(reference_ln_gradients, checks.gradient_hypotheses(
    axes=(1,), channel_axis=-1, wrong_axes=(
        ("the means in dx run over the batch (axis 0): layer norm's statistics are per sample, "
         "so the terms mean(dxhat) and mean(dxhat * xhat) run over axis 1 (keepdims=True)",
         (0,)),)))


# --- group norm ------------------------------------------------------------------------------

def group_case(rng, n, channels, groups, label, eps=1e-5, kind="plain"):
    shape = (n, channels, int(rng.integers(2, 5)), int(rng.integers(2, 5)))
    case = checks.make_case(rng, shape, f"{label}, num_groups = {groups}", eps=eps, kind=kind,
                            constant=(0, slice(0, channels // groups)))  # a group of one sample
    return dict(case, num_groups=int(groups))


def group_cases(seed):
    rng = np.random.default_rng(22 if seed is None else seed)
    if seed is None:
        return [group_case(rng, 2, 6, 2, "eps = 1e-05"),
                group_case(rng, 3, 8, 4, "eps = 0.25", eps=0.25)]

    def pick():
        return [(6, 2), (6, 3), (8, 2), (8, 4), (12, 3), (12, 4)][int(rng.integers(6))]

    return [group_case(rng, int(rng.integers(2, 5)), *pick(), "random shape", eps=0.1),
            group_case(rng, 2, *pick(), "a constant group", kind="constant"),
            group_case(rng, 3, *pick(), checks.OFFSET_LABEL, kind="offset")]


def grouped(shape_of, axes, **variant):
    """Group norm with x viewed as ``shape_of(N, C, G, H, W)`` and statistics over ``axes``;
    ``variant`` as for :func:`normalized`."""
    def recompute(case):
        x = f64(case, "x")
        n, c, h, w = x.shape
        view = x.reshape(shape_of(n, c, case["num_groups"], h, w))
        return checks.affine(checks.normalized(view, axes, case["eps"], **variant).reshape(x.shape),
                             case["gamma"], case["beta"])
    return recompute


def groups_on_axis_1(n, c, g, h, w) -> tuple[int, ...]:
    """(N, G, C // G, H, W): the view whose axes (2, 3, 4) hold one group of one sample."""
    return (n, g, c // g, h, w)


def consecutive(**variant):
    """Correct groups of C // G consecutive channels, with a normalization ``variant``."""
    return grouped(groups_on_axis_1, (2, 3, 4), **variant)


GN_HYPOTHESES: list[checks.Hypothesis] = [
    ("your groups take every num_groups-th channel (x.reshape(N, C // G, G, H, W)); a "
     "group is C // G consecutive channels: x.reshape(N, G, C // G, H, W), statistics over "
     "axes (2, 3, 4)", grouped(lambda n, c, g, h, w: (n, c // g, g, h, w), (1, 3, 4))),
    ("you made groups of num_groups channels; num_groups is the number of groups, each of "
     "C // num_groups consecutive channels: x.reshape(N, G, C // G, H, W)",
     grouped(lambda n, c, g, h, w: (n, c // g, g, h, w), (2, 3, 4))),
    ("you normalized each channel on its own (that is instance norm, num_groups = C): "
     "group the channels first, x.reshape(N, G, C // G, H, W)",
     grouped(lambda n, c, g, h, w: (n, c, h, w), (2, 3))),
    ("you normalized over all channels at once (that is layer norm, num_groups = 1): "
     "normalize each of the num_groups groups separately",
     grouped(lambda n, c, g, h, w: (n, c, h, w), (1, 2, 3))),
    ("you included the batch axis in the group statistics: group norm is per sample, "
     "statistics over axes (2, 3, 4) of x.reshape(N, G, C // G, H, W)",
     grouped(groups_on_axis_1, (0, 2, 3, 4))),
    ("you may be normalizing with the unbiased variance (ddof=1); group norm uses the "
     "biased one (divide by the group size C // G * H * W)", consecutive(ddof=1)),
    ("eps is outside the square root: divide by sqrt(var + eps), not sqrt(var) + eps",
     consecutive(eps_place="outside")),
    ("gamma and beta are swapped: out = gamma * xhat + beta (gamma scales, beta shifts)",
     lambda c: consecutive()(dict(c, gamma=c["beta"], beta=c["gamma"]))),
    *checks.eps_hypotheses(consecutive()),
]


def judge_gn(case: dict, result: dict) -> checks.Verdict | None:
    ref = bnp.groupnorm_forward(f64(case, "x"), f64(case, "gamma"), f64(case, "beta"),
                                case["num_groups"], case["eps"])[0]
    return checks.compare(result, "out", ref, case["function"], case, GN_HYPOTHESES)


def reference_gn_gradients(case: dict):
    _, cache = bnp.groupnorm_forward(f64(case, "x"), f64(case, "gamma"), f64(case, "beta"),
                                     case["num_groups"], case["eps"])
    return bnp.groupnorm_backward(f64(case, "dout"), cache)


def group_view(case: dict) -> tuple[int, ...]:
    """The case's x viewed with its groups on axis 1."""
    n, c, h, w = np.shape(case["x"])
    return groups_on_axis_1(n, c, case["num_groups"], h, w)


GROUP_AXES = ("take them over axes (2, 3, 4) of the (N, G, C // G, H, W) view, as your forward "
              "pass does")

judge_gn_backward = checks.gradient_judge(reference_gn_gradients, checks.gradient_hypotheses(
    axes=(2, 3, 4), view=group_view, wrong_axes=(
        ("the means in dx run over the batch and the positions of each channel, as in batch "
         f"norm's backward; group norm's run over each group of each sample: {GROUP_AXES}",
         (0, 3, 4)),
        ("the means in dx run over the positions of each channel of each sample, as in "
         f"instance norm's backward; group norm's run over all the channels of a group: "
         f"{GROUP_AXES}", (3, 4)),
        ("the means in dx run over all channels of each sample, as in layer norm's backward; "
         f"group norm's run over each group separately: {GROUP_AXES}", (1, 2, 3, 4)),
    )))


ASSIGNMENT = Assignment("layer_norm", chapter=6, forbidden_imports=AUTOGRAD_LIBRARIES, functions=(
    Function("layernorm_forward(x, gamma, beta, eps=1e-5) -> (out, cache)", (
        Check("layernorm_forward", "layernorm_forward matches the reference", row_cases,
              judge_ln_forward),), (
        Mistake("batch_axis", "layer norm over the batch axis (axis 0)",
                (("x.mean(axis=1, keepdims=True)", "x.mean(axis=0, keepdims=True)"),
                 ("(xmu ** 2).mean(axis=1, keepdims=True)",
                  "(xmu ** 2).mean(axis=0, keepdims=True)")),
                "over the batch axis"),
    )),
    Function("layernorm_backward(dout, cache) -> (dx, dgamma, dbeta)", (
        Check("layernorm_backward", "layernorm_backward matches the reference gradients",
              row_cases, judge_ln_backward, after="layernorm_forward"),), (
        Mistake("backward_batch_axis", "layer norm backward with the mean terms over the batch",
                (("dxhat.mean(axis=1, keepdims=True)", "dxhat.mean(axis=0, keepdims=True)"),
                 ("(dxhat * xhat).mean(axis=1, keepdims=True)",
                  "(dxhat * xhat).mean(axis=0, keepdims=True)")),
                "the means in dx run over the batch"),
        Mistake("dgamma_wrong_axis", "dgamma summed over the features",
                (("dgamma = (dout * xhat).sum(axis=0)", "dgamma = (dout * xhat).sum(axis=1)"),),
                "has one entry per feature, so sum over the batch"),
    )),
    Function("groupnorm_forward(x, gamma, beta, num_groups, eps=1e-5) -> (out, cache)", (
        Check("groupnorm_forward", "groupnorm_forward matches the reference", group_cases,
              judge_gn),), (
        Mistake("groups_interleaved", "group norm taking every G-th channel into a group",
                (("groups = x.reshape(N, num_groups, C // num_groups, H, W)",
                  "groups = x.reshape(N, C // num_groups, num_groups, H, W)"),
                 ("mean = groups.mean(axis=(2, 3, 4), keepdims=True)",
                  "mean = groups.mean(axis=(1, 3, 4), keepdims=True)"),
                 ("var = groups.var(axis=(2, 3, 4), keepdims=True)",
                  "var = groups.var(axis=(1, 3, 4), keepdims=True)")),
                "every num_groups-th channel"),
        Mistake("groups_of_size_num_groups",
                "group norm with groups of num_groups channels (count and size exchanged)",
                (("groups = x.reshape(N, num_groups, C // num_groups, H, W)",
                  "groups = x.reshape(N, C // num_groups, num_groups, H, W)"),),
                "you made groups of num_groups channels"),
        Mistake("gn_eps_twice", "group norm with eps added to the variance and under the root",
                (("var = groups.var(axis=(2, 3, 4), keepdims=True)",
                  "var = groups.var(axis=(2, 3, 4), keepdims=True) + eps"),),
                "eps is added twice"),
    )),
    Function("groupnorm_backward(dout, cache) -> (dx, dgamma, dbeta)", (
        Check("groupnorm_backward", "groupnorm_backward matches the reference gradients",
              group_cases, judge_gn_backward, after="groupnorm_forward"),), (
        Mistake("gn_backward_batch_norm_axes",
                "group norm backward with the mean terms per channel over (N, H, W)",
                (("dxhat.mean(axis=(2, 3, 4), keepdims=True)",
                  "dxhat.mean(axis=(0, 3, 4), keepdims=True)"),
                 ("(dxhat * xhat).mean(axis=(2, 3, 4), keepdims=True)",
                  "(dxhat * xhat).mean(axis=(0, 3, 4), keepdims=True)")),
                "as in batch norm's backward"),
        Mistake("gn_backward_per_channel",
                "group norm backward with the mean terms per sample and channel over (H, W)",
                (("dxhat.mean(axis=(2, 3, 4), keepdims=True)",
                  "dxhat.mean(axis=(3, 4), keepdims=True)"),
                 ("(dxhat * xhat).mean(axis=(2, 3, 4), keepdims=True)",
                  "(dxhat * xhat).mean(axis=(3, 4), keepdims=True)")),
                "as in instance norm's backward"),
        Mistake("gn_backward_without_gamma", "group norm backward with dxhat = dout",
                (("dxhat = (dout * gamma.reshape(1, C, 1, 1)).reshape(grouped)",
                  "dxhat = dout.reshape(grouped)"),),
                "dx lacks the factor gamma"),
        Mistake("gn_backward_missing_var_term",
                "group norm backward without the term through the variance",
                (("\n          - xhat * (dxhat * xhat).mean(axis=(2, 3, 4), keepdims=True)", ""),),
                "the gradient that flows through the variance"),
    )),
))
