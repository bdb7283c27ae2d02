"""Top-1 accuracy of an image classifier (the metric M of the vision protocols, in percent).

Example:
    >>> model = torch.nn.Flatten()  # "logits" = the pixels: class = index of the brightest pixel
    >>> images = torch.eye(4).view(4, 1, 2, 2)
    >>> accuracy(model, images, torch.tensor([0, 1, 2, 0])).correct
    3
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import DataError


@dataclass(frozen=True)
class AccuracyResult:
    accuracy: float  # top-1, in percent (100 * correct / total)
    correct: int
    total: int
    seconds: float
    per_image: torch.Tensor | None = field(default=None, compare=False)  # (N,) bool: image i classified right


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> AccuracyResult:
    """Share of `images` (N, C, H, W), already normalised, whose argmax logit equals `labels` (N,).

    Runs in eval mode without gradients on the device of the model's first parameter (CPU for a model
    without parameters), batch by batch; the model's training flag is restored afterwards.
    """
    if images.shape[0] != labels.shape[0] or labels.dim() != 1:
        raise DataError(f"accuracy: {images.shape[0]} images but labels of shape {tuple(labels.shape)}")
    if images.shape[0] == 0:
        raise DataError("accuracy: no images")
    if batch_size < 1:
        raise DataError(f"accuracy: batch_size must be >= 1, got {batch_size}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else images.dtype
    was_training = model.training
    model.eval()
    hits = []
    start = time.perf_counter()
    try:
        with torch.no_grad():
            for i in range(0, images.shape[0], batch_size):
                logits = model(images[i:i + batch_size].to(device, dtype))  # (B, classes)
                hits.append(logits.argmax(dim=-1).cpu() == labels[i:i + batch_size])
    finally:
        model.train(was_training)
    per_image = torch.cat(hits)
    correct, total = int(per_image.sum()), int(images.shape[0])
    return AccuracyResult(100.0 * correct / total, correct, total, time.perf_counter() - start, per_image)
