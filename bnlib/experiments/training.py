"""Training experiments on the scikit-learn digits behind chapters 6 and 7.

A small multilayer perceptron, ``in -> [Linear -> norm -> activation] x L -> Linear``, whose
normalization layer is one of

- ``"none"``: no normalization (the Linear layers keep their bias);
- ``"batch"``: Batch Normalization over the mini-batch (Ioffe & Szegedy 2015);
- ``"layer"``: Layer Normalization over the features of each example (Ba et al. 2016);
- ``"group"``: Group Normalization over groups of features of each example (Wu & He 2018);
- ``"noisy"``: Batch Normalization followed by noise drawn independently for every activation of
  every example, from a distribution that changes at every training step (the "noisy
  BatchNorm" of Santurkar et al. 2018);
- ``"noisy_shared"``: Batch Normalization followed by a random per-feature scale and shift that
  changes at every training step and is shared by the whole batch.

The functions here train such networks with a fixed seed and return plain NumPy records
(accuracy curves, percentiles of one pre-activation, learning-rate and batch-size sweeps, loss
smoothness along the gradient); the ``plot_*`` functions draw them with matplotlib.
Everything runs on the CPU with one thread, so a result depends only on its seed.
"""

from __future__ import annotations

import math
import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from bnlib.experiments.checks import not_one_of
from bnlib.experiments.progress import progress_bar

__all__ = [
    "ACTIVATIONS",
    "MLP",
    "NORM_KINDS",
    "NOISE_MODELS",
    "NOISY_KINDS",
    "NORM_LABELS",
    "OPTIMIZERS",
    "PERCENTILES",
    "History",
    "NoisyBatchNorm1d",
    "SmoothnessRecord",
    "WeightNormRecord",
    "batch_size_sweep",
    "batch_size_table",
    "build_mlp",
    "build_seeded",
    "equilibrium_angular_update",
    "evaluate_accuracy",
    "gradient_norms_at_init",
    "learning_rate_sweep",
    "loss_range_at_equal_loss",
    "loss_smoothness",
    "norm_layer",
    "plot_accuracy_curves",
    "plot_batch_size_sweep",
    "plot_gradient_norms",
    "plot_learning_rate_sweep",
    "plot_percentiles",
    "plot_smoothness",
    "plot_weight_norm_dynamics",
    "recalibrate_batch_norm",
    "row_angles",
    "train",
    "train_many",
    "weight_norm_dynamics",
]

NORM_KINDS = ("none", "batch", "layer", "group", "noisy", "noisy_shared")
NOISE_MODELS = ("per_sample", "shared")
# The two noisy kinds of :data:`NORM_KINDS` and the noise model each one uses.
NOISY_KINDS = {"noisy": "per_sample", "noisy_shared": "shared"}
ACTIVATIONS = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "tanh": nn.Tanh}
PERCENTILES = (15, 50, 85)
NORM_LABELS = {
    "none": "no normalization",
    "batch": "BatchNorm",
    "layer": "LayerNorm",
    "group": "GroupNorm",
    "noisy": "noisy BatchNorm (per sample)",
    "noisy_shared": "noisy BatchNorm (shared)",
}


def norm_layer(
    kind: str,
    num_features: int,
    *,
    num_groups: int = 4,
    max_shift: float = 1.0,
    max_variance: float = 4.0,
    noise_seed: int = 0,
) -> nn.Module:
    """The normalization layer ``kind`` for ``(N, num_features)`` inputs, from ``bnlib.torch``.

    ``kind`` is one of :data:`NORM_KINDS`. ``num_groups`` is used by ``"group"``; ``max_shift``,
    ``max_variance`` and ``noise_seed`` by ``"noisy"`` and ``"noisy_shared"`` (see
    :class:`NoisyBatchNorm1d`).
    """
    from bnlib.torch import BatchNorm1d, GroupNorm, LayerNorm

    if kind == "none":
        return nn.Identity()
    if kind == "batch":
        return BatchNorm1d(num_features)
    if kind == "layer":
        return LayerNorm(num_features)
    if kind == "group":
        return GroupNorm(num_groups, num_features)
    if kind in NOISY_KINDS:
        return NoisyBatchNorm1d(
            num_features, noise=NOISY_KINDS[kind], max_shift=max_shift,
            max_variance=max_variance, seed=noise_seed,
        )
    raise not_one_of("norm", kind, NORM_KINDS)


class NoisyBatchNorm1d(nn.Module):
    """Batch Normalization followed by random noise whose distribution changes at every step.

    In training mode each call first draws, for every feature ``j``, this step's noise mean and
    variance

        mu_j ~ U(-max_shift, max_shift),   v_j ~ U(1, max_variance),

    and then perturbs BN's output ``y = bn(x)`` in one of two ways, chosen by ``noise``:

    - ``"per_sample"``: every activation of every example gets its own independent draw,
      ``z[i, j] = y[i, j] + e[i, j]`` with ``e[i, j] ~ N(mu_j, v_j)``. This is how Santurkar et
      al. (2018, Sec. 2.1) describe their "noisy BatchNorm": each activation of each sample is
      perturbed with i.i.d. noise from a distribution with non-zero mean and non-unit variance
      that changes at every step. With BN's ``gamma = 1, beta = 0`` feature ``j`` then has mean
      ``mu_j`` and variance ``1 + v_j`` in expectation, and each example's value is blurred.
    - ``"shared"``: one draw per feature, shared by the whole batch,
      ``z[:, j] = sqrt(v_j) * y[:, j] + mu_j``. The batch mean of feature ``j`` is then exactly
      ``mu_j`` and its (biased) batch variance ``v_j`` (with ``gamma = 1, beta = 0``): the
      distribution moves, but the examples keep their order and their relative distances.

    In eval mode no noise is added. The last draws are kept in ``last_mean`` and
    ``last_variance``, shape ``(D,)``, and the last perturbation ``z - y`` in ``last_noise``,
    shape ``(N, D)``.

    Input and output: ``(N, D)`` float tensors.
    """

    def __init__(
        self, num_features: int, *, noise: str = "per_sample", max_shift: float = 1.0,
        max_variance: float = 4.0, seed: int = 0,
    ) -> None:
        super().__init__()
        if noise not in NOISE_MODELS:
            raise not_one_of("noise", noise, NOISE_MODELS)
        if max_shift < 0:
            raise ValueError(f"max_shift must be non-negative, got {max_shift}")
        if max_variance < 1:
            raise ValueError(f"max_variance must be at least 1, got {max_variance}")
        self.batch_norm = norm_layer("batch", num_features)
        self.noise = noise
        self.max_shift = float(max_shift)
        self.max_variance = float(max_variance)
        # A private generator: the noise does not disturb the global random stream.
        self.generator = torch.Generator().manual_seed(seed)
        self.last_mean: torch.Tensor | None = None
        self.last_variance: torch.Tensor | None = None
        self.last_noise: torch.Tensor | None = None

    def _draw_distribution(self, num_features: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This step's noise mean and variance per feature, each of shape ``(D,)``."""
        uniform = torch.rand(2, num_features, generator=self.generator)
        mean = (2 * uniform[0] - 1) * self.max_shift
        variance = 1 + uniform[1] * (self.max_variance - 1)
        return mean, variance

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.batch_norm(x)
        if not self.training:
            return out
        mean, variance = self._draw_distribution(out.shape[1])
        if self.noise == "per_sample":
            standard = torch.randn(out.shape, generator=self.generator)
            perturbed = out + (mean + variance.sqrt() * standard).to(out.dtype)
        else:
            perturbed = out * variance.sqrt().to(out.dtype) + mean.to(out.dtype)
        self.last_mean, self.last_variance = mean, variance
        self.last_noise = (perturbed - out).detach()
        return perturbed

    def extra_repr(self) -> str:
        return (f"noise={self.noise!r}, max_shift={self.max_shift}, "
                f"max_variance={self.max_variance}")


class MLP(nn.Module):
    """``in_features -> [Linear -> norm -> activation] x len(hidden) -> Linear -> logits``.

    The Linear layers before a normalization have no bias: a normalization that subtracts a
    mean removes BN's per-feature bias exactly, and its own ``beta`` plays that role.
    ``init_std``, when given, draws every weight from ``N(0, init_std**2)`` and sets the biases
    to zero (the "small random Gaussian values" of Ioffe & Szegedy's Fig. 1); otherwise
    PyTorch's default initialization is kept.

    Input ``(N, in_features)`` float32, output logits ``(N, num_classes)``.
    """

    def __init__(
        self,
        hidden: Sequence[int] = (100, 100, 100),
        *,
        norm: str = "none",
        activation: str = "sigmoid",
        init_std: float | None = None,
        in_features: int = 64,
        num_classes: int = 10,
        **norm_options,
    ) -> None:
        super().__init__()
        # An unknown norm is refused by norm_layer, below.
        if activation not in ACTIVATIONS:
            raise not_one_of("activation", activation, ACTIVATIONS)
        if len(hidden) == 0:
            raise ValueError("hidden must name at least one hidden layer")
        self.norm = norm
        widths = [in_features, *hidden]
        self.linears = nn.ModuleList(
            nn.Linear(w_in, w_out, bias=norm == "none")
            for w_in, w_out in zip(widths[:-1], hidden, strict=True)
        )
        self.norms = nn.ModuleList(
            norm_layer(norm, width, noise_seed=index, **norm_options)
            for index, width in enumerate(hidden)
        )
        self.activation = ACTIVATIONS[activation]()
        self.head = nn.Linear(widths[-1], num_classes)
        if init_std is not None:
            for linear in [*self.linears, self.head]:
                nn.init.normal_(linear.weight, std=init_std)
                if linear.bias is not None:
                    nn.init.zeros_(linear.bias)

    def forward_with_preactivations(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits ``(N, num_classes)`` and the activation inputs ``(N, width)``, one per layer."""
        preactivations = []
        for linear, norm in zip(self.linears, self.norms, strict=True):
            z = norm(linear(x))
            preactivations.append(z)
            x = self.activation(z)
        return self.head(x), preactivations

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_preactivations(x)[0]


def build_seeded(model_class: type[nn.Module], *, seed: int, **options) -> nn.Module:
    """``model_class(**options)``, whose initial weights depend only on ``seed``: the global
    random stream is seeded for the construction and restored afterwards."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return model_class(**options)


def build_mlp(norm: str = "none", *, seed: int = 0, **options) -> MLP:
    """An :class:`MLP` whose initial weights depend only on ``seed`` (options as for MLP)."""
    return build_seeded(MLP, seed=seed, norm=norm, **options)


@dataclass
class History:
    """What :func:`train` records, every ``eval_every`` steps (and at step 0).

    ``steps`` (E,) int; ``test_accuracy`` (E,) in [0, 1]; ``train_loss`` (E,) the mean
    mini-batch cross-entropy since the previous record (NaN at step 0); ``percentiles`` (E, 3)
    the 15th, 50th and 85th percentiles over the test set of the activation input of one unit of
    the last hidden layer (eval mode). ``diverged`` is True when the loss became non-finite.
    """

    steps: np.ndarray
    test_accuracy: np.ndarray
    train_loss: np.ndarray
    percentiles: np.ndarray
    diverged: bool = False
    final_train_loss: float = field(default=math.nan)


def _tensors(data) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``x_train, y_train, x_test, y_test`` of ``data`` as float32 / int64 tensors."""
    return (
        torch.as_tensor(np.asarray(data.x_train), dtype=torch.float32),
        torch.as_tensor(np.asarray(data.y_train), dtype=torch.int64),
        torch.as_tensor(np.asarray(data.x_test), dtype=torch.float32),
        torch.as_tensor(np.asarray(data.y_test), dtype=torch.int64),
    )


def _batches(num_examples: int, batch_size: int, generator: torch.Generator):
    """Endless index batches: a fresh permutation per epoch, the incomplete last batch dropped."""
    if not 1 <= batch_size <= num_examples:
        raise ValueError(f"batch_size must be in [1, {num_examples}], got {batch_size}")
    while True:
        order = torch.randperm(num_examples, generator=generator)
        for start in range(0, num_examples - batch_size + 1, batch_size):
            yield order[start:start + batch_size]


def _training_batches(data, batch_size: int, seed: int):
    """Endless ``(x, y)`` mini-batches of the training set of ``data``, in an order fixed by
    ``seed`` (see :func:`train`)."""
    x_train, y_train, _, _ = _tensors(data)
    for index in _batches(len(x_train), batch_size, torch.Generator().manual_seed(seed)):
        yield x_train[index], y_train[index]


OPTIMIZERS = ("sgd", "momentum", "adam")


def _make_optimizer(name: str, parameters, lr: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr)
    if name == "momentum":
        # The momentum of ResNet's training and of Wu & He's batch-size experiment.
        return torch.optim.SGD(parameters, lr=lr, momentum=0.9)
    if name == "adam":
        return torch.optim.Adam(parameters, lr=lr)
    raise not_one_of("optimizer", name, OPTIMIZERS)


def _descend(opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """One optimizer step down the gradient of ``loss``."""
    opt.zero_grad()
    loss.backward()
    opt.step()


@torch.no_grad()
def _evaluate(model: MLP, x: torch.Tensor, y: torch.Tensor, unit: int) -> tuple[float, np.ndarray]:
    """Test accuracy and the percentiles of unit ``unit`` of the last hidden layer (eval mode)."""
    was_training = model.training
    model.eval()
    logits, preactivations = model.forward_with_preactivations(x)
    model.train(was_training)
    accuracy = (logits.argmax(dim=1) == y).double().mean().item()
    values = preactivations[-1][:, unit].double().numpy()
    return accuracy, np.percentile(values, PERCENTILES)


def train(
    model: MLP,
    data,
    *,
    steps: int,
    batch_size: int = 60,
    lr: float = 0.1,
    optimizer: str = "sgd",
    seed: int = 0,
    eval_every: int = 100,
    unit: int = 0,
    progress: str | None = None,
) -> History:
    """Train ``model`` in place for ``steps`` mini-batch steps of cross-entropy; return a History.

    ``data`` has ``x_train (n, 64)``, ``y_train (n,)``, ``x_test``, ``y_test`` (e.g.
    ``bnlib.data.digits()``). Mini-batches are drawn without replacement, epoch by epoch, in an
    order fixed by ``seed``. ``optimizer`` is ``"sgd"`` (plain, no momentum), ``"momentum"``
    (SGD with momentum 0.9) or ``"adam"``.
    Training stops early, with ``diverged=True``, if the loss becomes NaN or infinite.
    ``progress``, when given, is the label of a tqdm progress bar.
    """
    if steps < 1:
        raise ValueError(f"steps must be positive, got {steps}")
    if eval_every < 1:
        raise ValueError(f"eval_every must be positive, got {eval_every}")
    torch.set_num_threads(1)
    _, _, x_test, y_test = _tensors(data)
    batches = _training_batches(data, batch_size, seed)
    opt = _make_optimizer(optimizer, model.parameters(), lr)
    model.train()
    accuracy, percentiles = _evaluate(model, x_test, y_test, unit)
    record_steps, accuracies, losses, quantiles = [0], [accuracy], [math.nan], [percentiles]
    running_loss, since_record, diverged = 0.0, 0, False
    for step in progress_bar(range(1, steps + 1), progress, leave=False):
        x, y = next(batches)
        loss = nn.functional.cross_entropy(model(x), y)
        if not torch.isfinite(loss):
            diverged = True
            break
        _descend(opt, loss)
        running_loss += loss.item()
        since_record += 1
        if step % eval_every == 0 or step == steps:
            accuracy, percentiles = _evaluate(model, x_test, y_test, unit)
            record_steps.append(step)
            accuracies.append(accuracy)
            losses.append(running_loss / since_record)
            quantiles.append(percentiles)
            running_loss, since_record = 0.0, 0
    return History(
        steps=np.array(record_steps),
        test_accuracy=np.array(accuracies),
        train_loss=np.array(losses),
        percentiles=np.array(quantiles),
        diverged=diverged,
        final_train_loss=math.inf if diverged else losses[-1],
    )


@torch.no_grad()
def evaluate_accuracy(model: MLP, data) -> float:
    """Accuracy of ``model`` in eval mode on ``data.x_test, data.y_test``."""
    _, _, x_test, y_test = _tensors(data)
    was_training = model.training
    model.eval()
    accuracy = (model(x_test).argmax(dim=1) == y_test).double().mean().item()
    model.train(was_training)
    return accuracy


@torch.no_grad()
def recalibrate_batch_norm(model: MLP, data) -> MLP:
    """Replace the running statistics of every BatchNorm1d in ``model`` by the exact mean and
    (unbiased) variance of its input over the whole training set, in place; returns ``model``.

    One forward pass of ``data.x_train`` in training mode with ``momentum=None`` (a cumulative
    average over one batch) computes them; the parameters are not changed.
    """
    from bnlib.torch import BatchNorm1d

    x_train = _tensors(data)[0]
    layers = [module for module in model.modules() if isinstance(module, BatchNorm1d)]
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None
    was_training = model.training
    model.train()
    model(x_train)
    model.train(was_training)
    for layer, momentum in zip(layers, momenta, strict=True):
        layer.momentum = momentum
    return model


def train_many(
    data,
    norms: Sequence[str],
    *,
    seeds: Sequence[int] = (0,),
    model_options: dict | None = None,
    build: Callable[..., nn.Module] | None = None,
    progress: bool | str = True,
    **train_options,
) -> tuple[dict[str, list[History]], dict[str, list[nn.Module]]]:
    """Train ``build(norm, seed=seed, **model_options)`` for every norm and seed.

    ``build`` defaults to :func:`build_mlp`. ``train_options`` go to :func:`train` (``steps``,
    ``lr``, ...), with the same ``seed`` as the initialization. Each run has a progress bar
    labeled with its norm and seed, after ``progress`` when that is a string; none for False.
    Returns ``(histories, models)``, both ``{norm: [one per seed]}``; the models are the
    trained ones.
    """
    build = build or build_mlp
    histories: dict[str, list[History]] = {norm: [] for norm in norms}
    models: dict[str, list[nn.Module]] = {norm: [] for norm in norms}
    for norm in norms:
        for seed in seeds:
            model = build(norm, seed=seed, **(model_options or {}))
            label = f"{NORM_LABELS.get(norm, norm)}, seed {seed}"
            label = f"{progress}: {label}" if isinstance(progress, str) else label
            run = train(model, data, seed=seed, progress=label if progress else None,
                        **train_options)
            histories[norm].append(run)
            models[norm].append(model)
    return histories, models


def learning_rate_sweep(
    data,
    *,
    norms: Sequence[str] = ("none", "batch"),
    learning_rates: Sequence[float] = (0.03, 0.1, 0.3, 1.0, 3.0),
    steps: int = 300,
    batch_size: int = 60,
    seed: int = 0,
    progress: bool = True,
    **model_options,
) -> dict[str, np.ndarray]:
    """Final test accuracy and training loss after ``steps`` plain-SGD steps, per norm and lr.

    Returns ``{"norms": norms, "learning_rates": (L,), "accuracy": (K, L), "train_loss": (K, L)}``
    for the K ``norms``; a run that diverged has accuracy NaN and loss inf. Every run starts
    from the weights of ``build_mlp(norm, seed=seed, **model_options)``.
    """
    accuracy = np.full((len(norms), len(learning_rates)), np.nan)
    loss = np.full_like(accuracy, np.inf)
    runs = [(k, n, i, lr) for k, n in enumerate(norms) for i, lr in enumerate(learning_rates)]
    for k, norm, i, lr in progress_bar(runs, "learning rates" if progress else None, leave=False):
        model = build_mlp(norm, seed=seed, **model_options)
        history = train(
            model, data, steps=steps, batch_size=batch_size, lr=lr, seed=seed, eval_every=steps
        )
        loss[k, i] = history.final_train_loss
        if not history.diverged:
            accuracy[k, i] = history.test_accuracy[-1]
    return {
        "norms": tuple(norms),
        "learning_rates": np.array(learning_rates),
        "accuracy": accuracy,
        "train_loss": loss,
    }


def _final_accuracy(build, norm, seed, model_options, data, **train_options) -> float:
    """Test accuracy of ``build(norm, seed=seed, **model_options)`` after :func:`train`."""
    model = build(norm, seed=seed, **model_options)
    return train(model, data, seed=seed, **train_options).test_accuracy[-1]


def _run_all(jobs: list[dict], workers: int) -> Iterator[float]:
    """``_final_accuracy(**job)`` for each job, in order, in ``workers`` processes."""
    if workers == 1:
        yield from (_final_accuracy(**job) for job in jobs)
        return
    # "spawn": a fresh interpreter per worker, safe after torch has started its threads.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = [pool.submit(_final_accuracy, **job) for job in jobs]
        yield from (future.result() for future in futures)


def batch_size_sweep(
    data,
    *,
    norms: Sequence[str] = ("batch", "layer", "group"),
    batch_sizes: Sequence[int] = (2, 4, 8, 16, 32),
    epochs: int = 4,
    seeds: Sequence[int] = (0, 1),
    lr: float = 1e-3,
    reference_batch_size: int | None = None,
    optimizer: str = "adam",
    build: Callable[..., nn.Module] = build_mlp,
    workers: int = 1,
    progress: bool = True,
    **model_options,
) -> dict[str, np.ndarray]:
    """Test accuracy after ``epochs`` epochs for each norm, batch size and seed.

    Every run trains ``build(norm, seed=seed, **model_options)`` (an MLP by default) with
    :func:`train`. The number of epochs is the same for every batch size, so smaller batches
    take more (noisier) steps. With ``reference_batch_size`` the learning rate follows the
    linear scaling rule: ``lr`` at that batch size, ``lr * size / reference_batch_size`` at
    each ``size``; without it every run uses ``lr``. ``workers > 1`` trains that many runs at
    a time in separate processes (``build`` must then be importable, as a module-level
    function is); every run uses one thread and its own seed, so the results do not depend on
    ``workers``.

    Returns ``{"norms": norms, "batch_sizes": (B,), "learning_rates": (B,),
    "accuracy": (K, B, S)}`` for the K ``norms`` and S ``seeds``; evaluation is in eval mode
    (BN uses its running statistics).
    """
    if reference_batch_size is not None and reference_batch_size < 1:
        raise ValueError(f"reference_batch_size must be positive, got {reference_batch_size}")
    if workers < 1:
        raise ValueError(f"workers must be positive, got {workers}")
    x_train = np.asarray(data.x_train)
    sizes = np.array(batch_sizes)
    scale = sizes / reference_batch_size if reference_batch_size else np.ones(len(sizes))
    learning_rates = lr * scale
    accuracy = np.full((len(norms), len(batch_sizes), len(seeds)), np.nan)
    steps = [epochs * (len(x_train) // size) for size in batch_sizes]
    cells = [(k, b, s) for k in range(len(norms)) for b in range(len(sizes))
             for s in range(len(seeds))]
    jobs = [
        {"build": build, "norm": norms[k], "seed": seeds[s], "model_options": model_options,
         "data": data, "steps": steps[b], "batch_size": batch_sizes[b],
         "lr": float(learning_rates[b]), "optimizer": optimizer, "eval_every": steps[b]}
        for k, b, s in cells
    ]
    results = _run_all(jobs, workers)
    described = "batch sizes" if progress else None  # results arrive as the runs finish
    for cell, result in progress_bar(zip(cells, results, strict=True), described,
                                     total=len(cells), leave=False):
        accuracy[cell] = result
    return {"norms": tuple(norms), "batch_sizes": sizes, "learning_rates": learning_rates,
            "accuracy": accuracy}


def batch_size_table(sweep: dict) -> str:
    """A Markdown table of a :func:`batch_size_sweep`: one row per norm, one column per batch
    size, each cell the mean test accuracy over the seeds with the range (min to max)."""
    sizes = sweep["batch_sizes"]
    lines = [
        "| normalization | " + " | ".join(f"batch {size}" for size in sizes) + " |",
        "|---" * (len(sizes) + 1) + "|",
    ]
    for norm, accuracy in zip(sweep["norms"], sweep["accuracy"], strict=True):
        cells = [
            f"{runs.mean():.1%} ({runs.min():.1%} to {runs.max():.1%})" for runs in accuracy
        ]
        lines.append(f"| {NORM_LABELS.get(norm, norm)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclass
class SmoothnessRecord:
    """Loss and gradient along the gradient direction, measured during training.

    At training step ``steps[t]``, with ``g`` the mini-batch gradient at the weights ``w``,
    and for each ``eta`` in ``step_sizes`` (H,): ``loss[t, h] = L(w - eta g)`` and
    ``gradient_change[t, h] = ||grad L(w - eta g) - g||``, on the same mini-batch. From them:
    ``loss_range`` (T,) = max - min of ``loss[t]`` (with ``L(w)``), and
    ``directional_smoothness`` (T,) = max over eta of ``gradient_change / ||eta g||``, the
    change of the gradient per unit distance moved along ``-g``. Santurkar et al. call it the
    "effective beta-smoothness"; measured along one direction only, it is a directional
    estimate, a lower bound on the gradient's local Lipschitz constant over all directions.
    """

    steps: np.ndarray
    step_sizes: np.ndarray
    loss: np.ndarray
    gradient_change: np.ndarray
    loss_range: np.ndarray
    directional_smoothness: np.ndarray
    train_loss: np.ndarray


def _loss_and_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """Mini-batch loss (float) and its gradient as one flat float64 vector."""
    model.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    gradient = torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double()
    return loss.item(), gradient


def _along_gradient(model, x, y, gradient, step_sizes):
    """Losses and gradient changes at ``w - eta g`` for each eta; the weights are restored."""
    state = {name: value.clone() for name, value in model.state_dict().items()}
    losses, changes = [], []
    for eta in step_sizes:
        with torch.no_grad():
            torch.nn.utils.vector_to_parameters(
                torch.nn.utils.parameters_to_vector(model.parameters())
                - eta * gradient.to(torch.float32),
                model.parameters(),
            )
        loss, moved_gradient = _loss_and_gradient(model, x, y)
        losses.append(loss)
        changes.append((moved_gradient - gradient).norm().item())
        # Restores the weights and the running statistics the probe forward pass updated.
        model.load_state_dict(state)
    return losses, changes


def loss_smoothness(
    data,
    norm: str,
    *,
    steps: int = 600,
    measure_every: int = 50,
    lr: float = 0.1,
    step_sizes: Sequence[float] = (0.05, 0.1, 0.2, 0.4, 0.8),
    batch_size: int = 60,
    seed: int = 0,
    progress: str | None = None,
    **model_options,
) -> SmoothnessRecord:
    """Train ``build_mlp(norm, seed=seed, **model_options)`` with plain SGD and measure, every
    ``measure_every`` steps, how the loss and gradient change along the gradient direction
    (see :class:`SmoothnessRecord`). The noisy kinds are refused: their noise would differ
    between the probes of one measurement."""
    if norm in NOISY_KINDS:
        raise ValueError(
            f"loss_smoothness needs a deterministic forward pass; {norm!r} is not one"
        )
    torch.set_num_threads(1)
    model = build_mlp(norm, seed=seed, **model_options)
    model.train()
    batches = _training_batches(data, batch_size, seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    etas = np.array(step_sizes, dtype=np.float64)
    record_steps, losses, changes, gradient_norms = [], [], [], []
    for step in progress_bar(range(steps), progress, leave=False):
        x, y = next(batches)
        if step % measure_every == 0:
            loss, gradient = _loss_and_gradient(model, x, y)
            probe_losses, probe_changes = _along_gradient(model, x, y, gradient, etas)
            record_steps.append(step)
            losses.append([loss, *probe_losses])
            changes.append(probe_changes)
            gradient_norms.append(gradient.norm().item())
        _descend(opt, nn.functional.cross_entropy(model(x), y))
    losses_array, changes_array = np.array(losses), np.array(changes)
    distances = etas[None, :] * np.array(gradient_norms)[:, None]  # ||w - (w - eta g)||
    return SmoothnessRecord(
        steps=np.array(record_steps),
        step_sizes=etas,
        loss=losses_array[:, 1:],
        gradient_change=changes_array,
        loss_range=losses_array.max(axis=1) - losses_array.min(axis=1),
        directional_smoothness=(changes_array / distances).max(axis=1),
        train_loss=losses_array[:, 0],
    )


def loss_range_at_equal_loss(
    record: SmoothnessRecord, edges: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """The measurements of ``record`` grouped by the mini-batch loss at which they were taken.

    Returns ``(counts, medians)``, each ``(B,)`` for the B bins ``[edges[b], edges[b + 1])``:
    how many measurements fall in each bin and the median of their loss ranges (NaN for an
    empty bin). Comparing two networks bin by bin compares them at equal loss rather than at
    equal step.
    """
    edges = np.asarray(edges, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError(f"edges must be at least two increasing values, got {edges.tolist()}")
    counts, medians = [], []
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        inside = (record.train_loss >= low) & (record.train_loss < high)
        counts.append(int(inside.sum()))
        medians.append(float(np.median(record.loss_range[inside])) if inside.any() else math.nan)
    return np.array(counts), np.array(medians)


def gradient_norms_at_init(
    data,
    norm: str,
    *,
    depth: int,
    width: int = 100,
    batch_size: int = 64,
    seeds: Sequence[int] = (0,),
    **model_options,
) -> np.ndarray:
    """Norm of the loss gradient for the weight of each hidden Linear layer, at initialization.

    For every seed: ``build_mlp(norm, seed=seed, hidden=(width,) * depth, **model_options)`` in
    training mode, one mini-batch of ``batch_size`` training examples drawn with that seed, and
    one backward pass of the cross-entropy. Returns ``(S, depth)`` for the S ``seeds``, the
    layer next to the input first.
    """
    if depth < 1:
        raise ValueError(f"depth must be positive, got {depth}")
    torch.set_num_threads(1)
    norms = []
    for seed in seeds:
        model = build_mlp(norm, seed=seed, hidden=(width,) * depth, **model_options).train()
        x, y = next(_training_batches(data, batch_size, seed))
        nn.functional.cross_entropy(model(x), y).backward()
        norms.append([linear.weight.grad.norm().item() for linear in model.linears])
    return np.array(norms)


@dataclass
class WeightNormRecord:
    """How the rows of one Linear layer's weight move during plain-SGD training.

    ``weight_norm`` (T + 1,): the mean norm of the rows before the first step and after each of
    the T steps; ``angular_update`` (T,): the root mean square over the rows of the angle, in
    radians, through which each step turned them (the quantity whose equilibrium
    :func:`equilibrium_angular_update` predicts); ``train_loss`` (T,): the mini-batch loss of
    each step.
    ``lr`` and ``weight_decay`` are the settings of the run.
    """

    weight_norm: np.ndarray
    angular_update: np.ndarray
    train_loss: np.ndarray
    lr: float
    weight_decay: float


def row_angles(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """Angle in radians between each row of ``before`` and the same row of ``after``, float64.

    Computed as ``2 atan2(|u - v|, |u + v|)`` of the unit rows ``u, v``, which stays accurate
    for tiny angles, where the arccosine of the cosine does not.
    """
    if before.shape != after.shape or before.ndim != 2:
        raise ValueError(f"expected two matrices of one shape, got {tuple(before.shape)} and "
                         f"{tuple(after.shape)}")
    u = before.double() / before.double().norm(dim=1, keepdim=True)
    v = after.double() / after.double().norm(dim=1, keepdim=True)
    return 2 * torch.atan2((u - v).norm(dim=1), (u + v).norm(dim=1))


def equilibrium_angular_update(lr: float, weight_decay: float) -> float:
    """The angle ``sqrt(2 lr weight_decay)`` through which SGD turns a scale-invariant weight
    per step once weight decay has brought its norm to equilibrium.

    For a weight ``w`` whose loss does not depend on its length, the gradient ``g`` is
    orthogonal to ``w``, and a step ``w <- (1 - lr wd) w - lr g`` changes the squared norm to
    ``(1 - lr wd)^2 |w|^2 + lr^2 |g|^2``. The norm stops changing when
    ``2 lr wd |w|^2 = lr^2 |g|^2`` (to first order in ``lr wd``), and then each step turns ``w``
    through ``lr |g| / |w| = sqrt(2 lr wd)``, whatever the size of the gradient. The balance
    holds for the mean of ``|g|^2``, so ``sqrt(2 lr wd)`` is the root mean square of the angle.
    """
    if lr <= 0 or weight_decay < 0:
        raise ValueError(f"need lr > 0 and weight_decay >= 0, got {lr} and {weight_decay}")
    return math.sqrt(2 * lr * weight_decay)


def weight_norm_dynamics(
    data,
    *,
    lr: float,
    weight_decay: float = 0.0,
    steps: int = 1000,
    layer: int = 0,
    norm: str = "batch",
    batch_size: int = 60,
    seed: int = 0,
    progress: str | None = None,
    **model_options,
) -> WeightNormRecord:
    """Train ``build_mlp(norm, seed=seed, **model_options)`` with plain SGD and record, at every
    step, the row norms of ``model.linears[layer].weight`` and the angle the step turned its
    rows through (see :class:`WeightNormRecord`).

    ``weight_decay`` is PyTorch's (the term ``weight_decay * w`` added to the gradient), applied
    only to the weights of the hidden Linear layers, not to the normalization's ``gamma`` and
    ``beta`` nor to the output layer. With ``norm="batch"`` each row of those weights feeds one
    BN feature, so the loss does not depend on the row's length: weight decay then changes how
    fast the rows turn, not the functions the network can express.
    """
    if steps < 1:
        raise ValueError(f"steps must be positive, got {steps}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be non-negative, got {weight_decay}")
    torch.set_num_threads(1)
    model = build_mlp(norm, seed=seed, **model_options).train()
    if not -len(model.linears) <= layer < len(model.linears):
        raise ValueError(f"layer must index one of the {len(model.linears)} hidden layers, "
                         f"got {layer}")
    weight = model.linears[layer].weight
    batches = _training_batches(data, batch_size, seed)
    decayed = [linear.weight for linear in model.linears]
    others = [p for p in model.parameters() if all(p is not w for w in decayed)]
    opt = torch.optim.SGD([{"params": decayed, "weight_decay": weight_decay},
                           {"params": others}], lr=lr)
    norms, angles, losses = [weight.norm(dim=1).mean().item()], [], []
    for _ in progress_bar(range(steps), progress, leave=False):
        x, y = next(batches)
        before = weight.detach().clone()
        loss = nn.functional.cross_entropy(model(x), y)
        _descend(opt, loss)
        losses.append(loss.item())
        norms.append(weight.norm(dim=1).mean().item())
        angles.append(row_angles(before, weight.detach()).square().mean().sqrt().item())
    return WeightNormRecord(
        weight_norm=np.array(norms),
        angular_update=np.array(angles),
        train_loss=np.array(losses),
        lr=float(lr),
        weight_decay=float(weight_decay),
    )


# ---------------------------------------------------------------------------------------------
# Plots (matplotlib Axes in, Axes out)


def plot_accuracy_curves(ax, histories: dict[str, Sequence[History]]):
    """Test accuracy against steps: per norm, the mean over seeds and a band from min to max."""
    for norm, runs in histories.items():
        steps = runs[0].steps
        accuracy = np.array([run.test_accuracy for run in runs])
        line, = ax.plot(steps, accuracy.mean(axis=0), label=NORM_LABELS.get(norm, norm))
        ax.fill_between(steps, accuracy.min(axis=0), accuracy.max(axis=0),
                        color=line.get_color(), alpha=0.2)
    ax.set(xlabel="training step", ylabel="test accuracy", ylim=(0, 1))
    ax.legend(loc="lower right")
    return ax


def plot_percentiles(ax, history: History, title: str = ""):
    """The 15th, 50th and 85th percentiles of the tracked activation input against steps.

    The record at step 0 is left out: there BN's running statistics still hold their initial
    values (mean 0, variance 1), so eval mode does not yet describe the network.
    """
    steps, values = history.steps[1:], history.percentiles[1:]
    for column, (percentile, style) in enumerate(zip(PERCENTILES, (":", "-", "--"), strict=True)):
        ax.plot(steps, values[:, column], style, color="k", label=f"{percentile}th percentile")
    ax.set(xlabel="training step", ylabel="sigmoid input", title=title)
    ax.legend(loc="best", fontsize="small")
    return ax


def plot_learning_rate_sweep(ax, sweep: dict):
    """Final test accuracy against learning rate (log axis); diverged runs drawn as x at 0."""
    rates = sweep["learning_rates"]
    for norm, accuracy in zip(sweep["norms"], sweep["accuracy"], strict=True):
        line, = ax.plot(rates, accuracy, "o-", label=NORM_LABELS.get(norm, norm))
        diverged = np.isnan(accuracy)
        ax.plot(rates[diverged], np.zeros(diverged.sum()), "x", color=line.get_color())
    ax.set(xscale="log", xlabel="learning rate (plain SGD)", ylabel="test accuracy", ylim=(0, 1))
    ax.legend(loc="lower left")
    return ax


def plot_batch_size_sweep(ax, sweep: dict):
    """Test accuracy against batch size (log axis): mean over seeds, error bar from min to max."""
    sizes = sweep["batch_sizes"]
    for norm, accuracy in zip(sweep["norms"], sweep["accuracy"], strict=True):
        mean = accuracy.mean(axis=1)
        errors = np.stack([mean - accuracy.min(axis=1), accuracy.max(axis=1) - mean])
        ax.errorbar(sizes, mean, yerr=errors, marker="o", capsize=3,
                    label=NORM_LABELS.get(norm, norm))
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(size) for size in sizes])
    ax.set(xlabel="batch size", ylabel="test accuracy")
    ax.legend(loc="lower right")
    return ax


def plot_smoothness(axes, records: dict[str, SmoothnessRecord]):
    """Three panels: loss range and gradient change along the gradient against steps, and the
    loss range against the current mini-batch loss (which separates smoothness from progress)."""
    loss_ax, gradient_ax, matched_ax = axes
    for norm, record in records.items():
        label = NORM_LABELS.get(norm, norm)
        loss_ax.plot(record.steps, record.loss_range, label=label)
        gradient_ax.plot(record.steps, record.gradient_change.max(axis=1), label=label)
        matched_ax.scatter(record.train_loss, record.loss_range, s=12, label=label)
    loss_ax.set(xlabel="training step", ylabel="loss range along the gradient", yscale="log")
    gradient_ax.set(xlabel="training step", ylabel="max gradient change", yscale="log")
    matched_ax.set(xlabel="mini-batch loss at that step", ylabel="loss range along the gradient",
                   xscale="log", yscale="log")
    for ax in axes:
        ax.legend(loc="best", fontsize="small")
    return axes


def plot_gradient_norms(ax, gradient_norms: dict[str, np.ndarray]):
    """Gradient norm of each hidden layer's weight against the layer's depth (log axis), one
    curve per entry of ``{label: (S, depth) array}`` (the mean over the S seeds)."""
    for label, norms in gradient_norms.items():
        layers = np.arange(1, norms.shape[1] + 1)
        ax.plot(layers, norms.mean(axis=0), "o-", markersize=3, label=label)
    ax.set(xlabel="hidden layer (1 = next to the input)", ylabel="gradient norm |dL/dW|",
           yscale="log")
    ax.legend(loc="best", fontsize="small")
    return ax


def plot_weight_norm_dynamics(axes, records: dict[str, WeightNormRecord], window: int = 50):
    """Two panels: the mean row norm against steps, and the angular update per step (a moving
    average over ``window`` steps), with the equilibrium value ``sqrt(2 lr wd)`` dashed for
    each run that has weight decay."""
    norm_ax, angle_ax = axes
    for label, record in records.items():
        line, = norm_ax.plot(record.weight_norm, label=label)
        smoothed = np.convolve(record.angular_update, np.ones(window) / window, mode="valid")
        angle_ax.plot(np.arange(window, len(record.angular_update) + 1), smoothed,
                      color=line.get_color(), label=label)
        if record.weight_decay > 0:
            angle_ax.axhline(equilibrium_angular_update(record.lr, record.weight_decay),
                             color=line.get_color(), linestyle="--", linewidth=1,
                             label=r"$\sqrt{2\eta\lambda}$")
    norm_ax.set(xlabel="training step", ylabel="mean row norm |w|")
    angle_ax.set(xlabel="training step", ylabel="angular update per step (rad)", yscale="log")
    for ax in axes:
        ax.legend(loc="best", fontsize="small")
    return axes
