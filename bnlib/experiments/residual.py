"""Deep residual networks at initialization, with and without normalization (chapter 7).

A residual multilayer perceptron, ``in -> Linear -> [x + branch_scale * branch(x)] x depth ->
Linear``, with ``branch = Linear -> (BN) -> ReLU -> Linear -> (BN)``, in one of the settings of
:data:`RESIDUAL_KINDS`:

- ``"batch"``: BN in every branch, ``gamma = 1`` (as a ResNet is usually initialized);
- ``"batch_zero_gamma"``: the same with ``gamma = 0`` in the last BN of every branch, so that
  every block starts as the identity (Goyal et al. 2017);
- ``"plain"``: no normalization;
- ``"skipinit"``: no normalization and a learnable scalar ``branch_scale``, initialized to 0,
  at the end of every branch (SkipInit, De & Smith 2020);
- ``"scaled"``: no normalization and a fixed ``branch_scale = 1 / sqrt(depth)``.

Weights are drawn with variance ``2 / fan_in`` before the ReLU and ``1 / fan_in`` after it, so
that without normalization a branch returns about the second moment it receives. Then, at
initialization, the second moment of the residual stream doubles at every plain block, grows by
about one per BN block (each branch adds unit variance), and stays where it is with
``gamma = 0`` or ``branch_scale = 0``. :func:`stream_statistics` measures this block by block,
and :func:`train_residual` trains the network from there with plain SGD.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from torch import nn

import bnlib.torch
from bnlib.experiments.checks import not_one_of
from bnlib.experiments.progress import progress_bar
from bnlib.experiments.training import _descend, _training_batches, evaluate_accuracy

__all__ = [
    "RESIDUAL_KINDS",
    "ResidualBlock",
    "ResidualMLP",
    "plot_stream_statistics",
    "stream_statistics",
    "train_residual",
    "training_table",
]

RESIDUAL_KINDS = {
    "plain": "no normalization",
    "batch": "BN in each branch",
    "batch_zero_gamma": "BN, last γ = 0",
    "skipinit": "no normalization, SkipInit (κ = 0)",
    "scaled": "no normalization, κ = 1/√depth",
}


class ResidualBlock(nn.Module):
    """``x -> x + branch_scale * branch(x)`` for ``(N, width)`` input.

    ``branch = Linear -> (BN) -> ReLU -> Linear -> (BN)``, with BN (``bnlib.torch.BatchNorm1d``)
    when ``batch_norm``. ``branch_scale`` is None (no multiplier), or the initial value of a
    learnable scalar multiplier when ``learnable_scale``, or a fixed number otherwise.
    """

    def __init__(self, width: int, *, batch_norm: bool, branch_scale: float | None = None,
                 learnable_scale: bool = False) -> None:
        super().__init__()

        def norm() -> nn.Module:
            return bnlib.torch.BatchNorm1d(width) if batch_norm else nn.Identity()

        self.branch = nn.Sequential(
            nn.Linear(width, width, bias=not batch_norm), norm(), nn.ReLU(),
            nn.Linear(width, width, bias=not batch_norm), norm(),
        )
        if learnable_scale:
            self.branch_scale = nn.Parameter(torch.tensor(float(branch_scale)))
        else:
            self.branch_scale = branch_scale
        for linear, gain in ((self.branch[0], 2.0), (self.branch[3], 1.0)):
            nn.init.normal_(linear.weight, std=math.sqrt(gain / width))
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branch(x)
        return x + (out if self.branch_scale is None else self.branch_scale * out)


class ResidualMLP(nn.Module):
    """``in_features -> Linear -> [ResidualBlock] x depth -> Linear -> logits`` in the setting
    ``kind`` (one of :data:`RESIDUAL_KINDS`). Input ``(N, in_features)``, output
    ``(N, num_classes)``."""

    def __init__(self, kind: str, *, depth: int = 50, width: int = 100, in_features: int = 64,
                 num_classes: int = 10) -> None:
        super().__init__()
        if kind not in RESIDUAL_KINDS:
            raise not_one_of("kind", kind, RESIDUAL_KINDS)
        if depth < 1:
            raise ValueError(f"depth must be positive, got {depth}")
        self.kind = kind
        branch_scale = {"skipinit": 0.0, "scaled": 1 / math.sqrt(depth)}.get(kind)
        self.embed = nn.Linear(in_features, width)
        self.blocks = nn.ModuleList(
            ResidualBlock(width, batch_norm=kind.startswith("batch"), branch_scale=branch_scale,
                          learnable_scale=kind == "skipinit")
            for _ in range(depth)
        )
        if kind == "batch_zero_gamma":
            for block in self.blocks:
                nn.init.zeros_(block.branch[-1].weight)
        self.head = nn.Linear(width, num_classes)

    def forward_with_stream(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and the residual stream ``[x_0, x_1, ..., x_depth]``, each ``(N, width)``:
        ``x_0`` the embedded input, ``x_l`` the output of block ``l``."""
        stream = [self.embed(x)]
        for block in self.blocks:
            stream.append(block(stream[-1]))
        return self.head(stream[-1]), stream

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_stream(x)[0]


@torch.no_grad()
def stream_statistics(kind: str, x: torch.Tensor, *, depth: int = 50, width: int = 100,
                      seed: int = 0) -> dict[str, np.ndarray]:
    """The residual stream of a freshly initialized ``ResidualMLP(kind, depth=depth,
    width=width)`` (weights from ``seed``) on the batch ``x (N, in_features)``, in training
    mode.

    Returns ``{"second_moment": (depth + 1,), "branch_share": (depth,)}``: the mean of
    ``x_l ** 2`` over the batch and the features, for ``l = 0 .. depth``, and for each block the
    root mean square of what it adds, ``x_l - x_{l-1}``, divided by that of ``x_l``.
    """
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = ResidualMLP(kind, depth=depth, width=width, in_features=x.shape[1]).train()
    _, stream = model.forward_with_stream(x)
    moments = torch.stack([h.double().square().mean() for h in stream])
    added = torch.stack([(after - before).double().square().mean()
                         for before, after in zip(stream[:-1], stream[1:], strict=True)])
    return {"second_moment": moments.numpy(), "branch_share": (added / moments[1:]).sqrt().numpy()}


def train_residual(kind: str, data, *, depth: int = 50, width: int = 100, steps: int = 100,
                   batch_size: int = 64, lr: float = 0.1, seed: int = 0,
                   progress: str | None = None) -> dict:
    """Train a fresh ``ResidualMLP(kind, depth=depth, width=width)`` (weights from ``seed``)
    with plain SGD on the mini-batches of ``data.x_train, data.y_train`` (the order of
    :func:`bnlib.experiments.training.train` for ``seed``), stopping if the loss stops being
    finite. ``progress``, when given, labels a tqdm progress bar.

    Returns ``{"loss": (T,), "diverged": bool, "accuracy": float}``: the mini-batch loss of
    each step taken (T <= steps; the first is the loss at initialization), whether training
    stopped on a non-finite loss (then T counts the steps before it), and the test accuracy in
    eval mode (NaN if diverged).
    """
    if steps < 1:
        raise ValueError(f"steps must be positive, got {steps}")
    torch.set_num_threads(1)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = ResidualMLP(kind, depth=depth, width=width, in_features=data.x_train.shape[1])
    batches = _training_batches(data, batch_size, seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    losses, diverged = [], False
    for _ in progress_bar(range(steps), progress, leave=False):
        x, y = next(batches)
        loss = nn.functional.cross_entropy(model(x), y)
        _descend(opt, loss)
        diverged = not (math.isfinite(loss.item())
                        and all(torch.isfinite(p).all() for p in model.parameters()))
        if diverged:
            break
        losses.append(loss.item())
    accuracy = math.nan if diverged else evaluate_accuracy(model, data)
    return {"loss": np.array(losses), "diverged": diverged, "accuracy": accuracy}


def training_table(runs: dict[str, dict]) -> str:
    """A Markdown table of ``{kind: train_residual(kind, ...)}``: per setting, the loss at
    initialization, the mean loss of the last 10 steps and the test accuracy."""
    lines = ["| setting | loss at the first step | mean loss, last 10 steps | test accuracy |",
             "|---|---|---|---|"]
    for kind, run in runs.items():
        loss = run["loss"]
        first = f"{loss[0]:.3g}" if len(loss) else "not finite"
        if run["diverged"]:
            lines.append(f"| {RESIDUAL_KINDS[kind]} | {first} | diverged at step "
                         f"{len(loss) + 1} | |")
        else:
            lines.append(f"| {RESIDUAL_KINDS[kind]} | {first} | {loss[-10:].mean():.3f} | "
                         f"{run['accuracy']:.1%} |")
    return "\n".join(lines)


def plot_stream_statistics(axes, statistics: dict[str, dict[str, np.ndarray]]):
    """Two panels: the second moment of the residual stream against the block (log axis), and
    the share of each block's branch, one curve per ``{kind: stream_statistics(...)}``."""
    moment_ax, share_ax = axes
    styles = itertools.cycle(["-", "--", "-.", ":"])  # curves that coincide stay visible
    for (kind, result), style in zip(statistics.items(), styles, strict=False):
        blocks = np.arange(len(result["second_moment"]))
        moment_ax.plot(blocks, result["second_moment"], ls=style, label=RESIDUAL_KINDS[kind])
        share_ax.plot(blocks[1:], result["branch_share"], ls=style, label=RESIDUAL_KINDS[kind])
    moment_ax.set(xlabel="block l (0 = embedded input)", ylabel="mean of $x_l^2$", yscale="log")
    share_ax.set(xlabel="block l", ylabel="rms(added by block l) / rms($x_l$)")
    for ax in axes:
        ax.legend(loc="best", fontsize="small")
    return axes
