"""The references and cases of the chapter 7 and chapter 8 assignments (scale_invariance,
bn_bytes), and the comparison of numbers they share; nbgrader itself is driven in
test_nbgrader_course.py, the solutions and the catalogue in test_exercise_checks.py."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import bnlib.torch
from bnlib.experiments import roofline
from bnlib.grading import CHECKS, checks
from bnlib.grading.assignments import bn_bytes, scale_invariance

CASE = {"label": "lr = 0.5, weight_decay = 0.01", "kind": "plain", **checks.FLOAT64_TOL}


@pytest.mark.parametrize("value", [3, np.int64(3), 3.0, np.float32(3.0), np.float64(3.0)])
def test_compare_number_accepts_any_real_number(value):
    assert checks.compare_number({"n": np.asarray(value)}, "n", 3.0, "f", CASE) is None


@pytest.mark.parametrize(("result", "says"), [
    ({}, "f must return n as one finite number; got nothing for lr = 0.5, weight_decay = 0.01"),
    ({"n": np.array([3.0]), "n.type": np.array("list")}, "as one finite number; got list"),
    ({"n": np.array(True), "n.type": np.array("bool")}, "as one finite number; got bool"),
    ({"n": np.array(np.nan), "n.type": np.array("float")}, "as one finite number; got float"),
    ({"n": np.array(4.0)}, "f: n is wrong for lr = 0.5, weight_decay = 0.01: yours is 4 µs, "
                           "expected 3 µs"),
])
def test_compare_number_says_what_is_wrong(result, says):
    verdict = checks.compare_number(result, "n", 3.0, "f", CASE, unit=" µs")
    assert not verdict.passed and not verdict.diagnosed and says in verdict.message


def test_compare_number_names_the_mistake_that_matches():
    hypotheses = [("twice", lambda case: 6.0), ("off by one", lambda case: 4.0)]
    verdict = checks.compare_number({"n": np.array(4)}, "n", 3.0, "f", CASE, hypotheses)
    assert verdict.diagnosed
    assert verdict.message == "f for lr = 0.5, weight_decay = 0.01: off by one"


def test_where_names_a_case_without_an_input_array_by_its_label():
    assert checks.where(CASE) == "for lr = 0.5, weight_decay = 0.01"
    assert checks.where(dict(CASE, W=np.zeros((2, 3)))) == (
        "for W of shape (2, 3) (lr = 0.5, weight_decay = 0.01)")


# --- scale_invariance ------------------------------------------------------------------------

def gradient_case(seed: int, eps: float = 1e-5, c: float = 2.0) -> dict:
    return scale_invariance.gradient_case(np.random.default_rng(seed), 16, 5, 3, c, "", eps=eps)


def test_reference_gradient_is_bnlib_torch_autograd():
    """The judge's NumPy gradient equals autograd through bnlib.torch's batch norm, the layer
    chapter 7's networks use."""
    case = gradient_case(0, eps=1e-3)
    x, W = torch.tensor(case["x"]), torch.tensor(case["W"], requires_grad=True)
    out = bnlib.torch.batch_norm(x @ W.T, None, None, torch.tensor(case["gamma"]), None,
                                 training=True, eps=case["eps"])
    (out * torch.tensor(case["dout"])).sum().backward()
    np.testing.assert_allclose(scale_invariance.weight_gradient(case), W.grad.numpy(),
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("c", [0.1, 0.5, 3.0, 10.0])
def test_reference_gradient_follows_the_one_over_c_law_as_eps_vanishes(c):
    case = gradient_case(1, eps=1e-12, c=c)
    dW = scale_invariance.weight_gradient(case)
    np.testing.assert_allclose(scale_invariance.weight_gradient(case, c), dW / c, rtol=1e-7)
    assert scale_invariance.largest_row_cosine(dW, case["W"]) < 1e-8


def test_the_one_over_c_law_breaks_by_about_eps_over_the_variance():
    """What the exact_one_over_c mistake relies on: with eps = 0.01 against a variance of about
    0.05 the gradient at c W is visibly not dW / c; with eps = 1e-5 it still differs by more
    than the float64 tolerance."""
    for eps, low, high in [(0.01, 1e-2, 1.0), (1e-5, 1e-5, 1e-2)]:
        case = gradient_case(2, eps=eps)
        dW, scaled = (scale_invariance.weight_gradient(case, s) for s in (1.0, case["c"]))
        gap = np.abs(scaled - dW / case["c"]).max() / np.abs(scaled).max()
        assert low < gap < high, (eps, gap)


def test_orthogonality_note_names_the_cosine_only_where_the_gradient_is_orthogonal():
    case = dict(gradient_case(3), function="scaled_weight_gradients")
    dW, W = scale_invariance.weight_gradient(case), case["W"]
    along_W = W * np.linalg.norm(dW, axis=1, keepdims=True) / np.linalg.norm(W, axis=1,
                                                                            keepdims=True)
    noted = scale_invariance.orthogonality_note(checks.Verdict(False, "dW is wrong"),
                                                {"dW": dW + along_W}, case)
    assert "a row of your dW is at cosine 0.71 to its row of W" in noted.message
    assert "(nearly) orthogonal to every row" in noted.message
    quiet = scale_invariance.orthogonality_note(checks.Verdict(False, "dW is wrong"),
                                                {"dW": 2 * dW}, case)
    assert quiet.message == "dW is wrong"


def test_doubling_the_weights_quarters_the_angle_of_a_small_step():
    case = scale_invariance.angle_case(np.random.default_rng(4), 4, 6, 0.01, 1e-3, "")
    doubled = dict(case, W=2 * case["W"], dW=case["dW"] / 2)
    np.testing.assert_allclose(scale_invariance.stepped_angles(doubled),
                               scale_invariance.stepped_angles(case) / 4, rtol=1e-5)


def test_equilibrium_reference_is_the_chapters_sqrt_two_lr_weight_decay():
    case = scale_invariance.equilibrium_case(0.1, 5e-4)
    assert scale_invariance.equilibrium(case) == pytest.approx(0.01)  # chapter 7, question 6


# --- bn_bytes --------------------------------------------------------------------------------

def test_bytes_do_not_depend_on_the_layout_and_halve_in_bfloat16():
    case = bn_bytes.pass_case([256, 256, 14, 14], "float32", "nchw", "forward")
    assert bn_bytes.reference_bytes(case) == 256 * 256 * 14 * 14 * 12  # chapter 8.1: 12 B/elem
    assert bn_bytes.reference_bytes(dict(case, layout="channels_last")) == \
        bn_bytes.reference_bytes(case)
    assert 2 * bn_bytes.reference_bytes(dict(case, dtype="bfloat16")) == \
        bn_bytes.reference_bytes(case)


def test_time_reference_is_the_chapters_prediction():
    """Chapter 8's first question: the forward at (128, 512, 28, 28) in float32 on an H100 SXM
    at 90% of 3.35 TB/s takes about 204 µs."""
    case = bn_bytes.time_case(bn_bytes.pass_case([128, 512, 28, 28], "float32", "nchw",
                                                 "forward"), 3350.0, 0.9)
    assert round(bn_bytes.bandwidth_time_us(case)) == 204


def test_achieved_bandwidth_reads_the_committed_run_as_its_harness_wrote_it():
    """bnlib's reading of a row gives back the row's own bnlib_gbps and percent_of_copy."""
    for case in bn_bytes.achieved_cases(None):
        row = bn_bytes.target_row(case)
        assert roofline.achieved_gbps(row) == pytest.approx(row["bnlib_gbps"], rel=1e-12)
        assert 100 * roofline.copy_fraction(case["run"], row) == pytest.approx(
            row["percent_of_copy"], rel=1e-12)


@pytest.mark.parametrize("check", ["bn_bytes_moved", "bn_time_us", "achieved_bandwidth"])
def test_cases_survive_the_sandbox_job_encoding(check):
    """The grading sandbox receives non-array case entries (the parsed run, the shape list) as
    JSON: they must come back equal, so the student's code sees what a visible test shows."""
    for case in CHECKS[("bn_bytes", check)].cases(8000):
        assert json.loads(json.dumps(case)) == case


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31))
def test_hidden_batteries_cover_every_dtype_direction_layout_and_scale(seed):
    cases = CHECKS[("bn_bytes", "bn_bytes_moved")].cases(seed)
    assert {c["dtype"] for c in cases} == set(roofline.ELEMENT_SIZES)
    assert {c["direction"] for c in cases} == {"forward", "backward", "fwd+bwd", "inference"}
    assert {c["layout"] for c in cases} == {"nchw", "channels_last"}
    assert all(c["efficiency"] != 0.9 for c in CHECKS[("bn_bytes", "bn_time_us")].cases(seed))
    achieved = CHECKS[("bn_bytes", "achieved_bandwidth")].cases(seed)
    assert any(c["dtype"] == "bfloat16" for c in achieved)
    assert {c["implementation"] for c in achieved} > {"bnlib"}
    scaled = CHECKS[("scale_invariance", "scaled_weight_gradients")].cases(seed)
    assert min(c["c"] for c in scaled) < 1 < max(c["c"] for c in scaled)
    assert any(np.shape(c["W"])[0] == np.shape(c["W"])[1] for c in scaled)
    angles = CHECKS[("scale_invariance", "angular_step")].cases(seed)
    assert any(c["weight_decay"] > 0 for c in angles)
    assert all(abs(math.log(c["lr"])) > 0.5 for c in angles)  # lr far from 1: decay shows
