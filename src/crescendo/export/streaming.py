"""A model's tensors one at a time, for exporters that must not hold a whole block-wise model.

`state_items(model)` yields `model.state_dict()`'s (key, tensor) pairs in their order; for a
block-wise model (`crescendo.blockwise`) the group holding each tensor is loaded while it is read,
together with the compression records of its linears (their masks and grid parameters), so an
exporter handles a linear's record when its weight comes by. `tied_keys` says which keys repeat
another key's tensor (an LM head tied to the embeddings) without comparing memory, which a
block-wise model does not keep between two loads. `write_hf_weights` writes the state dict as
transformers' sharded safetensors layout, one shard per group, without a second copy on disk.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from torch import nn

from ..blockwise.residency import residency_of
from ..blockwise.writer import write_safetensors

INDEX = "model.safetensors.index.json"


def state_items(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(key, tensor) of `model.state_dict()`, in its order, each loaded while it is read."""
    residency = residency_of(model)
    if residency is None:
        yield from model.state_dict().items()
        return
    keys = list(model.state_dict())
    for group, run in itertools.groupby(keys, key=residency.group_of):
        with residency.group(model, group):
            state = model.state_dict()
            for key in run:
                yield key, state[key]


def _storage_key(t: torch.Tensor) -> tuple:
    """Identity of the memory a tensor views: tied weights (lm_head / embeddings) share one."""
    return (t.device.type, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))


def tied_keys(model: nn.Module, owners: Iterable[str] = ()) -> dict[str, str]:
    """{key: the key it repeats} over the state dict's tensors that share one tensor. In each shared
    set the key among `owners` (a packed weight) is stored, else the first in state-dict order."""
    owners = set(owners)
    sets: dict[object, list[str]] = {}
    residency = residency_of(model)
    if residency is None:
        for key, t in model.state_dict().items():
            sets.setdefault(_storage_key(t), []).append(key)
    else:
        order = {k: i for i, k in enumerate(model.state_dict())}
        for names in residency.aliases.values():
            keys = sorted((n for n in names if n in order), key=order.__getitem__)
            sets[keys[0] if keys else None] = keys
    out: dict[str, str] = {}
    for keys in sets.values():
        if len(keys) < 2:
            continue
        owner = next((k for k in keys if k in owners), keys[0])
        out.update({k: owner for k in keys if k != owner})
    return out


def _checkpoint_keys(model: nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The keys `save_pretrained` writes for these tensors (transformers renames some on saving, e.g.
    GPT-NeoX's `lm_head` is stored as `embed_out`)."""
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # transformers before 5 stores the model's own keys
        return tensors
    return dict(revert_weight_conversion(model, tensors))


def write_hf_weights(model: nn.Module, directory: str | Path) -> None:
    """The state dict (tied repeats left out, as `save_pretrained` does) as sharded safetensors files
    with transformers' index, one shard per run of consecutive tensors of one residency group (a
    block, the embedding, the head, the rest)."""
    directory = Path(directory)
    residency = residency_of(model)
    tied = tied_keys(model)
    runs = [(g, [k for k in run if k not in tied]) for g, run in
            itertools.groupby(model.state_dict(), key=residency.group_of if residency is not None else lambda k: "all")]
    runs = [(g, keys) for g, keys in runs if keys]
    weight_map: dict[str, str] = {}
    total = 0
    items = state_items(model)
    for n, (_, keys) in enumerate(runs, 1):
        shard = f"model-{n:05d}-of-{len(runs):05d}.safetensors"
        tensors: dict[str, torch.Tensor] = {}
        while len(tensors) < len(keys):
            key, t = next(items)
            if key in tied:
                continue
            tensors[key] = t.detach().to("cpu").contiguous()
        tensors = _checkpoint_keys(model, tensors)
        write_safetensors(directory / shard, tensors, {"format": "pt"})
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        weight_map.update({k: shard for k in tensors})
        del tensors
    items.close()
    (directory / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
