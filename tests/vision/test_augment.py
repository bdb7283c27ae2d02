"""Augmentation: every crop is a window of the padded image, flips mirror about half the batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from crescendo.vision.augment import random_crop, random_hflip


def test_crop_is_a_window_of_the_padded_image():
    images = torch.randint(0, 256, (32, 2, 5, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    out = random_crop(images, 2, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = F.pad(images, (2, 2, 2, 2))
    offsets = set()
    for i in range(32):
        matches = [(dy, dx) for dy in range(5) for dx in range(5) if torch.equal(out[i], padded[i, :, dy:dy + 5, dx:dx + 6])]
        assert matches, f"image {i} is not a window of its padded image"
        offsets.add(matches[0])
    assert len(offsets) > 5  # offsets vary across the batch
    assert torch.equal(random_crop(images, 0, torch.Generator()), images)


def test_flip_mirrors_some_images_and_keeps_the_others():
    images = torch.arange(64 * 4, dtype=torch.uint8).view(64, 1, 2, 2)
    out = random_hflip(images, torch.Generator().manual_seed(0))
    flipped = [torch.equal(out[i], images[i].flip(-1)) for i in range(64)]
    kept = [torch.equal(out[i], images[i]) for i in range(64)]
    assert all(f or k for f, k in zip(flipped, kept)) and 16 < sum(flipped) < 48
