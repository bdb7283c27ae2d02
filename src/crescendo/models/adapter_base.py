"""The adapter base class: what crescendo knows about one architecture family (see `adapters`).

Kept apart from `adapters` (which maps models to adapters) so that the vision adapters can subclass
it without an import cycle.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError, ModelError

try:  # GPT-2 style layers store weights as (in, out)
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - transformers is a hard dependency
    Conv1D = ()  # type: ignore[assignment]

# every layer whose weight a per-layer method compresses as an (out, in) matrix
LINEAR_TYPES: tuple[type, ...] = (nn.Linear, nn.Conv2d) + ((Conv1D,) if isinstance(Conv1D, type) else ())
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
    modality: str = "text"  # "text": calibration batches are token ids (B, L); "image": images (B, C, H, W)

    def run(self, model: nn.Module, batch: torch.Tensor):
        """Run `model` on one calibration batch (token ids (B, L) for a causal LM)."""
        return model(batch, use_cache=False)

    def positions(self, model: nn.Module) -> dict[str, int]:
        """Output positions per sample of each block layer (1 for a language model: costs are per token)."""
        return {}

    def check_block_removal(self) -> None:
        """Block removal (SLEB) scores candidates by the causal-LM loss; other families raise."""

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        return _get(model, self.blocks_path)  # type: ignore[return-value]

    def block_linears(self, model: nn.Module, index: int) -> dict[str, nn.Module]:
        """Full module name -> linear, for every linear inside decoder block `index`, in module order."""
        prefix = f"{self.blocks_path}.{index}"
        block = self.blocks(model)[index]
        out = {f"{prefix}.{n}": m for n, m in block.named_modules() if isinstance(m, LINEAR_TYPES)}
        for name, module in out.items():
            check_layer(module, name)
        return out

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


def check_layer(module: nn.Module, name: str | None = None) -> None:
    """ModelError for a layer whose weight is not one (out, in) matrix: grouped or depthwise
    convolutions (one matrix per group), and non-zero padding modes (the unfolded input would differ)."""
    if isinstance(module, nn.Conv2d):
        where = f"{name}: " if name else ""
        if module.groups != 1:
            raise ModelError(f"{where}grouped or depthwise convolutions ({module.groups} groups) are not supported: "
                             f"their weight is not one (out, in x kh x kw) matrix")
        if module.padding_mode != "zeros":
            raise ModelError(f"{where}convolutions with padding_mode {module.padding_mode!r} are not supported "
                             f"(only zero padding unfolds like the layer computes)")
