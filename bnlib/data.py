"""Datasets that ship with installed packages, so nothing is downloaded at build or test time.

``digits`` is scikit-learn's 1,797 8x8 handwritten digits. ``mnist`` is an optional larger
data set: it is read from a local copy when one exists and otherwise falls back to digits
with a clear message, because the book and the tests must run offline.
"""

from __future__ import annotations

import gzip
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Split:
    """A train/test split: x arrays are float32 (n, features) in [0, 1], y int64 (n,)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    name: str

    @property
    def num_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_test.max()) + 1)


def digits(seed: int = 0, test_size: float = 0.25) -> Split:
    """scikit-learn's digits, pixels scaled from 0..16 to [0, 1], stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_size < 1.0:
        raise ValueError(f"digits: test_size must be in (0, 1), got {test_size}")
    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_size, random_state=seed, stratify=y
    )
    return Split(x_train, y_train, x_test, y_test, "digits")


MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}


def mnist(directory: str | os.PathLike | None = None, seed: int = 0) -> Split:
    """MNIST from a local folder of the four standard ``.gz`` files, else digits.

    The folder is ``directory`` or ``$BNLIB_MNIST_DIR``. Nothing is downloaded: when the files
    are missing this warns with what to do and returns :func:`digits` instead.
    """
    folder = directory or os.environ.get("BNLIB_MNIST_DIR")
    paths = {key: Path(folder or "") / name for key, name in MNIST_FILES.items()}
    if not folder or not all(p.exists() for p in paths.values()):
        warnings.warn(
            "MNIST is not available offline here (set BNLIB_MNIST_DIR to a folder with "
            f"{', '.join(MNIST_FILES.values())}); using scikit-learn's digits instead.",
            UserWarning,
            stacklevel=2,
        )
        return digits(seed=seed)
    arrays = {key: read_idx(path) for key, path in paths.items()}
    size = arrays["x_train"].shape[0]
    return Split(
        (arrays["x_train"].reshape(size, -1) / 255.0).astype(np.float32),
        arrays["y_train"].astype(np.int64),
        (arrays["x_test"].reshape(arrays["x_test"].shape[0], -1) / 255.0).astype(np.float32),
        arrays["y_test"].astype(np.int64),
        "mnist",
    )


def read_idx(path: Path) -> np.ndarray:
    """Read one gzipped IDX file (the MNIST format: magic, dims, then uint8 data)."""
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)
