"""Input validation shared by the NumPy implementations.

Every public function checks its arguments here so that a student who passes the wrong thing
gets a message that says what was expected and what arrived.
"""

from __future__ import annotations

import numbers

import numpy as np

FLOAT_DTYPES = (np.float16, np.float32, np.float64)


def require_array(value, name: str, where: str) -> np.ndarray:
    """Return ``value`` if it is a floating-point ndarray, else raise TypeError."""
    if not isinstance(value, np.ndarray):
        raise TypeError(
            f"{where}: {name} must be a numpy.ndarray, got {type(value).__name__}"
        )
    if value.dtype.type not in FLOAT_DTYPES:
        raise TypeError(
            f"{where}: {name} must have a floating dtype (float16, float32 or float64), "
            f"got {value.dtype}"
        )
    return value


def require_input(x, where: str, min_ndim: int = 2) -> np.ndarray:
    """Check the main input: a float array of rank >= ``min_ndim``."""
    require_array(x, "x", where)
    if x.ndim < min_ndim:
        raise ValueError(
            f"{where}: expected x of shape (N, C) or (N, C, *spatial), "
            f"got a {x.ndim}-D array of shape {x.shape}"
        )
    return x


def require_vector(value, name: str, length: int, where: str) -> np.ndarray:
    """Check a per-channel parameter such as gamma, beta or a running statistic."""
    require_array(value, name, where)
    if value.shape != (length,):
        raise ValueError(
            f"{where}: {name} must have shape ({length},), one value per channel, "
            f"got shape {value.shape}"
        )
    return value


def require_shape(value, name: str, shape: tuple[int, ...], where: str) -> np.ndarray:
    """Check that ``value`` is a float array of exactly ``shape``."""
    require_array(value, name, where)
    if value.shape != tuple(shape):
        raise ValueError(f"{where}: {name} must have shape {tuple(shape)}, got {value.shape}")
    return value


def require_eps(eps, where: str, *, allow_zero: bool = False) -> float:
    """eps keeps the square root away from zero, so it must be a positive real number."""
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"{where}: eps must be a real number, got {type(eps).__name__}")
    if eps < 0 or (eps == 0 and not allow_zero) or not np.isfinite(eps):
        bound = "non-negative" if allow_zero else "positive"
        raise ValueError(f"{where}: eps must be {bound}, got {eps}")
    return float(eps)


def require_batchnorm_inputs(x, gamma, beta, eps, where: str) -> float:
    """Check the arguments of a training-mode batch norm forward; return eps as a float."""
    require_input(x, where)
    require_vector(gamma, "gamma", x.shape[1], where)
    require_vector(beta, "beta", x.shape[1], where)
    eps = require_eps(eps, where)
    require_batch_values(x)
    return eps


def require_num_groups(num_groups, channels: int, where: str) -> int:
    """Group norm splits the C channels into num_groups equal groups (torch's wording)."""
    if isinstance(num_groups, bool) or not isinstance(num_groups, (int, np.integer)):
        raise TypeError(f"{where}: num_groups must be an int, got {type(num_groups).__name__}")
    if num_groups <= 0 or channels % num_groups:
        raise ValueError(
            f"{where}: num_channels ({channels}) must be divisible by num_groups ({num_groups})"
        )
    return int(num_groups)


def require_cache(cache, kind: type, forward: str, where: str):
    """A backward pass takes the cache its own forward returned."""
    if not isinstance(cache, kind):
        raise TypeError(f"{where}: cache must come from {forward}, got {type(cache).__name__}")
    return cache


def require_dout(dout, shape: tuple[int, ...], where: str) -> np.ndarray:
    """The upstream gradient: a float array of the forward input's shape."""
    require_array(dout, "dout", where)
    if dout.shape != tuple(shape):
        raise ValueError(f"{where}: dout must have the input's shape {tuple(shape)}, "
                         f"got {dout.shape}")
    return dout


def require_batch_values(x: np.ndarray) -> None:
    """Training needs at least two values per channel (torch's wording)."""
    per_channel = x.size // x.shape[1] if x.shape[1] else 0
    if per_channel == 1:
        raise ValueError(
            "Expected more than 1 value per channel when training, "
            f"got input size {tuple(x.shape)}"
        )


def compute_dtype(dtype: np.dtype) -> np.dtype:
    """float16 is computed in float32; float32 and float64 are computed as they are."""
    return np.dtype(np.float32) if dtype == np.float16 else np.dtype(dtype)
