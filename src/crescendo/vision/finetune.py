"""A short fine-tune of a partly compressed classifier that keeps every earlier stage's invariants.

Between the stages of an iterative bit allocation (003, Appendix C: HAWQ-V2 "allocate bit-widths
iteratively ... and train" after each step) the model is trained briefly. Layers already quantized
are frozen (their weights stay exactly on their recorded grids, as in incremental network
quantization, Zhou et al. 2017), pruned weights are held at zero, and everything else trains: the
layers not yet quantized, batch norms (running statistics included), stem and head. So a later
stage's quantizer meets weights the fine-tune moved, and the order of the stages matters.

Example:
    >>> history = finetune_(model, data, epochs=0.1, seed=0)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..data.images import ImageDataset
from ..errors import ConfigError
from ..models.adapters import get_weight, set_weight_
from ..state import state_of
from .augment import random_crop, random_hflip


@dataclass(frozen=True)
class FinetuneConfig:
    """SGD with Nesterov momentum and a cosine decay to zero over the fine-tune's own steps."""

    epochs: float  # passes over the training split; fractions allowed (0.1 = a tenth of the images)
    batch_size: int = 128
    lr: float = 0.01  # a tenth of the reference ResNet's peak rate
    weight_decay: float = 5e-4
    crop_padding: int = 2
    hflip: bool = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.epochs) and 0 < self.epochs <= 100):
            raise ConfigError(f"fine-tune epochs must be in (0, 100], got {self.epochs}")
        if isinstance(self.batch_size, bool) or self.batch_size < 1 or not 0 < self.lr < 10:
            raise ConfigError(f"bad fine-tune settings: batch size {self.batch_size}, lr {self.lr}")


def finetune_(model: torch.nn.Module, data: ImageDataset, config: FinetuneConfig, seed: int = 0) -> dict:
    """Train `model` in place on `data`'s training split for `config.epochs`; returns {"steps", "loss"}.

    Quantized layers (records with a grid) are frozen; masked weights are re-zeroed after every step.
    Draws (order, crops, flips) come from a generator seeded with `seed`."""
    records = state_of(model).records
    modules = dict(model.named_modules())
    frozen = {id(modules[n].weight) for n, r in records.items() if r.grid is not None and n in modules}
    masked = [(modules[n], r.mask) for n, r in records.items() if r.grid is None and r.mask is not None]
    trainable = [p for p in model.parameters() if id(p) not in frozen]
    flags = {id(p): p.requires_grad for p in model.parameters()}
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    n = data.train_images.shape[0]
    steps = max(1, math.ceil(config.epochs * n / config.batch_size))
    decay = [p for p in trainable if p.dim() > 1]
    keep = [p for p in trainable if p.dim() <= 1]
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": config.weight_decay},
                                 {"params": keep, "weight_decay": 0.0}], lr=config.lr, momentum=0.9, nesterov=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    was_training = model.training
    losses = []
    try:
        for p in model.parameters():
            p.requires_grad_(id(p) not in frozen)
        model.train()
        order = torch.randperm(n, generator=generator)
        for step in range(steps):
            start = (step * config.batch_size) % n
            if start + config.batch_size > n:
                order = torch.randperm(n, generator=generator)
                start = 0
            index = order[start:start + config.batch_size]
            images = random_crop(data.train_images[index], config.crop_padding, generator)
            if config.hflip:
                images = random_hflip(images, generator)
            loss = F.cross_entropy(model(data.normalize(images).to(device)), data.train_labels[index].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            with torch.no_grad():
                for module, mask in masked:
                    set_weight_(module, get_weight(module).masked_fill(mask, 0.0))
            losses.append(float(loss.detach()))
    finally:
        for p in model.parameters():
            p.requires_grad_(flags[id(p)])
        model.train(was_training)
    return {"steps": steps, "loss": sum(losses[-20:]) / len(losses[-20:])}
