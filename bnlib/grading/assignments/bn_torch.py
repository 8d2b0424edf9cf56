"""Assignment bn_torch: BatchNormFunction (autograd.Function) and BatchNorm2d (nn.Module).

The ground truth is torch.nn itself: torch.nn.functional.batch_norm and torch.nn.BatchNorm2d.
"""

from __future__ import annotations

import numpy as np

from bnlib.grading.checks import (
    Check,
    Hypothesis,
    Verdict,
    affine,
    channel_axes,
    compare,
    edge_cases,
    f64,
    failure_from_driver,
    fixed_cases,
    normalization_facts,
    normalized,
    random_cases,
)

ASSIGNMENT = "bn_torch"
TENSOR = "torch.Tensor"
FLOAT32_TOL = {"rtol": 1e-4, "atol": 1e-5}


def torch_reference(case: dict):
    """out, dx, dweight, dbias of training-mode F.batch_norm, in float64."""
    import torch

    x = torch.tensor(f64(case, "x"), requires_grad=True)
    weight = torch.tensor(f64(case, "gamma"), requires_grad=True)
    bias = torch.tensor(f64(case, "beta"), requires_grad=True)
    out = torch.nn.functional.batch_norm(x, None, None, weight, bias, training=True,
                                         eps=case["eps"])
    (out * torch.tensor(f64(case, "dout"))).sum().backward()
    return [t.detach().numpy() for t in (out, x.grad, weight.grad, bias.grad)]


def staged_dx(case, var_term=1.0, mean_term=1.0):
    """dx of BN over every axis but 1, with the variance or the mean term scaled."""
    x, dout = f64(case, "x"), f64(case, "dout")
    axes = channel_axes(x.ndim)
    xhat = normalized(x, axes, case["eps"])
    inv_std = 1.0 / np.sqrt(x.var(axis=axes, keepdims=True) + case["eps"])
    dxhat = dout * f64(case, "gamma").reshape((1, -1) + (1,) * (x.ndim - 2))
    return inv_std * (dxhat - mean_term * dxhat.mean(axis=axes, keepdims=True)
                      - var_term * xhat * (dxhat * xhat).mean(axis=axes, keepdims=True))


def judge_function(case: dict, result: dict) -> Verdict:
    function = "BatchNormFunction"
    failure = failure_from_driver(result, function)
    if failure:
        return failure
    out, dx, dweight, dbias = torch_reference(case)
    axes = channel_axes(np.ndim(case["x"]))
    forward_hypotheses: list[Hypothesis] = [
        ("your output has variance {xhat_var:.3f} per channel at N = {n} (expected about 1): "
         "torch.var and Tensor.var are unbiased by default (ddof=1); batch norm normalises "
         "with the biased variance: x.var(dim=..., unbiased=False) or correction=0",
         lambda c: affine(normalized(c["x"], axes, c["eps"], ddof=1), c["gamma"], c["beta"])),
        ("eps is outside the square root: divide by sqrt(var + eps)",
         lambda c: affine(normalized(c["x"], axes, c["eps"], eps_place="outside"),
                          c["gamma"], c["beta"])),
        ("weight and bias are swapped: out = weight * xhat + bias",
         lambda c: affine(normalized(c["x"], axes, c["eps"]), c["beta"], c["gamma"])),
    ]
    verdict = compare(result, "out", out, f"{function}.apply", case, forward_hypotheses,
                      normalization_facts(case, axes), TENSOR)
    if verdict:
        return verdict
    for key in ("dx", "dgamma", "dbeta"):
        if key not in result:
            return Verdict(False, f"{function}.backward gave no gradient for "
                                  f"{ {'dx': 'x', 'dgamma': 'weight', 'dbeta': 'bias'}[key]}: "
                                  f"return one gradient per input of forward, in order")
        result.setdefault(f"{key}.type", np.array(TENSOR))
    got_w, got_b = np.asarray(result["dgamma"]), np.asarray(result["dbeta"])
    if got_w.shape == dbias.shape and np.allclose(got_w, dbias, rtol=1e-5, atol=1e-7) \
            and np.allclose(got_b, dweight, rtol=1e-5, atol=1e-7):
        return Verdict(False, f"{function}.backward returns the gradients in the wrong order: "
                              f"return them in the order of forward's inputs, (grad_x, "
                              f"grad_weight, grad_bias, None for eps)", diagnosed=True)
    dx_hypotheses: list[Hypothesis] = [
        ("dx is missing the term xhat * mean(dxhat * xhat), the gradient that flows through "
         "the variance", lambda c: staged_dx(c, var_term=0.0)),
        ("dx is missing the term mean(dxhat), the gradient that flows through the mean",
         lambda c: staged_dx(c, mean_term=0.0)),
    ]
    for key, ref, hypotheses in (("dgamma", dweight, []), ("dbeta", dbias, []),
                                 ("dx", dx, dx_hypotheses)):
        verdict = compare(result, key, ref, f"{function}.backward", case, hypotheses,
                          lambda got: {}, TENSOR)
        if verdict:
            return verdict
    return Verdict(True, f"{function} is correct")


def function_cases(seed):
    if seed is None:
        return fixed_cases((4, 3, 2, 2)) + fixed_cases((6, 3))[:1]
    return random_cases(seed, ndim=4) + random_cases(seed + 1, ndim=2)[:1]


def function_edge_cases(seed):
    return edge_cases(seed, ndim=4)


# --- the module ------------------------------------------------------------------------------

def module_cases(seed):
    rng = np.random.default_rng(31 if seed is None else seed)
    shapes = [(4, 3, 2, 2)] if seed is None else [
        (int(rng.integers(2, 6)), int(rng.integers(2, 5)), int(rng.integers(2, 4)),
         int(rng.integers(2, 4))), (2, 3, 1, 1)]
    cases = []
    for shape in shapes:
        channels = shape[1]
        batches = (rng.normal(size=(3, *shape)) * rng.uniform(0.5, 2.0, (1, 1, channels, 1, 1))
                   + rng.normal(0, 1, (1, 1, channels, 1, 1)))
        gamma = rng.uniform(0.5, 2.0, channels)
        momentum = 0.1 if seed is None else float(rng.uniform(0.05, 0.5))
        cases.append({
            "batches": batches.astype(np.float32),
            "x_eval": (rng.normal(size=shape) + 0.3).astype(np.float32),
            "gamma": gamma.astype(np.float32),
            "beta": rng.normal(0.5, 1.0, channels).astype(np.float32),
            "dout": rng.normal(size=shape).astype(np.float32),
            "eps": 1e-5, "momentum": momentum,
            "label": f"3 training batches, momentum = {momentum:.3g}", "kind": "plain",
            **FLOAT32_TOL,
        })
    return cases


def module_reference(case: dict, *, keras=False, bessel=True, eval_batch_stats=False):
    """What torch.nn.BatchNorm2d gives for the case's sequence of calls (or under a mistake)."""
    import torch

    batches = case["batches"]
    module = torch.nn.BatchNorm2d(batches.shape[2], eps=case["eps"],
                                  momentum=1 - case["momentum"] if keras else case["momentum"])
    with torch.no_grad():
        module.weight.copy_(torch.tensor(case["gamma"]))
        module.bias.copy_(torch.tensor(case["beta"]))
    x = torch.tensor(batches[0], requires_grad=True)
    out_train = module(x)
    (out_train * torch.tensor(case["dout"])).sum().backward()
    for batch in batches[1:]:
        module(torch.tensor(batch))
    running_var = module.running_var.numpy().copy()
    if not bessel:
        # Recompute the running variance from biased batch variances.
        running_var = np.ones(batches.shape[2])
        factor = 1 - case["momentum"] if keras else case["momentum"]
        for batch in batches.astype(np.float64):
            running_var = (1 - factor) * running_var + factor * batch.var(axis=(0, 2, 3))
    module.eval()
    x_eval = torch.tensor(case["x_eval"])
    if eval_batch_stats:
        out_eval = torch.nn.functional.batch_norm(x_eval, None, None, module.weight, module.bias,
                                                  training=True, eps=case["eps"])
    else:
        out_eval = module(x_eval)
    return {
        "state_dict_keys": list(module.state_dict().keys()),
        "out_train": out_train.detach().numpy(), "dx": x.grad.numpy(),
        "running_mean": module.running_mean.numpy().copy(), "running_var": running_var,
        "num_batches_tracked": module.num_batches_tracked.numpy().copy(),
        "out_eval": out_eval.detach().numpy(),
    }


KERAS = ("your running statistics follow the Keras momentum convention (momentum weights the "
         "old value); torch.nn.BatchNorm2d uses running = (1 - momentum) * running + momentum * "
         "batch")
BIASED = ("running_var must be updated with the unbiased batch variance (Bessel's correction, "
          "n / (n - 1) with n = N * H * W), as torch.nn.BatchNorm2d does; you used the biased "
          "variance that normalises the batch")


def judge_module(case: dict, result: dict) -> Verdict:
    function = "BatchNorm2d"
    ref = module_reference(case)
    keys = [k for k in str(np.asarray(result.get("state_dict_keys", "")).item()).split(",") if k]
    if "state_dict_keys" in result and set(keys) != set(ref["state_dict_keys"]):
        return Verdict(False, f"{function}'s state_dict keys are {keys}; torch.nn.BatchNorm2d has "
                              f"{ref['state_dict_keys']}: name the parameters weight and bias "
                              f"(nn.Parameter) and register running_mean, running_var and "
                              f"num_batches_tracked with self.register_buffer", diagnosed=True)
    failure = failure_from_driver(result, function)
    if failure:
        return failure
    steps = case["batches"].shape[0]
    checks = [
        ("out_train", [], "the training-mode output"),
        ("dx", [], "the gradient with respect to the input"),
        ("running_mean", [(KERAS, lambda c: module_reference(c, keras=True)["running_mean"])],
         "running_mean"),
        ("running_var", [(BIASED, lambda c: module_reference(c, bessel=False)["running_var"]),
                         (KERAS, lambda c: module_reference(c, keras=True)["running_var"])],
         "running_var"),
        ("out_eval", [("in eval mode BatchNorm2d must normalise with running_mean and "
                       "running_var; your output uses the statistics of the batch (check "
                       "self.training in forward)",
                       lambda c: module_reference(c, eval_batch_stats=True)["out_eval"])],
         "the eval-mode output"),
    ]
    for key, hypotheses, what in checks:
        if key not in result and f"{key}.type" not in result:
            return Verdict(False, f"{function}: {what} is missing after {steps} training "
                                  f"steps; keep it as a tensor attribute / buffer named {key}")
        verdict = compare(result, key, np.asarray(ref[key], np.float64), function, case,
                          hypotheses, lambda got: {}, TENSOR)
        if verdict:
            return verdict
    grad_fn = str(np.asarray(result.get("grad_fn", "")).item())
    if grad_fn != "BatchNormFunctionBackward":
        return Verdict(False, f"{function} must use BatchNormFunction.apply in training mode; "
                              f"its output came from {grad_fn or 'no autograd node'}",
                       diagnosed=True)
    tracked = np.asarray(result.get("num_batches_tracked", -1))
    if tracked.shape != () or int(tracked) != steps:
        return Verdict(False, f"{function}: num_batches_tracked must count the training "
                              f"batches ({steps}); got {tracked}")
    return Verdict(True, f"{function} behaves like torch.nn.BatchNorm2d")


CHECKS = [
    Check(ASSIGNMENT, "BatchNormFunction", ("BatchNormFunction",), "torch_function",
          "BatchNormFunction matches torch.nn.functional.batch_norm", function_cases,
          judge_function),
    Check(ASSIGNMENT, "BatchNormFunction_edge_cases", ("BatchNormFunction",), "torch_function",
          "BatchNormFunction handles N = 2, a constant channel and float32",
          function_edge_cases, judge_function),
    Check(ASSIGNMENT, "BatchNorm2d", ("BatchNorm2d",), "torch_module",
          "BatchNorm2d behaves like torch.nn.BatchNorm2d", module_cases, judge_module),
]
