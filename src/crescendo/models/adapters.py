"""Architecture adapters: everything crescendo needs to know about one model family.

Where the decoder blocks are, how the last block's output becomes logits (final norm, projections,
LM head), which config key counts the layers, which linears project keys and values, how a linear's
weight reads as (out, in), and whether the family can be rotated. Everything else (hooks,
calibration, compression) is shared. Linears are found generically inside each block (nn.Linear and
transformers' Conv1D). An unknown architecture raises ModelError; nothing falls back to a guess.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError, ModelError
from ..types import Targets

try:  # GPT-2 style layers store weights as (in, out)
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - transformers is a hard dependency
    Conv1D = ()  # type: ignore[assignment]

LINEAR_TYPES: tuple[type, ...] = (nn.Linear,) + ((Conv1D,) if isinstance(Conv1D, type) else ())
_COEFFICIENT = ".coefficient"  # the output-side factor of a shared linear (crescendo.models.sharing.COEFFICIENT)


def _get(model: nn.Module, path: str) -> nn.Module:
    obj: nn.Module = model
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class Adapter:
    """What crescendo knows about one architecture family of Hugging Face causal LMs."""

    family: str
    blocks_path: str  # dotted path to the ModuleList of decoder blocks
    final_norm_path: str  # dotted path to the norm applied after the last block
    layer_count_key: str  # config attribute holding the number of blocks
    kv_suffixes: tuple[str, ...] | None  # key / value projection name suffixes; None = fused QKV
    post_norm_paths: tuple[str, ...] = ()  # modules between the final norm and the LM head (OPT's project_out)
    rotatable: bool = False  # QuaRot rotation is implemented for this family

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        return _get(model, self.blocks_path)  # type: ignore[return-value]

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

    def logits(self, model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """The logits the model computes from the last block's output `hidden` (B, L, d)."""
        x = _get(model, self.final_norm_path)(hidden)
        for path in self.post_norm_paths:
            module = _get_optional(model, path)
            if module is not None:
                x = module(x)
        return model.get_output_embeddings()(x)

    def is_kv_projection(self, name: str) -> bool:
        """Whether `name` outputs keys or values: a k/v projection, or the coefficient linear of a
        shared one (`crescendo.models.sharing`: its output is the projection's output)."""
        name = name.removesuffix(_COEFFICIENT)
        return self.kv_suffixes is not None and name.endswith(self.kv_suffixes)

    def check_kv_supported(self, targets: Iterable[str]) -> None:
        """KV quantization needs separate key/value projections among the targets."""
        if self.kv_suffixes is None:
            raise ConfigError(f"KV-cache quantization needs separate key/value projections; {self.family} fuses them")
        if not any(self.is_kv_projection(n) for n in targets):
            raise ConfigError("KV-cache quantization: the stage targets no key/value projection")

    def head_dim(self, model: nn.Module) -> int:
        config = model.config
        head_dim = getattr(config, "head_dim", None)
        return int(head_dim) if head_dim else int(config.hidden_size // config.num_attention_heads)

    def set_layer_count_(self, model: nn.Module, count: int, kept: list[int]) -> None:
        """Record a new number of blocks in the config (after block removal)."""
        setattr(model.config, self.layer_count_key, count)
        if getattr(model.config, "layer_types", None):
            model.config.layer_types = [model.config.layer_types[i] for i in kept]

    def rotate(self, model: nn.Module, seed: int, value_hadamard: bool):
        """QuaRot-rotate the model in place; returns `crescendo.state.RotationInfo`."""
        if not self.rotatable:
            raise ModelError(f"rotation is implemented for the LLaMA family (LLaMA, Mistral, Qwen2), not {self.family}")
        from .rotation import rotate_llama_

        return rotate_llama_(model, seed=seed, value_hadamard=value_hadamard)


def _get_optional(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return _get(model, path)
    except AttributeError:
        return None


def _llama_like(family: str) -> Adapter:
    return Adapter(family, "model.layers", "model.norm", "num_hidden_layers", ("k_proj", "v_proj"), rotatable=True)


_ADAPTERS = {
    **{f: _llama_like(f) for f in ("llama", "mistral", "qwen2", "qwen3")},
    "opt": Adapter("opt", "model.decoder.layers", "model.decoder.final_layer_norm", "num_hidden_layers",
                   ("k_proj", "v_proj"), post_norm_paths=("model.decoder.project_out",)),
    "gpt2": Adapter("gpt2", "transformer.h", "transformer.ln_f", "n_layer", None),
    "gpt_neox": Adapter("gpt_neox", "gpt_neox.layers", "gpt_neox.final_layer_norm", "num_hidden_layers", None),
}


def get_adapter(model: nn.Module) -> Adapter:
    """The adapter for a Hugging Face causal LM (by `config.model_type`); ModelError if there is none."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in _ADAPTERS:
        known = ", ".join(sorted(_ADAPTERS))
        raise ModelError(f"no architecture adapter for model type {model_type!r} (supported: {known})")
    return _ADAPTERS[model_type]


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


def select_targets(model: nn.Module, adapter: Adapter, targets: Targets) -> dict[str, nn.Module]:
    """The linears a stage compresses (see `Targets`): name -> module, in module order."""
    every = {n: m for n, m in model.named_modules() if isinstance(m, LINEAR_TYPES)}
    names = targets.select(list(adapter.all_block_linears(model)), list(every))
    return {n: every[n] for n in names}


def tied_names(model: nn.Module, names: Iterable[str]) -> list[str]:
    """Target names whose weight tensor is shared with another module (e.g. lm_head tied to embeddings)."""
    owners: dict[int, list[str]] = {}
    for n, m in model.named_modules():
        w = getattr(m, "weight", None)
        if isinstance(w, torch.Tensor):
            owners.setdefault(id(w), []).append(n)
    modules = dict(model.named_modules())
    return [n for n in names if len(owners.get(id(modules[n].weight), [])) > 1]
