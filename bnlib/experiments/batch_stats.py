"""Mini-batches: gradient descent with different batch sizes, and batch statistics as estimators.

The experiments behind chapter 1 of the course:

- :func:`train_softmax_regression` trains a softmax (multinomial logistic) regression with
  full-batch, stochastic (batch size 1) or mini-batch gradient descent and records the loss
  against epochs, parameter updates and compute time.
- :func:`draw_batches` draws many mini-batches from a population, :func:`batch_statistics`
  returns the batch mean ``mu_B`` and the batch variance ``sigma_B^2`` of each one, the
  quantities Batch Normalization computes in training mode (:func:`sample_batch_statistics`
  does both).
- :func:`std_of_batch_mean` and :func:`std_of_batch_variance` give the theoretical spread of
  these estimators, :func:`expected_biased_variance` the bias of the ``1/N`` variance;
  :func:`sampled_spread` measures the three over many batches, :func:`predicted_spread`
  evaluates the formulas with a population's moments.

As in the book, ``N`` is the batch size (the number of samples in a mini-batch).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import matplotlib.pyplot as plt
import numpy as np
from threadpoolctl import threadpool_limits

from bnlib.experiments.progress import progress_bar

__all__ = [
    "SoftmaxHistory",
    "softmax_cross_entropy",
    "train_softmax_regression",
    "draw_batches",
    "batch_statistics",
    "sample_batch_statistics",
    "std_of_batch_mean",
    "std_of_batch_variance",
    "expected_biased_variance",
    "sampled_spread",
    "predicted_spread",
    "estimator_spread",
    "plot_training_histories",
    "plot_estimator_spread",
]


# ---------------------------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------------------------


def _check_population(population) -> np.ndarray:
    if not isinstance(population, np.ndarray):
        raise TypeError(f"population must be a numpy array, got {type(population).__name__}")
    if population.ndim != 1:
        raise ValueError(f"population must be 1-D, got shape {population.shape}")
    if population.size < 2:
        raise ValueError(f"population needs at least 2 values, got {population.size}")
    if not np.issubdtype(population.dtype, np.floating):
        raise TypeError(f"population must hold floats, got dtype {population.dtype}")
    return population.astype(np.float64)


def _check_batches(batches) -> np.ndarray:
    if not isinstance(batches, np.ndarray):
        raise TypeError(f"batches must be a numpy array, got {type(batches).__name__}")
    if batches.ndim != 2 or batches.size == 0:
        raise ValueError(
            f"batches must be 2-D (num_draws, N) with one mini-batch per row, got shape "
            f"{batches.shape}"
        )
    if not np.issubdtype(batches.dtype, np.floating):
        raise TypeError(f"batches must hold floats, got dtype {batches.dtype}")
    return batches.astype(np.float64)


def _check_batch_size(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer):
        raise TypeError(f"batch_size must be an int, got {type(batch_size).__name__}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    return int(batch_size)


# ---------------------------------------------------------------------------------------------
# Mini-batch gradient descent on a softmax regression
# ---------------------------------------------------------------------------------------------


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of a softmax classifier and its gradient with respect to the logits.

    Args:
        logits: ``(N, K)`` float array of class scores.
        labels: ``(N,)`` integer array with values in ``[0, K)``.

    Returns:
        ``(loss, dlogits)``: ``loss = -mean_i log softmax(logits_i)[labels_i]`` and
        ``dlogits = (softmax(logits) - onehot(labels)) / N``, shape ``(N, K)``.
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must be 2-D (N, K), got shape {logits.shape}")
    if labels.shape != (logits.shape[0],):
        raise ValueError(
            f"labels must have shape ({logits.shape[0]},) to match logits, got {labels.shape}"
        )
    n = logits.shape[0]
    shifted = logits - logits.max(axis=1, keepdims=True)  # subtract the max: no overflow in exp
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -log_probs[np.arange(n), labels].mean()
    dlogits = np.exp(log_probs)
    dlogits[np.arange(n), labels] -= 1.0
    return float(loss), dlogits / n


@dataclass
class SoftmaxHistory:
    """The loss curve of one run of :func:`train_softmax_regression`.

    Each list has one entry per evaluation (the first is before any update): ``epochs`` is the
    number of passes over the data so far (fractional), ``updates`` the number of parameter
    updates, ``seconds`` the CPU time spent on updates (evaluation excluded) and
    ``loss`` the cross-entropy on the full training set.
    """

    batch_size: int
    learning_rate: float
    epochs: list[float] = field(default_factory=list)
    updates: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)

    def first_reaching(self, loss: float) -> int | None:
        """Index of the first evaluation whose training loss is at most ``loss`` (None: never)."""
        return next((i for i, value in enumerate(self.loss) if value <= loss), None)

    def loss_after(self, updates: int) -> float:
        """Training loss at the first evaluation after at least ``updates`` parameter updates."""
        index = next((i for i, count in enumerate(self.updates) if count >= updates), None)
        if index is None:
            raise ValueError(f"the run made only {self.updates[-1]} updates, not {updates}")
        return self.loss[index]


# Small matrices gain nothing from BLAS threads, and on a busy machine waiting threads
# slow every product down by an order of magnitude.
@threadpool_limits.wrap(limits=1, user_api="blas")
def train_softmax_regression(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    epochs: int,
    learning_rate: float,
    evals_per_epoch: int = 1,
    seed: int = 0,
    progress: bool = True,
) -> SoftmaxHistory:
    """Train ``softmax(x W + b)`` by gradient descent on mini-batches of ``batch_size`` rows.

    ``batch_size=1`` is stochastic gradient descent, ``batch_size=len(x)`` full-batch gradient
    descent, anything between mini-batch gradient descent. Every epoch visits each example once
    in a new random order (sampling without replacement); the last batch of an epoch may be
    smaller. Update: ``W <- W - learning_rate * dL_B/dW`` with ``L_B`` the mean loss of the batch.

    Args:
        x: ``(N, D)`` float features.
        y: ``(N,)`` integer labels in ``[0, K)``; ``K = y.max() + 1``.
        batch_size: rows per update, ``1 <= batch_size <= N``.
        epochs: passes over the data.
        learning_rate: step size.
        evals_per_epoch: how many times per epoch to record the full training loss.
        seed: seeds the shuffling (weights start at zero, so the run is deterministic).
        progress: show a tqdm bar over epochs.

    Returns:
        A :class:`SoftmaxHistory`.
    """
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D (N, D), got shape {x.shape}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"y must have shape ({x.shape[0]},) to match x, got {y.shape}")
    batch_size = _check_batch_size(batch_size)
    n, d = x.shape
    if batch_size > n:
        raise ValueError(f"batch_size must be at most the number of examples {n}, got {batch_size}")
    if epochs < 1 or evals_per_epoch < 1:
        raise ValueError("epochs and evals_per_epoch must be at least 1")
    if learning_rate <= 0:
        raise ValueError(f"learning_rate must be positive, got {learning_rate}")

    x = x.astype(np.float64)  # one conversion here instead of a mixed-dtype product per step
    labels = y.astype(np.int64)
    num_classes = int(labels.max()) + 1
    weights = np.zeros((d, num_classes))
    bias = np.zeros(num_classes)
    rng = np.random.default_rng(seed)
    history = SoftmaxHistory(batch_size=batch_size, learning_rate=learning_rate)
    batches_per_epoch = -(-n // batch_size)
    # evaluate after these batch indices of each epoch (the last one always included)
    eval_points = set(np.linspace(0, batches_per_epoch, evals_per_epoch + 1, dtype=int)[1:] - 1)

    def record(epoch_fraction: float, updates: int, seconds: float) -> None:
        loss, _ = softmax_cross_entropy(x @ weights + bias, labels)
        history.epochs.append(epoch_fraction)
        history.updates.append(updates)
        history.seconds.append(seconds)
        history.loss.append(loss)

    updates, seconds = 0, 0.0
    record(0.0, 0, 0.0)
    for epoch in progress_bar(range(epochs), f"batch size {batch_size}" if progress else None):
        order = rng.permutation(n)
        for b in range(batches_per_epoch):
            # CPU time of this thread: unlike wall-clock time, it does not grow when other
            # programs share the machine, so runs measured at different moments compare.
            start = time.thread_time()
            rows = order[b * batch_size : (b + 1) * batch_size]
            _, dlogits = softmax_cross_entropy(x[rows] @ weights + bias, labels[rows])
            weights -= learning_rate * (x[rows].T @ dlogits)
            bias -= learning_rate * dlogits.sum(axis=0)
            seconds += time.thread_time() - start
            updates += 1
            if b in eval_points:
                record(epoch + (b + 1) / batches_per_epoch, updates, seconds)
    return history


def plot_training_histories(histories: list[SoftmaxHistory]) -> plt.Figure:
    """Three panels: training loss against epochs, parameter updates and CPU seconds."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), sharey=True)
    for history in histories:
        label = f"N = {history.batch_size} (lr {history.learning_rate:g})"
        axes[0].plot(history.epochs, history.loss, label=label)
        # skip the point at 0 updates / 0 s: the x axes are logarithmic
        axes[1].plot(history.updates[1:], history.loss[1:], label=label)
        axes[2].plot(history.seconds[1:], history.loss[1:], label=label)
    axes[0].set_xlabel("epochs (passes over the data)")
    axes[1].set_xlabel("parameter updates")
    axes[2].set_xlabel("CPU seconds spent on updates")
    axes[1].set_xscale("log")
    axes[2].set_xscale("log")
    axes[0].set_ylabel("training cross-entropy")
    axes[0].legend()
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# Batch statistics as noisy estimators
# ---------------------------------------------------------------------------------------------


def draw_batches(
    population: np.ndarray, batch_size: int, num_draws: int, seed: int = 0
) -> np.ndarray:
    """``num_draws`` mini-batches of ``batch_size`` values of one feature, one per row.

    The values are drawn independently and uniformly, with replacement, from ``population``
    (so the draws are i.i.d. with the population's distribution).

    Args:
        population: ``(P,)`` float array, the values of one feature over the whole data set.
        batch_size: ``N >= 1``.
        num_draws: number of batches.
        seed: seed of the random generator.

    Returns:
        ``(num_draws, N)`` float64 array.
    """
    values = _check_population(population)
    batch_size = _check_batch_size(batch_size)
    if num_draws < 1:
        raise ValueError(f"num_draws must be at least 1, got {num_draws}")
    rng = np.random.default_rng(seed)
    return values[rng.integers(0, values.size, size=(num_draws, batch_size))]


def batch_statistics(batches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The statistics Batch Normalization computes in training mode, for each mini-batch.

    Args:
        batches: ``(num_draws, N)`` float array, one mini-batch of one feature per row.

    Returns:
        ``(means, variances)``, each ``(num_draws,)`` float64:
        ``mu_B = (1/N) sum_i x_i`` and the biased ``sigma_B^2 = (1/N) sum_i (x_i - mu_B)^2``
        of each row.
    """
    values = _check_batches(batches)
    return values.mean(axis=1), values.var(axis=1)  # np.var uses 1/N by default (ddof=0)


def sample_batch_statistics(
    population: np.ndarray, batch_size: int, num_draws: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`batch_statistics` of :func:`draw_batches` ``(population, batch_size, num_draws,
    seed)``: ``(means, variances)``, each ``(num_draws,)`` float64."""
    return batch_statistics(draw_batches(population, batch_size, num_draws, seed))


def std_of_batch_mean(sigma: float, batch_size) -> np.ndarray:
    """Standard deviation of the mean of ``N`` i.i.d. values with standard deviation sigma.

    ``std(mu_B) = sigma / sqrt(N)``. ``batch_size`` may be an int or an array of ints.
    """
    return sigma / np.sqrt(np.asarray(batch_size, dtype=np.float64))


def std_of_batch_variance(sigma2: float, mu4: float, batch_size, biased: bool = True) -> np.ndarray:
    """Standard deviation of the sample variance of ``N`` i.i.d. values.

    For the unbiased ``var_unbiased = (1/(N-1)) sum (x_i - mu_B)^2``::

        Var(var_unbiased) = (mu4 - (N - 3) / (N - 1) * sigma^4) / N

    with ``sigma2 = sigma^2`` the population variance and ``mu4 = E[(x - mu)^4]`` the fourth
    central moment (``3 sigma^4`` for a Gaussian, which gives ``2 sigma^4 / (N - 1)``). The
    biased ``sigma_B^2 = (N-1)/N var_unbiased`` has
    ``Var(sigma_B^2) = ((N-1)/N)^2 Var(var_unbiased)``.

    Args:
        sigma2: population variance.
        mu4: population fourth central moment.
        batch_size: ``N >= 2``, int or array of ints.
        biased: spread of the ``1/N`` estimator (True, what BN uses) or the ``1/(N-1)`` one.
    """
    b = np.asarray(batch_size, dtype=np.float64)
    if np.any(b < 2):
        raise ValueError("the variance of a batch needs batch_size >= 2")
    var_unbiased = (mu4 - (b - 3.0) / (b - 1.0) * sigma2**2) / b
    if biased:
        return np.sqrt(((b - 1.0) / b) ** 2 * var_unbiased)
    return np.sqrt(var_unbiased)


def expected_biased_variance(sigma2: float, batch_size) -> np.ndarray:
    """``E[sigma_B^2] = (N - 1) / N * sigma^2`` for the ``1/N`` variance of ``N`` i.i.d. values."""
    b = np.asarray(batch_size, dtype=np.float64)
    return (b - 1.0) / b * sigma2


def sampled_spread(batches: np.ndarray) -> tuple[float, float, float]:
    """The spread of BN's batch statistics, measured over many mini-batches.

    Args:
        batches: ``(num_draws, N)`` float array, one mini-batch of one feature per row.

    Returns:
        ``(std_mean, mean_var, std_var)``: the standard deviation of ``mu_B`` over the draws,
        the average of the biased ``sigma_B^2`` and its standard deviation (``np.std``'s,
        which divides by the number of draws).
    """
    means, variances = batch_statistics(batches)
    return float(means.std()), float(variances.mean()), float(variances.std())


def predicted_spread(
    population: np.ndarray, batch_sizes
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the formulas predict for batches of ``N`` i.i.d. draws from ``population``.

    ``sigma^2 = population.var()`` and ``mu4 = mean((population - mean)^4)`` are the moments of
    the population itself (every value of the feature, so no Bessel's correction).

    Returns:
        ``(std_mean, mean_var, std_var)``, each ``(len(batch_sizes),)`` float64:
        :func:`std_of_batch_mean`, :func:`expected_biased_variance` and
        :func:`std_of_batch_variance` of the biased ``sigma_B^2``, for each ``N >= 2``.
    """
    values = _check_population(population)
    sizes = np.asarray(batch_sizes, dtype=np.int64)
    sigma2 = values.var()
    mu4 = np.mean((values - values.mean()) ** 4)
    return (std_of_batch_mean(np.sqrt(sigma2), sizes), expected_biased_variance(sigma2, sizes),
            std_of_batch_variance(sigma2, mu4, sizes))


def estimator_spread(
    population: np.ndarray, batch_sizes, num_draws: int = 4000, seed: int = 0
) -> dict[str, np.ndarray]:
    """Measured and theoretical spread of ``mu_B`` and ``sigma_B^2`` for several batch sizes.

    Returns a dict of ``(len(batch_sizes),)`` arrays: ``batch_sizes``; ``std_mean``,
    ``mean_var`` and ``std_var`` (:func:`sampled_spread` over ``num_draws`` batches of each
    size); and the formulas evaluated with the population moments (:func:`predicted_spread`):
    ``theory_std_mean``, ``theory_mean_var``, ``theory_std_var``.
    """
    values = _check_population(population)
    sizes = np.asarray(batch_sizes, dtype=np.int64)
    measured = [sampled_spread(draw_batches(values, int(size), num_draws, seed + i))
                for i, size in enumerate(sizes)]
    std_mean, mean_var, std_var = (np.array(column) for column in zip(*measured, strict=True))
    theory_std_mean, theory_mean_var, theory_std_var = predicted_spread(values, sizes)
    return {
        "batch_sizes": sizes,
        "std_mean": std_mean,
        "mean_var": mean_var,
        "std_var": std_var,
        "theory_std_mean": theory_std_mean,
        "theory_mean_var": theory_mean_var,
        "theory_std_var": theory_std_var,
    }


def plot_estimator_spread(spread: dict[str, np.ndarray]) -> plt.Figure:
    """Log-log plots of the measured spread of ``mu_B`` and ``sigma_B^2`` against the formulas."""
    sizes = spread["batch_sizes"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    axes[0].loglog(sizes, spread["std_mean"], "o", label=r"measured std of $\mu_\mathcal{B}$")
    axes[0].loglog(sizes, spread["theory_std_mean"], "-", label=r"$\sigma/\sqrt{N}$")
    axes[1].loglog(sizes, spread["std_var"], "o",
                   label=r"measured std of $\sigma^2_\mathcal{B}$")
    axes[1].loglog(sizes, spread["theory_std_var"], "-",
                   label=r"$\frac{N-1}{N}\sqrt{\mathrm{Var}(\tilde\sigma^2_\mathcal{B})}$")
    for ax, title in zip(axes, ["batch mean", "batch variance (1/N)"], strict=True):
        ax.set_xlabel("batch size N")
        ax.set_ylabel("standard deviation over batches")
        ax.set_title(title)
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    fig.tight_layout()
    return fig
