"""Covariate shift, sigmoid saturation and drifting activations.

The experiments behind chapter 2 of the course:

- :func:`make_covariate_shift_data`, :func:`gaussian_density_ratio` and
  :func:`fit_polynomial` reproduce the toy regression of Shimodaira (2000): training inputs and
  test inputs come from different Gaussians, ``P(y | x)`` is the same, and weighting the
  training loss by ``p_test(x) / p_train(x)`` fixes the fit where the test data lie.
- :func:`saturated_fraction` measures how many sigmoid inputs lie in the flat tails;
  :func:`sigmoid_stack_forward` runs a stack of ``linear -> (BN) -> sigmoid`` layers and
  :func:`sigmoid_stack_gradients` backpropagates through it, recording per layer the gradient
  size, the mean sigmoid derivative and the saturated fraction.
- :func:`train_sigmoid_mlp` trains a small sigmoid network without normalization and records
  percentiles of one hidden layer's pre-activations at every step.
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
from threadpoolctl import threadpool_limits

from bnlib.experiments.progress import progress_bar
from bnlib.numpy import batchnorm_backward, batchnorm_forward

__all__ = [
    "sigmoid",
    "sigmoid_derivative",
    "CovariateShiftData",
    "make_covariate_shift_data",
    "gaussian_density_ratio",
    "fit_polynomial",
    "SATURATION_THRESHOLD",
    "saturated_fraction",
    "sigmoid_stack_forward",
    "sigmoid_stack_gradients",
    "DriftRecord",
    "train_sigmoid_mlp",
    "plot_percentiles",
    "plot_covariate_shift",
    "plot_sigmoid",
    "plot_stack_gradients",
]


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Logistic sigmoid ``s(z) = 1 / (1 + exp(-z))``, elementwise, any shape, float dtype kept."""
    # exp of a negative argument only: no overflow for large |z|
    out = np.empty_like(z, dtype=np.result_type(z, np.float32))
    positive = z >= 0
    out[positive] = 1.0 / (1.0 + np.exp(-z[positive]))
    exp_z = np.exp(z[~positive])
    out[~positive] = exp_z / (1.0 + exp_z)
    return out


def sigmoid_derivative(z: np.ndarray) -> np.ndarray:
    """``sigmoid'(z) = sigmoid(z) (1 - sigmoid(z))``, elementwise; its maximum is 1/4, at 0."""
    s = sigmoid(z)
    return s * (1.0 - s)


#: A sigmoid unit is saturated when ``|z| > 4``: there ``sigmoid'(z) < 0.018``.
SATURATION_THRESHOLD = 4.0


def saturated_fraction(z: np.ndarray, threshold: float = SATURATION_THRESHOLD) -> float:
    """Fraction of the sigmoid inputs ``z`` (any shape) with ``|z| > threshold``.

    Both tails count: a unit far below zero is as flat as one far above it. One number for the
    whole array (a layer's pre-activations over the batch and the units).
    """
    if not isinstance(z, np.ndarray) or not np.issubdtype(z.dtype, np.floating):
        raise TypeError(f"z must be a float numpy array, got {type(z).__name__}"
                        + (f" of dtype {z.dtype}" if isinstance(z, np.ndarray) else ""))
    if z.size == 0:
        raise ValueError("z is empty: the saturated fraction of no units is undefined")
    if not threshold > 0:
        raise ValueError(f"threshold must be positive, got {threshold}")
    return float(np.mean(np.abs(z) > threshold))


# ---------------------------------------------------------------------------------------------
# Covariate shift between data sets (Shimodaira 2000, section 2 toy example)
# ---------------------------------------------------------------------------------------------


@dataclass
class CovariateShiftData:
    """Inputs ``(n,)`` and targets ``(n,)`` of a training and a test set, and the input laws."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    train_mean: float
    train_std: float
    test_mean: float
    test_std: float


def true_function(x: np.ndarray) -> np.ndarray:
    """The regression function of the toy problem, ``f(x) = -x + x^3``."""
    return -x + x**3


def make_covariate_shift_data(
    n_train: int = 100, n_test: int = 100,
    train_mean: float = 0.5, train_std: float = 0.5,
    test_mean: float = 0.0, test_std: float = 0.3,
    noise_std: float = 0.3,
    seed: int = 0,
) -> CovariateShiftData:
    """Sample ``y = -x + x^3 + noise``, ``x`` normal with mean ``train_mean`` and standard
    deviation ``train_std`` for training and ``test_mean``, ``test_std`` for testing, ``noise``
    normal with mean 0 and standard deviation ``noise_std`` in both.

    Only the input distribution differs between the sets: ``P(y | x)`` is the same, which is
    what covariate shift means. The defaults are those of Shimodaira (2000).
    """
    if n_train < 2 or n_test < 1:
        raise ValueError(f"need n_train >= 2 and n_test >= 1, got {n_train} and {n_test}")
    if min(train_std, test_std) <= 0 or noise_std < 0:
        raise ValueError("standard deviations must be positive (noise_std may be 0)")
    rng = np.random.default_rng(seed)
    x_train = rng.normal(train_mean, train_std, n_train)
    x_test = rng.normal(test_mean, test_std, n_test)
    y_train = true_function(x_train) + rng.normal(0.0, noise_std, n_train)
    y_test = true_function(x_test) + rng.normal(0.0, noise_std, n_test)
    return CovariateShiftData(
        x_train, y_train, x_test, y_test, train_mean, train_std, test_mean, test_std
    )


def _gaussian_pdf(x: np.ndarray, mean: float, std: float) -> np.ndarray:
    return np.exp(-0.5 * ((x - mean) / std) ** 2) / (std * np.sqrt(2.0 * np.pi))


def gaussian_density_ratio(data: CovariateShiftData, x: np.ndarray) -> np.ndarray:
    """Importance weights ``w(x) = p_test(x) / p_train(x)`` for the two Gaussian input laws."""
    return _gaussian_pdf(x, data.test_mean, data.test_std) / _gaussian_pdf(
        x, data.train_mean, data.train_std
    )


def fit_polynomial(
    x: np.ndarray, y: np.ndarray, degree: int = 1, weights: np.ndarray | None = None
) -> np.ndarray:
    """Weighted least squares: ``argmin_c sum_i w_i (y_i - sum_k c_k x_i^k)^2``.

    Args:
        x, y: ``(n,)`` float arrays.
        degree: polynomial degree (1 is a straight line).
        weights: ``(n,)`` non-negative weights; ``None`` means all ones (ordinary least squares).

    Returns:
        ``(degree + 1,)`` coefficients, highest power first (``np.polyval`` order).
    """
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D of equal shape, got {x.shape} and {y.shape}")
    if weights is None:
        weights = np.ones_like(x)
    if weights.shape != x.shape:
        raise ValueError(f"weights must have shape {x.shape}, got {weights.shape}")
    if np.any(weights < 0):
        raise ValueError("weights must be non-negative")
    design = np.vander(x, degree + 1)
    root_w = np.sqrt(weights)
    coefficients, *_ = np.linalg.lstsq(design * root_w[:, None], y * root_w, rcond=None)
    return coefficients


# ---------------------------------------------------------------------------------------------
# Gradients through a stack of sigmoid layers
# ---------------------------------------------------------------------------------------------


def sigmoid_stack_forward(
    h: np.ndarray, weights, use_batchnorm: bool = False
) -> tuple[list[np.ndarray], list]:
    """Run ``h <- sigmoid(BN?(h W))`` for each ``W`` in ``weights`` and keep what backward needs.

    Args:
        h: ``(N, D)`` input batch.
        weights: ``(L, D, D)`` array (or a sequence of ``(D, D)`` arrays), layer 1 first.
        use_batchnorm: put training-mode ``bnlib.numpy.batchnorm_forward`` with ``gamma = 1``,
            ``beta = 0`` between ``h W`` and the sigmoid.

    Returns:
        ``(preacts, caches)``: the sigmoid input ``z`` of each layer, ``(N, D)`` each, and the
        BN caches (``None`` without BN).
    """
    if h.ndim != 2:
        raise ValueError(f"h must be 2-D (N, D), got shape {h.shape}")
    width = h.shape[1]
    gamma, beta = np.ones(width), np.zeros(width)
    preacts, caches = [], []
    for w in weights:
        if w.shape != (width, width):
            raise ValueError(f"each weight must have shape ({width}, {width}), got {w.shape}")
        z, cache = h @ w, None
        if use_batchnorm:
            z, cache = batchnorm_forward(z, gamma, beta)
        preacts.append(z)
        caches.append(cache)
        h = sigmoid(z)
    return preacts, caches


# Small matrices gain nothing from BLAS threads, and on a busy machine waiting threads
# slow every product down by an order of magnitude.
@threadpool_limits.wrap(limits=1, user_api="blas")
def sigmoid_stack_gradients(
    depth: int = 10,
    width: int = 100,
    batch_size: int = 256,
    weight_std: float = 1.0,
    use_batchnorm: bool = False,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Backpropagate through ``depth`` layers of ``h <- sigmoid(BN?(h W))`` and measure.

    Weights are normal with mean 0 and variance ``weight_std^2 / width`` (``weight_std = 1`` is
    the usual ``1/sqrt(fan_in)`` scale); the input, of shape ``(batch_size, width)``, and the
    gradient arriving at the output are standard normal. The forward pass is
    :func:`sigmoid_stack_forward`. Layer 1 is the first (closest to the input).

    Returns:
        dict of ``(depth,)`` float arrays:

        - ``grad_rms``: root-mean-square of ``dL/dh`` at the input of each layer,
        - ``mean_derivative``: mean of ``sigmoid'(z)`` over the batch and units of each layer,
        - ``saturated_fraction``: :func:`saturated_fraction` of each layer's sigmoid inputs
          (``|z| > 4``, where ``sigmoid'(z) < 0.018``),
        - ``preact_std``: standard deviation of the sigmoid input ``z``.
    """
    if depth < 1 or width < 1 or batch_size < 2:
        raise ValueError("need depth >= 1, width >= 1 and batch_size >= 2")
    rng = np.random.default_rng(seed)
    h = rng.standard_normal((batch_size, width))
    weights = [rng.normal(0.0, weight_std / np.sqrt(width), (width, width)) for _ in range(depth)]
    preacts, caches = sigmoid_stack_forward(h, weights, use_batchnorm)

    grad = rng.standard_normal(h.shape)  # dL/d(output of the last layer)
    grad_rms = np.empty(depth)
    for layer in reversed(range(depth)):
        grad = grad * sigmoid_derivative(preacts[layer])
        if use_batchnorm:
            grad, _, _ = batchnorm_backward(grad, caches[layer])
        grad = grad @ weights[layer].T
        grad_rms[layer] = np.sqrt(np.mean(grad**2))
    return {
        "grad_rms": grad_rms,
        "mean_derivative": np.array([sigmoid_derivative(z).mean() for z in preacts]),
        "saturated_fraction": np.array([saturated_fraction(z) for z in preacts]),
        "preact_std": np.array([z.std() for z in preacts]),
    }


# ---------------------------------------------------------------------------------------------
# Drift of a hidden layer's pre-activations while a sigmoid MLP trains (no normalization)
# ---------------------------------------------------------------------------------------------


@dataclass
class DriftRecord:
    """Pre-activation percentiles of one hidden layer, recorded at every training step.

    ``steps`` is ``(S,)``; ``unit_percentiles`` ``(S, 3)`` holds the 15th, 50th and 85th
    percentiles of one unit's pre-activation over a fixed probe set, ``layer_percentiles``
    ``(S, 3)`` the same over all units of the layer; ``loss`` ``(S,)`` the mini-batch loss and
    ``test_accuracy`` the accuracy on the probe set after training.
    """

    steps: np.ndarray
    unit_percentiles: np.ndarray
    layer_percentiles: np.ndarray
    loss: np.ndarray
    test_accuracy: float
    layer: int
    unit: int


# Small matrices gain nothing from BLAS threads, and on a busy machine waiting threads
# slow every product down by an order of magnitude.
@threadpool_limits.wrap(limits=1, user_api="blas")
def train_sigmoid_mlp(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_probe: np.ndarray,
    y_probe: np.ndarray,
    hidden: tuple[int, ...] = (100, 100, 100),
    steps: int = 300,
    batch_size: int = 60,
    learning_rate: float = 0.5,
    init_std: float = 1.0,
    layer: int = -1,
    unit: int = 0,
    seed: int = 0,
    progress: bool = True,
) -> DriftRecord:
    """Train a ``D -> hidden... -> K`` sigmoid MLP with plain SGD and watch one hidden layer.

    Hidden layers are ``h = sigmoid(h_prev W + b)``, the output is a softmax with
    cross-entropy. Weights start normal with mean 0 and standard deviation ``init_std`` (a
    large ``init_std`` sends units into saturation), biases at zero. Before every step the
    pre-activations ``h_prev W + b`` of hidden layer ``layer`` are computed on ``x_probe`` and
    their 15/50/85th percentiles stored.
    No normalization is used: this is the network Batch Normalization was designed to help.

    Args:
        x_train: ``(N, D)`` floats; y_train: ``(N,)`` ints in ``[0, K)``.
        x_probe: ``(M, D)`` floats held fixed for the percentiles; y_probe: ``(M,)`` ints.
        layer: index into ``hidden`` of the watched layer (-1 is the last hidden layer).
        unit: index of the watched unit in that layer.
    """
    from bnlib.experiments.batch_stats import softmax_cross_entropy

    if x_train.ndim != 2 or x_probe.ndim != 2 or x_train.shape[1] != x_probe.shape[1]:
        raise ValueError(
            f"x_train and x_probe must be (N, D) with equal D, got {x_train.shape}, {x_probe.shape}"
        )
    if not hidden:
        raise ValueError("hidden must name at least one hidden layer")
    layer_index = range(len(hidden))[layer]  # raises IndexError for a bad layer
    if not 0 <= unit < hidden[layer_index]:
        raise ValueError(f"unit must be in [0, {hidden[layer_index]}), got {unit}")
    rng = np.random.default_rng(seed)
    labels = y_train.astype(np.int64)
    sizes = [x_train.shape[1], *hidden, int(labels.max()) + 1]
    shapes = zip(sizes[:-1], sizes[1:], strict=True)
    weights = [rng.normal(0.0, init_std, shape) for shape in shapes]
    biases = [np.zeros(b) for b in sizes[1:]]

    def forward(x):
        activations, preacts = [x], []
        for w, b in zip(weights[:-1], biases[:-1], strict=True):
            preacts.append(activations[-1] @ w + b)
            activations.append(sigmoid(preacts[-1]))
        return activations, preacts, activations[-1] @ weights[-1] + biases[-1]

    unit_pct, layer_pct, losses = [], [], []
    for _ in progress_bar(range(steps), "sigmoid MLP" if progress else None):
        _, probe_preacts, _ = forward(x_probe)
        watched = probe_preacts[layer_index]
        unit_pct.append(np.percentile(watched[:, unit], [15, 50, 85]))
        layer_pct.append(np.percentile(watched, [15, 50, 85]))

        rows = rng.integers(0, x_train.shape[0], batch_size)
        activations, preacts, logits = forward(x_train[rows])
        loss, grad = softmax_cross_entropy(logits, labels[rows])
        losses.append(loss)
        for i in reversed(range(len(weights))):
            grad_w, grad_b = activations[i].T @ grad, grad.sum(axis=0)
            if i > 0:
                grad = (grad @ weights[i].T) * sigmoid_derivative(preacts[i - 1])
            weights[i] -= learning_rate * grad_w
            biases[i] -= learning_rate * grad_b

    _, _, probe_logits = forward(x_probe)
    accuracy = float(np.mean(probe_logits.argmax(axis=1) == y_probe))
    return DriftRecord(
        steps=np.arange(steps),
        unit_percentiles=np.array(unit_pct),
        layer_percentiles=np.array(layer_pct),
        loss=np.array(losses),
        test_accuracy=accuracy,
        layer=layer_index,
        unit=unit,
    )


def plot_percentiles(record: DriftRecord) -> plt.Figure:
    """Two panels: 15/50/85th percentiles of the watched unit, and of the whole layer."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharex=True)
    panels = [
        (record.unit_percentiles, f"unit {record.unit} of hidden layer {record.layer + 1}"),
        (record.layer_percentiles, f"all units of hidden layer {record.layer + 1}"),
    ]
    for ax, (pct, title) in zip(axes, panels, strict=True):
        for column, (name, style) in enumerate(
            zip(["15th", "50th", "85th"], ["--", "-", "--"], strict=True)
        ):
            ax.plot(record.steps, pct[:, column], style, color="C0", label=f"{name} percentile")
        ax.fill_between(record.steps, pct[:, 0], pct[:, 2], color="C0", alpha=0.15)
        ax.set_title(title)
        ax.set_xlabel("training step")
        ax.set_ylabel("sigmoid input (pre-activation)")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    return fig


def plot_covariate_shift(data: CovariateShiftData, fits: dict[str, np.ndarray]) -> plt.Figure:
    """Left: training and test points, ``f(x)`` and the fitted polynomials in ``fits``
    (label -> coefficients). Right: the two input densities and the importance weights."""
    fig, (ax_fit, ax_density) = plt.subplots(1, 2, figsize=(11, 3.8))
    grid = np.linspace(-1.0, 2.0, 300)
    ax_fit.scatter(data.x_train, data.y_train, s=12, color="C0", alpha=0.6, label="training")
    ax_fit.scatter(data.x_test, data.y_test, s=12, color="C3", alpha=0.6, label="test")
    ax_fit.plot(grid, true_function(grid), color="k", lw=1, label=r"$f(x) = -x + x^3$")
    for i, (label, coefficients) in enumerate(fits.items()):
        ax_fit.plot(grid, np.polyval(coefficients, grid), color=f"C{i + 1}", lw=2, label=label)
    ax_fit.set_ylim(-2.0, 4.0)
    ax_fit.set_xlabel("x")
    ax_fit.set_ylabel("y")
    ax_fit.legend(fontsize="small")

    ax_density.plot(
        grid,
        _gaussian_pdf(grid, data.train_mean, data.train_std),
        color="C0",
        label=r"$p_{train}(x)$",
    )
    ax_density.plot(
        grid, _gaussian_pdf(grid, data.test_mean, data.test_std), color="C3", label=r"$p_{test}(x)$"
    )
    ax_weight = ax_density.twinx()
    ax_weight.plot(
        grid,
        gaussian_density_ratio(data, grid),
        color="k",
        ls="--",
        label=r"$w(x) = p_{test}(x) / p_{train}(x)$",
    )
    ax_weight.set_ylabel("importance weight")
    ax_density.set_xlabel("x")
    ax_density.set_ylabel("density")
    lines = ax_density.get_lines() + ax_weight.get_lines()
    ax_density.legend(lines, [line.get_label() for line in lines], fontsize="small")
    fig.tight_layout()
    return fig


def plot_sigmoid() -> plt.Figure:
    """The sigmoid, its derivative (maximum 1/4 at 0) and the saturated region ``|z| > 4``."""
    fig, ax = plt.subplots(figsize=(7, 3.4))
    z = np.linspace(-8.0, 8.0, 400)
    ax.plot(z, sigmoid(z), label=r"$\mathrm{sigmoid}(z) = 1/(1+e^{-z})$")
    ax.plot(z, sigmoid_derivative(z), label=r"$\mathrm{sigmoid}'(z)$")
    ax.axhline(0.25, color="k", ls=":", lw=1, label=r"$1/4 = \mathrm{sigmoid}'(0)$")
    for side in (-1, 1):
        ax.axvspan(4.0 * side, 8.0 * side, color="0.85", lw=0)
    for x in (-6.0, 6.0):
        ax.text(x, 0.55, "saturated\nderivative\n< 0.018", ha="center", fontsize="small")
    ax.set_xlabel("z")
    ax.set_xlim(-8, 8)
    ax.legend(loc="upper left", fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_stack_gradients(results: dict[str, dict[str, np.ndarray]]) -> plt.Figure:
    """Per layer of :func:`sigmoid_stack_gradients` runs (label -> result): gradient size
    (log scale), mean sigmoid derivative and fraction of saturated units."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for label, result in results.items():
        layers = np.arange(1, len(result["grad_rms"]) + 1)
        axes[0].semilogy(layers, result["grad_rms"], "o-", label=label)
        axes[1].plot(layers, result["mean_derivative"], "o-", label=label)
        axes[2].plot(layers, result["saturated_fraction"], "o-", label=label)
    axes[1].axhline(0.25, color="k", ls=":", lw=1)
    axes[0].set_ylabel("RMS of dL/dh at the layer input")
    axes[1].set_ylabel("mean of sigmoid'(z) over the layer")
    axes[2].set_ylabel("fraction with |z| > 4")
    for ax in axes:
        ax.set_xlabel("layer (1 = next to the input)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    fig.tight_layout()
    return fig
