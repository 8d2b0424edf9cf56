"""Per-layer diagnostics of a deep tanh network, at initialization and during training.

The checks Karpathy makes in "Building makemore Part 3" (2022), for the networks of chapter 2:
``in -> [Linear -> (BN) -> tanh] x depth -> Linear``, built with
:func:`bnlib.experiments.training.build_mlp`, whose hidden Linear weights are drawn by one of
:data:`INITS`:

- ``"naive"``: every weight from ``N(0, 1)``, the scale of a bare ``torch.randn``;
- ``"fan_in"``: ``N(0, 1 / fan_in)``, which keeps the variance of a *linear* layer's output
  equal to that of its input;
- ``"kaiming"``: ``N(0, (5/3)^2 / fan_in)``, PyTorch's ``kaiming_normal_`` with the tanh gain
  ``5/3``, which makes up for the squashing of tanh.

Every init draws the same standard-normal numbers and scales them, so two networks of one seed
differ only by the scale of their weights. The output layer is always drawn with the
``"fan_in"`` rule and every bias is zero, so that only the hidden layers differ.

What is measured, per hidden layer: the tanh outputs and the gradients of the loss with respect
to them (:func:`snapshot`, captured with forward hooks), the fraction of saturated units
(``|tanh| > 0.97``, where the derivative ``1 - tanh^2`` is below 0.06), and, during plain-SGD
training, the update-to-data ratio of each weight matrix, ``std(W_after - W_before) /
std(W_before)`` (:func:`train_with_diagnostics`), which Karpathy reads on a log scale against
the rule of thumb ``1e-3``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from bnlib.experiments.activations import saturated_fraction
from bnlib.experiments.checks import not_one_of
from bnlib.experiments.progress import progress_bar
from bnlib.experiments.training import MLP, _descend, _training_batches, build_mlp

__all__ = [
    "INITS",
    "TANH_SATURATION",
    "TANH_GAIN",
    "RATIO_RULE_OF_THUMB",
    "Snapshot",
    "TrainingRecord",
    "build_tanh_mlp",
    "layer_table",
    "plot_histograms",
    "plot_saturation",
    "plot_update_ratios",
    "tanh_saturation",
    "snapshot",
    "train_with_diagnostics",
]

TANH_GAIN = 5 / 3  # torch.nn.init.calculate_gain("tanh")
TANH_SATURATION = 0.97  # |tanh| above it: derivative 1 - tanh^2 below 0.06
RATIO_RULE_OF_THUMB = 1e-3  # update-to-data ratio that Karpathy suggests aiming for
INITS = {"naive": None, "fan_in": 1.0, "kaiming": TANH_GAIN}  # init -> gain (None: std 1)


def _init_linear(linear: nn.Linear, gain: float | None) -> None:
    """Weight ``N(0, 1)`` scaled by ``gain / sqrt(fan_in)`` (not scaled when gain is None);
    bias zero."""
    nn.init.normal_(linear.weight)
    if gain is not None:
        linear.weight.data.mul_(gain / math.sqrt(linear.in_features))
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)


def build_tanh_mlp(
    init: str,
    *,
    batch_norm: bool = False,
    depth: int = 5,
    width: int = 100,
    seed: int = 0,
    **options,
) -> MLP:
    """A tanh :class:`~bnlib.experiments.training.MLP` with ``depth`` hidden layers of
    ``width`` units whose hidden weights follow ``init`` (one of :data:`INITS`).

    ``batch_norm`` puts a ``bnlib.torch.BatchNorm1d`` before every tanh (and drops the hidden
    biases). ``options`` go to ``build_mlp`` (``in_features``, ``num_classes``). The weights
    depend only on ``seed``.
    """
    if init not in INITS:
        raise not_one_of("init", init, INITS)
    if depth < 1:
        raise ValueError(f"depth must be positive, got {depth}")
    model = build_mlp("batch" if batch_norm else "none", seed=seed, hidden=(width,) * depth,
                      activation="tanh", **options)
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(seed)
        for linear in model.linears:
            _init_linear(linear, INITS[init])
        _init_linear(model.head, INITS["fan_in"])
    return model


def tanh_saturation(outputs: torch.Tensor | np.ndarray) -> float:
    """Fraction of the tanh ``outputs`` (any shape) with ``|a| > TANH_SATURATION``: the
    :func:`~bnlib.experiments.activations.saturated_fraction` of a tanh layer."""
    return saturated_fraction(np.asarray(outputs, dtype=np.float64), TANH_SATURATION)


@dataclass
class Snapshot:
    """One forward and backward pass of a tanh MLP, layer by layer (the first hidden layer
    first).

    ``activations[l]`` (N, width): the tanh outputs of hidden layer ``l``; ``gradients[l]``
    (N, width): the gradient of the mini-batch loss with respect to them; ``loss``: the loss.
    """

    activations: list[np.ndarray]
    gradients: list[np.ndarray]
    loss: float

    def saturated(self) -> np.ndarray:
        """Saturated fraction of each layer, ``(L,)``."""
        return np.array([tanh_saturation(a) for a in self.activations])


class _TanhOutputs:
    """Forward hook on the tanh of an MLP: keeps every output, with its gradient retained."""

    def __init__(self, model: MLP) -> None:
        self.outputs: list[torch.Tensor] = []
        self.handle = model.activation.register_forward_hook(self._keep)

    def _keep(self, module, inputs, output):
        if output.requires_grad:
            output.retain_grad()
        self.outputs.append(output)

    def remove(self) -> None:
        self.handle.remove()


def _check_tanh(model: MLP) -> None:
    if not isinstance(model.activation, nn.Tanh):
        raise ValueError(f"the diagnostics are for tanh networks, got {model.activation}")


def snapshot(model: MLP, x: torch.Tensor, y: torch.Tensor) -> Snapshot:
    """Run ``model`` in training mode on the mini-batch ``x (N, in), y (N,)`` and backpropagate
    the cross-entropy; return each hidden layer's tanh outputs and their gradients.

    The model's parameter gradients are left as this pass computed them.
    """
    _check_tanh(model)
    hook = _TanhOutputs(model)
    try:
        model.train()
        model.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
    finally:
        hook.remove()
    return Snapshot(
        activations=[t.detach().numpy().copy() for t in hook.outputs],
        gradients=[t.grad.numpy().copy() for t in hook.outputs],
        loss=loss.item(),
    )


@dataclass
class TrainingRecord:
    """What :func:`train_with_diagnostics` records at each of T plain-SGD steps, for L hidden
    layers.

    ``loss`` (T,): the mini-batch loss; ``saturated`` (T, L): each layer's saturated fraction
    on that mini-batch; ``update_ratio`` (T, L): ``std(W_after - W_before) / std(W_before)`` of
    each hidden Linear weight; ``final``: a :class:`Snapshot` of the trained network.
    """

    loss: np.ndarray
    saturated: np.ndarray
    update_ratio: np.ndarray
    final: Snapshot


def _update_ratios(before: Sequence[torch.Tensor], after: Sequence[torch.Tensor]) -> list[float]:
    return [((new - old).std() / old.std()).item() for old, new in zip(before, after, strict=True)]


def train_with_diagnostics(
    model: MLP,
    data,
    *,
    steps: int = 1000,
    batch_size: int = 32,
    lr: float = 0.1,
    seed: int = 0,
    progress: str | None = None,
) -> TrainingRecord:
    """Train ``model`` (a tanh MLP) in place with plain SGD on ``data.x_train, data.y_train``
    and record the loss, the saturation and the update-to-data ratios at every step (see
    :class:`TrainingRecord`). Mini-batches follow :func:`bnlib.experiments.training.train`'s
    order for ``seed``; ``progress``, when given, labels a tqdm progress bar. The final
    snapshot is taken on the first ``4 * batch_size`` training examples.
    """
    if steps < 1:
        raise ValueError(f"steps must be positive, got {steps}")
    _check_tanh(model)
    torch.set_num_threads(1)
    model.train()
    batches = _training_batches(data, batch_size, seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    weights = [linear.weight for linear in model.linears]
    losses, saturated, ratios = [], [], []
    hook = _TanhOutputs(model)
    try:
        for _ in progress_bar(range(steps), progress, leave=False):
            x, y = next(batches)
            hook.outputs.clear()
            before = [w.detach().clone() for w in weights]
            loss = nn.functional.cross_entropy(model(x), y)
            _descend(opt, loss)
            losses.append(loss.item())
            saturated.append([tanh_saturation(t.detach()) for t in hook.outputs])
            ratios.append(_update_ratios(before, [w.detach() for w in weights]))
    finally:
        hook.remove()
    probe = slice(0, 4 * batch_size)
    final = snapshot(model, torch.as_tensor(data.x_train[probe]),
                     torch.as_tensor(data.y_train[probe]))
    return TrainingRecord(
        loss=np.array(losses),
        saturated=np.array(saturated),
        update_ratio=np.array(ratios),
        final=final,
    )


def layer_table(snapshots: dict[str, Snapshot]) -> str:
    """A Markdown table with one row per labelled snapshot and, for its hidden layers from the
    first to the last, the standard deviation of the tanh outputs, the saturated fraction and
    the standard deviation of the gradient with respect to the outputs."""
    def row(values, form: str) -> str:
        return " → ".join(format(value, form) for value in values)

    lines = ["| network | std of the activations | saturated | std of the gradients |",
             "|---|---|---|---|"]
    for label, shot in snapshots.items():
        lines.append(f"| {label} | {row([a.std() for a in shot.activations], '.2f')} | "
                     f"{row(shot.saturated(), '.0%')} | "
                     f"{row([g.std() for g in shot.gradients], '.1e')} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Plots (matplotlib Axes in, Axes out)


def plot_histograms(ax, arrays: Sequence[np.ndarray], *, bins: int = 60, title: str = "",
                    xlabel: str = ""):
    """One density curve per layer (Karpathy's histogram plot): ``arrays[l]`` is layer l + 1."""
    for layer, values in enumerate(arrays, 1):
        density, edges = np.histogram(values, bins=bins, density=True)
        ax.plot((edges[:-1] + edges[1:]) / 2, density, label=f"layer {layer}")
    ax.set(title=title, xlabel=xlabel, ylabel="density")
    ax.legend(fontsize="x-small", loc="best")
    return ax


def plot_update_ratios(ax, record: TrainingRecord, title: str = ""):
    """log10 of the update-to-data ratio of each hidden layer against the step, with the rule of
    thumb ``1e-3`` dashed."""
    steps = np.arange(1, len(record.loss) + 1)
    for layer in range(record.update_ratio.shape[1]):
        ax.plot(steps, np.log10(record.update_ratio[:, layer]), lw=1, label=f"layer {layer + 1}")
    ax.axhline(math.log10(RATIO_RULE_OF_THUMB), color="k", ls="--", lw=1, label="1e-3")
    ax.set(title=title, xlabel="training step", ylabel="log10(update / data)")
    ax.legend(fontsize="x-small", loc="best")
    return ax


def plot_saturation(ax, record: TrainingRecord, title: str = ""):
    """Saturated fraction of each hidden layer against the step."""
    steps = np.arange(1, len(record.loss) + 1)
    for layer in range(record.saturated.shape[1]):
        ax.plot(steps, record.saturated[:, layer], lw=1, label=f"layer {layer + 1}")
    ax.set(title=title, xlabel="training step", ylabel=f"fraction |tanh| > {TANH_SATURATION}",
           ylim=(0, 1))
    ax.legend(fontsize="x-small", loc="best")
    return ax
