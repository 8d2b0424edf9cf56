"""The checks of the chapter 1, 2 and 9 assignments (batch_statistics, saturation, bn_pitfalls)
on answers the catalogue does not plant: mistakes named by a hypothesis only, numbers returned in
each form NumPy gives them, and the hidden cases each battery must hold.

The solution notebooks' code runs in this process; one function at a time is replaced.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bnlib.grading import CHECKS, checks, run_check
from bnlib.grading.drivers import DRIVERS

from .test_exercise_checks import namespace_of, notebook_parts


def solution(assignment: str) -> dict:
    return namespace_of(notebook_parts(assignment)[0])


def sampled_with_ddof_1(batches):
    means, variances = batches.mean(axis=1), batches.var(axis=1)
    return means.std(ddof=1), variances.mean(), variances.std(ddof=1)


def predicted(mu4=None, sigma2_ddof=0):
    def predicted_spread(x, batch_sizes):
        n, sigma2 = batch_sizes, x.var(ddof=sigma2_ddof)
        fourth = ((x - x.mean()) ** 4).mean() if mu4 is None else mu4(x)
        spread = (fourth - (n - 3) / (n - 1) * sigma2**2) / n
        return np.sqrt(sigma2 / n), (n - 1) / n * sigma2, (n - 1) / n * np.sqrt(spread)
    return predicted_spread


def channels_last_over(axes):
    def batchnorm_channels_last(x, gamma, beta, eps=1e-5):
        xhat = (x - x.mean(axis=axes, keepdims=True)) / np.sqrt(x.var(axis=axes, keepdims=True)
                                                                + eps)
        return gamma * xhat + beta
    return batchnorm_channels_last


def channels_first_code(x, gamma, beta, eps=1e-5):
    """BN written for (N, C, H, W), run on (N, H, W, C)."""
    mean, var = x.mean(axis=(0, 2, 3), keepdims=True), x.var(axis=(0, 2, 3), keepdims=True)
    return gamma.reshape(1, -1, 1, 1) * (x - mean) / np.sqrt(var + eps) + beta.reshape(
        1, -1, 1, 1)


def eval_mode(place):
    def single_sample_outputs(x, gamma, beta, running_mean, running_var, eps=1e-5):
        train_out = beta + 0 * x
        if place == "no_sqrt":
            return train_out, gamma * (x - running_mean) / (running_var + eps) + beta
        return train_out, gamma * (x - running_mean) / np.sqrt(running_var + eps)
    return single_sample_outputs


def stack_without_bn(h, weights, use_batchnorm=False):
    fractions = []
    for w in weights:
        z = h @ w
        fractions.append(np.mean(np.abs(z) > 4.0))
        h = 1 / (1 + np.exp(-z))
    return np.array(fractions)


#: (assignment, check, the function that replaces the solution's, words its message holds)
NAMED_BY_A_HYPOTHESIS = {
    "sampled_spread over draws with ddof=1": (
        "batch_statistics", "sampled_spread", sampled_with_ddof_1,
        "std_mean divides by num_draws - 1 (ddof=1)"),
    "uncentred fourth moment": (
        "batch_statistics", "predicted_spread", predicted(mu4=lambda x: (x**4).mean()),
        "yours is mean(x**4)"),
    "population variance with ddof=1": (
        "batch_statistics", "predicted_spread", predicted(sigma2_ddof=1),
        "you used x.var(ddof=1)"),
    "mean_var without the bias": (
        "batch_statistics", "predicted_spread",
        lambda x, batch_sizes: (np.sqrt(x.var() / batch_sizes), x.var() + 0 * batch_sizes,
                                predicted()(x, batch_sizes)[2]),
        "mean_var is sigma^2 for every N"),
    "the complement of the fraction": (
        "saturation", "saturated_fraction",
        lambda z, threshold=4.0: np.mean(np.abs(z) <= threshold),
        "fraction of units that are NOT saturated"),
    "one fraction per sample": (
        "saturation", "saturated_fraction",
        lambda z, threshold=4.0: np.mean(np.abs(z) > threshold, axis=1),
        "not one per sample (axis=1)"),
    "a count instead of a fraction": (
        "saturation", "saturated_fraction",
        lambda z, threshold=4.0: np.sum(np.abs(z) > threshold),
        "that is the number of saturated entries"),
    "gamma and beta swapped before the sigmoid": (
        "saturation", "saturated_fraction_after_bn",
        lambda z, gamma, beta, eps=1e-5: np.mean(np.abs(
            beta * (z - z.mean(axis=0)) / np.sqrt(z.var(axis=0) + eps) + gamma) > 4.0),
        "gamma and beta are swapped"),
    "use_batchnorm ignored": (
        "saturation", "sigmoid_stack_saturation", stack_without_bn,
        "your fractions are those of the stack without BN"),
    "eval mode divided by the variance": (
        "bn_pitfalls", "single_sample_outputs", eval_mode("no_sqrt"),
        "running_var is a variance"),
    "eval mode without beta": (
        "bn_pitfalls", "single_sample_outputs", eval_mode("no_beta"),
        "eval_out without beta"),
    "train_out taken to be gamma": (
        "bn_pitfalls", "single_sample_outputs",
        lambda x, gamma, beta, running_mean, running_var, eps=1e-5: (
            gamma + 0 * x,
            gamma * (x - running_mean) / np.sqrt(running_var + eps) + beta),
        "train_out is gamma"),
    "identity parameters swapped": (
        "bn_pitfalls", "identity_parameters",
        lambda x, eps=1e-5: (x.mean(axis=0), np.sqrt(x.var(axis=0) + eps)),
        "gamma and beta are swapped"),
    "identity parameters per sample": (
        "bn_pitfalls", "identity_parameters",
        lambda x, eps=1e-5: (np.sqrt(x.var(axis=1) + eps), x.mean(axis=1)),
        "over axis 1, one per sample"),
    "channels-first axes, gamma on the last axis": (
        "bn_pitfalls", "batchnorm_channels_last", channels_last_over((0, 2, 3)),
        "you took the statistics over axis=(0, 2, 3)"),
    "channels-last statistics over the batch only": (
        "bn_pitfalls", "batchnorm_channels_last", channels_last_over((0,)),
        "over the batch axis only"),
}


@pytest.mark.parametrize("mistake", list(NAMED_BY_A_HYPOTHESIS))
def test_a_mistake_outside_the_catalogue_is_named(mistake):
    assignment, name, function, words = NAMED_BY_A_HYPOTHESIS[mistake]
    namespace = dict(solution(assignment), **{name: function})
    with np.errstate(all="ignore"):
        verdicts = [run_check(assignment, name, namespace, seed) for seed in (None, 17)]
    messages = [v.message for v in verdicts if not v.passed]
    assert any(words in message for message in messages), messages


@pytest.mark.parametrize("form", [float, np.float64, np.asarray])
def test_a_number_may_come_back_as_any_float_numpy_gives(form):
    namespace = solution("batch_statistics")
    right = namespace["sampled_spread"]
    namespace["sampled_spread"] = lambda batches: tuple(form(v) for v in right(batches))
    assert run_check("batch_statistics", "sampled_spread", namespace).passed
    fractions = solution("saturation")
    fraction = fractions["saturated_fraction"]
    fractions["saturated_fraction"] = lambda z, threshold=4.0: form(fraction(z, threshold))
    for name in ("saturated_fraction", "saturated_fraction_after_bn"):
        assert run_check("saturation", name, fractions, seed=5).passed


def test_a_failure_is_located_by_the_functions_first_input():
    namespace = dict(solution("saturation"), saturated_fraction=lambda z, threshold=4.0: 0.5)
    verdict = run_check("saturation", "saturated_fraction", namespace)
    assert "saturated_fraction: fraction is wrong for z of shape (16, 5)" in verdict.message
    stack = dict(solution("saturation"), sigmoid_stack_saturation=lambda h, weights,
                 use_batchnorm=False: 1 / 0)
    verdict = run_check("saturation", "sigmoid_stack_saturation", stack)
    assert "raised ZeroDivisionError: division by zero, for h of shape (64, 16)" in \
        verdict.message


def test_channels_first_code_is_named_where_h_equals_c_and_raises_where_it_does_not():
    spec = CHECKS[("bn_pitfalls", "batchnorm_channels_last")]
    cases = spec.cases(None)
    square = [c for c in cases if len(set(c["x"].shape[1:])) == 1]
    other = [c for c in cases if len(set(c["x"].shape[1:])) > 1]
    assert square and other
    for case in other:
        result = DRIVERS[spec.driver]({"batchnorm_channels_last": channels_first_code}, case)
        assert "could not be broadcast" in str(result["error"])
    namespace = dict(solution("bn_pitfalls"), batchnorm_channels_last=channels_first_code)
    verdict = run_check("bn_pitfalls", "batchnorm_channels_last", namespace)
    assert "here axis 1 is H, and since H = C nothing complained" in verdict.message


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31))
def test_hidden_batteries_hold_the_cases_the_mistakes_need(seed):
    batches = [c["batches"].shape for c in CHECKS[("batch_statistics", "batch_statistics")]
               .cases(seed)]
    assert any(d == n for d, n in batches) and any(d != n for d, n in batches)
    assert any(n == 2 for _, n in batches)
    thresholds = {c["threshold"] for c in CHECKS[("saturation", "saturated_fraction")]
                  .cases(seed)}
    assert len(thresholds) == 2 and 4.0 in thresholds
    stacks = CHECKS[("saturation", "sigmoid_stack_saturation")].cases(seed)
    assert {c["use_batchnorm"] for c in stacks} == {False, True}
    images = [c["x"].shape for c in CHECKS[("bn_pitfalls", "batchnorm_channels_last")]
              .cases(seed)]
    assert any(len(set(s[1:])) == 1 for s in images)
    assert any(len(set(s[1:])) == 3 for s in images)
    single = CHECKS[("bn_pitfalls", "single_sample_outputs")].cases(seed)
    assert all(c["x"].shape[0] == 1 for c in single)
    assert {c["x"].dtype for c in single} == {np.dtype(np.float64), np.dtype(np.float32)}


def test_compare_number_names_the_mistake_of_a_result_that_is_an_array():
    case = {"z": np.zeros((2, 3)), "label": "two samples", "kind": "plain", **checks.FLOAT64_TOL}
    per_row = [("one per row", lambda case: np.array([0.5, 1.0]))]
    verdict = checks.compare_number({"n": np.array([0.5, 1.0]), "n.type": np.array(
        "numpy.ndarray")}, "n", 0.75, "f", case, per_row)
    assert verdict.diagnosed
    assert verdict.message == ("f must return n as one finite number; got numpy.ndarray for "
                               "two samples: one per row")
