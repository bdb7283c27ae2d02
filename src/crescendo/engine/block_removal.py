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
from ..state import RemovedBlocks, state_of
from .capture import BlockInputs, capture_first_block_inputs, run_block


@torch.no_grad()
def _loss(model: nn.Module, adapter: Adapter, hidden: list[torch.Tensor], ids: list[torch.Tensor]) -> float:
    total, count = 0.0, 0
    for h, x in zip(hidden, ids):
        logits = adapter.logits(model, h).float()  # (B, L, V)
        targets = x[:, 1:].to(logits.device)
        loss = nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                           reduction="sum")
        total += float(loss)
        count += targets.numel()
    return total / count


@torch.no_grad()
def select_blocks_greedy(
    model: nn.Module, adapter: Adapter, calibration: list[torch.Tensor], n_remove: int, progress: bool = True,
    batch_size: int | None = 1,
) -> list[int]:
    """Indices (in the current model) of `n_remove` blocks, each removed greedily where the calibration
    perplexity rises least (SLEB, Algorithm 1)."""
    adapter.check_block_removal()
    blocks = adapter.blocks(model)
    first_inputs = capture_first_block_inputs(model, blocks[0], calibration, batch_size, adapter)
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
            loss = _loss(model, adapter, [state.hidden(j) for j in range(len(state))], state.ids)
            if loss < best_loss:
                best, best_loss = cand, loss
        removed.append(best)
    return sorted(removed)


def remove_blocks_(model: nn.Module, adapter: Adapter, indices: list[int]) -> None:
    """Delete decoder blocks in place, renumber the rest, keep the compression state consistent."""
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
    adapter.set_layer_count_(model, len(keep), keep)

    state = state_of(model)
    removed = state.removed or RemovedBlocks(original_layers=n_before)
    survivors = removed.survivors()
    removed.removed = sorted(removed.removed + [survivors[i] for i in indices])
    removed.params += removed_params
    removed.linears = removed.linears + removed_linears
    state.removed = removed

    prefix = adapter.blocks_path + "."
    renamed = {}
    for name, rec in state.records.items():
        if not name.startswith(prefix):
            renamed[name] = rec
            continue
        index_text, _, rest = name[len(prefix):].partition(".")
        old = int(index_text)
        if old in keep:
            rec.name = f"{prefix}{keep.index(old)}.{rest}"
            renamed[rec.name] = rec
    state.records = renamed
