"""Image sets: idx.gz parsing on tiny synthetic files, Fashion-MNIST layout checks, the digits split."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from crescendo.data import images
from crescendo.data.images import (
    FASHION_MNIST_FILES,
    load_digits_dataset,
    load_fashion_mnist,
    load_image_dataset,
    read_idx,
    write_idx,
)
from crescendo.errors import DataError


def make_fashion_dir(root, n_train=12, n_test=5, size=6, seed=0):
    """A Fashion-MNIST-shaped directory of tiny random images; returns (dir, arrays)."""
    rng = np.random.default_rng(seed)
    arrays = {"train": (rng.integers(0, 256, (n_train, size, size), dtype=np.uint8), rng.integers(0, 10, n_train, dtype=np.uint8)),
              "test": (rng.integers(0, 256, (n_test, size, size), dtype=np.uint8), rng.integers(0, 10, n_test, dtype=np.uint8))}
    root.mkdir(parents=True, exist_ok=True)
    for split, (image_file, label_file) in FASHION_MNIST_FILES.items():
        write_idx(root / image_file, arrays[split][0])
        write_idx(root / label_file, arrays[split][1])
    return root, arrays


def test_idx_round_trip(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", a)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), a)
    write_idx(tmp_path / "b.gz", np.array([3, 1, 4], dtype=np.uint8))
    np.testing.assert_array_equal(read_idx(tmp_path / "b.gz"), [3, 1, 4])


def _raw(path, data: bytes):
    with gzip.open(path, "wb") as f:
        f.write(data)
    return path


@pytest.mark.parametrize("data, message", [
    (b"\x00\x00\x08\x02" + (2).to_bytes(4, "big") + b"\x01\x02", "bad idx magic"),  # 2 dimensions: not 801/803
    (b"\x00\x00\x08\x03" + (2).to_bytes(4, "big"), "truncated idx header"),
    (b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + b"\x01\x02", "2 data bytes"),  # header says 5
    (b"\x00\x00\x08\x01" + (1).to_bytes(4, "big") + b"\x01\x02", "more than 1 data bytes"),  # trailing bytes: not inflated further
    (b"\x00\x00", "too short"),
])
def test_malformed_idx_raises_one_line_naming_the_file(tmp_path, data, message):
    path = _raw(tmp_path / "bad.gz", data)
    with pytest.raises(DataError, match=message) as e:
        read_idx(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_truncated_gzip_stream_and_plain_file_raise(tmp_path):
    write_idx(tmp_path / "ok.gz", np.zeros((4, 5, 5), dtype=np.uint8))
    blob = (tmp_path / "ok.gz").read_bytes()
    (tmp_path / "cut.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="cut.gz: not a readable gzip file"):
        read_idx(tmp_path / "cut.gz")
    (tmp_path / "plain.gz").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x01\x07")  # not compressed
    with pytest.raises(DataError, match="not a readable gzip"):
        read_idx(tmp_path / "plain.gz")


def test_fashion_dir_round_trip(tmp_path):
    root, arrays = make_fashion_dir(tmp_path / "fm")
    data = load_fashion_mnist(root)
    assert data.train_images.shape == (12, 1, 6, 6) and data.train_images.dtype == torch.uint8
    assert torch.equal(data.train_images[:, 0], torch.from_numpy(arrays["train"][0]))
    assert torch.equal(data.test_labels, torch.from_numpy(arrays["test"][1]).long())
    x = data.normalize(data.test_images)
    expected = (arrays["test"][0][0].astype(np.float32) / 255 - 0.2860) / 0.3530
    np.testing.assert_allclose(x[0, 0].numpy(), expected, rtol=1e-6)


def test_fashion_count_mismatch_and_missing_file(tmp_path):
    root, _ = make_fashion_dir(tmp_path / "fm")
    write_idx(root / "t10k-labels-idx1-ubyte.gz", np.zeros(4, dtype=np.uint8))  # 5 test images
    with pytest.raises(DataError, match="4 labels for 5 images"):
        load_fashion_mnist(root)
    (root / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz: no such file"):
        load_fashion_mnist(root)
    write_idx(root / "t10k-labels-idx1-ubyte.gz", np.full(5, 10, dtype=np.uint8))
    with pytest.raises(DataError, match="label 10 outside"):
        load_fashion_mnist(root)


def test_images_file_with_labels_layout_is_refused(tmp_path):
    root, _ = make_fashion_dir(tmp_path / "fm")
    write_idx(root / "train-images-idx3-ubyte.gz", np.zeros(12, dtype=np.uint8))
    with pytest.raises(DataError, match="expected 3 dimensions"):
        load_fashion_mnist(root)


def test_missing_directories_name_the_fix(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="does not exist$"):
        load_fashion_mnist(tmp_path / "nope")
    monkeypatch.setattr(images, "FASHION_MNIST_DIR", tmp_path / "default")
    with pytest.raises(DataError) as e:
        load_fashion_mnist()
    assert "dataset-fashion-mnist" in str(e.value) and "--data-dir" in str(e.value)


def test_digits_split_is_deterministic_and_disjoint():
    data = load_digits_dataset()
    assert data.train_images.shape == (1437, 1, 8, 8) and data.test_images.shape == (360, 1, 8, 8)
    assert int(data.train_images.max()) == 16 and data.pixel_max == 16
    again = load_image_dataset("digits")
    assert torch.equal(again.test_images, data.test_images)
    from sklearn.datasets import load_digits

    raw = load_digits()
    assert torch.equal(data.test_images[1, 0], torch.from_numpy(raw.images[5].astype(np.uint8)))  # index 5 -> test
    assert set(data.test_labels.tolist()) == set(range(10))
    with pytest.raises(DataError, match="takes no data directory"):
        load_image_dataset("digits", "/tmp")
    with pytest.raises(DataError, match="unknown image dataset"):
        load_image_dataset("cifar10")


@pytest.mark.skipif(not images.FASHION_MNIST_DIR.is_dir(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist_when_installed():
    data = load_fashion_mnist()
    assert data.train_images.shape == (60000, 1, 28, 28) and data.test_images.shape == (10000, 1, 28, 28)
    assert data.test_labels.bincount().tolist() == [1000] * 10
    x = data.train_images.float() / 255  # the fixed constants are the training set's statistics
    assert abs(x.mean().item() - data.mean[0]) < 1e-3 and abs(x.std().item() - data.std[0]) < 1e-3
