"""Unmerged LoRA adapters beside a saved model, in peft's own file format.

    adapter_config.json         peft's LoraConfig (r, lora_alpha, target_modules, ...)
    adapter_model.safetensors   base_model.model.<linear>.lora_A.weight (r, in) / .lora_B.weight (out, r)

These are the files `PeftModel.save_pretrained` writes, so `PeftModel.from_pretrained(model, dir)`
reads them; crescendo reads them back itself (safetensors and JSON only, peft not needed) and
re-attaches every adapter as a branch of its linear, after that linear's input transforms.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import ModelError
from ..models.lora import LoRABranch
from ..state import LoRAInfo, state_of
from ..transforms import add_branch_, branches

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."  # the key prefix of a PeftModel wrapping a causal LM


def _branch(model: nn.Module, name: str) -> LoRABranch:
    found = [b for b in branches(model.get_submodule(name)) if isinstance(b, LoRABranch)]
    if len(found) != 1:
        raise ModelError(f"the state names LoRA adapters on {name}, which carries {len(found)}")
    return found[0]


def adapter_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """peft's state-dict of the model's unmerged adapters ({} when it has none)."""
    info = state_of(model).lora
    if info is None:
        return {}
    out = {}
    for name in info.targets:
        branch = _branch(model, name)
        out[f"{PREFIX}{name}.lora_A.weight"] = branch.lora_A.detach().cpu().contiguous()
        out[f"{PREFIX}{name}.lora_B.weight"] = branch.lora_B.detach().cpu().contiguous()
    return out


def save_adapters(model: nn.Module, directory: Path) -> bool:
    """Write the model's unmerged adapters into `directory` (peft's files); False when it has none."""
    info = state_of(model).lora
    if info is None:
        return False
    save_file(adapter_tensors(model), str(directory / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    (directory / ADAPTER_CONFIG).write_text(json.dumps(info.peft_config, indent=2, sort_keys=True))
    return True


def read_adapters(directory: Path, info: LoRAInfo) -> dict[str, torch.Tensor]:
    """The adapter tensors `info` names, read from `directory` and checked (ModelError naming the
    file and the first problem: unreadable, missing or unexpected tensors, wrong rank, NaN / Inf)."""
    path = directory / ADAPTER_WEIGHTS
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelError(f"the model has LoRA adapters but {path} cannot be read: {e}") from None
    expected = {f"{PREFIX}{n}.lora_{ab}.weight" for n in info.targets for ab in "AB"}
    if set(tensors) != expected:
        extra, missing = sorted(set(tensors) - expected), sorted(expected - set(tensors))
        raise ModelError(f"{path.name} does not hold the adapters the state names (missing {missing[:2]}, "
                         f"unexpected {extra[:2]})")
    for key in sorted(tensors):
        t = tensors[key]
        if t.dim() != 2 or t.shape[0 if key.endswith("lora_A.weight") else 1] != info.rank:
            raise ModelError(f"{path.name}: tensor {key} is {tuple(t.shape)}, not of rank {info.rank}")
        if not torch.isfinite(t).all():
            raise ModelError(f"{path.name}: tensor {key} holds NaN or Inf")
    return tensors


def load_adapters_(model: nn.Module, directory: Path, info: LoRAInfo | None = None) -> None:
    """Re-attach the adapters that `info` (default: the model's state) names, from `directory`."""
    info = info if info is not None else state_of(model).lora
    if info is None:
        return
    tensors = read_adapters(directory, info)
    device = next(model.parameters()).device
    for name in info.targets:
        module = model.get_submodule(name)
        a, b = tensors[f"{PREFIX}{name}.lora_A.weight"], tensors[f"{PREFIX}{name}.lora_B.weight"]
        add_branch_(module, LoRABranch(a.to(device), b.to(device), info.alpha / info.rank))
