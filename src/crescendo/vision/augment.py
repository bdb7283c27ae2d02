"""Light training augmentation as tensor ops on a batch, every draw from an explicit generator.

Example:
    >>> g = torch.Generator().manual_seed(0)
    >>> random_crop(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), padding=1, generator=g).shape
    torch.Size([4, 1, 8, 8])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Pad (N, C, H, W) by `padding` zeros on each side and cut an H x W window at a random offset per image."""
    if padding == 0:
        return images
    n, _, h, w = images.shape
    padded = F.pad(images, (padding,) * 4)  # (N, C, H + 2p, W + 2p)
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]  # (N, H, 1)
    cols = (dx[:, None] + torch.arange(w))[:, None, :]  # (N, 1, W)
    batch = torch.arange(n)[:, None, None]
    return padded[batch, :, rows, cols].permute(0, 3, 1, 2).contiguous()  # (N, H, W, C) -> (N, C, H, W)


def random_hflip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(images.shape[0], generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)
