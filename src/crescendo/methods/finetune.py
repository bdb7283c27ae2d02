"""Sparsity-aware fine-tuning (`finetune`): train the compressed weights, keep every mask and grid.

`finetune:steps=200,lr=1e-5` minimises the causal-LM loss on calibration windows over the weights of
every target linear (all decoder-block linears by default), as Harma et al. (seed 002) fine-tune with
float master weights: each trained linear has a float32 master copy that the optimizer updates; the
model's weight is the master put back on its recorded grid (the grid parameters an earlier
quantizer recorded, unchanged) with pruned positions at exactly zero. The gradient of the model's
weight is handed to the master unchanged except that pruned positions get none (straight-through
estimator). So after any number of steps every quantized weight lies on its recorded grid and every
pruned weight is exactly zero, while weights no stage compressed move freely. Activation and KV
fake-quantizers pass gradients straight through as well.

Unlike quantization-aware training from the dense model, the masters start from the weights the
earlier stages left, i.e. on their grids: a quantized weight changes only once its master has moved
half a grid step, so a small lr over few steps can leave a quantized model exactly as it was. The
stage reports `changed_fraction`, the fraction of unpruned trained weights whose value changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..engine.training import train_
from ..errors import ConfigError
from ..models.adapters import get_weight, is_transposed, select_targets, set_weight_
from ..state import LinearRecord, state_of
from ..types import Targets
from . import args as A
from .base import MethodConfig, MethodSpec, register_method


@dataclass(frozen=True)
class TrainingSettings:
    """How a training stage learns: steps of `batch` calibration windows, AdamW at a constant `lr`."""

    steps: int = 200
    lr: float = 1e-5
    batch: int = 1  # calibration windows per step
    seed: int = 0  # order in which the windows are visited

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")
        if not 0 < self.lr < 1:
            raise ConfigError(f"lr must be in (0, 1), got {self.lr}")
        if self.batch < 1:
            raise ConfigError(f"batch must be >= 1, got {self.batch}")
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")

    def args(self, default_lr: float) -> list[str]:
        """Canonical text of the settings that differ from the defaults."""
        return ([f"steps={self.steps}"] if self.steps != 200 else []) + (
            [f"lr={self.lr:g}"] if self.lr != default_lr else []) + (
            [f"batch={self.batch}"] if self.batch != 1 else []) + ([f"seed={self.seed}"] if self.seed else [])

    @classmethod
    def parse(cls, keyword: dict[str, str], default_lr: float) -> TrainingSettings:
        """`steps=`, `lr=`, `batch=`, `seed=`, consumed from the stage's keyword arguments."""
        values = {"lr": default_lr}
        for key in ("steps", "batch", "seed"):
            if key in keyword:
                values[key] = A.parse_int(keyword.pop(key), key)
        if "lr" in keyword:
            values["lr"] = A.parse_float(keyword.pop("lr"), "lr")
        return cls(**values)


FINETUNE_LR = 1e-5


@dataclass(frozen=True)
class FinetuneConfig(MethodConfig):
    """Train the weights of the target linears on calibration windows, masks and grids kept."""

    training: TrainingSettings = field(default_factory=lambda: TrainingSettings(lr=FINETUNE_LR))
    target: Targets = field(default_factory=Targets)

    @property
    def targets(self) -> Targets:
        return self.target

    def text(self) -> str:
        args = self.training.args(FINETUNE_LR) + self.target.args()
        return "finetune" + (":" + ",".join(args) if args else "")

    @classmethod
    def parse(cls, name: str, positional: list[str], keyword: dict[str, str]) -> FinetuneConfig:
        target = A.pop_targets(keyword)
        training = TrainingSettings.parse(keyword, FINETUNE_LR)
        A.reject_leftovers(name, positional, keyword)
        return cls(training=training, target=target)


class MasterWeight:
    """The float32 master copy of one linear's weight, (out, in), and how it maps onto the model."""

    def __init__(self, module: nn.Module, record: LinearRecord | None) -> None:
        self.module = module
        self.mask = record.mask if record is not None else None  # (out, in) bool, True = pruned
        self.grid = record.grid if record is not None else None
        self.params = record.grid_params if record is not None else None
        self.master = nn.Parameter(get_weight(module), requires_grad=True)

    def take_gradient(self) -> None:
        """Straight-through: d loss / d master = d loss / d weight, nothing for pruned positions."""
        grad = self.module.weight.grad
        if grad is None:  # the weight did not take part in the loss
            self.master.grad = None
            return
        grad = (grad.t() if is_transposed(self.module) else grad).float()
        self.master.grad = grad.masked_fill(self.mask, 0.0) if self.mask is not None else grad.clone()

    @torch.no_grad()
    def write_back(self) -> None:
        """The model's weight = the master on its recorded grid, pruned positions exactly zero."""
        weight = self.master.detach()
        if self.mask is not None:
            self.master.masked_fill_(self.mask, 0.0)
            weight = weight.masked_fill(self.mask, 0.0)
        if self.grid is not None:
            weight = self.grid.project_all(weight, self.params)
            if self.mask is not None:
                weight = weight.masked_fill(self.mask, 0.0)  # zero is on every grid; kept explicit
        set_weight_(self.module, weight)


def finetune_model(model, adapter, config: FinetuneConfig, calibration, progress: bool = True,
                   batch_size: int | None = None) -> dict:
    """Apply a `finetune` stage to `model` in place (see the module docstring). Training batches are the
    stage's own `batch=` windows; the engine's calibration `batch_size` is for forward-only passes."""
    targets = select_targets(model, adapter, config.targets)
    state = state_of(model)
    masters = [MasterWeight(module, state.records.get(name)) for name, module in targets.items()]
    for m in masters:
        m.write_back()  # a no-op for weights already on their grid and mask; fixes any that are not
    initial = [get_weight(m.module).clone() for m in masters]

    def before_step() -> None:
        for m in masters:
            m.take_gradient()

    def after_step() -> None:
        for m in masters:
            m.write_back()

    s = config.training
    report = train_(model, [m.module.weight for m in masters], calibration, steps=s.steps, lr=s.lr, batch=s.batch,
           seed=s.seed, optimized=[m.master for m in masters], before_step=before_step, after_step=after_step,
           progress=progress, desc=config.text())
    for name in targets:
        state.record(name).history.append(config.text())
    # a quantized weight moves only when its master crosses a rounding boundary: from an on-grid start
    # that takes updates of half a grid step, which a small lr over few steps never reaches
    changed = sum(int((get_weight(m.module) != w).sum()) for m, w in zip(masters, initial))
    free = sum(w.numel() - (int(m.mask.sum()) if m.mask is not None else 0) for m, w in zip(masters, initial))
    return {"first_loss": report.first_loss, "last_loss": report.last_loss, "trained_linears": len(masters),
            "changed_fraction": changed / max(free, 1)}


register_method(MethodSpec("finetune", "adapt", FinetuneConfig, apply_model=finetune_model, needs_calibration=True))
