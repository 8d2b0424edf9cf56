"""Experiments on running statistics: EMAs, PyTorch vs Keras conventions, the train/eval gap.

Everything here drives ``bnlib.numpy.BatchNorm``; nothing re-implements its update rule.
The small network :class:`BNMLP` (``Linear -> BatchNorm -> ReLU -> Linear``, NumPy, float64)
is the model the inference and pitfalls chapters train on the scikit-learn digits.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from bnlib.numpy import BatchNorm, fold_batchnorm

__all__ = [
    "RunningStatsHistory",
    "minibatches",
    "running_stats_history",
    "compare_conventions",
    "BNMLP",
    "softmax_cross_entropy",
    "train_mlp",
    "accuracy",
    "reestimate_running_stats",
    "fold_first_layer",
]


@dataclass(frozen=True)
class RunningStatsHistory:
    """Running statistics after 0, 1, ..., T batches.

    Attributes:
        mean: (T + 1, D) running_mean, row 0 is the initial value (zeros).
        var: (T + 1, D) running_var, row 0 is the initial value (ones).
        batch_mean: (T, D) mean of each batch.
        batch_var: (T, D) biased variance of each batch.
    """

    mean: np.ndarray
    var: np.ndarray
    batch_mean: np.ndarray
    batch_var: np.ndarray


def minibatches(
    x: np.ndarray, batch_size: int, rng: np.random.Generator | None = None, *arrays: np.ndarray
) -> Iterator[tuple[np.ndarray, ...]]:
    """Yield consecutive batches of ``x`` (and of each array in ``arrays``, aligned with it).

    The rows are shuffled by ``rng`` when it is given; a last partial batch is dropped so that
    every batch has exactly ``batch_size`` rows.

    Raises:
        ValueError: if batch_size is not a positive integer or exceeds len(x).
    """
    if not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if batch_size > len(x):
        raise ValueError(f"batch_size ({batch_size}) exceeds the number of rows ({len(x)})")
    order = rng.permutation(len(x)) if rng is not None else np.arange(len(x))
    for start in range(0, len(x) - batch_size + 1, batch_size):
        rows = order[start : start + batch_size]
        yield (x[rows], *(a[rows] for a in arrays))


def running_stats_history(
    batches: Iterable[np.ndarray],
    momentum: float | None = 0.1,
    convention: str = "pytorch",
    eps: float = 1e-5,
) -> RunningStatsHistory:
    """Feed ``batches`` (each (n, D)) through a fresh training-mode ``BatchNorm``, recording stats.

    Args:
        batches: iterable of (n, D) float arrays, n >= 2.
        momentum: passed to BatchNorm (PyTorch meaning: weight of the new batch; Keras
            meaning: weight of the old value; None: cumulative average).
        convention: "pytorch" or "keras".
        eps: passed to BatchNorm (does not affect the running statistics).

    Returns:
        RunningStatsHistory with T = number of batches.
    """
    batches = [np.asarray(b) for b in batches]
    if not batches:
        raise ValueError("batches must contain at least one batch")
    layer = BatchNorm(batches[0].shape[1], eps=eps, momentum=momentum, convention=convention)
    layer.train()
    means, variances = [layer.running_mean.copy()], [layer.running_var.copy()]
    for batch in batches:
        layer.forward(batch)
        means.append(layer.running_mean.copy())
        variances.append(layer.running_var.copy())
    return RunningStatsHistory(
        mean=np.stack(means),
        var=np.stack(variances),
        batch_mean=np.stack([b.mean(axis=0) for b in batches]),
        batch_var=np.stack([b.var(axis=0) for b in batches]),
    )


def compare_conventions(
    batches: Iterable[np.ndarray], torch_momentum: float = 0.1
) -> dict[str, RunningStatsHistory]:
    """Run the same batches through PyTorch-style and Keras-style BatchNorm.

    The Keras layer gets ``momentum = 1 - torch_momentum`` so both are the same EMA; each
    convention keeps its own default eps (1e-5 PyTorch, 1e-3 Keras).

    Returns:
        {"pytorch": history, "keras": history}
    """
    batches = list(batches)
    return {
        "pytorch": running_stats_history(batches, torch_momentum, "pytorch", eps=1e-5),
        "keras": running_stats_history(batches, 1.0 - torch_momentum, "keras", eps=1e-3),
    }


class BNMLP:
    """``Linear(D_in, H) -> [BatchNorm(H)] -> ReLU -> Linear(H, C)``, float64, with SGD.

    Args:
        d_in, hidden, n_classes: layer widths.
        use_bn: put a ``bnlib.numpy.BatchNorm`` after the first linear layer.
        first_bias: give the first linear layer a bias (redundant before BN: its gradient is 0).
        momentum: BatchNorm momentum (PyTorch convention; None = cumulative average).
        seed: seed of the He-normal initialization.
    """

    def __init__(
        self,
        d_in: int = 64,
        hidden: int = 64,
        n_classes: int = 10,
        use_bn: bool = True,
        first_bias: bool = True,
        momentum: float | None = 0.1,
        seed: int = 0,
    ) -> None:
        rng = np.random.default_rng(seed)
        self.w1 = rng.normal(0.0, np.sqrt(2.0 / d_in), size=(d_in, hidden))
        self.b1 = np.zeros(hidden) if first_bias else None
        self.bn = BatchNorm(hidden, momentum=momentum) if use_bn else None
        self.w2 = rng.normal(0.0, np.sqrt(2.0 / hidden), size=(hidden, n_classes))
        self.b2 = np.zeros(n_classes)
        self.training = True
        self._cache: tuple[np.ndarray, ...] = ()
        self.grads: dict[str, np.ndarray] = {}

    def train(self) -> BNMLP:
        """Training mode: BN normalizes with batch statistics and updates running stats."""
        self.training = True
        if self.bn is not None:
            self.bn.train()
        return self

    def eval(self) -> BNMLP:
        """Evaluation mode: BN normalizes with its running statistics."""
        self.training = False
        if self.bn is not None:
            self.bn.eval()
        return self

    def hidden_preactivation(self, x: np.ndarray) -> np.ndarray:
        """(N, D_in) -> (N, H): ``x @ w1 + b1``, the input of BatchNorm."""
        z = x @ self.w1
        return z if self.b1 is None else z + self.b1

    def forward(self, x: np.ndarray) -> np.ndarray:
        """(N, D_in) -> logits (N, C)."""
        z = self.hidden_preactivation(x)
        a = self.bn.forward(z) if self.bn is not None else z
        h = np.maximum(a, 0.0)
        self._cache = (x, a, h)
        return h @ self.w2 + self.b2

    def backward(self, dlogits: np.ndarray) -> None:
        """Store the gradient of every parameter in ``self.grads`` (keys w1, b1, gamma, ...)."""
        x, a, h = self._cache
        self.grads = {"w2": h.T @ dlogits, "b2": dlogits.sum(axis=0)}
        da = (dlogits @ self.w2.T) * (a > 0)
        if self.bn is not None:
            dz = self.bn.backward(da)
            self.grads["gamma"], self.grads["beta"] = self.bn.weight_grad, self.bn.bias_grad
        else:
            dz = da
        self.grads["w1"] = x.T @ dz
        if self.b1 is not None:
            self.grads["b1"] = dz.sum(axis=0)

    def parameters(self) -> dict[str, np.ndarray]:
        """The trainable arrays by name (updated in place by :meth:`sgd_step`)."""
        params = {"w1": self.w1, "w2": self.w2, "b2": self.b2}
        if self.b1 is not None:
            params["b1"] = self.b1
        if self.bn is not None:
            params["gamma"], params["beta"] = self.bn.weight, self.bn.bias
        return params

    def sgd_step(self, lr: float) -> None:
        """``p -= lr * grad`` for every parameter, in place."""
        for name, param in self.parameters().items():
            param -= lr * self.grads[name]


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of (N, C) logits against (N,) int labels, and its gradient (N, C)."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    n = len(labels)
    loss = -log_probs[np.arange(n), labels].mean()
    dlogits = np.exp(log_probs)
    dlogits[np.arange(n), labels] -= 1.0
    return float(loss), dlogits / n


def train_mlp(
    x: np.ndarray,
    y: np.ndarray,
    model: BNMLP | None = None,
    batch_size: int = 32,
    epochs: int = 10,
    lr: float = 0.1,
    seed: int = 0,
    **model_kwargs,
) -> tuple[BNMLP, list[float]]:
    """Train ``model`` (a new ``BNMLP(**model_kwargs)`` when None) with plain SGD.

    Args:
        x: (N, D_in) inputs; y: (N,) int labels.
        batch_size, epochs, lr: the SGD schedule (constant learning rate, reshuffled epochs).
        seed: seed of the shuffling (and of the initialization of a new model).

    Returns:
        (model in eval mode, list of the training loss of every step)
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y)
    if model is None:
        model_kwargs.setdefault("d_in", x.shape[1])
        model = BNMLP(seed=seed, **model_kwargs)
    rng = np.random.default_rng(seed)
    losses = []
    model.train()
    # One BLAS thread: small matrix products are faster without threads, and reproducible.
    with threadpool_limits(limits=1):
        for _ in range(epochs):
            for xb, yb in minibatches(x, batch_size, rng, y):
                loss, dlogits = softmax_cross_entropy(model.forward(xb), yb)
                model.backward(dlogits)
                model.sgd_step(lr)
                losses.append(loss)
    return model.eval(), losses


def accuracy(model: BNMLP, x: np.ndarray, y: np.ndarray, batch_size: int | None = None) -> float:
    """Fraction of correct predictions, in the model's current mode.

    In training mode BN uses the statistics of each batch, so the result depends on
    ``batch_size`` (None: the whole of ``x`` as one batch). Running statistics are restored
    afterwards so that measuring does not change the model.
    """
    x = np.asarray(x, dtype=np.float64)
    saved = None
    if model.bn is not None:
        bn = model.bn
        saved = (bn.running_mean.copy(), bn.running_var.copy(), bn.num_batches_tracked)
    batch_size = len(x) if batch_size is None else batch_size
    correct = 0
    for xb, yb in minibatches(x, batch_size, None, np.asarray(y)):
        correct += int((model.forward(xb).argmax(axis=1) == yb).sum())
    if saved is not None:
        model.bn.running_mean, model.bn.running_var, model.bn.num_batches_tracked = saved
    return correct / (len(x) - len(x) % batch_size)


def reestimate_running_stats(model: BNMLP, x: np.ndarray, batch_size: int = 64) -> BNMLP:
    """Replace the BN running statistics by their cumulative average over ``x``.

    Resets the buffers, sets momentum=None (a plain average of the batch statistics), runs
    every batch of ``x`` through the network in training mode without any weight update, then
    restores the momentum and leaves the model in eval mode.
    """
    if model.bn is None:
        raise ValueError("the model has no BatchNorm layer")
    bn = model.bn
    momentum = bn.momentum
    bn.reset_running_stats()
    bn.momentum = None
    model.train()
    for (xb,) in minibatches(np.asarray(x, dtype=np.float64), batch_size):
        model.forward(xb)
    bn.momentum = momentum
    return model.eval()


def fold_first_layer(model: BNMLP) -> tuple[np.ndarray, np.ndarray]:
    """Fold the model's BN into its first linear layer with ``bnlib.numpy.fold_batchnorm``.

    Returns:
        (w (D_in, H), b (H,)) such that ``x @ w + b`` equals BN(x @ w1 + b1) in eval mode.
    """
    if model.bn is None:
        raise ValueError("the model has no BatchNorm layer")
    bias = np.zeros(model.w1.shape[1]) if model.b1 is None else model.b1
    bn = model.bn
    return fold_batchnorm(
        model.w1, bias, bn.weight, bn.bias, bn.running_mean, bn.running_var, eps=bn.eps
    )
