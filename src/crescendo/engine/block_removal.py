"""Whole-block removal (SLEB): greedy selection by calibration perplexity, and the surgery itself.

Scoring a candidate block means running the model without it. Blocks before the candidate are
unchanged, so the inputs of every block under the current removal set are cached once per greedy
step and each candidate's forward starts at its own position: a step costs about half a full
forward per candidate instead of a whole one.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from tqdm.auto import tqdm

from ..models.adapters import Adapter, in_features
from .capture import BlockInputs, capture_first_block_inputs, run_block


def _head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The final norm and LM head applied after the last block (LLaMA/Mistral/Qwen2, OPT, GPT-2, NeoX)."""
    inner = getattr(model, "model", None) or getattr(model, "transformer", None) or getattr(model, "gpt_neox", None)
    for name in ("norm", "final_layernorm", "ln_f", "final_layer_norm"):
        norm = getattr(inner, name, None) or getattr(getattr(inner, "decoder", None), name, None)
        if norm is not None:
            break
    head = model.get_output_embeddings()
    return norm if norm is not None else nn.Identity(), head


@torch.no_grad()
def _loss(model: nn.Module, hidden: list[torch.Tensor], ids: list[torch.Tensor]) -> float:
    norm, head = _head(model)
    total, count = 0.0, 0
    for h, x in zip(hidden, ids):
        logits = head(norm(h)).float()  # (1, L, V)
        loss = nn.functional.cross_entropy(logits[0, :-1], x[0, 1:].to(logits.device), reduction="sum")
        total += float(loss)
        count += x.shape[1] - 1
    return total / count


@torch.no_grad()
def select_blocks_greedy(
    model: nn.Module, adapter: Adapter, calibration: list[torch.Tensor], n_remove: int, progress: bool = True
) -> list[int]:
    """Indices (in the current model) of `n_remove` blocks, each removed greedily where the calibration
    perplexity rises least (SLEB, Algorithm 1)."""
    blocks = adapter.blocks(model)
    first_inputs = capture_first_block_inputs(model, blocks[0], calibration)
    removed: list[int] = []
    for _ in tqdm(range(n_remove), desc="sleb", disable=not progress, leave=False):
        kept = [i for i in range(len(blocks)) if i not in removed]
        # inputs of each kept block under the current removal set
        inputs_at: dict[int, BlockInputs] = {}
        current = first_inputs
        for i in kept:
            inputs_at[i] = current
            current = current.with_hidden(run_block(blocks[i], current))
        best, best_loss = -1, math.inf
        for pos, cand in enumerate(kept):
            state = inputs_at[cand]
            for i in kept[pos + 1 :]:
                state = state.with_hidden(run_block(blocks[i], state))
            loss = _loss(model, [state.hidden(j) for j in range(len(state))], calibration)
            if loss < best_loss:
                best, best_loss = cand, loss
        removed.append(best)
    return sorted(removed)


def remove_blocks_(model: nn.Module, adapter: Adapter, indices: list[int]) -> None:
    """Delete decoder blocks in place, renumber the rest, keep per-linear records consistent."""
    blocks = adapter.blocks(model)
    n_before = len(blocks)
    keep = [i for i in range(n_before) if i not in set(indices)]
    removed_params = sum(p.numel() for i in indices for p in blocks[i].parameters())
    removed_linears = [(int(in_features(m)), int(m.weight.numel() // in_features(m)))
                       for i in indices for m in adapter.block_linears(model, i).values()]
    new_blocks = nn.ModuleList([blocks[i] for i in keep])
    parent_path, _, attr = adapter.blocks_path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, attr, new_blocks)
    for new_index, block in enumerate(new_blocks):
        for module in block.modules():  # attention modules index the KV cache by layer
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    config = model.config
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if hasattr(config, key):
            setattr(config, key, len(keep))
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in keep]
    original = getattr(config, "crescendo_removed_blocks", None) or {"original_layers": n_before, "removed": []}
    survivors = [i for i in range(original["original_layers"]) if i not in original["removed"]]
    original["removed"] = sorted(original["removed"] + [survivors[i] for i in indices])
    config.crescendo_removed_blocks = original
    model.crescendo_removed_params = getattr(model, "crescendo_removed_params", 0) + removed_params
    model.crescendo_removed_linears = getattr(model, "crescendo_removed_linears", []) + removed_linears

    records = getattr(model, "crescendo_records", None)
    if records:
        prefix = adapter.blocks_path + "."
        renamed = {}
        for name, rec in records.items():
            if not name.startswith(prefix):
                renamed[name] = rec
                continue
            index_text, _, rest = name[len(prefix):].partition(".")
            old = int(index_text)
            if old in keep:
                rec.name = f"{prefix}{keep.index(old)}.{rest}"
                renamed[rec.name] = rec
        model.crescendo_records = renamed
