"""LoRA adapters on crescendo's linears: trained inside peft's wrappers, kept as branches afterwards.

peft's `lora.Linear` computes `base_layer(x) + B A x * scaling` on the raw input x. A crescendo linear
may transform its input first (online Hadamard, activation quantizer) and its output last (KV
quantizer), so while peft's wrappers are in place (`peft_lora`) those transforms are moved from the
base linear onto the wrapper: the wrapper computes out(W t(x) + B A t(x) * scaling), the adapter
seeing exactly what the base weight sees. When training ends the wrappers are removed again: every
linear is back under its own name, with its own class and state-dict keys, and the trained adapter
becomes a `LoRABranch` on it (`crescendo.transforms.add_branch_`), which computes the same sum. The
branch's tensors are non-persistent buffers, so `state_dict()` still holds exactly the base model's
keys; exporters write the adapters in peft's own file format beside the model (`export.adapters`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError
from ..state import LinearRecord
from ..transforms import (
    add_branch_,
    add_input_transform_,
    add_output_transform_,
    branches,
    input_transforms,
    output_transforms,
    remove_transforms_,
)
from .adapters import get_weight, is_transposed, set_weight_

ADAPTER_NAME = "default"  # peft's name for a model's only adapter (dropped from its saved keys)
EXTRA = "lora"  # the optional dependency group that installs peft


def require_peft():
    """The peft package, or a one-line ConfigError naming the extra that installs it."""
    try:
        import peft
    except ImportError:
        raise ConfigError(f"lora needs peft, which is not installed: pip install 'crescendo[{EXTRA}]'") from None
    return peft


class LoRABranch(nn.Module):
    """B A x * scaling for A (r, in) and B (out, r): peft's vanilla LoRA forward, as a branch."""

    def __init__(self, lora_A: torch.Tensor, lora_B: torch.Tensor, scaling: float) -> None:
        super().__init__()
        if lora_A.dim() != 2 or lora_B.dim() != 2 or lora_A.shape[0] != lora_B.shape[1]:
            raise ConfigError(f"LoRA factors of shapes {tuple(lora_A.shape)} and {tuple(lora_B.shape)} do not chain")
        self.register_buffer("lora_A", lora_A, persistent=False)  # (r, in)
        self.register_buffer("lora_B", lora_B, persistent=False)  # (out, r)
        self.scaling = float(scaling)

    @property
    def rank(self) -> int:
        return int(self.lora_A.shape[0])

    def delta(self) -> torch.Tensor:
        """The (out, in) float32 weight the branch adds: B A * scaling."""
        return (self.lora_B.float() @ self.lora_A.float()) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.lora_A.dtype)  # as peft casts the input to the adapter's dtype
        return F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scaling

    def extra_repr(self) -> str:
        return f"r={self.rank}, scaling={self.scaling:g}"


def peft_config_dict(rank: int, alpha: float, names: list[str], fan_in_fan_out: bool) -> dict:
    """peft's LoraConfig for these adapters, as the JSON object peft writes to adapter_config.json."""
    peft = require_peft()
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, target_modules=sorted(names), lora_dropout=0.0, bias="none",
                             fan_in_fan_out=fan_in_fan_out, task_type="CAUSAL_LM", inference_mode=True)
    out = config.to_dict()
    return json.loads(json.dumps({k: sorted(v) if isinstance(v, set) else v for k, v in out.items()}, default=str))


def _set_child(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, module)


def _attach(module: nn.Module, ins: list[nn.Module], outs: list[nn.Module]) -> None:
    for t in ins:
        add_input_transform_(module, t)
    for t in outs:
        add_output_transform_(module, t)


@contextlib.contextmanager
def peft_lora(model: nn.Module, targets: dict[str, nn.Module], rank: int, alpha: float,
              seed: int) -> Iterator[dict[str, nn.Module]]:
    """Within the block, every target linear is wrapped in peft's LoRA layer (yielded by name), its
    input and output transforms moved onto the wrapper. On exit the original modules are back in
    place with their transforms and `requires_grad` flags; the adapters are gone (read them first).

    The adapters' initialisation (peft's: A Kaiming-uniform, B zero) draws from a generator seeded
    with `seed`, so a stage is a deterministic function of its seed.
    """
    peft = require_peft()
    if any(branches(m) for m in targets.values()):
        raise ConfigError("these linears already carry LoRA adapters; merge them first (lora:merge)")
    flags = [(p, p.requires_grad) for p in model.parameters()]
    transposed = {is_transposed(m) for m in targets.values()}
    if len(transposed) > 1:
        raise ConfigError("lora: the targets mix nn.Linear and Conv1D layers; target them in separate stages")
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, target_modules=sorted(targets), lora_dropout=0.0,
                             bias="none", fan_in_fan_out=transposed.pop())
    had_config = "peft_config" in model.__dict__
    moved = {name: (input_transforms(m), output_transforms(m)) for name, m in targets.items()}
    for m in targets.values():
        remove_transforms_(m)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            peft.inject_adapter_in_model(config, model, adapter_name=ADAPTER_NAME)
        wrappers = {name: model.get_submodule(name) for name in targets}
        for name, wrapper in wrappers.items():
            _attach(wrapper, *moved[name])
        yield wrappers
    finally:
        for name, base in targets.items():
            current = model.get_submodule(name)
            if current is not base:
                remove_transforms_(current)
                _set_child(model, name, base)
            _attach(base, *moved[name])
        if not had_config:
            model.__dict__.pop("peft_config", None)
        for p, flag in flags:
            p.requires_grad_(flag)


def branch_of(wrapper: nn.Module) -> LoRABranch:
    """The trained adapter of one of peft's LoRA layers, as a detached `LoRABranch`."""
    return LoRABranch(wrapper.lora_A[ADAPTER_NAME].weight.detach().clone(),
                      wrapper.lora_B[ADAPTER_NAME].weight.detach().clone(), wrapper.scaling[ADAPTER_NAME])


@torch.no_grad()
def merge_branch_(module: nn.Module, branch: LoRABranch, record: LinearRecord | None) -> None:
    """Fold `branch` into the weight of `module`, then put the weight back on its recorded grid (the
    recorded parameters, unchanged) with pruned positions at exactly zero."""
    weight = get_weight(module) + branch.delta().to(module.weight.device)
    if record is not None and record.mask is not None:
        weight = weight.masked_fill(record.mask, 0.0)
    if record is not None and record.grid is not None:
        weight = record.grid.project_all(weight, record.grid_params)
        if record.mask is not None:
            weight = weight.masked_fill(record.mask, 0.0)
    set_weight_(module, weight)


def adopt_peft_layers_(model: nn.Module, names: list[str]) -> bool:
    """Turn LoRA layers that transformers attached while loading (it applies adapter files it finds in
    a model directory when peft is installed) into crescendo branches. False if there were none."""
    found = False
    for name in names:
        wrapper = model.get_submodule(name)
        if not hasattr(wrapper, "base_layer") or ADAPTER_NAME not in getattr(wrapper, "lora_A", {}):
            continue
        base, branch = wrapper.base_layer, branch_of(wrapper)
        _set_child(model, name, base)
        add_branch_(base, branch)
        found = True
    if found:
        model.__dict__.pop("peft_config", None)
        if getattr(model, "_hf_peft_config_loaded", False):
            model._hf_peft_config_loaded = False
    return found
