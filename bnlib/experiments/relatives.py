"""More relatives of Batch Normalization, and the small experiments of chapter 6 that use them.

The layers, each a ``torch.nn.Module`` built on :mod:`bnlib.torch`:

- :class:`BatchRenorm1d`, :class:`BatchRenorm2d`: Batch Renormalization (Ioffe 2017). In
  training, BN's output is corrected by ``r = sigma_B / sigma_run`` and
  ``d = (mu_B - mu_run) / sigma_run``, clipped to ``[1/r_max, r_max]`` and
  ``[-d_max, d_max]`` and treated as constants by the backward pass, so that without clipping
  the training output equals the inference output.
- :class:`GhostBatchNorm1d`, :class:`GhostBatchNorm2d`: Ghost Batch Normalization (Hoffer et
  al. 2017). In training, the batch is split into "ghost" batches of ``ghost_batch_size``
  examples, each normalized with its own statistics.
- :func:`weight_standardize`: Weight Standardization (Qiao et al. 2019), a
  ``torch.nn.utils.parametrize`` parametrization that standardizes each output unit's weights
  (each row of a Linear weight, each filter of a convolution) to mean 0 and variance 1 over
  its fan-in before every use.
- :class:`PartialNorm`: normalization with only one of its two steps, for ablations: subtract
  the mean (``center``) and/or divide by the root mean square of what is left (``scale``),
  with the statistics taken over the batch (BN's axis) or over the features (LN's axis).
  Over the features, scale without center is RMSNorm (Zhang & Sennrich 2019).

The experiments replace the normalization layers of the multilayer perceptron of
:mod:`bnlib.experiments.training` by one of these (:func:`build_relative_mlp`, kinds in
:data:`RELATIVE_KINDS`) and train it with that module's :func:`~bnlib.experiments.training.train`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

import bnlib.torch
from bnlib.experiments.checks import not_one_of
from bnlib.experiments.progress import progress_bar
from bnlib.experiments.training import (
    MLP,
    _descend,
    _make_optimizer,
    _tensors,
    build_mlp,
    evaluate_accuracy,
    norm_layer,
    train_many,
)
from bnlib.torch import functional as F
from bnlib.torch.helpers import channel_view, reduction_axes

__all__ = [
    "RELATIVE_KINDS",
    "RELATIVE_LABELS",
    "BatchRenorm1d",
    "BatchRenorm2d",
    "GhostBatchNorm1d",
    "GhostBatchNorm2d",
    "PartialNorm",
    "Standardized",
    "accuracy_table",
    "build_relative_mlp",
    "class_grouped_batches",
    "non_iid_table",
    "normalization_noise",
    "relative_norm",
    "train_non_iid",
    "train_on_batches",
    "train_relatives",
    "weight_standardize",
]


# ---------------------------------------------------------------------------------------------
# Batch Renormalization


class _BatchRenorm:
    """Training-mode forward of Batch Renormalization, mixed into a bnlib batch-norm module.

    ``r_max`` and ``d_max`` are the clipping limits once training is under way; during the
    first ``warmup`` training batches they grow linearly from 1 and 0 (plain BN) to their
    final values, a linear version of Ioffe's gradual relaxation.
    """

    def __init__(self, num_features: int, *args, r_max: float = 3.0, d_max: float = 5.0,
                 warmup: int = 0, **kwargs) -> None:
        if r_max < 1 or d_max < 0 or warmup < 0:
            raise ValueError(f"need r_max >= 1, d_max >= 0 and warmup >= 0, got r_max={r_max}, "
                             f"d_max={d_max}, warmup={warmup}")
        super().__init__(num_features, *args, **kwargs)
        if not self.track_running_stats:
            raise ValueError("batch renormalization corrects towards running statistics; "
                             "track_running_stats must be True")
        self.r_max, self.d_max, self.warmup = float(r_max), float(d_max), int(warmup)

    def limits(self) -> tuple[float, float]:
        """The clipping limits ``(r_max, d_max)`` of the next training batch."""
        done = 1.0 if self.warmup == 0 else min(1.0, int(self.num_batches_tracked) / self.warmup)
        return 1 + (self.r_max - 1) * done, self.d_max * done

    @torch.no_grad()
    def corrections(self, input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``r (C,)`` and ``d (C,)`` for ``input``, clipped, from the current running
        statistics (no gradient flows through them)."""
        axes = reduction_axes(input)
        batch_std = (input.var(axes, unbiased=False) + self.eps).sqrt()
        running_std = (self.running_var + self.eps).sqrt()
        r_max, d_max = self.limits()
        r = (batch_std / running_std).clamp(1 / r_max, r_max)
        d = ((input.mean(axes) - self.running_mean) / running_std).clamp(-d_max, d_max)
        return r, d

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Training: ``(BN(x) * r + d) * weight + bias`` with BN's gradient and r, d constant;
        the running statistics are updated as BN's. Eval: BN with the running statistics."""
        if not self.training:
            return super().forward(input)
        self._check_input_dim(input)
        r, d = self.corrections(input)  # before this batch updates the running statistics
        momentum = self._count_batch(input)
        normalized = F.batch_norm(input, self.running_mean, self.running_var, None, None,
                                  True, momentum, self.eps)
        out = normalized * channel_view(r, input.dim()) + channel_view(d, input.dim())
        if self.affine:
            out = out * channel_view(self.weight, input.dim()) + channel_view(self.bias,
                                                                              input.dim())
        return out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, r_max={self.r_max}, d_max={self.d_max}, " \
               f"warmup={self.warmup}"


class BatchRenorm1d(_BatchRenorm, bnlib.torch.BatchNorm1d):
    """Batch Renormalization of ``(N, C)`` or ``(N, C, L)`` input (Ioffe 2017).

    Arguments, parameters and buffers are ``BatchNorm1d``'s, plus ``r_max``, ``d_max`` and
    ``warmup``. With ``sigma = sqrt(var + eps)``, in training::

        r = clip(sigma_B / sigma_run, 1/r_max, r_max),  d = clip((mu_B - mu_run) / sigma_run,
                                                                  -d_max, d_max)
        y = ((x - mu_B) / sigma_B * r + d) * weight + bias       (r, d: no gradient)

    and in eval mode ``y = (x - mu_run) / sigma_run * weight + bias``, BN's inference. Without
    clipping the training output is exactly the inference output. Unlike Ioffe, who keeps a
    moving average of sigma, the running variance is torch's (unbiased batch variances).
    """


class BatchRenorm2d(_BatchRenorm, bnlib.torch.BatchNorm2d):
    """Batch Renormalization of ``(N, C, H, W)`` input: :class:`BatchRenorm1d` per channel."""


# ---------------------------------------------------------------------------------------------
# Ghost Batch Normalization


class _GhostBatchNorm:
    """Training-mode forward of Ghost Batch Normalization, mixed into a bnlib batch-norm
    module."""

    def __init__(self, num_features: int, ghost_batch_size: int, *args, **kwargs) -> None:
        if ghost_batch_size < 2:
            raise ValueError(f"ghost_batch_size must be at least 2, got {ghost_batch_size}")
        super().__init__(num_features, *args, **kwargs)
        self.ghost_batch_size = int(ghost_batch_size)

    def _ghosts_as_channels(self, input: torch.Tensor) -> torch.Tensor:
        """``(G * n, C, *s)`` -> ``(n, G * C, *s)``: ghost batch g's channel c becomes channel
        ``g * C + c``, so BN of the result normalizes each ghost batch with its own statistics."""
        n = self.ghost_batch_size
        ghosts = input.reshape(-1, n, *input.shape[1:]).transpose(0, 1)
        return ghosts.reshape(n, -1, *input.shape[2:])

    def _ghosts_as_batch(self, output: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """The inverse of :meth:`_ghosts_as_channels`."""
        n = self.ghost_batch_size
        return output.reshape(n, -1, *shape[1:]).transpose(0, 1).reshape(shape)

    @torch.no_grad()
    def _update_running_stats(self, channels: torch.Tensor, momentum: float) -> None:
        """Move the running statistics towards the mean over the ghost batches of their means
        and unbiased variances (``channels`` as :meth:`_ghosts_as_channels` returns it)."""
        axes, num_features = reduction_axes(channels), self.running_mean.numel()
        means = channels.mean(axes).reshape(-1, num_features).mean(0)
        variances = channels.var(axes, unbiased=True).reshape(-1, num_features).mean(0)
        self.running_mean.lerp_(means.to(self.running_mean.dtype), momentum)
        self.running_var.lerp_(variances.to(self.running_var.dtype), momentum)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Training: BN of each ghost batch (consecutive ``ghost_batch_size`` examples) with
        its own statistics. Eval: BN with the running statistics."""
        if not self.training:
            return super().forward(input)
        self._check_input_dim(input)
        if input.shape[0] % self.ghost_batch_size:
            raise ValueError(f"a batch of {input.shape[0]} does not split into ghost batches "
                             f"of {self.ghost_batch_size}")
        channels = self._ghosts_as_channels(input)
        momentum = self._count_batch(input)
        if self.track_running_stats:
            self._update_running_stats(channels, momentum)
        ghosts = channels.shape[1] // input.shape[1]
        weight, bias = (None if p is None else p.repeat(ghosts) for p in (self.weight, self.bias))
        output = F.batch_norm(channels, None, None, weight, bias, True, 0.0, self.eps)
        return self._ghosts_as_batch(output, input.shape)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, ghost_batch_size={self.ghost_batch_size}"


class GhostBatchNorm1d(_GhostBatchNorm, bnlib.torch.BatchNorm1d):
    """Ghost Batch Normalization of ``(N, C)`` or ``(N, C, L)`` input (Hoffer et al. 2017).

    ``GhostBatchNorm1d(num_features, ghost_batch_size, eps=1e-5, momentum=0.1, ...)``; the rest
    as ``BatchNorm1d``. In training, ``N`` must be a multiple of ``ghost_batch_size``; every
    ghost batch of consecutive examples is normalized with its own mean and biased variance,
    and the running statistics move once per call towards the average over the ghost batches
    of their means and unbiased variances. Eval mode is BN's.
    """


class GhostBatchNorm2d(_GhostBatchNorm, bnlib.torch.BatchNorm2d):
    """Ghost Batch Normalization of ``(N, C, H, W)`` input: :class:`GhostBatchNorm1d` per
    channel."""


# ---------------------------------------------------------------------------------------------
# Weight Standardization


class Standardized(nn.Module):
    """A parametrization: ``weight (C_out, *fan_in)`` -> each ``weight[c]`` minus its mean,
    divided by ``sqrt(its biased variance + eps)``.

    That is layer normalization, without scale and shift, of the weight over its fan-in axes,
    so it is computed with :func:`bnlib.torch.layer_norm` (and its backward pass).
    """

    def __init__(self, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = float(eps)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if weight.dim() < 2:
            raise ValueError(f"weight standardization needs a weight with an output axis and "
                             f"fan-in axes, got shape {tuple(weight.shape)}")
        return bnlib.torch.layer_norm(weight, weight.shape[1:], eps=self.eps)


def weight_standardize(module: nn.Module, eps: float = 1e-5) -> nn.Module:
    """Weight Standardization of a Linear or convolution layer, in place; returns ``module``.

    Registers :class:`Standardized` on ``module.weight`` (``torch.nn.utils.parametrize``): the
    stored parameter is unchanged and trained as before, and every forward pass uses its
    standardized version, so the layer's output does not change when a row (or filter) of the
    weight is scaled or shifted.
    """
    if not isinstance(getattr(module, "weight", None), torch.Tensor):
        raise ValueError(f"weight_standardize needs a module with a weight, got "
                         f"{type(module).__name__}")
    parametrize.register_parametrization(module, "weight", Standardized(eps))
    return module


# ---------------------------------------------------------------------------------------------
# Mean-only and scale-only normalization


class PartialNorm(nn.Module):
    """Normalization of ``(N, D)`` input with one or both of its steps, and ``gamma, beta``.

    ``over="batch"`` takes the statistics of each feature over the batch (BN's sets),
    ``over="features"`` those of each example over its D features (LN's sets)::

        centred = x - mean(x)                  if center else x
        out     = centred / sqrt(mean(centred^2) + eps)   if scale else centred
        y       = gamma * out + beta

    With both steps this is BN (``over="batch"``) or LN (``over="features"``); over the
    features, ``scale`` alone is RMSNorm (with a ``beta``). Over the batch, eval mode uses
    running estimates (momentum as torch's): the running mean, and the running mean square of
    ``centred``, with Bessel's correction when it is a variance, so ``center=scale=True`` is
    exactly ``BatchNorm1d``.
    """

    def __init__(self, num_features: int, *, over: str, center: bool = True, scale: bool = True,
                 eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        if over not in ("batch", "features"):
            raise ValueError(f"over must be 'batch' or 'features', got {over!r}")
        if not (center or scale):
            raise ValueError("PartialNorm needs center, scale or both")
        self.over, self.center, self.scale = over, center, scale
        self.eps, self.momentum = float(eps), float(momentum)
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        if over == "batch":
            self.register_buffer("running_mean", torch.zeros(num_features))
            self.register_buffer("running_square", torch.ones(num_features))

    def _statistics(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and mean square of the centred values, shaped to broadcast against ``x``."""
        axis = 0 if self.over == "batch" else 1
        if self.over == "batch" and not self.training:
            return self.running_mean, self.running_square
        mean = x.mean(axis, keepdim=True) if self.center else torch.zeros_like(x[:1, :1])
        square = (x - mean).square().mean(axis, keepdim=True)
        if self.over == "batch":
            self._update_running_stats(mean, square, x.shape[0])
        return mean, square

    @torch.no_grad()
    def _update_running_stats(self, mean, square, count: int) -> None:
        if self.center:
            self.running_mean.lerp_(mean.reshape(-1), self.momentum)
            square = square * (count / (count - 1))  # Bessel: a variance about the batch mean
        self.running_square.lerp_(square.reshape(-1), self.momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2:
            raise ValueError(f"PartialNorm expects (N, D) input, got shape {tuple(x.shape)}")
        if self.over == "batch" and self.training and x.shape[0] < 2:
            raise ValueError("PartialNorm over the batch needs at least 2 examples in training")
        mean, square = self._statistics(x)
        out = x - mean if self.center else x
        if self.scale:
            out = out / (square + self.eps).sqrt()
        return out * self.weight + self.bias

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, over={self.over!r}, center={self.center}, " \
               f"scale={self.scale}, eps={self.eps}"


# ---------------------------------------------------------------------------------------------
# Experiments: the MLP of bnlib.experiments.training with these layers


RELATIVE_LABELS = {
    "none": "no normalization",
    "batch": "BatchNorm",
    "batch_renorm": "Batch Renormalization",
    "ghost": "ghost BatchNorm",
    "group": "GroupNorm",
    "group_ws": "GroupNorm + WS",
    "batch_mean_only": "BN, mean only",
    "batch_scale_only": "BN, scale only",
    "layer": "LayerNorm",
    "layer_mean_only": "LN, mean only",
    "rms": "RMSNorm (LN, scale only)",
}
RELATIVE_KINDS = tuple(RELATIVE_LABELS)


def relative_norm(kind: str, num_features: int, *, num_groups: int = 4,
                  ghost_batch_size: int = 4, r_max: float = 3.0, d_max: float = 5.0,
                  warmup: int = 0) -> nn.Module:
    """The normalization layer ``kind`` (one of :data:`RELATIVE_KINDS`) for ``(N, D)`` input.

    The kinds that :func:`~bnlib.experiments.training.norm_layer` builds come from it.
    ``"group_ws"`` is a GroupNorm; the weight standardization of the layer before it is done
    by :func:`build_relative_mlp`.
    """
    ablations = {
        "batch_mean_only": ("batch", True, False), "batch_scale_only": ("batch", False, True),
        "layer_mean_only": ("features", True, False), "rms": ("features", False, True),
    }
    if kind in ("none", "batch", "layer", "group", "group_ws"):
        return norm_layer(kind.removesuffix("_ws"), num_features, num_groups=num_groups)
    if kind == "batch_renorm":
        return BatchRenorm1d(num_features, r_max=r_max, d_max=d_max, warmup=warmup)
    if kind == "ghost":
        return GhostBatchNorm1d(num_features, ghost_batch_size)
    if kind in ablations:
        over, center, scale = ablations[kind]
        return PartialNorm(num_features, over=over, center=center, scale=scale)
    raise not_one_of("kind", kind, RELATIVE_KINDS)


def build_relative_mlp(kind: str, *, seed: int = 0, norm_options: dict | None = None,
                       **options) -> MLP:
    """``build_mlp("batch", seed=seed, **options)`` with every BatchNorm1d replaced by
    ``relative_norm(kind, width, **norm_options)``, and, for ``"group_ws"``, every hidden
    Linear layer weight-standardized. The initial weights are those of ``build_mlp`` for
    ``seed``; ``"none"`` is ``build_mlp("none", ...)``, whose hidden Linear layers keep
    their bias."""
    if kind == "none":
        return build_mlp("none", seed=seed, **options)
    model = build_mlp("batch", seed=seed, **options)
    model.norm = kind
    model.norms = nn.ModuleList(relative_norm(kind, linear.out_features, **(norm_options or {}))
                                for linear in model.linears)
    if kind == "group_ws":
        for linear in model.linears:
            weight_standardize(linear)
    return model


def train_relatives(data, kinds: Sequence[str], *, norm_options: dict | None = None,
                    seeds: Sequence[int] = (0,), progress: bool | str = True,
                    **options) -> dict[str, np.ndarray]:
    """Final test accuracy of ``build_relative_mlp(kind, seed=seed, ...)``, trained by
    :func:`~bnlib.experiments.training.train_many` (``options``: its ``model_options`` and
    the options of :func:`~bnlib.experiments.training.train`), for every kind and seed.

    Returns ``{"kinds": kinds, "seeds": (S,), "accuracy": (K, S)}``, NaN for a run whose loss
    diverged.
    """
    histories, _ = train_many(data, kinds, seeds=seeds, progress=progress,
                              build=partial(build_relative_mlp, norm_options=norm_options),
                              **options)
    accuracy = np.array([[np.nan if run.diverged else run.test_accuracy[-1]
                          for run in histories[kind]] for kind in kinds])
    return {"kinds": tuple(kinds), "seeds": np.array(seeds), "accuracy": accuracy}


def class_grouped_batches(data, batch_size: int, classes_per_batch: int, seed: int = 0):
    """Endless non-i.i.d. mini-batches ``(x, y)`` of ``data.x_train, data.y_train``: each holds
    ``batch_size / classes_per_batch`` examples of each of ``classes_per_batch`` classes drawn
    at random (without replacement), the examples drawn at random within their class.

    Ioffe (2017) trained on such batches (in a metric-learning setting, several examples per
    label); batch statistics then carry information about which classes share a batch.
    """
    if classes_per_batch < 1 or batch_size % classes_per_batch:
        raise ValueError(f"batch_size ({batch_size}) must be a positive multiple of "
                         f"classes_per_batch ({classes_per_batch})")
    x, y = _tensors(data)[:2]
    by_class = [(y == label).nonzero().flatten() for label in range(int(y.max()) + 1)]
    per_class = batch_size // classes_per_batch
    if classes_per_batch > len(by_class) or per_class > min(len(c) for c in by_class):
        raise ValueError(f"the data cannot fill batches of {classes_per_batch} classes with "
                         f"{per_class} examples each")
    return _grouped(x, y, by_class, classes_per_batch, per_class,
                    torch.Generator().manual_seed(seed))


def _grouped(x, y, by_class, classes_per_batch, per_class, generator):
    """The endless generator behind :func:`class_grouped_batches` (arguments checked)."""
    while True:
        labels = torch.randperm(len(by_class), generator=generator)[:classes_per_batch]
        index = torch.cat([by_class[label][torch.randperm(len(by_class[label]),
                                                          generator=generator)[:per_class]]
                           for label in labels])
        yield x[index], y[index]


def train_on_batches(model: MLP, data, batches, *, steps: int, lr: float = 1e-3,
                     optimizer: str = "adam", progress: str | None = None) -> float:
    """Train ``model`` in place for ``steps`` steps of cross-entropy on the mini-batches that
    the iterator ``batches`` yields; return its test accuracy in eval mode."""
    if steps < 1:
        raise ValueError(f"steps must be positive, got {steps}")
    torch.set_num_threads(1)
    model.train()
    opt = _make_optimizer(optimizer, model.parameters(), lr)
    for _ in progress_bar(range(steps), progress, leave=False):
        x, y = next(batches)
        _descend(opt, nn.functional.cross_entropy(model(x), y))
    return evaluate_accuracy(model, data)


def train_non_iid(
    data,
    kinds: Sequence[str],
    *,
    classes_per_batch: Sequence[int],
    seeds: Sequence[int] = (0,),
    batch_size: int = 16,
    steps: int = 300,
    model_options: dict | None = None,
    progress: str | None = "non-i.i.d. batches",
) -> dict:
    """Test accuracy of ``build_relative_mlp(kind, seed=seed, **model_options)`` trained by
    :func:`train_on_batches` (Adam, learning rate 1e-3) on ``class_grouped_batches(data,
    batch_size, classes, seed=seed)``, for every number of classes per batch, kind and seed.

    Returns ``{"classes_per_batch": (P,), "kinds": kinds, "seeds": (S,), "accuracy": (P, K,
    S)}``. ``progress``, when given, labels one tqdm progress bar over all the runs.
    """
    accuracy = np.full((len(classes_per_batch), len(kinds), len(seeds)), np.nan)
    runs = [(p, classes, k, kind, s, seed) for p, classes in enumerate(classes_per_batch)
            for k, kind in enumerate(kinds) for s, seed in enumerate(seeds)]
    for p, classes, k, kind, s, seed in progress_bar(runs, progress, leave=False):
        model = build_relative_mlp(kind, seed=seed, **(model_options or {}))
        batches = class_grouped_batches(data, batch_size, classes, seed=seed)
        accuracy[p, k, s] = train_on_batches(model, data, batches, steps=steps)
    return {"classes_per_batch": np.array(classes_per_batch), "kinds": tuple(kinds),
            "seeds": np.array(seeds), "accuracy": accuracy}


def non_iid_table(result: dict) -> str:
    """A Markdown table of :func:`train_non_iid`: one row per number of classes per batch, one
    column per kind, the mean test accuracy over the seeds."""
    labels = [RELATIVE_LABELS[kind] for kind in result["kinds"]]
    lines = ["| classes per batch | " + " | ".join(labels) + " |",
             "|---" * (len(labels) + 1) + "|"]
    for classes, runs in zip(result["classes_per_batch"], result["accuracy"], strict=True):
        lines.append(f"| {classes} | " + " | ".join(f"{np.mean(r):.1%}" for r in runs) + " |")
    return "\n".join(lines)


def normalization_noise(values: torch.Tensor, *, batch_size: int,
                        ghost_batch_size: int | None = None, draws: int = 200,
                        seed: int = 0) -> float:
    """How much one example's normalized value depends on the rest of its batch.

    ``draws`` times, example 0 of ``values (n, D)`` is put first in a batch of ``batch_size``
    examples, the others drawn at random without replacement, and the batch goes through BN in
    training mode (:class:`GhostBatchNorm1d` with ghost batches of ``ghost_batch_size`` when
    given, ``bnlib.torch.BatchNorm1d`` otherwise; gamma 1, beta 0). Returns the standard
    deviation of example 0's output over the draws, averaged over the D features.
    """
    if values.dim() != 2 or not 2 <= batch_size <= len(values):
        raise ValueError(f"need values of shape (n, D) and 2 <= batch_size <= n, got shape "
                         f"{tuple(values.shape)} and batch_size {batch_size}")
    num_features = values.shape[1]
    layer = (bnlib.torch.BatchNorm1d(num_features) if ghost_batch_size is None
             else GhostBatchNorm1d(num_features, ghost_batch_size)).to(values.dtype)
    generator = torch.Generator().manual_seed(seed)
    outputs = []
    with torch.no_grad():
        for _ in range(draws):
            others = 1 + torch.randperm(len(values) - 1, generator=generator)[:batch_size - 1]
            outputs.append(layer(values[torch.cat([torch.zeros(1, dtype=torch.long), others])])[0])
    return torch.stack(outputs).std(0).mean().item()


def accuracy_table(result: dict[str, np.ndarray]) -> str:
    """A Markdown table of :func:`train_relatives`: per kind, the mean test accuracy over the
    seeds and its range."""
    lines = ["| normalization | test accuracy (mean) | min to max over the seeds |",
             "|---|---|---|"]
    for kind, runs in zip(result["kinds"], result["accuracy"], strict=True):
        lines.append(f"| {RELATIVE_LABELS[kind]} | {np.mean(runs):.1%} | "
                     f"{np.min(runs):.1%} to {np.max(runs):.1%} |")
    return "\n".join(lines)
