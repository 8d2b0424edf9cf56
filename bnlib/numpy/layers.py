"""A batch normalization layer with running statistics, in two conventions.

``convention="pytorch"`` (torch.nn.BatchNorm*): momentum (default 0.1) weights the NEW batch,
    running = (1 - momentum) * running + momentum * batch,
and the running variance stores the UNBIASED batch variance (M / (M - 1) times the biased one),
while the output is always normalized with the biased variance. ``momentum=None`` gives the
cumulative average, factor 1 / num_batches_tracked.

``convention="keras"`` (keras.layers.BatchNormalization): momentum (default 0.99) weights the
OLD value, running = momentum * running + (1 - momentum) * batch, with the BIASED variance.
(Keras' own default eps is 1e-3; pass eps=1e-3 to match it exactly.)
"""

from __future__ import annotations

import numpy as np

from bnlib.numpy._checks import require_dout, require_eps, require_input
from bnlib.numpy.axes import channel_view, reduction_axes
from bnlib.numpy.batchnorm import batchnorm_backward, batchnorm_forward, batchnorm_inference

CONVENTIONS = ("pytorch", "keras")
DEFAULT_MOMENTUM = {"pytorch": 0.1, "keras": 0.99}


class _ConventionDefault:
    """Marker for 'the convention's own default momentum' (0.1 for pytorch, 0.99 for keras)."""

    def __repr__(self) -> str:
        return "0.1 (pytorch) / 0.99 (keras)"


CONVENTION_DEFAULT = _ConventionDefault()


def is_positive_int(value) -> bool:
    """True for a positive Python or NumPy integer (bool excluded)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0


class BatchNorm:
    """Batch normalization layer for (N, C) or (N, C, *spatial) inputs.

    Attributes:
        weight: (C,) float64 gamma (None when ``affine=False``).
        bias: (C,) float64 beta (None when ``affine=False``).
        running_mean: (C,) float64 (None when ``track_running_stats=False``).
        running_var: (C,) float64 (None when ``track_running_stats=False``).
        num_batches_tracked: number of training batches seen (int).
        weight_grad: gradient of gamma set by :meth:`backward`.
        bias_grad: gradient of beta set by :meth:`backward`.
        training: True after :meth:`train`, False after :meth:`eval`.
    """

    def __init__(self, num_features, eps=1e-5, momentum=CONVENTION_DEFAULT, affine=True,
                 track_running_stats=True, convention="pytorch"):
        if convention not in CONVENTIONS:
            raise ValueError(
                f"BatchNorm: convention must be 'pytorch' or 'keras', got {convention!r}"
            )
        if not is_positive_int(num_features):
            raise ValueError(
                f"BatchNorm: num_features must be a positive int, got {num_features!r}"
            )
        if momentum is CONVENTION_DEFAULT:
            momentum = DEFAULT_MOMENTUM[convention]
        if momentum is not None and not isinstance(momentum, (int, float)):
            raise TypeError(f"BatchNorm: momentum must be a float or None, got {momentum!r}")
        self.num_features = int(num_features)
        self.eps = require_eps(eps, "BatchNorm")
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        self.convention = convention
        self.training = True
        self.weight = np.ones(num_features) if affine else None
        self.bias = np.zeros(num_features) if affine else None
        self.weight_grad = self.bias_grad = None
        self.reset_running_stats()
        self._cache = None

    def __repr__(self) -> str:
        return (f"BatchNorm({self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}, "
                f"convention={self.convention!r})")

    def reset_running_stats(self) -> None:
        """running_mean = 0, running_var = 1, num_batches_tracked = 0."""
        if self.track_running_stats:
            self.running_mean = np.zeros(self.num_features)
            self.running_var = np.ones(self.num_features)
        else:
            self.running_mean = self.running_var = None
        self.num_batches_tracked = 0

    def train(self, mode: bool = True) -> BatchNorm:
        """Use batch statistics (and update the running ones) in :meth:`forward`."""
        self.training = bool(mode)
        return self

    def eval(self) -> BatchNorm:
        """Use the running statistics in :meth:`forward`."""
        return self.train(False)

    def __call__(self, x):
        return self.forward(x)

    def _gamma_beta(self):
        if self.affine:
            return self.weight, self.bias
        return np.ones(self.num_features), np.zeros(self.num_features)

    def forward(self, x):
        """Normalize ``x`` (N, C) or (N, C, *spatial); returns out of x's shape and dtype.

        In training mode this also updates the running statistics."""
        require_input(x, "BatchNorm.forward")
        if x.shape[1] != self.num_features:
            raise ValueError(f"BatchNorm.forward: expected {self.num_features} channels "
                             f"(axis 1), got input of shape {x.shape}")
        gamma, beta = self._gamma_beta()
        use_batch_stats = self.training or self.running_mean is None
        if self.training and self.track_running_stats:
            self.num_batches_tracked += 1
        if use_batch_stats:
            out, cache = batchnorm_forward(x, gamma, beta, self.eps)
            if self.training and self.running_mean is not None and x.size:
                self._update_running_stats(cache.mean, cache.var, x.size // x.shape[1])
            self._cache = ("batch", cache)
            return out
        out = batchnorm_inference(x, gamma, beta, self.running_mean, self.running_var, self.eps)
        self._cache = ("running", x)
        return out

    def _factor(self) -> float:
        """Weight of the new batch in the running average."""
        if self.momentum is None:
            return 1.0 / self.num_batches_tracked
        if self.convention == "keras":
            return 1.0 - self.momentum
        return self.momentum

    def _update_running_stats(self, mean, var, count: int) -> None:
        """Blend this batch's mean and variance (over ``count`` values) into the running ones."""
        if self.convention == "pytorch":
            var = var * count / (count - 1)
        factor = self._factor()
        self.running_mean = (1.0 - factor) * self.running_mean + factor * mean
        self.running_var = (1.0 - factor) * self.running_var + factor * var

    def backward(self, dout):
        """Gradient dx (the last input's shape) of the last forward; sets weight_grad and
        bias_grad (C,)."""
        if self._cache is None:
            raise RuntimeError("BatchNorm.backward: call forward first")
        kind, cache = self._cache
        if kind == "batch":
            dx, dgamma, dbeta = batchnorm_backward(dout, cache)
        else:
            dx, dgamma, dbeta = self._inference_backward(dout, cache)
        if self.affine:
            self.weight_grad, self.bias_grad = dgamma, dbeta
        return dx

    def _inference_backward(self, dout, x):
        """In eval mode BN is an affine map per channel, so dx is dout times gamma * invstd."""
        require_dout(dout, x.shape, "BatchNorm.backward")
        gamma, _ = self._gamma_beta()
        invstd = 1.0 / np.sqrt(self.running_var + self.eps)
        axes, ndim = reduction_axes(dout), dout.ndim
        xhat = (x - channel_view(self.running_mean, ndim)) * channel_view(invstd, ndim)
        dx = (dout * channel_view(gamma * invstd, ndim)).astype(dout.dtype, copy=False)
        return dx, (dout * xhat).sum(axis=axes), dout.sum(axis=axes)
