"""LoRA recovery (`lora`): low-rank adapters trained on calibration windows, through peft.

`lora:r=8,steps=200,lr=1e-4` trains a rank-r adapter on every target linear (all decoder-block
linears by default) of the model the earlier stages produced, with the causal-LM loss on
calibration windows; the base weights are frozen, so every mask and grid stays exact. The
defaults follow Basis Sharing's LoRA recipe (r = 8, alpha = 32, lr = 1e-4, AdamW, constant
learning rate, no dropout), the one 003 names for its Figure 8. The adapter of a linear sees the
same input transforms as its base weight (online Hadamard, activation quantizer) and its output
goes through the same output transforms (`crescendo.models.lora`).

Without `merge` the adapters stay beside the base weights (exported in peft's own format beside the
model); a later stage compresses the base weights and leaves the adapters as they are. With `merge`
they are folded in and every merged weight is put back on its recorded grid (the recorded grid
parameters, unchanged) with its pruned positions at exactly zero, so `crescendo verify` passes;
what the grid cannot represent of the adapter is rounded away.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..engine.training import train_
from ..errors import ConfigError
from ..models.adapters import is_transposed, select_targets
from ..models.lora import LoRABranch, branch_of, merge_branch_, peft_config_dict, peft_lora, require_peft
from ..state import LoRAInfo, state_of
from ..transforms import add_branch_, branches
from ..types import Targets
from . import args as A
from .base import MethodConfig, MethodSpec, register_method
from .finetune import TrainingSettings

LORA_LR = 1e-4


@dataclass(frozen=True)
class LoRAConfig(MethodConfig):
    """A LoRA stage: adapter rank and alpha (scaling = alpha / rank), training, merge or keep."""

    rank: int = 8
    alpha: float = 32.0
    merge: bool = False  # fold the adapters into the (re-projected) weights at the end of the stage
    training: TrainingSettings = field(default_factory=lambda: TrainingSettings(lr=LORA_LR))
    target: Targets = field(default_factory=Targets)

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ConfigError(f"lora rank must be >= 1, got {self.rank}")
        if not self.alpha > 0:
            raise ConfigError(f"lora alpha must be > 0, got {self.alpha}")

    @property
    def targets(self) -> Targets:
        return self.target

    def text(self) -> str:
        args = ([f"r={self.rank}"] if self.rank != 8 else []) + ([f"alpha={self.alpha:g}"] if self.alpha != 32 else [])
        args += self.training.args(LORA_LR) + (["merge"] if self.merge else []) + self.target.args()
        return "lora" + (":" + ",".join(args) if args else "")

    @classmethod
    def parse(cls, name: str, positional: list[str], keyword: dict[str, str]) -> LoRAConfig:
        target = A.pop_targets(keyword)
        values = {}
        if "r" in keyword and "rank" in keyword:
            raise ConfigError("lora rank given twice (r= and rank=)")
        for key in ("r", "rank"):
            if key in keyword:
                values["rank"] = A.parse_int(keyword.pop(key), "lora rank")
        if "alpha" in keyword:
            values["alpha"] = A.parse_float(keyword.pop("alpha"), "lora alpha")
        values["merge"] = A.pop_flag(positional, "merge")
        training = TrainingSettings.parse(keyword, LORA_LR)
        A.reject_leftovers(name, positional, keyword)
        return cls(training=training, target=target, **values)


def check_lora(model, adapter, config: LoRAConfig, earlier) -> None:
    """Refuse a LoRA stage on linears that already carry unmerged adapters, and mixed layer layouts."""
    if state_of(model).lora is not None or any(s.method == "lora" and not s.config.merge for s in earlier):
        raise ConfigError("a lora stage after unmerged LoRA adapters: merge the earlier one (lora:...,merge)")
    targets = select_targets(model, adapter, config.targets)
    if len({is_transposed(m) for m in targets.values()}) > 1:
        raise ConfigError("lora: the targets mix nn.Linear and Conv1D layers; target them in separate stages")
    for name, module in targets.items():
        if config.rank > min(module.weight.shape):
            raise ConfigError(f"lora rank {config.rank} does not fit {name} {tuple(module.weight.shape)}")


def lora_model(model, adapter, config: LoRAConfig, calibration, progress: bool = True,
               batch_size: int | None = None) -> dict:
    """Apply a `lora` stage to `model` in place (see the module docstring); it trains on its own
    `batch=` windows per step (the engine's calibration `batch_size` is for forward-only passes)."""
    require_peft()
    targets = select_targets(model, adapter, config.targets)
    if any(branches(m) for m in targets.values()):
        raise ConfigError("these linears already carry LoRA adapters; merge them first (lora:...,merge)")
    s = config.training
    with peft_lora(model, targets, config.rank, config.alpha, seed=s.seed) as wrappers:
        params = [p for w in wrappers.values() for p in w.parameters() if p.requires_grad]
        report = train_(model, params, calibration, steps=s.steps, lr=s.lr, batch=s.batch, seed=s.seed,
                        progress=progress, desc=config.text())
        trained: dict[str, LoRABranch] = {name: branch_of(w) for name, w in wrappers.items()}
    state = state_of(model)
    for name, module in targets.items():
        if config.merge:
            merge_branch_(module, trained[name], state.records.get(name))
        else:
            add_branch_(module, trained[name])
        state.record(name).history.append(config.text())
    if not config.merge:
        transposed = any(is_transposed(m) for m in targets.values())
        state.lora = LoRAInfo(config.rank, config.alpha, list(targets), config.text(),
                              peft_config_dict(config.rank, config.alpha, list(targets), transposed))
    adapter_params = sum(b.lora_A.numel() + b.lora_B.numel() for b in trained.values())
    return {"first_loss": report.first_loss, "last_loss": report.last_loss, "adapters": len(trained),
            "adapter_params": adapter_params, "merged": config.merge}


register_method(MethodSpec("lora", "adapt", LoRAConfig, apply_model=lora_model, needs_calibration=True,
                           requires=require_peft, check=check_lora))
