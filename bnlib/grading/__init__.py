"""bnlib.grading: the checks that the exercises' test cells call.

In a notebook::

    from bnlib.grading import check
    check("bn_forward", "batchnorm_forward", globals())             # visible test: fixed cases
    check("bn_forward", "batchnorm_forward", globals(), seed=4821)  # hidden test: random battery

``check`` looks the graded functions up in the namespace, runs them on the check's cases
(through :mod:`bnlib.grading.drivers`), judges each result against the reference
(:mod:`bnlib.grading.checks`), prints one line on success and raises ``AssertionError`` with a
message that names the likely mistake on failure.
"""

from __future__ import annotations

from bnlib.grading.assignments import (
    bn_backward,
    bn_forward,
    bn_inference,
    bn_torch,
    layer_norm,
)
from bnlib.grading.checks import Check, Verdict, combine
from bnlib.grading.drivers import DRIVERS

CHECKS: dict[tuple[str, str], Check] = {
    (c.assignment, c.name): c
    for module in (bn_forward, bn_backward, bn_inference, layer_norm, bn_torch)
    for c in module.CHECKS
}

ASSIGNMENTS = ("bn_forward", "bn_backward", "bn_inference", "layer_norm", "bn_torch")

SIGNATURES = {
    "batchnorm_forward": "batchnorm_forward(x, gamma, beta, eps=1e-5) -> (out, cache)",
    "spatial_batchnorm_forward":
        "spatial_batchnorm_forward(x, gamma, beta, eps=1e-5) -> (out, cache)",
    "batchnorm_backward": "batchnorm_backward(dout, cache) -> (dx, dgamma, dbeta)",
    "batchnorm_backward_alt": "batchnorm_backward_alt(dout, cache) -> (dx, dgamma, dbeta)",
    "update_running_stats": "update_running_stats(running_mean, running_var, x, momentum=0.1) "
                            "-> (running_mean, running_var)",
    "batchnorm_inference": "batchnorm_inference(x, gamma, beta, running_mean, running_var, "
                           "eps=1e-5) -> out",
    "fold_batchnorm": "fold_batchnorm(W, b, gamma, beta, running_mean, running_var, eps=1e-5) "
                      "-> (W_folded, b_folded)",
    "layernorm_forward": "layernorm_forward(x, gamma, beta, eps=1e-5) -> (out, cache)",
    "layernorm_backward": "layernorm_backward(dout, cache) -> (dx, dgamma, dbeta)",
    "groupnorm_forward": "groupnorm_forward(x, gamma, beta, num_groups, eps=1e-5) "
                         "-> (out, cache)",
    "BatchNormFunction": "class BatchNormFunction(torch.autograd.Function) with static "
                         "forward(ctx, x, weight, bias, eps) and backward(ctx, grad_out)",
    "BatchNorm2d": "class BatchNorm2d(torch.nn.Module) with __init__(self, num_features, "
                   "eps=1e-5, momentum=0.1)",
}


# Libraries that compute gradients or normalizations for the student: the NumPy assignments
# exist to make students write these themselves, so student code may not import them there.
AUTOGRAD_LIBRARIES = ("autograd", "chainer", "functorch", "jax", "jaxlib", "keras", "mxnet",
                      "paddle", "sympy", "tensorflow", "tinygrad", "torch")

FORBIDDEN_IMPORTS = {
    "bn_forward": AUTOGRAD_LIBRARIES,
    "bn_backward": AUTOGRAD_LIBRARIES,
    "bn_inference": AUTOGRAD_LIBRARIES,
    "layer_norm": AUTOGRAD_LIBRARIES,
    "bn_torch": (),
}


def forbidden_imports(assignment: str) -> tuple[str, ...]:
    """Top-level packages that student code of ``assignment`` may not import."""
    if assignment not in FORBIDDEN_IMPORTS:
        raise KeyError(f"no assignment {assignment!r}")
    return FORBIDDEN_IMPORTS[assignment]


def find_functions(check_spec: Check, namespace: dict) -> dict:
    """The graded names from ``namespace``; AssertionError naming the first missing one."""
    functions = {}
    for name in check_spec.functions:
        if name not in namespace:
            raise AssertionError(f"define {SIGNATURES[name]} in this notebook (run the cell "
                                 f"that defines it first)")
        functions[name] = namespace[name]
    return functions


def run_check(assignment: str, name: str, namespace: dict, seed: int | None = None) -> Verdict:
    """Run one check in this process and return its combined verdict."""
    try:
        spec = CHECKS[(assignment, name)]
    except KeyError:
        raise KeyError(f"no check {name!r} in assignment {assignment!r}") from None
    functions = find_functions(spec, namespace)
    driver = DRIVERS[spec.driver]
    return combine([spec.judge(case, driver(functions, case)) for case in spec.cases(seed)])


def check(assignment: str, name: str, namespace: dict, seed: int | None = None) -> None:
    """Grade ``name`` of ``assignment`` on the functions in ``namespace`` (see module doc)."""
    verdict = run_check(assignment, name, namespace, seed)
    if not verdict.passed:
        raise AssertionError(verdict.message)
    spec = CHECKS[(assignment, name)]
    print(f"passed: {spec.description}" + (" (hidden cases)" if seed is not None else ""))


__all__ = ["ASSIGNMENTS", "CHECKS", "Check", "Verdict", "check", "combine", "forbidden_imports",
           "run_check"]
