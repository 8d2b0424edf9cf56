"""Assignment scale_invariance: the weights in front of a BN layer (chapter 7).

The gradient of a loss through a BN-normalized linear layer at the weights W and c * W, the
angle through which an SGD step turns each row of W, and the angle per step at the equilibrium
that weight decay sets. The references are bnlib's: :mod:`bnlib.numpy`'s batch norm and
:func:`bnlib.experiments.training.row_angles` and
:func:`~bnlib.experiments.training.equilibrium_angular_update`, which chapter 7's experiments
use.
"""

from __future__ import annotations

import numpy as np

from bnlib import numpy as bnp
from bnlib.grading import checks
from bnlib.grading.checks import AUTOGRAD_LIBRARIES, Assignment, Check, Function, Mistake, f64

# --- scaled_weight_gradients -----------------------------------------------------------------

def gradient_case(rng, n, d_in, d_out, c, label, eps=1e-5, kind="plain"):
    """x (N, D_in), W (D_out, D_in) in torch.nn.Linear's layout, gamma (D_out,), dout
    (N, D_out), the scale c."""
    dtype = checks.case_dtype_of(kind)
    x = rng.normal(size=(n, d_in)) * rng.uniform(0.5, 2.0, d_in) + rng.normal(0.0, 1.0, d_in)
    # Small weights, so eps shows against the variance of z = x @ W.T (about 0.05).
    W = rng.normal(size=(d_out, d_in)) * 0.2 / np.sqrt(d_in)
    gamma = checks.params(rng, d_out)[0]
    return {"x": x.astype(dtype), "W": W.astype(dtype), "gamma": gamma.astype(dtype),
            "dout": rng.normal(size=(n, d_out)).astype(dtype), "c": float(c),
            "eps": float(eps), "label": f"{label}c = {c:.3g}, eps = {eps:g}", "kind": kind,
            **checks.tolerance(kind)}


def gradient_cases(seed):
    if seed is None:
        rng = np.random.default_rng(71)
        return [gradient_case(rng, 8, 5, 3, 2.0, ""),
                gradient_case(rng, 8, 5, 3, 0.5, "", eps=0.01)]
    rng = np.random.default_rng(seed)
    d_in, d_out = rng.choice(np.arange(2, 8), size=2, replace=False)
    square = int(rng.integers(2, 6))
    return [gradient_case(rng, int(rng.integers(4, 17)), int(d_in), int(d_out),
                          rng.uniform(1.5, 5.0), "random shape, "),
            gradient_case(rng, int(rng.integers(4, 17)), square, square, rng.uniform(0.2, 0.7),
                          "square W, ", eps=1e-3)]


def gradient_edge_cases(seed):
    """Visible: float32 and N = 2; hidden as well: a large c and a small c with a large eps."""
    rng = np.random.default_rng(72 if seed is None else seed)
    cases = [gradient_case(rng, 2, 4, 3, 3.0, "N = 2, "),
             gradient_case(rng, 12, 5, 4, 0.5, "float32, ", eps=0.1, kind="float32")]
    if seed is None:
        return cases
    return cases + [gradient_case(rng, 10, 6, 3, 10.0, "large c, "),
                    gradient_case(rng, 10, 3, 6, 0.1, "small c, ", eps=0.5)]


def weight_gradient(case: dict, scale: float = 1.0) -> np.ndarray:
    """dW of sum(dout * BN(x @ (scale * W).T)) in float64, by bnlib.numpy's batch norm."""
    x, W = f64(case, "x"), scale * f64(case, "W")
    _, cache = bnp.batchnorm_forward(x @ W.T, f64(case, "gamma"), np.zeros(len(W)), case["eps"])
    return bnp.batchnorm_backward(f64(case, "dout"), cache)[0].T @ x


def bn_input_case(case: dict) -> dict:
    """The case as the BN layer sees it: its input z = x @ W.T in place of x."""
    return dict(case, x=f64(case, "x") @ f64(case, "W").T)


def through_linear(recompute):
    """A hypothesis about BN's input gradient dz, turned into one about dW = dz.T @ x."""
    return lambda case: recompute(bn_input_case(case)).T @ f64(case, "x")


BN_INPUT = "in the gradient into z = x @ W.T (the input of BN, x in chapter 4's formulas): "

DW_HYPOTHESES: list[checks.Hypothesis] = [
    ("dW must have the shape of W, (D_out, D_in), one row per output feature: dW = dz.T @ x, "
     "not x.T @ dz", lambda case: weight_gradient(case).T),
    *[(BN_INPUT + message, through_linear(recompute))
      for message, recompute in checks.gradient_hypotheses(axes=(0,))],
]

SCALED_HYPOTHESES: list[checks.Hypothesis] = [
    ("dW_scaled is c times the gradient at c * W: that is the derivative of W -> L(c W) with "
     "respect to W (the chain rule's factor c); the gradient at c * W is the derivative with "
     "respect to the weights c * W themselves",
     lambda case: case["c"] * weight_gradient(case, case["c"])),
    ("dW_scaled equals dW: the loss is the same at c * W, but its gradient is not; it is about "
     "dW / c. Compute the gradient at the weights c * W",
     lambda case: weight_gradient(case)),
    ("dW_scaled is exactly dW / c, which holds only when eps = 0: BN divides c * z by "
     "sqrt(c**2 var + eps), not by c * sqrt(var + eps). Compute the gradient at c * W itself",
     lambda case: weight_gradient(case) / case["c"]),
    ("dW_scaled is c * dW: larger weights get a smaller gradient, about dW / c",
     lambda case: case["c"] * weight_gradient(case)),
]


def largest_row_cosine(dW: np.ndarray, W: np.ndarray) -> float:
    """max over rows of |cos(dW_i, W_i)|: 0 when the loss does not change along any row."""
    dots = np.abs((dW * W).sum(axis=1))
    return float(np.max(dots / (np.linalg.norm(dW, axis=1) * np.linalg.norm(W, axis=1))))


def orthogonality_note(verdict: checks.Verdict, result: dict, case: dict) -> checks.Verdict:
    """Add chapter 7's test to a wrong dW: the gradient is (nearly) orthogonal to the rows of
    W, and a dW that is far from it cannot be the gradient."""
    got, W = np.asarray(result.get("dW", np.nan), np.float64), f64(case, "W")
    if got.shape != W.shape or not np.all(np.isfinite(got)) or not np.all(got.any(axis=1)):
        return verdict
    cosine, expected = largest_row_cosine(got, W), largest_row_cosine(weight_gradient(case), W)
    if cosine < 0.01 + 10 * expected:
        return verdict
    verdict.message += (f". Check: a row of your dW is at cosine {cosine:.2f} to its row of W, "
                        f"the gradient's at most {expected:.2g}: the loss barely changes along "
                        f"W (not at all when eps = 0), so its gradient is (nearly) orthogonal "
                        f"to every row")
    return verdict


def judge_gradients(case: dict, result: dict) -> checks.Verdict | None:
    function = case["function"]
    verdict = checks.compare(result, "dW", weight_gradient(case), function, case, DW_HYPOTHESES)
    if verdict:
        return orthogonality_note(verdict, result, case)
    return checks.compare(result, "dW_scaled", weight_gradient(case, case["c"]), function, case,
                          SCALED_HYPOTHESES)


# --- angular_step ----------------------------------------------------------------------------

def angle_case(rng, d_out, d_in, lr, angle, label, weight_decay=0.0):
    """W with rows of different norms, dW a BN gradient (orthogonal to the rows) scaled so that
    a typical row turns through about ``angle`` at learning rate ``lr``."""
    W = rng.normal(size=(d_out, d_in)) * rng.uniform(0.5, 3.0, (d_out, 1))
    dW = weight_gradient(dict(gradient_case(rng, 16, d_in, d_out, 1.0, ""), W=W))
    dW *= angle / (lr * np.median(np.linalg.norm(dW, axis=1) / np.linalg.norm(W, axis=1)))
    return {"W": W, "dW": dW, "lr": float(lr), "weight_decay": float(weight_decay),
            "label": f"{label}lr = {lr:g}, weight_decay = {weight_decay:.3g}", "kind": "plain",
            **checks.FLOAT64_TOL}


def angle_cases(seed):
    """Learning rates far from 1, so a decay term without lr shows."""
    if seed is None:
        rng = np.random.default_rng(73)
        return [angle_case(rng, 4, 6, 0.1, 0.3, ""), angle_case(rng, 4, 6, 0.1, 0.3, "", 0.05)]
    rng = np.random.default_rng(seed)
    d_out, d_in = (int(d) for d in rng.choice(np.arange(2, 9), size=2, replace=False))
    square = int(rng.integers(3, 7))
    return [angle_case(rng, d_out, d_in, 5.0, rng.uniform(0.3, 0.8), "large step, ",
                       rng.uniform(0.01, 0.05)),
            angle_case(rng, square, square, 0.5, rng.uniform(0.1, 0.3), "square W, "),
            angle_case(rng, d_out, d_in, 0.01, 1e-3, "small step, ")]


def stepped_angles(case: dict, transpose: bool = False, decay_scale: str = "lr",
                   weight_decay: float | None = None) -> np.ndarray:
    """bnlib's angle per row between W and W - lr (dW + weight_decay W) (SGD with weight decay,
    as torch.optim.SGD); the variants measure columns or apply the decay without lr."""
    import torch

    from bnlib.experiments.training import row_angles

    W, dW, lr = f64(case, "W"), f64(case, "dW"), case["lr"]
    decay = case["weight_decay"] if weight_decay is None else weight_decay
    stepped = W - lr * dW - (lr if decay_scale == "lr" else 1.0) * decay * W
    if transpose:
        W, stepped = W.T, stepped.T
    return row_angles(torch.from_numpy(W), torch.from_numpy(np.ascontiguousarray(stepped))).numpy()


def without_decay(case: dict) -> np.ndarray:
    if case["weight_decay"] == 0:
        raise ValueError("no weight decay: not a distinct hypothesis")
    return stepped_angles(case, weight_decay=0.0)


ANGLE_HYPOTHESES: list[checks.Hypothesis] = [
    ("your angles are lr * |dW| / |W| per row, the small-angle approximation; the angle of the "
     "step itself is smaller (the arctangent of that ratio when dW is orthogonal to W): measure "
     "the angle between each row of W and the same row after the step",
     lambda c: c["lr"] * np.linalg.norm(f64(c, "dW"), axis=1) / np.linalg.norm(f64(c, "W"),
                                                                              axis=1)),
    ("you measured the angles of the columns of W: W has one row per output feature "
     "(torch.nn.Linear's layout), so take norms and dot products over axis=1",
     lambda c: stepped_angles(c, transpose=True)),
    ("your step ignores weight_decay: SGD with weight decay adds weight_decay * W to the "
     "gradient, so the step is W - lr * (dW + weight_decay * W)", without_decay),
    ("your weight decay is not multiplied by lr: the decay term is part of the gradient, "
     "W - lr * (dW + weight_decay * W)", lambda c: stepped_angles(c, decay_scale="none")),
    ("your angles are in degrees: return radians (np.degrees is what you must not apply)",
     lambda c: np.degrees(stepped_angles(c))),
]


def judge_angles(case: dict, result: dict) -> checks.Verdict | None:
    return checks.compare(result, "angle", stepped_angles(case), case["function"], case,
                          ANGLE_HYPOTHESES)


# --- equilibrium_angle -----------------------------------------------------------------------

def equilibrium_case(lr: float, weight_decay: float) -> dict:
    return {"lr": float(lr), "weight_decay": float(weight_decay),
            "label": f"lr = {lr:.3g}, weight_decay = {weight_decay:.3g}", "kind": "plain",
            **checks.FLOAT64_TOL}


def equilibrium_cases(seed):
    if seed is None:
        return [equilibrium_case(0.5, 0.01), equilibrium_case(0.1, 5e-4)]
    rng = np.random.default_rng(seed)
    return [equilibrium_case(rng.uniform(0.01, 1.0), 10 ** rng.uniform(-5, -2))
            for _ in range(3)]


def equilibrium(case: dict) -> float:
    from bnlib.experiments.training import equilibrium_angular_update

    return equilibrium_angular_update(case["lr"], case["weight_decay"])


EQUILIBRIUM_HYPOTHESES: list[checks.Hypothesis] = [
    ("the factor 2 is missing: one step shrinks |w|**2 by (1 - lr * weight_decay)**2, about "
     "1 - 2 lr weight_decay, so the balance is 2 lr weight_decay |w|**2 = lr**2 |g|**2",
     lambda c: np.sqrt(c["lr"] * c["weight_decay"])),
    ("the square root is missing: the balance fixes (lr |g| / |w|)**2 = 2 lr weight_decay, and "
     "the angle is lr |g| / |w|", lambda c: 2 * c["lr"] * c["weight_decay"]),
    ("you returned |g| / |w| = sqrt(2 weight_decay / lr); the step is lr times the gradient, "
     "so it turns w through lr |g| / |w|", lambda c: np.sqrt(2 * c["weight_decay"] / c["lr"])),
    ("lr * weight_decay is how much the decay shrinks w per step, but shrinking does not turn "
     "w: the angle comes from the gradient, lr |g| / |w|, at the norm where the gradient's "
     "growth balances the decay", lambda c: c["lr"] * c["weight_decay"]),
]


def judge_equilibrium(case: dict, result: dict) -> checks.Verdict | None:
    return checks.compare_number(result, "angle", equilibrium(case), case["function"], case,
                                 EQUILIBRIUM_HYPOTHESES, " rad")


ASSIGNMENT = Assignment("scale_invariance", chapter=7, forbidden_imports=AUTOGRAD_LIBRARIES,
                        functions=(
    Function("scaled_weight_gradients(x, W, gamma, dout, c, eps=1e-5) -> (dW, dW_scaled)", (
        Check("scaled_weight_gradients", "scaled_weight_gradients gives the gradients at W and "
              "c * W", gradient_cases, judge_gradients),
        Check("scaled_weight_gradients_edge_cases", "scaled_weight_gradients handles N = 2, "
              "float32, a large and a small c", gradient_edge_cases, judge_gradients),
    ), (
        Mistake("mean_and_variance_constant",
                "BN's backward with the batch mean and variance treated as constants",
                (("dz = inv_std * (dzhat - dzhat.mean(axis=0) - zhat * (dzhat * zhat).mean("
                  "axis=0))", "dz = inv_std * dzhat"),),
                "treats the mean and the variance as constants"),
        Mistake("missing_variance_term", "BN's backward without the path through the variance",
                ((" - zhat * (dzhat * zhat).mean(axis=0)", ""),),
                "flows through the variance"),
        Mistake("gradient_unchanged", "the gradient at c * W taken to be the gradient at W",
                (("dW_scaled = weight_gradient(x, c * W, gamma, dout, eps)",
                  "dW_scaled = weight_gradient(x, W, gamma, dout, eps)"),),
                "its gradient is not"),
        Mistake("chain_rule_factor", "the derivative of W -> L(c W), c times the gradient at cW",
                (("dW_scaled = weight_gradient(x, c * W, gamma, dout, eps)",
                  "dW_scaled = c * weight_gradient(x, c * W, gamma, dout, eps)"),),
                "the chain rule's factor c"),
        Mistake("exact_one_over_c", "dW / c, the 1/c law taken as exact with eps > 0",
                (("dW_scaled = weight_gradient(x, c * W, gamma, dout, eps)",
                  "dW_scaled = dW / c  # the 1/c law"),),
                "holds only when eps = 0"),
        Mistake("dW_transposed", "dW as x.T @ dz, shaped (D_in, D_out)",
                (("dW = dz.T @ x", "dW = x.T @ dz"),),
                "not x.T @ dz"),
    )),
    Function("angular_step(W, dW, lr, weight_decay=0.0) -> angle", (
        Check("angular_step", "angular_step measures the angle each row turns through",
              angle_cases, judge_angles),
    ), (
        Mistake("small_angle_approximation", "lr |dW| / |W| in place of the angle",
                (("    unit = W / np.linalg.norm(W, axis=1, keepdims=True)\n",
                  "    return lr * np.linalg.norm(dW, axis=1) / np.linalg.norm(W, axis=1)\n"
                  "    unit = W / np.linalg.norm(W, axis=1, keepdims=True)\n"),),
                "the small-angle approximation"),
        Mistake("columns", "the angles of the columns of W",
                (("    stepped = W - lr * (dW + weight_decay * W)\n",
                  "    stepped = (W - lr * (dW + weight_decay * W)).T\n    W = W.T\n"),),
                "one row per output feature"),
        Mistake("weight_decay_ignored", "the step without weight decay",
                (("stepped = W - lr * (dW + weight_decay * W)", "stepped = W - lr * dW"),),
                "ignores weight_decay"),
        Mistake("decay_without_lr", "the weight decay term not scaled by lr",
                (("stepped = W - lr * (dW + weight_decay * W)",
                  "stepped = W - lr * dW - weight_decay * W"),),
                "not multiplied by lr"),
        Mistake("degrees", "angles in degrees",
                (("angle = 2 * np.arctan2(", "angle = 360 / np.pi * np.arctan2("),),
                "in degrees"),
    )),
    Function("equilibrium_angle(lr, weight_decay) -> angle", (
        Check("equilibrium_angle", "equilibrium_angle predicts the angle per step",
              equilibrium_cases, judge_equilibrium),
    ), (
        Mistake("missing_factor_two", "sqrt(lr * weight_decay)",
                (("np.sqrt(2 * lr * weight_decay)", "np.sqrt(lr * weight_decay)"),),
                "the factor 2 is missing"),
        Mistake("missing_square_root", "2 lr weight_decay",
                (("np.sqrt(2 * lr * weight_decay)", "2 * lr * weight_decay"),),
                "the square root is missing"),
        Mistake("missing_lr", "|g| / |w| = sqrt(2 weight_decay / lr)",
                (("np.sqrt(2 * lr * weight_decay)", "np.sqrt(2 * weight_decay / lr)"),),
                "the step is lr times the gradient"),
        Mistake("shrinkage_as_angle", "lr * weight_decay, the shrinkage per step",
                (("np.sqrt(2 * lr * weight_decay)", "lr * weight_decay"),),
                "shrinking does not turn"),
    )),
))
