"""Assignment batch_statistics: BN's batch statistics as noisy estimators, sampled and predicted.

Graded against :mod:`bnlib.experiments.batch_stats`, the module chapter 1 computes with.
"""

from __future__ import annotations

import numpy as np

from bnlib.experiments import batch_stats
from bnlib.grading import checks
from bnlib.grading.checks import AUTOGRAD_LIBRARIES, Assignment, Check, Function, Mistake, f64

#: What sampled_spread and predicted_spread return, in order.
SPREADS = ("std_mean", "mean_var", "std_var")


def population(rng: np.random.Generator, size: int, tails: str) -> np.ndarray:
    """One feature over a data set, its mean far from 0: ``heavy`` (exponential) tails, or
    ``light`` ones (two clusters, like a pixel that is mostly off or on)."""
    offset = rng.uniform(1.0, 4.0)
    if tails == "heavy":
        return offset + rng.exponential(rng.uniform(0.5, 2.0), size)
    return offset + rng.choice([0.0, 1.0], size) + 0.1 * rng.normal(size=size)


def batches_case(rng: np.random.Generator, draws: int, n: int, tails: str = "heavy") -> dict:
    values = population(rng, 500, tails)
    batches = batch_stats.draw_batches(values, n, draws, seed=int(rng.integers(2**31)))
    return {"batches": batches, "label": f"{draws} batches of N = {n}", "kind": "plain",
            **checks.FLOAT64_TOL}


# --- batch_statistics ------------------------------------------------------------------------

def statistics_cases(seed):
    rng = np.random.default_rng(101 if seed is None else seed)
    if seed is None:
        return [batches_case(rng, 6, 4), batches_case(rng, 5, 2, "light")]
    draws = int(rng.integers(3, 13))
    n = int(rng.choice([k for k in range(3, 11) if k != draws]))
    square = int(rng.integers(3, 9))  # as many draws as values: the axes have one length
    return [batches_case(rng, draws, n), batches_case(rng, int(rng.integers(3, 13)), 2),
            batches_case(rng, square, square, "light")]


ACROSS_DRAWS = ("you took the statistics over axis 0, across the draws; each row of batches is "
                "one mini-batch, so take them over axis 1: one mean and one variance per row")
UNBIASED_BATCH_VARIANCE = ("your variances divide by N - 1 (the unbiased variance, ddof=1); "
                           "BN's sigma_B^2 is the biased variance of the batch, which divides by "
                           "N (np.var's default, ddof=0)")


def over(axis: int, statistic):
    return lambda case: statistic(f64(case, "batches"), axis)


MEAN_HYPOTHESES: list[checks.Hypothesis] = [
    (ACROSS_DRAWS, over(0, lambda b, axis: b.mean(axis=axis)))]

VARIANCE_HYPOTHESES: list[checks.Hypothesis] = [
    (UNBIASED_BATCH_VARIANCE, over(1, lambda b, axis: b.var(axis=axis, ddof=1))),
    (ACROSS_DRAWS, over(0, lambda b, axis: b.var(axis=axis))),
    (ACROSS_DRAWS, over(0, lambda b, axis: b.var(axis=axis, ddof=1))),
    ("your variances are standard deviations; sigma_B^2 is the variance, the mean of the squared "
     "deviations from mu_B (np.var), not its square root",
     over(1, lambda b, axis: b.std(axis=axis))),
]


def judge_statistics(case: dict, result: dict) -> checks.Verdict | None:
    means, variances = batch_stats.batch_statistics(case["batches"])
    function = case["function"]
    return (checks.compare(result, "means", means, function, case, MEAN_HYPOTHESES)
            or checks.compare(result, "variances", variances, function, case,
                              VARIANCE_HYPOTHESES))


# --- sampled_spread --------------------------------------------------------------------------

def sampled_cases(seed):
    rng = np.random.default_rng(102 if seed is None else seed)
    if seed is None:
        return [batches_case(rng, 400, 4), batches_case(rng, 300, 2, "light")]
    return [batches_case(rng, int(rng.integers(100, 500)), int(rng.integers(3, 17))),
            batches_case(rng, int(rng.integers(100, 500)), 2),
            batches_case(rng, int(rng.integers(100, 500)), int(rng.integers(3, 17)), "light")]


def spread_of(change):
    """sampled_spread's three numbers recomputed with ``change(means, variances, batches)``."""
    def recompute(key):
        def of(case):
            means, variances = batch_stats.batch_statistics(case["batches"])
            return np.float64(change(means, variances, f64(case, "batches"))[SPREADS.index(key)])
        return of
    return recompute


def unbiased(means, variances, batches):
    n = batches.shape[1]
    corrected = variances * n / (n - 1)
    return means.std(), corrected.mean(), corrected.std()


BESSEL_OVER_DRAWS = ("{key} divides by num_draws - 1 (ddof=1); as the task says, use np.std's "
                     "default, which divides by the number of draws")
AVERAGED_UNBIASED = ("you averaged the unbiased variances N/(N-1) sigma_B^2; average BN's biased "
                     "sigma_B^2 itself: its expectation, (N-1)/N sigma^2, is the bias this "
                     "estimates")


def sampled_hypotheses(key: str) -> list[checks.Hypothesis]:
    hypotheses = {
        "std_mean": [
            ("std_mean is the spread of single values (the standard deviation of every value in "
             "batches, about sigma); a batch mean varies less: take the standard deviation of "
             "the batch means over the draws", spread_of(lambda m, v, b: (b.std(), 0, 0))),
            ("std_mean is the variance of the batch means; return its square root, the standard "
             "deviation", spread_of(lambda m, v, b: (m.var(), 0, 0))),
            (BESSEL_OVER_DRAWS, spread_of(lambda m, v, b: (m.std(ddof=1), 0, 0)))],
        "mean_var": [(AVERAGED_UNBIASED, spread_of(unbiased))],
        "std_var": [
            (AVERAGED_UNBIASED, spread_of(unbiased)),
            ("std_var is the variance of the batch variances; return its square root",
             spread_of(lambda m, v, b: (0, 0, v.var()))),
            (BESSEL_OVER_DRAWS, spread_of(lambda m, v, b: (0, 0, v.std(ddof=1))))],
    }[key]
    return [(message.replace("{key}", key), recompute(key)) for message, recompute in hypotheses]


def judge_sampled(case: dict, result: dict) -> checks.Verdict | None:
    references = batch_stats.sampled_spread(case["batches"])
    for key, ref in zip(SPREADS, references, strict=True):
        verdict = checks.compare_number(result, key, ref, case["function"], case,
                                        sampled_hypotheses(key))
        if verdict:
            return verdict
    return None


# --- predicted_spread ------------------------------------------------------------------------

def predicted_case(rng: np.random.Generator, size: int, batch_sizes, tails: str) -> dict:
    sizes = np.asarray(batch_sizes, np.int64)
    return {"x": population(rng, size, tails), "batch_sizes": sizes,
            "label": f"{tails}-tailed x, batch sizes {sizes.tolist()}", "kind": "plain",
            **checks.FLOAT64_TOL}


def predicted_cases(seed):
    rng = np.random.default_rng(103 if seed is None else seed)
    if seed is None:
        return [predicted_case(rng, 200, [2, 4, 8, 32], "heavy"),
                predicted_case(rng, 150, [2, 3, 16], "light")]

    def sizes():
        return np.sort(rng.choice(np.arange(2, 65), int(rng.integers(3, 6)), replace=False))

    return [predicted_case(rng, int(rng.integers(50, 400)), sizes(), tails)
            for tails in ("heavy", "light")]


def formulas(*, ddof: int = 0, mu4=None, biased: bool = True):
    """predicted_spread under a mistake: the population variance with ``ddof``, the fourth
    moment ``mu4(x, sigma2)``, the spread of the unbiased variance (``biased=False``)."""
    def recompute(case):
        x, sizes = f64(case, "x"), np.asarray(case["batch_sizes"], np.float64)
        sigma2 = x.var(ddof=ddof)
        fourth = np.mean((x - x.mean()) ** 4) if mu4 is None else mu4(x, sigma2)
        return {"sizes": sizes, "sigma2": sigma2,
                "std_var": batch_stats.std_of_batch_variance(sigma2, fourth, sizes, biased)}
    return recompute


def formula(value, **mistake):
    """One output of :func:`formulas` under ``mistake``."""
    return lambda case: np.asarray(value(formulas(**mistake)(case)), np.float64)


POPULATION_DDOF = ("you used x.var(ddof=1); x holds every value of the feature (the population), "
                   "so sigma^2 = x.var(), which divides by len(x)")

PREDICTED_HYPOTHESES: dict[str, list[checks.Hypothesis]] = {
    "std_mean": [
        ("std_mean falls like 1/N; the standard deviation of the mean of N values is "
         "sigma / sqrt(N) (its variance is sigma^2 / N)",
         formula(lambda f: np.sqrt(f["sigma2"]) / f["sizes"])),
        ("std_mean is the variance of the batch mean, sigma^2 / N; return its square root, "
         "sigma / sqrt(N)", formula(lambda f: f["sigma2"] / f["sizes"])),
        ("std_mean divides by sqrt(N - 1); the mean of N values has standard deviation "
         "sigma / sqrt(N)", formula(lambda f: np.sqrt(f["sigma2"] / (f["sizes"] - 1)))),
        (POPULATION_DDOF, formula(lambda f: np.sqrt(f["sigma2"] / f["sizes"]),
                                  ddof=1)),
    ],
    "mean_var": [
        ("mean_var is N/(N-1) sigma^2, above sigma^2; the 1/N batch variance underestimates: "
         "E[sigma_B^2] = (N-1)/N sigma^2 (Bessel's correction, times N/(N-1), undoes that)",
         formula(lambda f: f["sizes"] / (f["sizes"] - 1) * f["sigma2"])),
        ("mean_var is sigma^2 for every N; the 1/N batch variance is biased: E[sigma_B^2] = "
         "(N-1)/N sigma^2", formula(lambda f: f["sigma2"] + 0 * f["sizes"])),
        (POPULATION_DDOF, formula(lambda f: (f["sizes"] - 1) / f["sizes"] * f["sigma2"],
                                  ddof=1)),
    ],
    "std_var": [
        ("std_var assumes a Gaussian feature (mu4 = 3 sigma^4); use the feature's own fourth "
         "central moment, mu4 = mean((x - x.mean())**4): heavy tails make sigma_B^2 noisier",
         formula(lambda f: f["std_var"], mu4=lambda x, sigma2: 3 * sigma2**2)),
        ("mu4 must be the fourth central moment, mean((x - x.mean())**4); yours is mean(x**4)",
         formula(lambda f: f["std_var"], mu4=lambda x, sigma2: np.mean(x**4))),
        ("std_var is the spread of the unbiased variance N/(N-1) sigma_B^2; BN's sigma_B^2 is "
         "(N-1)/N times it, so its standard deviation is (N-1)/N times as large",
         formula(lambda f: f["std_var"], biased=False)),
        ("std_var is the variance of sigma_B^2; return its square root",
         formula(lambda f: f["std_var"] ** 2)),
        (POPULATION_DDOF, formula(lambda f: f["std_var"], ddof=1)),
    ],
}


def judge_predicted(case: dict, result: dict) -> checks.Verdict | None:
    references = batch_stats.predicted_spread(f64(case, "x"), case["batch_sizes"])
    for key, ref in zip(SPREADS, references, strict=True):
        verdict = checks.compare(result, key, ref, case["function"], case,
                                 PREDICTED_HYPOTHESES[key])
        if verdict:
            return verdict
    return None


ASSIGNMENT = Assignment("batch_statistics", chapter=1, forbidden_imports=AUTOGRAD_LIBRARIES,
                        functions=(
    Function("batch_statistics(batches) -> (means, variances)", (
        Check("batch_statistics", "batch_statistics returns mu_B and the biased sigma_B^2 of each "
              "batch", statistics_cases, judge_statistics),), (
        Mistake("batch_variance_unbiased", "the unbiased variance of each batch (ddof=1)",
                (("batches.var(axis=1)", "batches.var(axis=1, ddof=1)"),),
                "divide by N - 1"),
        Mistake("statistics_across_draws", "statistics over axis 0, across the batches",
                (("batches.mean(axis=1)", "batches.mean(axis=0)"),
                 ("batches.var(axis=1)", "batches.var(axis=0)")),
                "across the draws"),
        Mistake("batch_std_not_variance", "the standard deviation of each batch, not its variance",
                (("batches.var(axis=1)", "batches.std(axis=1)"),),
                "are standard deviations"),
    )),
    Function("sampled_spread(batches) -> (std_mean, mean_var, std_var)", (
        Check("sampled_spread", "sampled_spread measures the spread of mu_B and sigma_B^2 over "
              "the draws", sampled_cases, judge_sampled),), (
        Mistake("spread_of_single_values", "the standard deviation of every value, not of the "
                "batch means", (("std_mean = means.std()", "std_mean = batches.std()"),),
                "spread of single values"),
        Mistake("variance_of_batch_means", "the variance of the batch means, not their standard "
                "deviation", (("std_mean = means.std()", "std_mean = means.var()"),),
                "is the variance of the batch means"),
        Mistake("averaged_unbiased_variances", "Bessel's correction applied before averaging",
                (("    mean_var = variances.mean()\n",
                  "    N = batches.shape[1]\n    mean_var = (variances * N / (N - 1)).mean()\n"),),
                "you averaged the unbiased variances"),
    )),
    Function("predicted_spread(x, batch_sizes) -> (std_mean, mean_var, std_var)", (
        Check("predicted_spread", "predicted_spread evaluates the formulas of chapter 1",
              predicted_cases, judge_predicted),), (
        Mistake("std_of_mean_over_n", "sigma / N for the spread of the batch mean",
                (("np.sqrt(sigma2 / N)", "np.sqrt(sigma2) / N"),),
                "falls like 1/N"),
        Mistake("expected_variance_inverted", "E[sigma_B^2] = N/(N-1) sigma^2",
                (("mean_var = (N - 1) / N * sigma2", "mean_var = N / (N - 1) * sigma2"),),
                "the 1/N batch variance underestimates"),
        Mistake("gaussian_fourth_moment", "the fourth moment of a Gaussian, 3 sigma^4",
                (("mu4 = ((x - x.mean()) ** 4).mean()",
                  "mu4 = 3 * sigma2 ** 2  # as for a normal"),),
                "assumes a Gaussian feature"),
        Mistake("spread_of_unbiased_variance", "the spread of the unbiased variance",
                (("std_var = (N - 1) / N * np.sqrt(var_unbiased)",
                  "std_var = np.sqrt(var_unbiased)"),),
                "spread of the unbiased variance"),
    )),
))
