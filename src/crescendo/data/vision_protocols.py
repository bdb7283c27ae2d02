"""Named protocols for image classifiers: which test images M is measured on, how calibration is drawn.

- `fmnist-v1`: M = top-1 accuracy in percent on the 10,000 Fashion-MNIST test images. Calibration:
  512 training images, indices drawn with `random.Random(seed).sample(range(60000), 512)` (seed 0 by
  default), kept in the drawn order and cut into batches of 32.
- `digits-v1`: the same on scikit-learn's digits (360 test images, 64 calibration images in
  batches of 32); for tests and smoke runs.

Images are normalised with the dataset's fixed constants (crescendo.data.images), so the tensors are
what a reference model trained on that dataset takes. Calibration comes as a list of (B, C, H, W)
batches, the counterpart of the language protocols' list of token windows.

They live in their own registry: `get_protocol` of crescendo.data keeps serving the language protocols,
and a name is refused here when a language protocol already has it.

Example:
    >>> get_vision_protocol("fmnist-v1").describe()
    'fmnist-v1 (dataset fashion-mnist, top-1 accuracy % on all 10000 test images, 512 calibration images in batches of 32, seed 0)'
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import torch

from ..errors import DataError
from .images import IMAGE_DATASETS, ImageDataset, load_image_dataset
from .protocols import list_protocols


@dataclass(frozen=True)
class VisionProtocol:
    """Top-1 accuracy on a dataset's whole test split; calibration = `n_calibration` training images."""

    name: str
    dataset: str  # one of IMAGE_DATASETS
    n_calibration: int  # calibration images, drawn without replacement from the training split
    calibration_batch_size: int = 32  # images per calibration batch (the last batch may be smaller)
    seed: int = 0  # seeds random.Random for the calibration draw
    margin: float = 0.1  # equivalence margin delta: two runs closer than 0.1 accuracy points are "equivalent"

    def __post_init__(self) -> None:
        if not self.name:
            raise DataError("a protocol needs a name")
        if self.dataset not in IMAGE_DATASETS:
            raise DataError(f"protocol {self.name!r}: unknown dataset {self.dataset!r}; known: {', '.join(IMAGE_DATASETS)}")
        if isinstance(self.margin, bool) or not isinstance(self.margin, (int, float)) or \
                not 0 <= self.margin <= 100:
            raise DataError(f"protocol {self.name!r}: margin must be accuracy points in [0, 100], got {self.margin!r}")
        for field, low in (("n_calibration", 0), ("calibration_batch_size", 1), ("seed", 0)):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise DataError(f"protocol {self.name!r}: {field} must be an integer >= {low}, got {value!r}")

    def describe(self) -> str:
        """One line naming every setting, for reports."""
        n_test = {"fashion-mnist": "10000", "digits": "360"}.get(self.dataset, "the")
        return (f"{self.name} (dataset {self.dataset}, top-1 accuracy % on all {n_test} test images, "
                f"{self.n_calibration} calibration images in batches of {self.calibration_batch_size}, seed {self.seed})")

    def calibration_indices(self, n_train: int) -> list[int]:
        """Indices of the calibration images among `n_train` training images: random.Random(seed).sample."""
        if self.n_calibration > n_train:
            raise DataError(f"protocol {self.name!r}: {self.n_calibration} calibration images requested, "
                            f"the training split has {n_train}")
        return random.Random(self.seed).sample(range(n_train), self.n_calibration)

    def prepare(self, data: ImageDataset | None = None, data_dir: str | os.PathLike | None = None) -> VisionProtocolData:
        """Normalised test images and labels, and the calibration batches. `data` skips loading the dataset."""
        if data is None:
            data = load_image_dataset(self.dataset, data_dir)
        elif data.name != self.dataset:
            raise DataError(f"protocol {self.name!r} is defined on {self.dataset}, got the {data.name} dataset")
        index = torch.tensor(self.calibration_indices(data.train_images.shape[0]), dtype=torch.long)
        calibration = data.normalize(data.train_images[index])  # (n_calibration, C, H, W)
        batches = list(calibration.split(self.calibration_batch_size)) if len(index) else []
        return VisionProtocolData(self, data.normalize(data.test_images), data.test_labels, batches,
                                  data.train_labels[index], data.normalization())


@dataclass(frozen=True, eq=False)
class VisionProtocolData:
    protocol: VisionProtocol
    test_images: torch.Tensor  # (N_test, C, H, W) float32, normalised
    test_labels: torch.Tensor  # (N_test,) int64
    calibration: list[torch.Tensor]  # batches of (B, C, H, W) float32, normalised
    calibration_labels: torch.Tensor  # (n_calibration,) int64, in the order of the batches (label-free methods ignore it)
    normalization: dict  # {"pixel_max", "mean", "std"} used for both


_REGISTRY: dict[str, VisionProtocol] = {}


def register_vision_protocol(protocol: VisionProtocol) -> VisionProtocol:
    """Add a vision protocol; a name already taken here or by a language protocol raises DataError."""
    if protocol.name in _REGISTRY or protocol.name in list_protocols():
        raise DataError(f"protocol {protocol.name!r} is already registered")
    _REGISTRY[protocol.name] = protocol
    return protocol


def list_vision_protocols() -> list[str]:
    return sorted(_REGISTRY)


def get_vision_protocol(name: str) -> VisionProtocol:
    if name not in _REGISTRY:
        raise DataError(f"unknown vision protocol {name!r}; known: {', '.join(list_vision_protocols())}")
    return _REGISTRY[name]


FMNIST_V1 = register_vision_protocol(VisionProtocol("fmnist-v1", "fashion-mnist", 512))
DIGITS_V1 = register_vision_protocol(VisionProtocol("digits-v1", "digits", 64))
