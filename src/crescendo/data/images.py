"""Labelled image sets for the vision experiments: Fashion-MNIST (idx.gz files) and scikit-learn's digits.

- `fashion-mnist`: 60,000 training and 10,000 test images, 28x28 grey, 10 classes, read from the four
  idx.gz files of Zalando's release in a local directory (default: where Debian's
  `dataset-fashion-mnist` package puts them). Parsed here with gzip + numpy: no torchvision.
- `digits`: the 1,797 8x8 images embedded in scikit-learn (`load_digits`, pixel values 0..16), split
  deterministically: every fifth image (index % 5 == 0, 360 images) is the test set, the rest (1,437)
  the training set. Tiny, for tests and smoke runs.

Images are kept as uint8 tensors (N, C, H, W) and normalised on use with fixed per-dataset constants,
so every consumer (training, evaluation, calibration) sees the same floats.

Example:
    >>> data = load_image_dataset("digits")
    >>> data.train_images.shape, data.test_images.shape
    (torch.Size([1437, 1, 8, 8]), torch.Size([360, 1, 8, 8]))
    >>> data.normalize(data.test_images[:2]).dtype
    torch.float32
"""

from __future__ import annotations

import gzip
import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"
FASHION_MNIST_FILES = {  # split -> (images file, labels file), the names of Zalando's release
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
IMAGE_DATASETS = ("fashion-mnist", "digits")

# Mean and std of the training pixels scaled to [0, 1], measured once and fixed so that a saved model's
# normalisation never depends on which images happen to be loaded.
FASHION_MNIST_NORM = ((0.2860,), (0.3530,))
DIGITS_NORM = ((0.3052,), (0.3763,))
DIGITS_TEST_EVERY = 5  # index % 5 == 0 -> test

_IDX_MAGIC = {1: 0x00000801, 3: 0x00000803}  # unsigned bytes, 1 (labels) or 3 (images) dimensions
# The most an idx file may hold once inflated: Fashion-MNIST's largest is 47,040,016 bytes (60,000 images of
# 28x28); twice that leaves room for a larger release, far below what would strain memory.
MAX_IDX_BYTES = 96 << 20


@dataclass(frozen=True, eq=False)
class ImageDataset:
    """A training and a test split of uint8 images (N, C, H, W) with int64 labels, and how to normalise them.

    `normalize` maps pixels to floats: (pixels / pixel_max - mean[c]) / std[c] per channel c.
    """

    name: str
    train_images: torch.Tensor  # (N_train, C, H, W) uint8
    train_labels: torch.Tensor  # (N_train,) int64
    test_images: torch.Tensor  # (N_test, C, H, W) uint8
    test_labels: torch.Tensor  # (N_test,) int64
    num_classes: int
    pixel_max: float  # the value of a white pixel: 255 for Fashion-MNIST, 16 for digits
    mean: tuple[float, ...]  # per channel, of pixels / pixel_max
    std: tuple[float, ...]
    classes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for split, images, labels in (("train", self.train_images, self.train_labels),
                                      ("test", self.test_images, self.test_labels)):
            if images.dim() != 4 or images.dtype != torch.uint8:
                raise DataError(f"{self.name} {split}: images must be a uint8 (N, C, H, W) tensor, "
                                f"got {images.dtype} {tuple(images.shape)}")
            if labels.shape != (images.shape[0],):
                raise DataError(f"{self.name} {split}: {images.shape[0]} images but labels of shape "
                                f"{tuple(labels.shape)}")
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
                raise DataError(f"{self.name} {split}: labels outside 0..{self.num_classes - 1}")
        if self.train_images.shape[1:] != self.test_images.shape[1:]:
            raise DataError(f"{self.name}: train images {tuple(self.train_images.shape[1:])} and test images "
                            f"{tuple(self.test_images.shape[1:])} differ in shape")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise DataError(f"{self.name}: mean/std need one value per channel ({self.channels})")

    @property
    def channels(self) -> int:
        return int(self.train_images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train_images.shape[2])

    def normalization(self) -> dict:
        """The constants `normalize` uses, for a saved model's metadata."""
        return {"pixel_max": self.pixel_max, "mean": list(self.mean), "std": list(self.std)}

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) -> float32 (N, C, H, W) with this dataset's fixed constants."""
        return normalize_images(images, self.pixel_max, self.mean, self.std)


def normalize_images(images: torch.Tensor, pixel_max: float, mean, std) -> torch.Tensor:
    """(images / pixel_max - mean[c]) / std[c], float32, channels on dimension 1."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (images.to(torch.float32) / pixel_max - m) / s


# -- idx files -----------------------------------------------------------------------------------
def read_idx(path: str | Path) -> np.ndarray:
    """The uint8 array stored in one gzip-compressed idx file (LeCun's MNIST format).

    Layout: a big-endian header (magic 0x00000801 for 1 dimension or 0x00000803 for 3, then one
    uint32 per dimension), then the bytes in C order. Anything else raises DataError naming the file.
    The stream is inflated only as far as the header says, and never beyond MAX_IDX_BYTES: a file
    whose header asks for more, or that holds more than its header says, is refused without
    inflating the rest.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        with gzip.open(path, "rb") as f:
            head = bytes(_read_exactly(f, 4))
            magic = int.from_bytes(head, "big") if len(head) == 4 else None
            ndim = next((n for n, m in _IDX_MAGIC.items() if m == magic), None)
            if magic is None:
                raise DataError(f"{path}: {len(head)} bytes, too short for an idx header")
            if ndim is None:
                raise DataError(f"{path}: bad idx magic number 0x{magic:08x} (expected 0x00000801 or 0x00000803)")
            dims = bytes(_read_exactly(f, 4 * ndim))
            if len(dims) < 4 * ndim:
                raise DataError(f"{path}: truncated idx header ({4 + len(dims)} of {4 + 4 * ndim} bytes)")
            shape = tuple(int.from_bytes(dims[4 * i: 4 * i + 4], "big") for i in range(ndim))
            expected = math.prod(shape)
            if expected > MAX_IDX_BYTES:
                raise DataError(f"{path}: the header's shape {shape} needs {expected} bytes, more than the "
                                f"{MAX_IDX_BYTES} an image set crescendo reads may hold")
            data = _read_exactly(f, expected)
            extra = len(f.read(1))  # one byte past the header's shape is enough to refuse the file
    except (OSError, EOFError, zlib.error) as e:  # not gzip, or a truncated / corrupt stream
        raise DataError(f"{path}: not a readable gzip file ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if len(data) != expected or extra:
        found = f"{len(data)}" if len(data) < expected else f"more than {expected}"
        raise DataError(f"{path}: {found} data bytes, but the header's shape {shape} needs {expected}")
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def _read_exactly(f, n: int) -> bytearray:
    """Up to `n` bytes of a gzip stream, fewer only at its end (read into one buffer, in bounded chunks)."""
    buffer = bytearray(n)
    view, filled = memoryview(buffer), 0
    while filled < n:
        got = f.readinto(view[filled: filled + min(n - filled, 1 << 22)])
        if not got:
            break
        filled += got
    view.release()
    del buffer[filled:]
    return buffer


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write a uint8 array of 1 or 3 dimensions as a gzip-compressed idx file (for tests and fixtures)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    if array.ndim not in _IDX_MAGIC:
        raise DataError(f"idx files here hold 1 or 3 dimensions, got {array.ndim}")
    header = _IDX_MAGIC[array.ndim].to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def _read_split(directory: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    images_file, labels_file = (directory / name for name in FASHION_MNIST_FILES[split])
    images, labels = read_idx(images_file), read_idx(labels_file)
    if images.ndim != 3:
        raise DataError(f"{images_file}: expected 3 dimensions (count, rows, columns), got {images.ndim}")
    if labels.ndim != 1:
        raise DataError(f"{labels_file}: expected 1 dimension (count), got {labels.ndim}")
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{labels_file}: {labels.shape[0]} labels for {images.shape[0]} images in {images_file.name}")
    if images.shape[0] == 0:
        raise DataError(f"{images_file}: holds no images")
    if labels.max() >= len(FASHION_MNIST_CLASSES):
        raise DataError(f"{labels_file}: label {int(labels.max())} outside 0..{len(FASHION_MNIST_CLASSES) - 1}")
    return (torch.from_numpy(images.copy()).unsqueeze(1),  # (N, 1, H, W); copy: frombuffer is read-only
            torch.from_numpy(labels.astype(np.int64)))


def load_fashion_mnist(data_dir: str | Path | None = None) -> ImageDataset:
    """Fashion-MNIST from `data_dir` (default /usr/share/datasets/fashion-mnist), both splits."""
    directory = FASHION_MNIST_DIR if data_dir is None else Path(data_dir)
    if not directory.is_dir():
        hint = (f": install Debian's {FASHION_MNIST_PACKAGE} package (apt-get install {FASHION_MNIST_PACKAGE}) "
                f"or give --data-dir DIR holding the four idx.gz files") if data_dir is None else ""
        what = "is a file, not a directory" if directory.exists() else "does not exist"
        raise DataError(f"Fashion-MNIST directory {directory} {what}{hint}")
    train_images, train_labels = _read_split(directory, "train")
    test_images, test_labels = _read_split(directory, "test")
    if train_images.shape[1:] != test_images.shape[1:]:
        raise DataError(f"{directory}: train images are {tuple(train_images.shape[2:])} but test images "
                        f"{tuple(test_images.shape[2:])}")
    mean, std = FASHION_MNIST_NORM
    return ImageDataset("fashion-mnist", train_images, train_labels, test_images, test_labels,
                        num_classes=len(FASHION_MNIST_CLASSES), pixel_max=255.0, mean=mean, std=std,
                        classes=FASHION_MNIST_CLASSES)


def load_digits_dataset() -> ImageDataset:
    """scikit-learn's embedded 8x8 digits, split by index (every fifth image is a test image)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("the digits dataset needs scikit-learn: pip install 'crescendo[vision]'") from None
    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.uint8)).unsqueeze(1)  # (1797, 1, 8, 8), values 0..16
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    test = torch.arange(len(labels)) % DIGITS_TEST_EVERY == 0
    mean, std = DIGITS_NORM
    return ImageDataset("digits", images[~test].contiguous(), labels[~test].contiguous(),
                        images[test].contiguous(), labels[test].contiguous(), num_classes=10, pixel_max=16.0,
                        mean=mean, std=std, classes=tuple(str(d) for d in range(10)))


def load_image_dataset(name: str, data_dir: str | Path | None = None) -> ImageDataset:
    """One of IMAGE_DATASETS by name; `data_dir` only applies to Fashion-MNIST."""
    if name == "fashion-mnist":
        return load_fashion_mnist(data_dir)
    if name == "digits":
        if data_dir is not None:
            raise DataError("the digits dataset is embedded in scikit-learn and takes no data directory")
        return load_digits_dataset()
    raise DataError(f"unknown image dataset {name!r}; known: {', '.join(IMAGE_DATASETS)}")
