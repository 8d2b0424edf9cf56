"""Fast tests of bnlib.grading's checks, drivers and catalogue, without nbgrader.

The solution notebooks' code runs in this process (test cells excluded); each test cell's
check(...) calls, seeds included, are read from the notebook so the seeds live only there.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bnlib.grading import (
    ASSIGNMENTS,
    CHECKS,
    SIGNATURES,
    check,
    forbidden_imports,
    run_check,
)
from bnlib.grading.catalogue import MISTAKES, plant_into
from bnlib.grading.checks import Verdict, combine
from bnlib.grading.drivers import DRIVERS, parse_signature

REPO = Path(__file__).resolve().parents[2]
CHECK_CALL = re.compile(r'check\("(\w+)", "(\w+)", globals\(\)(?:, seed=(\d+))?\)')


def notebook_parts(assignment: str, mistake=None):
    """(code of the solution cells, the check calls of the test cells) of a solution notebook."""
    notebook = nbformat.read(str(REPO / "solutions" / assignment / f"{assignment}.ipynb"), 4)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    sources = [c.source for c in code]
    if mistake is not None:
        sources = plant_into(sources, mistake)
    is_test = [c.metadata.get("nbgrader", {}).get("grade", False) for c in code]
    program = [s for s, test in zip(sources, is_test, strict=True) if not test]
    calls = [(a, n, None if seed is None or seed == "" else int(seed))
             for s, test in zip(sources, is_test, strict=True) if test
             for a, n, seed in CHECK_CALL.findall(s)]
    return program, calls


def namespace_of(program: list[str]) -> dict:
    namespace: dict = {}
    for source in program:
        exec(compile(source, "<solution>", "exec"), namespace)
    return namespace


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_solution_passes_every_visible_and_hidden_check(assignment):
    program, calls = notebook_parts(assignment)
    namespace = namespace_of(program)
    assert {seed is None for _, _, seed in calls} == {True, False}
    for call in calls:
        verdict = run_check(call[0], call[1], namespace, seed=call[2])
        assert verdict.passed, (call, verdict.message)


@pytest.mark.parametrize("mistake", [m for m in MISTAKES if m.caught_by == "checks"],
                         ids=[m.id for m in MISTAKES if m.caught_by == "checks"])
def test_planted_mistake_fails_a_check_that_names_it(mistake):
    program, calls = notebook_parts(mistake.assignment, mistake)
    namespace = namespace_of(program)
    with np.errstate(all="ignore"):
        verdicts = [run_check(a, n, namespace, seed=seed) for a, n, seed in calls]
    messages = [v.message for v in verdicts if not v.passed]
    assert any(mistake.diagnosis in m for m in messages), messages


@pytest.mark.parametrize("mistake", MISTAKES, ids=[m.id for m in MISTAKES])
def test_diagnosis_is_not_already_in_the_planted_notebook(mistake):
    """Feedback shows the whole notebook: words it already holds would prove nothing."""
    notebook = nbformat.read(str(REPO / "solutions" / mistake.assignment /
                                 f"{mistake.assignment}.ipynb"), 4)
    code = [c.source for c in notebook.cells if c.cell_type == "code"]
    other = [c.source for c in notebook.cells if c.cell_type != "code"]
    assert mistake.diagnosis not in "\n".join(plant_into(code, mistake) + other)


def test_catalogue_covers_every_assignment_with_distinct_mistakes():
    assert len(MISTAKES) >= 20
    assert len({m.id for m in MISTAKES}) == len(MISTAKES)
    for assignment in ASSIGNMENTS:
        assert sum(m.assignment == assignment for m in MISTAKES) >= 4


def test_plant_refuses_a_replacement_that_is_not_unique():
    mistake = MISTAKES[0]
    with pytest.raises(ValueError, match="must occur exactly once"):
        plant_into(["no such code"], mistake)


def test_unbiased_variance_message_quotes_the_variance_and_n():
    def batchnorm_forward(x, gamma, beta, eps=1e-5):
        xhat = (x - x.mean(axis=0)) / np.sqrt(x.var(axis=0, ddof=1) + eps)
        return gamma * xhat + beta, None

    verdict = run_check("bn_forward", "batchnorm_forward",
                        {"batchnorm_forward": batchnorm_forward})
    assert not verdict.passed
    assert "per-feature variance 0.875 at N = 8" in verdict.message
    assert "unbiased variance (ddof=1)" in verdict.message


def test_check_names_a_missing_function_with_its_signature():
    with pytest.raises(AssertionError, match=r"define batchnorm_forward\(x, gamma, beta, "
                                             r"eps=1e-5\) -> \(out, cache\)"):
        check("bn_forward", "batchnorm_forward", {})


def test_check_rejects_an_unknown_check():
    with pytest.raises(KeyError, match="no check 'nope' in assignment 'bn_forward'"):
        check("bn_forward", "nope", {})


def test_check_prints_one_line_on_success(capsys):
    program, _ = notebook_parts("bn_inference")
    check("bn_inference", "fold_batchnorm", namespace_of(program))
    assert capsys.readouterr().out == (
        "passed: fold_batchnorm gives the same output as linear + eval-mode BN\n")


def wrong_returns():
    """Student functions returning what fault 9 of the grader faults lists, and more."""
    good = namespace_of(notebook_parts("bn_forward")[0])["batchnorm_forward"]

    class Weird:
        def __eq__(self, other):
            return True

    return {
        "list": (lambda x, g, b, eps=1e-5: (good(x, g, b, eps)[0].tolist(), None), "got list"),
        "matrix": (lambda x, g, b, eps=1e-5: (np.asmatrix(good(x, g, b, eps)[0]), None),
                   "got numpy.matrix"),
        "object": (lambda x, g, b, eps=1e-5: (Weird(), None), "got Weird"),
        "no tuple": (lambda x, g, b, eps=1e-5: good(x, g, b, eps)[0],
                     "must return a tuple (out, cache); it returned numpy.ndarray"),
        "int dtype": (lambda x, g, b, eps=1e-5: (np.zeros(x.shape, int), None), "got dtype int"),
        "wrong shape": (lambda x, g, b, eps=1e-5: (good(x, g, b, eps)[0].T, None),
                        "got shape (4, 8)"),
        "nan": (lambda x, g, b, eps=1e-5: (good(x, g, b, eps)[0] / 0.0, None),
                "contains NaN or inf"),
        "raises": (lambda x, g, b, eps=1e-5: 1 / 0, "raised ZeroDivisionError: division by zero"),
        "exits": (lambda x, g, b, eps=1e-5: exit(3), "raised SystemExit: 3"),
    }


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
@pytest.mark.parametrize("kind", list(wrong_returns()))
def test_malformed_return_fails_with_a_clear_message(kind):
    function, expected = wrong_returns()[kind]
    with np.errstate(all="ignore"):
        verdict = run_check("bn_forward", "batchnorm_forward", {"batchnorm_forward": function})
    assert not verdict.passed
    assert expected in verdict.message


@pytest.mark.parametrize("key", sorted(CHECKS), ids="/".join)
def test_judge_never_raises_on_garbage_results(key):
    spec = CHECKS[key]
    case = spec.cases(None)[0]
    garbage = [{}, {"out": np.array("text")}, {"out.type": np.array("numpy.ndarray")},
               {k: np.array([np.nan]) for k in ("out", "dx", "dgamma", "dbeta", "new_mean",
                                                "W_folded", "out_train", "state_dict_keys")},
               "not a dict"]
    for result in garbage:
        verdict = spec.judge(case, result)
        assert isinstance(verdict, Verdict) and not verdict.passed and verdict.message


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_driver_results_are_plain_arrays_that_load_without_pickle(assignment):
    namespace = namespace_of(notebook_parts(assignment)[0])
    for (a, _), spec in CHECKS.items():
        if a != assignment:
            continue
        for case in spec.cases(None):
            result = DRIVERS[spec.driver]({n: namespace[n] for n in spec.functions}, case)
            assert all(type(v) is np.ndarray and v.dtype.kind in "biufU"
                       for v in result.values()), result
            buffer = io.BytesIO()
            np.savez(buffer, **result)
            buffer.seek(0)
            loaded = np.load(buffer, allow_pickle=False)
            assert sorted(loaded.files) == sorted(result)


def test_drivers_accept_cases_read_back_from_npz():
    spec = CHECKS[("bn_inference", "update_running_stats")]
    case = spec.cases(None)[0]
    buffer = io.BytesIO()
    np.savez(buffer, **case)
    buffer.seek(0)
    loaded = dict(np.load(buffer, allow_pickle=False))
    namespace = namespace_of(notebook_parts("bn_inference")[0])
    result = DRIVERS[spec.driver]({"update_running_stats": namespace["update_running_stats"]},
                                  loaded)
    assert spec.judge(case, result).passed


def test_module_that_bypasses_batchnormfunction_is_told_to_use_it():
    torch = pytest.importorskip("torch")
    verdict = run_check("bn_torch", "BatchNorm2d", {"BatchNorm2d": torch.nn.BatchNorm2d})
    assert not verdict.passed
    assert "must use BatchNormFunction.apply in training mode" in verdict.message
    assert "NativeBatchNormBackward0" in verdict.message


def test_only_these_fail_explanation_holds_only_when_other_kinds_pass():
    offset_fails = Verdict(False, "out is wrong", kind="offset")
    alone = combine([Verdict(True, "ok", kind="plain"), offset_fails])
    assert alone.diagnosed and "Only the float32 batch with a large mean fails" in alone.message
    everything = combine([Verdict(False, "out is wrong", kind="plain"), offset_fails])
    assert not everything.diagnosed and "Only" not in everything.message


def test_a_backward_wrong_on_every_case_is_not_blamed_on_cancellation():
    program, _ = notebook_parts("bn_backward")
    namespace = namespace_of(program)

    def batchnorm_backward_alt(dout, cache):  # the variance term with N - 1
        xhat, _, std, gamma = cache
        dxhat = dout * gamma
        n = dout.shape[0]
        dx = (dxhat - dxhat.mean(axis=0) - xhat * (dxhat * xhat).sum(axis=0) / (n - 1)) / std
        return dx, (dout * xhat).sum(axis=0), dout.sum(axis=0)

    namespace["batchnorm_backward_alt"] = batchnorm_backward_alt
    verdict = run_check("bn_backward", "batchnorm_backward_alt_edge_cases", namespace, seed=2402)
    assert not verdict.passed
    assert "catastrophic" not in verdict.message
    assert "divides by N - 1" in verdict.message


@pytest.mark.parametrize("assignment, forward, backward", [
    ("bn_backward", "spatial_batchnorm_forward", "spatial_batchnorm_backward"),
    ("layer_norm", "groupnorm_forward", "groupnorm_backward"),
])
def test_a_backward_that_ignores_its_cache_is_named(assignment, forward, backward):
    """The grader's second forward call takes every input of the first but x (num_groups
    too), so only a backward that reads the LAST forward's state gets other gradients."""
    namespace = namespace_of(notebook_parts(assignment)[0])
    last = {}

    def remembering_forward(*args, **kwargs):
        out, last["cache"] = namespace[forward](*args, **kwargs)
        return out, last["cache"]

    def forgetting_backward(dout, cache):
        return namespace[backward](dout, last["cache"])

    verdict = run_check(assignment, backward,
                        {forward: remembering_forward, backward: forgetting_backward})
    assert not verdict.passed
    assert f"{backward} ignores its cache argument" in verdict.message


# keras 3.15's torch backend converts with np.array(x, copy=False) internally.
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_keras_own_batch_normalization_passes_the_keras_convention_check():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    assert keras.backend.backend() == "torch"

    def update_running_stats_keras(running_mean, running_var, x, momentum=0.99):
        layer = keras.layers.BatchNormalization(momentum=momentum, dtype="float64")
        layer.build(x.shape)
        layer.moving_mean.assign(running_mean)
        layer.moving_variance.assign(running_var)
        layer(x, training=True)
        return tuple(keras.ops.convert_to_numpy(v)
                     for v in (layer.moving_mean, layer.moving_variance))

    functions = {"update_running_stats_keras": update_running_stats_keras}
    for seed in (None, 3):
        verdict = run_check("bn_inference", "update_running_stats_keras", functions, seed=seed)
        assert verdict.passed, verdict.message
    wrong = run_check("bn_inference", "update_running_stats",
                      {"update_running_stats": update_running_stats_keras})
    assert "Keras momentum convention" in wrong.message


def test_modified_inputs_are_judged_from_what_the_driver_sends_back():
    spec = CHECKS[("bn_forward", "batchnorm_forward")]
    case = spec.cases(None)[0]
    functions = {"batchnorm_forward": namespace_of(notebook_parts("bn_forward")[0])[
        "batchnorm_forward"]}
    result = DRIVERS[spec.driver](functions, case)
    assert spec.judge(case, result).passed
    changed = dict(result, **{"input.x": result["input.x"] + 1.0}, mutated=np.array(""))
    assert "modified its input x in place" in spec.judge(case, changed).message
    recast = dict(result, **{"input.x": result["input.x"].astype(np.float32)})
    assert "modified its input x in place" in spec.judge(case, recast).message
    missing = {k: v for k, v in result.items() if k != "input.x"}
    assert "could not read back the input x" in spec.judge(case, missing).message


def test_every_list_is_derived_from_the_declarations():
    listed = subprocess.run([sys.executable, "-m", "bnlib.grading.assignments"],
                            capture_output=True, text=True, check=True).stdout.split()
    assert tuple(listed) == ASSIGNMENTS
    assert "ASSIGNMENTS = $(shell $(PY) -m bnlib.grading.assignments)" in \
        (REPO / "Makefile").read_text()
    assert {n for spec in CHECKS.values() for n in spec.functions} == set(SIGNATURES)
    assert {m.assignment for m in MISTAKES} == set(ASSIGNMENTS)
    assert "torch" in forbidden_imports("bn_backward") and forbidden_imports("bn_torch") == ()
    with pytest.raises(KeyError, match="no assignment 'nope'"):
        forbidden_imports("nope")


def test_parse_signature_reads_parameters_and_returns():
    assert parse_signature("fold(W, b, eps=1e-5) -> (W_folded, b_folded)") == (
        "fold", ("W", "b"), ("eps",), ("W_folded", "b_folded"))
    assert parse_signature("f(x) -> out")[3] == ("out",)
    with pytest.raises(ValueError, match="not a signature"):
        parse_signature("class BatchNorm2d(nn.Module)")


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31))
def test_hidden_batteries_cover_square_shapes_ranks_and_arguments(seed):
    shapes = [np.shape(c["x"]) for c in CHECKS[("bn_forward", "batchnorm_forward")].cases(seed)]
    assert any(len(set(s)) == 1 for s in shapes) and any(len(set(s)) == len(s) for s in shapes)
    ranks = {np.ndim(c["x"]) for c in CHECKS[("bn_torch", "BatchNormFunction")].cases(seed)}
    assert ranks == {2, 3, 4, 5}
    module = CHECKS[("bn_torch", "BatchNorm2d")]
    cases = module.cases(None) + module.cases(seed)
    for option in ("eps", "momentum", "affine", "track_running_stats"):
        assert len({c[option] for c in cases}) > 1, option
    backward = CHECKS[("bn_backward", "batchnorm_backward")].cases(seed)
    assert all(not np.array_equal(c["x"], c["other.x"]) for c in backward)
    for key in (("bn_backward", "spatial_batchnorm_backward"),
                ("layer_norm", "groupnorm_backward")):
        assert {"constant", "offset"} <= {c["kind"] for c in CHECKS[key].cases(seed)}, key
    keras = CHECKS[("bn_inference", "update_running_stats_keras")].cases(seed)
    assert 2 in {c["x"].shape[0] for c in keras}
    assert all(c["momentum"] != 0.99 for c in keras)  # so a hard-coded default shows
