"""Assignment bn_torch: BatchNormFunction (autograd.Function) and BatchNorm2d (nn.Module).

The ground truth is torch.nn itself: torch.nn.functional.batch_norm and torch.nn.BatchNorm2d.
"""

from __future__ import annotations

import numpy as np

from bnlib.grading import checks
from bnlib.grading.checks import Assignment, Check, Function, Mistake, Verdict, f64
from bnlib.grading.drivers import MODULE_OPTIONS as OPTIONS
from bnlib.grading.drivers import MODULE_STATE as STATE
from bnlib.numpy import reduction_axes

TENSOR = "torch.Tensor"
GRADIENT_OF = {"dx": "x", "dgamma": "weight", "dbeta": "bias"}

# --- BatchNormFunction -----------------------------------------------------------------------

def torch_reference(case: dict):
    """out, dx, dweight, dbias of training-mode F.batch_norm, in float64."""
    import torch

    x, weight, bias = (torch.tensor(f64(case, k), requires_grad=True)
                       for k in ("x", "gamma", "beta"))
    out = torch.nn.functional.batch_norm(x, None, None, weight, bias, training=True,
                                         eps=case["eps"])
    (out * torch.tensor(f64(case, "dout"))).sum().backward()
    return [t.detach().numpy() for t in (out, x.grad, weight.grad, bias.grad)]


def forward_hypotheses(case: dict) -> list[checks.Hypothesis]:
    axes = reduction_axes(case["x"])
    return [("your output has variance {xhat_var:.3f} per channel at N = {n} (expected about "
             "1): torch.var and Tensor.var are unbiased by default (ddof=1); batch norm "
             "normalizes with the biased variance: x.var(dim=..., unbiased=False) or "
             "correction=0",
             lambda c: checks.affine(checks.normalized(c["x"], axes, c["eps"], ddof=1), c["gamma"],
                                     c["beta"])),
            *checks.normalization_hypotheses(axes)[1:]]


judge_gradients = checks.gradient_judge(lambda case: torch_reference(case)[1:],
                                        checks.gradient_hypotheses(), expected_type=TENSOR)


def judge_function(case: dict, result: dict) -> Verdict | None:
    function = "BatchNormFunction"
    verdict = checks.compare(result, "out", torch_reference(case)[0], f"{function}.apply", case,
                             forward_hypotheses(case),
                             checks.normalization_facts(case, reduction_axes(case["x"])), TENSOR)
    if verdict:
        return verdict
    for key, name in GRADIENT_OF.items():
        if key not in result:
            return Verdict(False, f"{function}.backward gave no gradient for {name}: return "
                           f"one gradient per input of forward, in order")
    return judge_gradients(dict(case, function=f"{function}.backward"), result)


def rank_case(rng, ndim: int, label: str) -> dict:
    """A case of ``ndim`` dimensions: code written for 2-D and 4-D inputs only fails here."""
    return checks.make_case(rng, checks.random_shape(rng, ndim), label, kind="rank")


def function_cases(seed):
    if seed is None:
        rng = np.random.default_rng(51)
        return (checks.fixed_cases((4, 3, 2, 2)) + checks.fixed_cases((6, 3))[:1]
                + [rank_case(rng, 3, "(N, C, L) input")])
    rng = np.random.default_rng(seed + 2)
    return (checks.random_cases(seed, ndim=4) + checks.random_cases(seed + 1, ndim=2)[:1]
            + [rank_case(rng, 3, "(N, C, L) input"), rank_case(rng, 5, "(N, C, D, H, W) input")])


def function_edge_cases(seed):
    return checks.edge_cases(seed, ndim=4)


# --- BatchNorm2d -----------------------------------------------------------------------------



def module_case(rng, shape, label, eps=1e-5, momentum=0.1, affine=True,
                track_running_stats=True) -> dict:
    channels = shape[1]
    batches = (rng.normal(size=(3, *shape)) * rng.uniform(0.5, 2.0, (1, 1, channels, 1, 1))
               + rng.normal(0, 1, (1, 1, channels, 1, 1)))
    return {
        "batches": batches.astype(np.float32),
        "x_eval": (rng.normal(size=shape) + 0.3).astype(np.float32),
        "gamma": rng.uniform(0.5, 2.0, channels).astype(np.float32),
        "beta": rng.normal(0.5, 1.0, channels).astype(np.float32),
        "dout": rng.normal(size=shape).astype(np.float32),
        "eps": float(eps), "momentum": float(momentum), "affine": affine,
        "track_running_stats": track_running_stats,
        "label": f"3 training batches, {label}", "kind": "plain", **checks.FLOAT32_TOL,
    }


def module_cases(seed):
    rng = np.random.default_rng(31 if seed is None else seed)
    if seed is None:
        return [module_case(rng, (4, 3, 2, 2), "the default arguments"),
                module_case(rng, (4, 3, 3, 2), "eps = 0.25, momentum = 0.3", eps=0.25,
                            momentum=0.3),
                module_case(rng, (4, 3, 2, 2), "affine=False", affine=False),
                module_case(rng, (4, 3, 2, 2), "track_running_stats=False",
                            track_running_stats=False)]
    eps, momentum = float(rng.uniform(0.01, 0.2)), float(rng.uniform(0.05, 0.5))
    return [module_case(rng, checks.random_shape(rng, 4, n=int(rng.integers(2, 6))),
                        f"eps = {eps:.3g}, momentum = {momentum:.3g}", eps=eps, momentum=momentum),
            module_case(rng, (2, 3, 1, 1), "N * H * W = 2"),
            module_case(rng, checks.random_shape(rng, 4), "affine=False, track_running_stats=False",
                        affine=False, track_running_stats=False)]


def module_reference(case: dict) -> dict:
    """What torch.nn.BatchNorm2d gives for the case's sequence of calls, as arrays."""
    import torch

    batches = case["batches"]
    module = torch.nn.BatchNorm2d(batches.shape[2], **{k: case[k] for k in OPTIONS})
    state = {"state_dict_keys": list(module.state_dict().keys()),
             **state_of(module, "init.")}
    if module.affine:
        with torch.no_grad():
            module.weight.copy_(torch.tensor(case["gamma"]))
            module.bias.copy_(torch.tensor(case["beta"]))
    x = torch.tensor(batches[0], requires_grad=True)
    out_train = module(x)
    (out_train * torch.tensor(case["dout"])).sum().backward()
    for batch in batches[1:]:
        module(torch.tensor(batch))
    state.update(out_train=out_train.detach().numpy(), dx=x.grad.numpy(),
                 **state_of(module, ""))
    module.eval()
    return {**state, "out_eval": module(torch.tensor(case["x_eval"])).detach().numpy(),
            **state_of(module, "eval.")}


def state_of(module, prefix: str) -> dict:
    return {prefix + name: getattr(module, name).detach().numpy().copy() for name in STATE
            if getattr(module, name) is not None}


def running_variant(case: dict, key: str, **mistake):
    """running_mean or running_var after the training batches under a mistake."""
    momentum = mistake.pop("momentum", case["momentum"])
    if momentum == case["momentum"] and not mistake:
        raise ValueError("the same update: not a distinct hypothesis")
    channels = case["batches"].shape[2]
    stats = checks.running_statistics(case["batches"], np.zeros(channels), np.ones(channels),
                                      momentum, **mistake)
    return stats[("running_mean", "running_var").index(key)]


BESSEL_WITH_N = ("running_var's Bessel correction must use n = N * H * W, the number of values "
                 "each channel's variance is taken over; you used n = N, the batch size")


def running_hypotheses(key: str) -> list[checks.Hypothesis]:
    mistakes = [(checks.KERAS_MOMENTUM, {"keras": True}),
                (checks.HARD_CODED_MOMENTUM, {"momentum": 0.1})]
    if key == "running_var":
        mistakes = [(checks.BIASED_RUNNING_VAR, {"bessel": "none"}),
                    (BESSEL_WITH_N, {"bessel": "batch"}), *mistakes]
    return [(message, lambda c, m=mistake: running_variant(c, key, **m))
            for message, mistake in mistakes]


def train_output(case: dict) -> np.ndarray:
    """The training-mode output in float64 (weight 1 and bias 0 without affine)."""
    x = f64(case, "batches")[0]
    gamma, beta = (case["gamma"], case["beta"]) if case["affine"] else (1.0, 0.0)
    return checks.affine(checks.normalized(x, (0, 2, 3), case["eps"]), np.ones(x.shape[1]) * gamma,
                         np.ones(x.shape[1]) * beta)


def eval_with_batch_statistics(case: dict) -> np.ndarray:
    return train_output(dict(case, batches=np.asarray(case["x_eval"])[None]))


MODULE_HYPOTHESES: dict[str, list[checks.Hypothesis]] = {
    "out_train": checks.eps_hypotheses(train_output),
    "dx": [],
    "running_mean": running_hypotheses("running_mean"),
    "running_var": running_hypotheses("running_var"),
    "out_eval": [("in eval mode BatchNorm2d must normalize with running_mean and running_var; "
                  "your output uses the statistics of the batch (check self.training in "
                  "forward)", eval_with_batch_statistics)],
}
EVAL_CHANGES_STATE = ("BatchNorm2d changed its running statistics in eval mode ({key} differs "
                      "after an eval-mode call): update running_mean, running_var and "
                      "num_batches_tracked only when self.training")


def state_problem(result: dict, ref: dict, prefix: str) -> str:
    """The first parameter or buffer named ``<prefix><name>`` that differs from the
    reference's (prefix "init." or "eval."), or ''."""
    for key in (prefix + name for name in STATE if prefix + name in ref):
        got = result.get(key)
        if got is None or np.shape(got) != ref[key].shape or not np.allclose(
                np.asarray(got, np.float64), ref[key], rtol=1e-5, atol=1e-6):
            return key
    return ""


def judge_module(case: dict, result: dict) -> Verdict | None:
    function, ref = "BatchNorm2d", module_reference(case)
    options = ", ".join(f"{k}={case[k]!r}" for k in OPTIONS)
    keys = [k for k in str(np.asarray(result.get("state_dict_keys", "")).item()).split(",") if k]
    if set(keys) != set(ref["state_dict_keys"]):
        return Verdict(False, f"{function}({options})'s state_dict keys are {keys}; "
                       f"torch.nn.BatchNorm2d has {ref['state_dict_keys']}: name the "
                       f"parameters weight and bias (nn.Parameter, or None without "
                       f"affine) and register running_mean, running_var and "
                       f"num_batches_tracked with self.register_buffer (None without "
                       f"track_running_stats)", diagnosed=True)
    wrong = state_problem(result, ref, "init.")
    if wrong:
        return Verdict(False, f"{function}({options}) must start as torch.nn.BatchNorm2d does "
                       f"(weight = 1, bias = 0, running_mean = 0, running_var = 1, "
                       f"num_batches_tracked = 0); yours starts with {wrong[5:]} = "
                       f"{result.get(wrong)}", diagnosed=True)
    steps = case["batches"].shape[0]
    for key, hypotheses in MODULE_HYPOTHESES.items():
        if key not in ref:
            continue
        if key == "out_eval" and state_problem(result, ref, "eval."):
            return Verdict(False, EVAL_CHANGES_STATE.format(key=state_problem(
                result, ref, "eval.")[5:]), diagnosed=True)
        if key not in result and f"{key}.type" not in result:
            return Verdict(False, f"{function}: {key} is missing after {steps} training "
                           f"steps; keep it as a tensor attribute / buffer named {key}")
        verdict = checks.compare(result, key, np.asarray(ref[key], np.float64), function, case,
                                 hypotheses, lambda got: {"count": "N * H * W"}, TENSOR)
        if verdict:
            return verdict
    grad_fn = str(np.asarray(result.get("grad_fn", "")).item())
    if grad_fn != "BatchNormFunctionBackward":
        return Verdict(False, f"{function} must use BatchNormFunction.apply in training mode; "
                       f"its output came from {grad_fn or 'no autograd node'}",
                       diagnosed=True)
    tracked = result.get("num_batches_tracked", np.array(-1))
    if "num_batches_tracked" in ref and not np.array_equal(tracked, ref["num_batches_tracked"]):
        return Verdict(False, f"{function}: num_batches_tracked must count the training "
                       f"batches ({steps}); got {tracked}")
    return None


ASSIGNMENT = Assignment("bn_torch", chapter=8, functions=(
    Function("class BatchNormFunction(torch.autograd.Function) with static forward(ctx, x, "
             "weight, bias, eps) and backward(ctx, grad_out)", (
                 Check("BatchNormFunction", "BatchNormFunction matches "
                       "torch.nn.functional.batch_norm", function_cases, judge_function),
                 Check("BatchNormFunction_edge_cases", "BatchNormFunction handles N = 2, "
                       "float32, a constant channel and a large mean", function_edge_cases,
                       judge_function)), (
        Mistake("torch_var_unbiased", "Tensor.var's default (unbiased) in the forward pass",
                (("x.var(dim=dims, unbiased=False, keepdim=True)",
                  "x.var(dim=dims, keepdim=True)"),),
                "unbiased by default"),
        Mistake("backward_wrong_order", "backward returning grad_bias and grad_weight in the "
                "wrong order",
                (("return grad_x, grad_weight, grad_bias, None",
                  "return grad_x, grad_bias, grad_weight, None"),),
                "gradients in the wrong order"),
        Mistake("backward_missing_xhat_term", "autograd.Function backward without the variance "
                "term",
                (("\n                            - xhat * (dxhat * xhat).mean(dim=dims, "
                  "keepdim=True))", ")"),),
                "flows through the variance"),
        Mistake("only_2d_and_4d", "statistics over (0,) or (0, 2, 3): only 2-D and 4-D inputs",
                (("dims = [0, *range(2, x.dim())]", "dims = [0] if x.dim() == 2 else [0, 2, 3]"),),
                "whatever the number of dimensions"),
    ), driver="torch_function", inputs=("x",)),
    Function("class BatchNorm2d(torch.nn.Module) with __init__(self, num_features, eps=1e-5, "
             "momentum=0.1, affine=True, track_running_stats=True)", (
                 Check("BatchNorm2d", "BatchNorm2d behaves like torch.nn.BatchNorm2d",
                       module_cases, judge_module),), (
        Mistake("eval_uses_batch_stats", "BatchNorm2d normalizing with batch statistics in "
                "eval mode",
                (("        if not self.training and self.track_running_stats:\n",
                  "        if False:  # eval mode not handled\n"),),
                "your output uses the statistics of the batch"),
        Mistake("eval_updates_running_stats", "BatchNorm2d updating its running statistics in "
                "eval mode too",
                (("        if self.training and self.track_running_stats:\n",
                  "        if self.track_running_stats:\n"),),
                "changed its running statistics in eval mode"),
        Mistake("running_var_biased", "BatchNorm2d updating running_var with the biased "
                "variance",
                (("batch_var = x.var(dim=(0, 2, 3), unbiased=False) * n / (n - 1)",
                  "batch_var = x.var(dim=(0, 2, 3), unbiased=False)"),),
                "running_var must be updated with the unbiased batch variance"),
        Mistake("bessel_with_batch_size", "Bessel's correction with n = N, not N * H * W",
                (("n = x.numel() // x.shape[1]", "n = x.shape[0]"),),
                "must use n = N * H * W"),
        Mistake("keras_momentum", "BatchNorm2d with momentum weighting the old value",
                (("self.running_mean.mul_(1 - self.momentum).add_(self.momentum * batch_mean)",
                  "self.running_mean.mul_(self.momentum).add_((1 - self.momentum) * batch_mean)"),
                 ("self.running_var.mul_(1 - self.momentum).add_(self.momentum * batch_var)",
                  "self.running_var.mul_(self.momentum).add_((1 - self.momentum) * batch_var)")),
                "Keras momentum convention"),
        Mistake("hard_coded_momentum", "BatchNorm2d ignoring its momentum argument",
                (("        self.momentum = momentum\n", "        self.momentum = 0.1\n"),),
                "ignores the momentum argument"),
        Mistake("ignores_eps", "BatchNorm2d ignoring its eps argument",
                (("        self.eps = eps\n", "        self.eps = 1e-5\n"),),
                "ignores the eps argument"),
        Mistake("ignores_affine", "BatchNorm2d keeping weight and bias when affine=False",
                (("        if affine:\n", "        if True:  # always learn a scale and shift\n"),),
                "or None without affine"),
        Mistake("ignores_track_running_stats",
                "BatchNorm2d keeping running statistics when track_running_stats=False",
                (("        if track_running_stats:\n",
                  "        if True:  # always keep running statistics\n"),),
                "(None without track_running_stats)"),
        Mistake("random_weight", "BatchNorm2d starting from a random weight",
                (("self.weight = nn.Parameter(torch.ones(num_features))",
                  "self.weight = nn.Parameter(torch.rand(num_features))"),),
                "must start as torch.nn.BatchNorm2d does"),
        Mistake("parameters_named_gamma_beta", "parameters named gamma and beta, so the "
                "state_dict differs from torch.nn's",
                (("self.weight = nn.Parameter(torch.ones(num_features))",
                  "self.gamma = nn.Parameter(torch.ones(num_features))"),
                 ("self.bias = nn.Parameter(torch.zeros(num_features))",
                  "self.beta = nn.Parameter(torch.zeros(num_features))"),
                 ("weight = self.weight if", "weight = self.gamma if"),
                 ("bias = self.bias if", "bias = self.beta if")),
                "state_dict keys"),
    ), driver="torch_module", inputs=("x_eval",)),
))
