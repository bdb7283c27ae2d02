"""The training loop shared by the stages that learn on calibration windows (finetune, lora).

Causal-LM loss on calibration windows (labels = inputs, the protocol's own loss), AdamW with no
weight decay and a constant learning rate (the setting Basis Sharing's LoRA recipe uses), windows
visited in a seeded random order, one epoch after another. Everything that is not being trained
is frozen for the duration and its `requires_grad` flags restored afterwards; the model stays in
eval mode (no dropout), so a run is a deterministic function of its seed.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import ConfigError


@dataclass
class TrainReport:
    """What a training run did: its steps and the loss of each (calibration windows, not held out)."""

    steps: int
    losses: list[float] = field(default_factory=list)

    @property
    def first_loss(self) -> float:
        return self.losses[0] if self.losses else math.nan

    @property
    def last_loss(self) -> float:
        """Mean loss of the last tenth of the steps (one step's loss is noisy)."""
        tail = self.losses[-max(1, len(self.losses) // 10):]
        return sum(tail) / len(tail) if tail else math.nan


@contextlib.contextmanager
def only_trainable(model: nn.Module, parameters: Sequence[nn.Parameter]) -> Iterator[None]:
    """Within the block, gradients flow only to `parameters`; every flag is restored on exit."""
    saved = [(p, p.requires_grad) for p in model.parameters()]
    chosen = {id(p) for p in parameters}
    try:
        for p, _ in saved:
            p.requires_grad_(id(p) in chosen)
        for p in parameters:
            p.requires_grad_(True)
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


def window_batches(calibration: Sequence[torch.Tensor], steps: int, batch: int, seed: int) -> Iterator[torch.Tensor]:
    """`steps` batches of `batch` calibration windows (1, L) each, as (batch, L): a seeded permutation
    of the windows, then the next one when it runs out."""
    if not calibration:
        raise ConfigError("training needs calibration windows")
    lengths = {int(w.shape[-1]) for w in calibration}
    if len(lengths) != 1:
        raise ConfigError(f"calibration windows must share one length to be batched, got {sorted(lengths)}")
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    for _ in range(steps):
        picked = []
        for _ in range(batch):
            if not order:
                order = torch.randperm(len(calibration), generator=generator).tolist()
            picked.append(calibration[order.pop()])
        yield torch.cat([w.reshape(1, -1) for w in picked])


def train_(
    model: nn.Module,
    parameters: Sequence[nn.Parameter],
    calibration: Sequence[torch.Tensor],
    *,
    steps: int,
    lr: float,
    batch: int = 1,
    seed: int = 0,
    optimized: Sequence[torch.Tensor] | None = None,
    before_step: Callable[[], None] | None = None,
    after_step: Callable[[], None] | None = None,
    progress: bool = True,
    desc: str = "train",
) -> TrainReport:
    """Minimise the causal-LM loss of `model` on calibration windows, in place.

    parameters: what receives gradients (everything else is frozen for the duration).
    optimized: what AdamW updates (default: `parameters`). A stage with master weights passes its
        float copies here and moves the gradients onto them in `before_step` (straight-through).
    before_step / after_step: called around each optimizer step (gradient masking, re-projection).
    """
    if steps < 1:
        raise ConfigError(f"training needs steps >= 1, got {steps}")
    targets = list(optimized if optimized is not None else parameters)
    optimizer = torch.optim.AdamW(targets, lr=lr, weight_decay=0.0)
    report = TrainReport(steps)
    device = next(model.parameters()).device
    batches = window_batches(calibration, steps, batch, seed)
    bar = tqdm(batches, total=steps, desc=desc, disable=not progress, leave=False)
    with only_trainable(model, parameters), torch.enable_grad():
        for ids in bar:
            ids = ids.to(device)
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
            if not torch.isfinite(loss):
                raise ConfigError(f"{desc}: the loss became {loss.item()} at step {len(report.losses) + 1}; "
                                  "lower the learning rate")
            loss.backward()
            if before_step is not None:
                before_step()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            for p in parameters:
                p.grad = None
            if after_step is not None:
                after_step()
            report.losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{report.losses[-1]:.3f}")
    return report
