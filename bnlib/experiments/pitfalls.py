"""Small experiments behind the myths-and-pitfalls chapter.

Two functions here differ from ``bnlib.numpy.batchnorm_forward`` on purpose, so that the chapter
can compare them with it: ``normalize_with_variance`` is a bug (it divides by the variance),
``normalize_with_unbiased_variance`` a convention that no framework uses in training.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from scipy import stats
from threadpoolctl import threadpool_limits

from bnlib.experiments.roofline import byte_model, median_seconds
from bnlib.experiments.running_stats import BNMLP, accuracy, train_mlp
from bnlib.numpy import batchnorm_forward, reduction_axes

__all__ = [
    "normalize_with_variance",
    "normalize_with_unbiased_variance",
    "skewness_before_after",
    "identity_parameters",
    "plot_skewed_feature",
    "RegularizationResult",
    "regularization_experiment",
    "plot_regularization",
    "finetune_small_batches",
    "bn_cost_model",
    "time_linear_and_bn",
    "track_hidden_distribution",
    "plot_hidden_distribution",
]


def normalize_with_variance(x: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """WRONG ON PURPOSE: ``(x - mean) / (var + eps)``, a tutorial's "Batch = (x-m)/v".

    (N, D) -> (N, D). Dividing by the variance instead of the standard deviation leaves each
    feature with standard deviation ``std / (var + eps)``, about ``1 / std``, not 1.
    """
    return (x - x.mean(axis=0)) / (x.var(axis=0) + eps)


def normalize_with_unbiased_variance(x: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """Normalize with the unbiased (ddof=1) batch variance, as Karpathy's makemore does.

    (N, D) -> (N, D). The output variance becomes (N - 1) / N instead of 1; torch, Keras and
    ``bnlib`` normalize with the biased variance in training and keep the unbiased one for
    running_var, so a model trained this way differs slightly from theirs.
    """
    return (x - x.mean(axis=0)) / np.sqrt(x.var(axis=0, ddof=1) + eps)


def skewness_before_after(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Skewness of each feature of (N, D) ``x`` before and after training-mode BN.

    BN is an affine map per feature (x -> a x + b with a > 0), and skewness is invariant under
    such maps, so the two arrays agree up to rounding.
    """
    d = x.shape[1]
    out, _ = batchnorm_forward(x, np.ones(d, x.dtype), np.zeros(d, x.dtype))
    return stats.skew(x, axis=0), stats.skew(out, axis=0)


def identity_parameters(x: np.ndarray, eps: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    """The gamma and beta with which training-mode BN gives back this batch unchanged.

    ``x``: (N, C) or (N, C, *spatial); returns ``(gamma, beta)``, each (C,): ``gamma =
    sqrt(var + eps)``, the standard deviation BN divides by (not the variance), and ``beta =
    mean``, with the biased variance and the mean over every axis but 1. Then
    ``batchnorm_forward(x, gamma, beta, eps)[0]`` equals ``x``: BN can undo itself.
    """
    if not isinstance(x, np.ndarray) or x.ndim < 2:
        raise ValueError("x must be a numpy array of shape (N, C) or (N, C, *spatial)")
    axes = reduction_axes(x)
    return np.sqrt(x.var(axis=axes) + eps), x.mean(axis=axes)


def plot_skewed_feature(n: int = 2000, seed: int = 0) -> Figure:
    """Histogram of an exponential feature before and after BN, with the N(0, 1) density."""
    rng = np.random.default_rng(seed)
    x = rng.exponential(scale=2.0, size=(n, 1)) + 5.0
    out, _ = batchnorm_forward(x, np.ones(1), np.zeros(1))
    before, after = skewness_before_after(x)
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(9, 3.2), layout="constrained")
    ax0.hist(x[:, 0], bins=60, density=True, color="0.6")
    ax0.set_title(f"input: mean {x.mean():.2f}, std {x.std():.2f}, skew {before[0]:.2f}")
    ax1.hist(out[:, 0], bins=60, density=True, color="tab:blue", label="BN output")
    grid = np.linspace(-3, 5, 200)
    ax1.plot(grid, stats.norm.pdf(grid), "r--", label="N(0, 1)")
    ax1.set_title(f"after BN: mean {out.mean():.2f}, std {out.std():.2f}, skew {after[0]:.2f}")
    ax1.legend(fontsize=8)
    return fig


@dataclass(frozen=True)
class RegularizationResult:
    """Accuracies of one training run (one batch size, with or without BN, one seed)."""

    batch_size: int
    use_bn: bool
    seed: int
    train_accuracy: float
    test_accuracy: float

    @property
    def gap(self) -> float:
        """Train accuracy minus test accuracy (the generalization gap)."""
        return self.train_accuracy - self.test_accuracy


def regularization_experiment(
    data,
    batch_sizes: tuple[int, ...] = (2, 8, 32, 128),
    seeds: tuple[int, ...] = (0, 1, 2, 3),
    n_train: int = 256,
    steps: int = 800,
    lr: float = 0.05,
    hidden: int = 64,
) -> list[RegularizationResult]:
    """Train BNMLPs with and without BN on a small training subset; record train/test accuracy.

    Every run takes the same number of SGD steps, so the batch sizes differ only in the noise of
    their gradients and batch statistics. Accuracies are measured in eval mode.

    Args:
        data: object with x_train, y_train, x_test, y_test (``bnlib.data.digits()``).
        n_train: size of the training subset (small, so that the nets can overfit it).
    """
    x_train, y_train = data.x_train[:n_train], data.y_train[:n_train]
    results = []
    for seed in seeds:
        for batch_size in batch_sizes:
            epochs = max(1, round(steps * batch_size / n_train))
            for use_bn in (False, True):
                model, _ = train_mlp(
                    x_train,
                    y_train,
                    batch_size=batch_size,
                    epochs=epochs,
                    lr=lr,
                    seed=seed,
                    use_bn=use_bn,
                    hidden=hidden,
                    first_bias=not use_bn,
                )
                results.append(
                    RegularizationResult(
                        batch_size,
                        use_bn,
                        seed,
                        accuracy(model, x_train, y_train),
                        accuracy(model, data.x_test, data.y_test),
                    )
                )
    return results


def plot_regularization(results: list[RegularizationResult]) -> Figure:
    """Test accuracy and train-test gap against batch size, with and without BN.

    Lines are means over seeds; each dot is one seed.
    """
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), layout="constrained")
    batch_sizes = sorted({r.batch_size for r in results})
    for use_bn, color in ((False, "tab:gray"), (True, "tab:blue")):
        rows = [r for r in results if r.use_bn == use_bn]
        label = "with BN" if use_bn else "without BN"
        for ax, metric in zip(axes, ("test_accuracy", "gap"), strict=True):
            values = [[getattr(r, metric) for r in rows if r.batch_size == b] for b in batch_sizes]
            ax.plot(batch_sizes, [np.mean(v) for v in values], "-o", color=color, label=label)
            ax.plot(
                [r.batch_size for r in rows],
                [getattr(r, metric) for r in rows],
                ".",
                color=color,
                alpha=0.4,
            )
    for ax, title in zip(axes, ("test accuracy", "train accuracy - test accuracy"), strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xticks(batch_sizes, labels=[str(b) for b in batch_sizes])
        ax.set_xlabel("batch size")
        ax.set_title(title, fontsize=10)
    axes[0].legend()
    return fig


class _FrozenStatisticsMLP(BNMLP):
    """A BNMLP whose BN layer stays in eval mode while the network trains.

    BN then normalizes with, and keeps, its running statistics; gamma, beta and the weights
    still learn (the remedy for fine-tuning with tiny batches).
    """

    def train(self) -> BNMLP:
        super().train()
        self.bn.eval()
        return self


def finetune_small_batches(data, pretrained: BNMLP, freeze_bn_stats: bool, batch_size: int = 2,
                           n_finetune: int = 200, epochs: int = 3, lr: float = 0.01,
                           seed: int = 0) -> tuple[BNMLP, float]:
    """Fine-tune a copy of ``pretrained`` with tiny batches; return it and its test accuracy.

    The copy trains on the last ``n_finetune`` training images with
    :func:`~bnlib.experiments.running_stats.train_mlp`. With
    ``freeze_bn_stats`` its BN layer stays in eval mode (it normalizes with, and keeps, the
    running statistics of pre-training; gamma and beta still learn); otherwise it is in
    training mode and normalizes each tiny batch with its own statistics.
    """
    model = copy.deepcopy(pretrained)
    if freeze_bn_stats:
        model.__class__ = _FrozenStatisticsMLP  # the same network; only train() differs
    x, y = data.x_train[-n_finetune:], data.y_train[-n_finetune:]
    train_mlp(x, y, model=model, batch_size=batch_size, epochs=epochs, lr=lr, seed=seed)
    return model, accuracy(model, data.x_test, data.y_test)


def bn_cost_model(batch: int, d_in: int, d_out: int, itemsize: int = 4) -> dict[str, float]:
    """FLOPs and bytes of ``Linear(d_in, d_out)`` and of ``BatchNorm1d(d_out)`` on a batch.

    The linear layer does 2 * d_in FLOPs (one multiply-add per input) per element of its
    (batch, d_out) output, and reads its input and weight and writes its output once. BN's
    FLOPs and bytes per element are those of its byte models
    (:func:`bnlib.experiments.roofline.byte_model`, training forward and inference).
    """
    elems = batch * d_out
    train, inference = byte_model("bn", "forward"), byte_model("bn", "inference")
    return {
        "linear_flops": 2.0 * batch * d_in * d_out,
        "bn_train_flops": float(train.flops * elems),
        "bn_eval_flops": float(inference.flops * elems),
        "linear_bytes": float(itemsize * (batch * d_in + d_in * d_out + elems)),
        "bn_train_bytes": float(train.bytes_moved(elems, itemsize)),
        "bn_eval_bytes": float(inference.bytes_moved(elems, itemsize)),
    }


def time_linear_and_bn(
    batch: int = 256, d_in: int = 512, d_out: int = 512, repeats: int = 7, seed: int = 0
) -> dict[str, float]:
    """Median wall-clock seconds of a float32 NumPy linear layer and of BN forward on its output."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, d_in), dtype=np.float32)
    w = rng.standard_normal((d_in, d_out), dtype=np.float32)
    z = x @ w
    gamma, beta = np.ones(d_out, np.float32), np.zeros(d_out, np.float32)
    # One thread for both, so that the comparison is per core.
    with threadpool_limits(limits=1):
        return {
            "linear_s": median_seconds(lambda: x @ w, repeats),
            "bn_train_s": median_seconds(lambda: batchnorm_forward(z, gamma, beta), repeats),
        }


def track_hidden_distribution(
    data, epochs: int = 8, unit: int = 0, probe_size: int = 256, lr: float = 0.1, seed: int = 0
) -> dict[str, np.ndarray]:
    """Percentiles (15, 50, 85) of one hidden unit before and after BN, epoch by epoch.

    A BNMLP is trained one epoch at a time; after each epoch (and before the first) a fixed
    probe batch of training images goes through the first linear layer, and BN is applied to it
    in training mode with the current gamma and beta (``batchnorm_forward``, so the model's
    running statistics are not touched).

    Returns:
        {"before_bn": (epochs + 1, 3), "after_bn": (epochs + 1, 3)} percentile arrays.
    """
    probe = data.x_train[:probe_size].astype(np.float64)
    model = BNMLP(d_in=probe.shape[1], first_bias=False, seed=seed)
    before, after = [], []
    for epoch in range(epochs + 1):
        if epoch:
            train_mlp(data.x_train, data.y_train, model=model, epochs=1, lr=lr, seed=seed + epoch)
        z = model.hidden_preactivation(probe)
        out, _ = batchnorm_forward(z, model.bn.weight, model.bn.bias)
        before.append(np.percentile(z[:, unit], (15, 50, 85)))
        after.append(np.percentile(out[:, unit], (15, 50, 85)))
    return {"before_bn": np.array(before), "after_bn": np.array(after)}


def plot_hidden_distribution(record: dict[str, np.ndarray]) -> Figure:
    """Two panels of the 15th/50th/85th percentiles from :func:`track_hidden_distribution`."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), layout="constrained")
    for ax, key, title in zip(
        axes,
        ("before_bn", "after_bn"),
        ("input of BN (x W)", "output of BN (gamma xhat + beta)"),
        strict=True,
    ):
        values = record[key]
        for column, style in zip(range(3), ("--", "-", "--"), strict=True):
            ax.plot(values[:, column], style, color="tab:blue")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
    axes[0].set_ylabel("15th, 50th, 85th percentile")
    return fig
