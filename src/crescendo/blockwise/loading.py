"""`load_blockwise`: a model whose weights stay in its checkpoint until a block is worked on.

The model is built from its config with accelerate's `init_empty_weights` (parameters on the `meta`
device, buffers such as rotary frequencies real), every parameter is matched to a checkpoint tensor
of the same name and shape (tied parameters share one), and a `Residency` is attached that loads one
group at a time (`residency`). Nothing but the checkpoint's headers, the config and the tokenizer is
read here. The tokenizer and `ModelInfo` are those `load_model` gives for the same spec.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from typing import Any

import torch
from torch import nn

from ..errors import ModelError
from ..models.adapters import get_adapter
from ..models.loading import ModelInfo, load_config, load_tokenizer, resolve_model_spec
from .files import BlockFiles
from .memory import return_large_blocks
from .residency import EMBED, HEAD, OUTSIDE, Residency, attach_residency_, group_of
from .sources import GGUFSource, SafetensorsSource

log = logging.getLogger(__name__)

ACCELERATE_HINT = "pip install accelerate (or 'crescendo[gguf]')"


def skeleton(config: Any) -> nn.Module:
    """The causal LM of `config` with every parameter on the meta device (no memory), in eval mode."""
    if importlib.util.find_spec("accelerate") is None:
        raise ModelError(f"block-wise loading builds the model with accelerate's init_empty_weights: {ACCELERATE_HINT}")
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.tie_weights()  # empty parameters are made apart; tied ones (an LM head) must be one tensor again
    return model.eval()


def _tied_sets(model: nn.Module) -> dict[str, list[str]]:
    """Parameter (first name) -> every module attribute name holding the same tensor."""
    by_tensor: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_tensor.setdefault(id(p), []).append(name)
    return {names[0]: names for names in by_tensor.values()}


def _checkpoint_names(model: nn.Module, names: set[str]) -> dict[str, str]:
    """{model's state-dict key: checkpoint key}, renamed as transformers renames checkpoint keys when
    it loads them (`conversion_mapping`: e.g. GPT-NeoX's `embed_out` is the model's `lm_head`; a
    checkpoint saved without or with the base model's prefix). Keys transformers would have to
    convert (split or merge tensors) are refused: one block-wise read is one checkpoint tensor."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming, rename_source_key
    except ImportError:  # transformers before 5: checkpoint keys are the model's own
        return {n: n for n in names}
    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if not isinstance(t, WeightRenaming)]
    meta = model.state_dict()
    out: dict[str, str] = {}
    for key in sorted(names):
        renamed, converted = rename_source_key(key, renamings, converters, model.base_model_prefix, meta)
        if converted is not None:
            raise ModelError(f"checkpoint tensor {key} is converted by transformers when it loads ({converted}); "
                             f"block-wise loading reads tensors as they are stored: load this model in memory")
        out[renamed] = key
    return out


def _match(model: nn.Module, source, aliases: dict[str, list[str]]) -> dict[str, str]:
    """Parameter -> the checkpoint tensor holding it; ModelError for a missing one or a wrong shape."""
    names = _checkpoint_names(model, source.names())
    found: dict[str, str] = {}
    for name, every in aliases.items():
        stored = next((names[a] for a in every if a in names), None)
        if stored is None:
            raise ModelError(f"{source.description} has no tensor {name}: block-wise loading reads parameters "
                             f"by their own names (load the model in memory, or resave it with save_pretrained)")
        shape = tuple(model.get_parameter(name).shape)
        if tuple(source.shape(stored)) != shape:
            raise ModelError(f"{source.description}: tensor {stored} is {list(source.shape(stored))}, the model's "
                             f"config makes it {list(shape)}")
        found[name] = stored
    return found


def _ends(model: nn.Module) -> dict[str, str]:
    """{parameter name: EMBED or HEAD} for the input embedding's and the output head's parameters."""
    out: dict[str, str] = {}
    for kind, module in ((HEAD, model.get_output_embeddings()), (EMBED, model.get_input_embeddings())):
        if module is None:
            continue
        prefix = next((n for n, m in model.named_modules(remove_duplicate=False) if m is module), None)
        if prefix is None:
            continue
        for leaf, _ in module.named_parameters(remove_duplicate=False):
            out[f"{prefix}.{leaf}" if prefix else leaf] = kind
    return out


def _load_buffers_(model: nn.Module, source, device: torch.device) -> None:
    """Persistent buffers stored in the checkpoint are read now (they are small); every buffer moves
    to the compute device."""
    params = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    names = _checkpoint_names(model, source.names())
    stored = {k: names[k] for k in model.state_dict() if k not in params and k in names}
    read = source.read(stored.values()) if stored else {}
    values = {k: read[v] for k, v in stored.items()}
    for module_name, module in model.named_modules():
        for leaf, buffer in list(module._buffers.items()):
            if buffer is None:
                continue
            key = f"{module_name}.{leaf}" if module_name else leaf
            value = values.get(key, buffer)
            module._buffers[leaf] = value.to(device=device, dtype=buffer.dtype)


def load_blockwise(spec: str, *, device: str | torch.device = "cpu", max_memory: int | None = None,
                   offload_dir: str | os.PathLike | None = None) -> tuple[nn.Module, Any, ModelInfo]:
    """(block-wise model, tokenizer, info) of `spec`: a local directory of safetensors weights (one
    file or shards with an index), a .gguf file, or the embedded model. `max_memory` (bytes) is the
    budget later passes plan within (`crescendo.blockwise.memory`); `offload_dir` the folder in which
    rewritten blocks are kept (default: the system's temporary directory).

    Example (a saved model directory at hand):

        model, tokenizer, info = load_blockwise("out/llama", max_memory=parse_memory("1.5GB"))
        perplexity(model, windows)  # all windows through block 0, then block 1, ...
    """
    resolved = resolve_model_spec(spec)
    return_large_blocks()
    config = load_config(resolved)
    model = skeleton(config)
    adapter = get_adapter(model)
    device = torch.device(device)
    aliases = _tied_sets(model)
    groups: dict[str, list[str]] = {OUTSIDE: [], EMBED: [], HEAD: []}
    for i in range(len(adapter.blocks(model))):
        groups[f"block-{i}"] = []
    ends = _ends(model)
    for name, every in aliases.items():
        kinds = {group_of(a, adapter.blocks_path) for a in every}
        if len(kinds) > 1:
            raise ModelError(f"parameter {name} is tied across decoder blocks ({', '.join(every)}); block-wise "
                             f"loading keeps each block's weights apart")
        kind = kinds.pop()
        if kind == OUTSIDE:
            kind = EMBED if any(ends.get(a) == EMBED for a in every) else HEAD if any(a in ends for a in every) \
                else OUTSIDE
        groups[kind].append(name)
    if resolved.gguf_file is not None:
        source = GGUFSource(os.path.join(resolved.location, resolved.gguf_file), model)
    else:
        source = SafetensorsSource(resolved.location)
    source_names = _match(model, source, aliases)
    _load_buffers_(model, source, device)
    files = BlockFiles(offload_dir)
    residency = Residency(source, source_names, files, device, adapter.blocks_path, groups, aliases, max_memory)
    attach_residency_(model, residency)
    tokenizer = load_tokenizer(resolved)
    log.info("block-wise model %s: %d blocks, weights in %s, rewritten blocks in %s", resolved.info.name,
             len(adapter.blocks(model)), source.description, files.directory)
    return model, tokenizer, resolved.info
