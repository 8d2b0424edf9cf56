"""bnlib.data ships its data with installed packages and never downloads."""

import numpy as np
import pytest

from bnlib import data


def test_digits_split_is_scaled_stratified_and_reproducible():
    split = data.digits(seed=3)
    assert split.x_train.dtype == np.float32 and split.x_train.shape[1] == 64
    assert 0.0 <= split.x_train.min() and split.x_train.max() <= 1.0
    assert len(split.x_test) == pytest.approx(0.25 * 1797, abs=1)
    assert split.num_classes == 10
    np.testing.assert_array_equal(np.bincount(split.y_test) > 40, True)
    np.testing.assert_array_equal(data.digits(seed=3).x_test, split.x_test)


def test_mnist_falls_back_to_digits_with_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.delenv("BNLIB_MNIST_DIR", raising=False)
    with pytest.warns(UserWarning, match="MNIST is not available offline here"):
        split = data.mnist(tmp_path)
    assert split.name == "digits"


def test_mnist_reads_local_idx_files(tmp_path):
    import gzip

    def write(name, array):
        header = bytes([0, 0, 8, array.ndim]) + b"".join(
            d.to_bytes(4, "big") for d in array.shape)
        with gzip.open(tmp_path / name, "wb") as fh:
            fh.write(header + array.astype(np.uint8).tobytes())

    images = np.arange(2 * 28 * 28).reshape(2, 28, 28) % 256
    labels = np.array([3, 7])
    for key, name in data.MNIST_FILES.items():
        write(name, images if key.startswith("x") else labels)
    split = data.mnist(tmp_path)
    assert split.name == "mnist" and split.x_train.shape == (2, 784)
    np.testing.assert_allclose(split.x_train[0, :3] * 255, [0, 1, 2])
    np.testing.assert_array_equal(split.y_test, labels)


def test_bad_test_size():
    with pytest.raises(ValueError, match=r"test_size must be in \(0, 1\), got 1.5"):
        data.digits(test_size=1.5)
