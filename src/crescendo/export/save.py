"""`save_packed`: write a compressed model as packed integer codes, scales and sparsity bitmasks.

The directory holds (see the README for the full layout):

    config.json                  the model config as transformers wrote it (no `quantization_config`: the
                                 tensors are crescendo's own layout, which no runtime's quantizer reads)
    generation_config.json       when the model has one
    tokenizer files              whatever `tokenizer.save_pretrained` writes
    crescendo-packed.safetensors packed linears (layout.py) and every other tensor as it is
    crescendo_export.json        the manifest: per-linear grid, shape, mask, records, transforms, aliases
    crescendo.json               the run's metadata: recipe, protocol, metrics, crescendo version (no timings:
                                 identical runs write identical files)
    adapter_config.json, adapter_model.safetensors   unmerged LoRA adapters, in peft's format (adapters.py)

Nothing in it is code or a pickle: `crescendo.load` reads JSON and safetensors only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..blockwise.writer import SafetensorsStream
from ..errors import CrescendoError, ModelError, VerifyError
from ..models.adapters import LINEAR_TYPES, get_adapter, get_weight, is_transposed
from ..models.vision import VisionClassifier
from ..models.vision_io import vision_config_document
from ..outputs import atomic_output_dir, check_output_dir, without_timings
from ..state import state_of
from .adapters import save_adapters
from .layout import dtype_name, pack_linear, unpack_linear
from .streaming import state_items, tied_keys
from .transforms import describe_transforms

FORMAT = "crescendo-packed"
VERSION = 1
MANIFEST = "crescendo_export.json"
METADATA = "crescendo.json"
WEIGHTS = "crescendo-packed.safetensors"


def _first_mismatch(a: torch.Tensor, b: torch.Tensor) -> int:
    diff = (a != b).reshape(-1).nonzero()
    return int(diff[0]) if len(diff) else -1


def _packed_names(model: nn.Module, records: dict) -> list[str]:
    """The linears stored packed: every one whose record has a grid or a mask (checked to be a linear)."""
    modules = dict(model.named_modules())
    names = []
    for name, rec in records.items():
        if rec.grid is None and rec.mask is None:
            continue
        if not isinstance(modules.get(name), LINEAR_TYPES):
            raise ModelError(f"record {name!r} names no linear module of this model")
        names.append(name)
    return names


def _pack_one(name: str, module: nn.Module, rec) -> tuple[dict[str, torch.Tensor], dict]:
    """Packed tensors and manifest entry of one compressed linear, checked to rebuild it bit for bit."""
    key = f"{name}.weight"
    weight = get_weight(module)  # (out, in) float32, exact upcast of the module's dtype
    dtype = module.weight.dtype
    packed, entry = pack_linear(key, weight, rec.mask, rec.grid, rec.grid_params, dtype)
    # what load() will rebuild must be what the module holds, bit for bit: refuse otherwise
    rebuilt = unpack_linear(key, entry, packed.__getitem__)[0].to(dtype)
    expected = weight.to(dtype)
    if not torch.equal(rebuilt, expected):
        i = _first_mismatch(rebuilt, expected)
        raise VerifyError(f"tensor {key} index {i}: weight {expected.reshape(-1)[i].item()!r} is not on "
                          f"its recorded grid / mask (packs to {rebuilt.reshape(-1)[i].item()!r})")
    entry["transposed"] = is_transposed(module)
    return packed, entry


def _write_tensors(model: nn.Module, records: dict, path) -> tuple[dict[str, dict], list[str], dict[str, str]]:
    """Stream every tensor into the weights file at `path`, in state-dict order: a packed linear's
    tensors where its weight comes, every other tensor as it is, once per shared tensor (a tied
    embedding is rebuilt from the packed head it shares). Returns (entries, plain names, aliases)."""
    packed = _packed_names(model, records)
    owners = {f"{n}.weight": n for n in packed}
    aliases = tied_keys(model, owners)  # a packed weight owns its memory: names tied to it alias it
    modules = dict(model.named_modules())
    entries: dict[str, dict] = {}
    plain: list[str] = []
    # one metadata key: safetensors readers keep the map as written, and a fixed one keeps identical
    # runs byte-identical (the layout is named by the manifest beside it)
    with SafetensorsStream(path, {"format": "pt"}) as stream:
        for key, t in state_items(model):
            if key in aliases:
                continue
            if key in owners:
                name = owners[key]
                tensors, entries[name] = _pack_one(name, modules[name], records[name])
                for k, v in tensors.items():
                    stream.add(k, v)
            else:
                stream.add(key, t.detach().cpu())
                plain.append(key)
    return entries, plain, aliases


def _buffer_dtypes(model: nn.Module) -> dict[str, str]:
    """Dtypes of the non-persistent buffers (rotary inv_freq, online Hadamards): they are rebuilt, not
    saved, and `model.to(dtype)` may have cast them, which changes the logits."""
    persistent = set(model.state_dict())
    return {n: dtype_name(b.dtype) for n, b in model.named_buffers() if n not in persistent and b.is_floating_point()}


def _linear_names(model: nn.Module) -> tuple[list[str], list[str], list[str]]:
    """Every linear, the decoder-block linears and the key/value projections (what `verify` checks)."""
    adapter = get_adapter(model)
    every = [n for n, m in model.named_modules() if isinstance(m, LINEAR_TYPES)]
    return every, list(adapter.all_block_linears(model)), [n for n in every if adapter.is_kv_projection(n)]


def _sparsity(entries: dict[str, dict], recipe: str | None) -> dict[str, Any]:
    masked = {n: e for n, e in entries.items() if e["masked"]}
    if not masked:
        return {"structure": None}
    total = sum(e["shape"][0] * e["shape"][1] for e in masked.values())
    kept = sum(e["kept"] for e in masked.values())
    structure = "unstructured"
    if recipe:
        from ..recipe import parse_recipe

        try:
            stages = parse_recipe(recipe).stages
        except CrescendoError:  # metadata only here; `verify` reports a recipe that does not parse
            stages = ()
        nms = {str(s.config.sparsity.nm) for s in stages if s.config.sparsity is not None and s.config.sparsity.nm}
        structure = nms.pop() if len(nms) == 1 else structure
    return {"global_sparsity": 1.0 - kept / total, "structure": structure, "targets": sorted(masked)}


def save_packed(model: nn.Module, tokenizer: Any, out_dir: str | os.PathLike, metadata: dict[str, Any]) -> Path:
    """Save a compressed model with packed integer weights, grid parameters and sparsity bitmasks.

    Every linear whose record (`crescendo.state`) has a grid and/or a mask is stored as the bit-packed
    codes of its kept elements, its scales / zero points / exponents and a 1-bit-per-weight mask;
    everything else (embeddings, norms, biases, an untied lm_head) is stored as it is. The directory
    is written to a temporary sibling and renamed at the end, so a failed save leaves nothing behind.
    The packed format is reloaded with `crescendo.export.load`; transformers' `from_pretrained`
    cannot read it, and its config.json declares no quantization method. It is the format for grids no
    runtime stores (HBFP, MX variants, INT-k block, KV fake-quantization, rotations); `save_gguf` and
    `save_compressed_tensors` write what llama.cpp and transformers / vLLM load.

    Args:
        model: a compressed model (records attached by `crescendo.compress`).
        tokenizer: its tokenizer, or None.
        out_dir: the target directory; must not exist or be empty (else ConfigError).
        metadata: JSON-able run metadata; `metadata["recipe"]` (the recipe text) is checked by `verify`.

    Raises:
        ConfigError: bad target directory, or a transform that cannot be saved.
        VerifyError: a weight that is not on its recorded grid (it could not be reloaded exactly).

    Example:
        >>> import tempfile, transformers
        >>> from crescendo import compress
        >>> config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        ...                                   num_attention_heads=2, num_key_value_heads=2)
        >>> model = transformers.LlamaForCausalLM(config)
        >>> _ = compress(model, "magnitude:0.5 > rtn:w4,g16", progress=False)
        >>> out = save_packed(model, None, tempfile.mkdtemp() + "/llama-w4-s50", {"recipe": "magnitude:0.5 > rtn:w4,g16"})
        >>> sorted(p.name for p in out.iterdir())
        ['config.json', 'crescendo-packed.safetensors', 'crescendo.json', 'crescendo_export.json', 'generation_config.json']
    """
    out = check_output_dir(out_dir)
    state = state_of(model)
    records = state.records
    _packed_names(model, records)  # a record naming no linear is refused before anything is written
    every, blocks, kv_projections = _linear_names(model)
    recipe = metadata.get("recipe")
    recipe = str(recipe) if recipe is not None else None
    dtype = getattr(model, "dtype", None) or next(model.parameters()).dtype
    transforms = describe_transforms(model)

    with atomic_output_dir(out) as tmp:
        if isinstance(model, VisionClassifier):  # crescendo's own vision models: their config.json layout
            (tmp / "config.json").write_text(json.dumps(vision_config_document(model)))
        else:
            model.config.save_pretrained(tmp)
        config = json.loads((tmp / "config.json").read_text())
        if config.pop("quantization_config", None) is not None:  # the source model's, not these tensors'
            (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        generation = getattr(model, "generation_config", None)
        if generation is not None:
            generation.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        entries, plain, aliases = _write_tensors(model, records, tmp / WEIGHTS)
        manifest = {
            "format": FORMAT, "version": VERSION, "crescendo_version": __version__,
            "weights": WEIGHTS, "dtype": dtype_name(dtype), "recipe": recipe,
            "linears": entries,
            "records": {n: {"packed": n in entries, **r.describe()} for n, r in records.items()},
            "state": state.to_dict(),
            "plain": sorted(plain), "aliases": aliases,
            "transforms": transforms,
            "buffer_dtypes": _buffer_dtypes(model),
            "all_linears": every, "block_linears": blocks, "kv_projections": kv_projections,
            "sparsity": _sparsity(entries, recipe),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        (tmp / METADATA).write_text(json.dumps({**without_timings(metadata), "crescendo_version": __version__,
                                                "format": "packed"}, indent=2, default=str))
        save_adapters(model, tmp)  # unmerged LoRA adapters, in peft's files
    return out
