"""Architecture adapters: where the decoder blocks are and how to read a linear's weight as (out, in).

Everything else (hooks, calibration, compression) is shared. Linears are found generically inside each
block (nn.Linear and transformers' Conv1D), so a new decoder family needs one line: its block path.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError, ModelError

try:  # GPT-2 style layers store weights as (in, out)
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - transformers is a hard dependency
    Conv1D = ()  # type: ignore[assignment]

LINEAR_TYPES: tuple[type, ...] = (nn.Linear,) + ((Conv1D,) if isinstance(Conv1D, type) else ())


@dataclass(frozen=True)
class Adapter:
    """Where one architecture family keeps its decoder blocks."""

    family: str
    blocks_path: str  # dotted attribute path to the ModuleList of decoder blocks

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        obj: nn.Module = model
        for part in self.blocks_path.split("."):
            obj = getattr(obj, part)
        return obj  # type: ignore[return-value]

    def block_linears(self, model: nn.Module, index: int) -> dict[str, nn.Module]:
        """Full module name -> linear, for every linear inside decoder block `index`, in module order."""
        prefix = f"{self.blocks_path}.{index}"
        block = self.blocks(model)[index]
        return {f"{prefix}.{n}": m for n, m in block.named_modules() if isinstance(m, LINEAR_TYPES)}

    def all_block_linears(self, model: nn.Module) -> dict[str, nn.Module]:
        out: dict[str, nn.Module] = {}
        for i in range(len(self.blocks(model))):
            out.update(self.block_linears(model, i))
        return out


_FAMILIES = {
    "llama": "model.layers",
    "mistral": "model.layers",
    "qwen2": "model.layers",
    "qwen3": "model.layers",
    "opt": "model.decoder.layers",
    "gpt2": "transformer.h",
    "gpt_neox": "gpt_neox.layers",
}


def get_adapter(model: nn.Module) -> Adapter:
    """The adapter for a Hugging Face causal LM (by `config.model_type`)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in _FAMILIES:
        known = ", ".join(sorted(_FAMILIES))
        raise ModelError(f"no architecture adapter for model type {model_type!r} (supported: {known})")
    return Adapter(family=model_type, blocks_path=_FAMILIES[model_type])


def is_transposed(module: nn.Module) -> bool:
    """Conv1D keeps (in, out) weights; nn.Linear keeps (out, in)."""
    return not isinstance(module, nn.Linear)


def get_weight(module: nn.Module) -> torch.Tensor:
    """A float32 copy of the weight as (out, in)."""
    w = module.weight.detach()
    return (w.t() if is_transposed(module) else w).float().clone(memory_format=torch.contiguous_format)


def set_weight_(module: nn.Module, weight: torch.Tensor) -> None:
    """Write an (out, in) weight back in the module's own layout and dtype."""
    w = weight.t() if is_transposed(module) else weight
    with torch.no_grad():
        module.weight.copy_(w.to(module.weight.dtype))


def in_features(module: nn.Module) -> int:
    return module.weight.shape[0] if is_transposed(module) else module.weight.shape[1]


def select_targets(
    model: nn.Module, adapter: Adapter, include: str | None = None, exclude: str | None = None
) -> dict[str, nn.Module]:
    """The linears a stage compresses: every decoder-block linear by default, filtered by regexes.

    `include` may also name linears outside the blocks (e.g. `lm_head`). A pattern that matches no
    module is an error, never a silent no-op.
    """
    candidates = adapter.all_block_linears(model)
    if include is not None:
        rx = _compile(include, "include")
        every = {n: m for n, m in model.named_modules() if isinstance(m, LINEAR_TYPES)}
        candidates = {n: m for n, m in every.items() if rx.search(n)}
        if not candidates:
            raise ConfigError(f"include pattern {include!r} matches no linear module")
    if exclude is not None:
        rx = _compile(exclude, "exclude")
        kept = {n: m for n, m in candidates.items() if not rx.search(n)}
        if len(kept) == len(candidates):
            raise ConfigError(f"exclude pattern {exclude!r} matches no targeted module")
        candidates = kept
    return candidates


def _compile(pattern: str, what: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ConfigError(f"{what} pattern {pattern!r} is not a valid regular expression: {e}") from None


def tied_names(model: nn.Module, names: Iterator[str] | list[str]) -> list[str]:
    """Target names whose weight tensor is shared with another module (e.g. lm_head tied to embeddings)."""
    owners: dict[int, list[str]] = {}
    for n, m in model.named_modules():
        w = getattr(m, "weight", None)
        if isinstance(w, torch.Tensor):
            owners.setdefault(id(w), []).append(n)
    modules = dict(model.named_modules())
    return [n for n in names if len(owners.get(id(modules[n].weight), [])) > 1]
