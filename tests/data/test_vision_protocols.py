"""Vision protocols: calibration draw, batches, normalisation; the language protocols are untouched."""

from __future__ import annotations

import random

import pytest
import torch
from data.test_images import make_fashion_dir

from crescendo.data import get_protocol, list_protocols
from crescendo.data.images import load_fashion_mnist
from crescendo.data.vision_protocols import (
    VisionProtocol,
    get_vision_protocol,
    list_vision_protocols,
    register_vision_protocol,
)
from crescendo.errors import DataError


def test_digits_v1_prepare():
    protocol = get_vision_protocol("digits-v1")
    prepared = protocol.prepare()
    assert prepared.test_images.shape == (360, 1, 8, 8) and prepared.test_images.dtype == torch.float32
    assert [b.shape for b in prepared.calibration] == [(32, 1, 8, 8), (32, 1, 8, 8)]
    from crescendo.data.images import load_digits_dataset

    data = load_digits_dataset()
    index = random.Random(0).sample(range(1437), 64)  # the documented draw
    assert torch.equal(torch.cat(prepared.calibration), data.normalize(data.train_images[index]))
    assert torch.equal(prepared.calibration_labels, data.train_labels[index])
    assert torch.equal(prepared.test_images, data.normalize(data.test_images))
    other = VisionProtocol("digits-seed1", "digits", 64, seed=1).prepare(data)
    assert not torch.equal(torch.cat(other.calibration), torch.cat(prepared.calibration))


def test_fmnist_v1_on_a_synthetic_directory(tmp_path):
    root, _ = make_fashion_dir(tmp_path / "fm", n_train=600, n_test=7, size=4)
    protocol = get_vision_protocol("fmnist-v1")
    assert (protocol.dataset, protocol.n_calibration, protocol.seed) == ("fashion-mnist", 512, 0)
    prepared = protocol.prepare(data_dir=root)
    assert len(prepared.calibration) == 16 and sum(len(b) for b in prepared.calibration) == 512
    assert prepared.test_labels.shape == (7,)
    small = load_fashion_mnist(make_fashion_dir(tmp_path / "small", n_train=100)[0])
    with pytest.raises(DataError, match="512 calibration images requested, the training split has 100"):
        protocol.prepare(small)
    with pytest.raises(DataError, match="defined on digits, got the fashion-mnist dataset"):
        get_vision_protocol("digits-v1").prepare(small)


def test_registry_and_language_protocols_coexist():
    assert {"fmnist-v1", "digits-v1"} <= set(list_vision_protocols())
    assert "fmnist-v1" not in list_protocols() and get_protocol("sotu-v1-quick").seqlen == 512
    with pytest.raises(DataError, match="already registered"):
        register_vision_protocol(VisionProtocol("sotu-v1-quick", "digits", 8))
    with pytest.raises(DataError, match="already registered"):
        register_vision_protocol(VisionProtocol("digits-v1", "digits", 8))
    with pytest.raises(DataError, match="unknown vision protocol"):
        get_vision_protocol("cifar-v1")
    with pytest.raises(DataError, match="n_calibration"):
        VisionProtocol("x", "digits", -1)
    with pytest.raises(DataError, match="unknown dataset"):
        VisionProtocol("x", "mnist", 8)
