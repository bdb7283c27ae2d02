"""`save_gguf`: one .gguf file that llama.cpp runs and transformers' GGUF loader reads back.

Every compressed linear is stored in the llama.cpp block type its grid *is* (`Grid.ggml_type`: Q8_0,
Q4_0, Q4_1), written from its recorded codes and float16 block parameters, so the file holds exactly
the weights crescendo measured; each one is decoded again with gguf-py's own dequantizer before
anything is written, and a mismatch is an error. Pruned weights are stored as the zeros they are.
Other tensors are stored as the caller asks (`other`: F16 by default, BF16, F32, or Q8_0 for
matrices); 1-D tensors (norms) stay F32 as llama.cpp's converter keeps them. Whether that cast
changed any value is reported: `f32` (or `q8_0` for an embedding that already was Q8_0, as the
embedded model's is) keeps the whole model exact.

LLaMA-architecture models only (llama.cpp's `llama` arch); q_proj / k_proj rows are permuted into
llama.cpp's rotary layout, which transformers' loader undoes. Tokenizer: see `gguf_vocab`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..errors import ConfigError, ModelError, VerifyError
from ..models.adapters import get_adapter, get_weight
from ..outputs import atomic_output_file, check_output_file, without_timings
from ..state import state_of
from .gguf_vocab import add_tokenizer_fields, check_tokenizer, copy_tokenizer_fields
from .streaming import state_items, tied_keys

OTHER_TYPES = ("f16", "bf16", "f32", "q8_0")
BLOCK_BYTES = {"q8_0": 34, "q4_0": 18, "q4_1": 20}


@dataclass
class GGUFReport:
    """What `save_gguf` wrote: per-type tensor counts, and the tensors whose values the `other` cast changed."""

    path: Path
    types: dict[str, int] = field(default_factory=dict)
    changed: dict[str, float] = field(default_factory=dict)  # tensor -> max |change| of the cast
    tokenizer: str = "none"

    @property
    def exact(self) -> bool:
        return not self.changed


def _ggml(name: str):
    from gguf import GGMLQuantizationType

    return GGMLQuantizationType[name.upper()]


def pack_blocks(kind: str, codes: torch.Tensor, stored: dict[str, torch.Tensor]) -> np.ndarray:
    """llama.cpp block bytes (rows, n_blocks * block_bytes) uint8 of unsigned codes (rows, cols) and
    float16 parameters {"scale": (rows, n_blocks)[, "min": ...]} (ggml-common.h `block_q4_0` etc.)."""
    rows, cols = codes.shape
    nb = cols // 32
    q = codes.reshape(rows, nb, 32).numpy()
    d = stored["scale"].numpy().astype(np.float16).view(np.uint8).reshape(rows, nb, 2)
    if kind == "q8_0":
        body = (q - 128).astype(np.int8).view(np.uint8)
        parts = [d, body]
    else:  # element j in the low nibble of byte j, element j + 16 in its high nibble
        body = (q[..., :16] | (q[..., 16:] << 4)).astype(np.uint8)
        parts = [d] + ([stored["min"].numpy().astype(np.float16).view(np.uint8).reshape(rows, nb, 2)]
                       if kind == "q4_1" else []) + [body]
    return np.concatenate(parts, axis=-1).reshape(rows, nb * BLOCK_BYTES[kind])


def rotary_permutation(rows: int, n_head: int) -> torch.Tensor:
    """Row order of llama.cpp's q/k layout (`LlamaModel.permute` in convert_hf_to_gguf.py)."""
    index = torch.arange(rows)
    return index.reshape(n_head, 2, rows // n_head // 2).transpose(1, 2).reshape(rows)


def _rope_theta(config) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    if params.get("rope_type", "default") != "default":
        raise ConfigError(f"rope scaling {params.get('rope_type')!r} is not written into GGUF files by crescendo")
    return float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def check_gguf_model(model: nn.Module, tokenizer: Any, source_gguf: str | None = None) -> None:
    """ConfigError when the model (or its state) cannot be described by a GGUF file exactly."""
    config = model.config
    if config.model_type != "llama":
        raise ConfigError(f"GGUF export writes LLaMA-architecture models; this one is {config.model_type!r}")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise ConfigError("GGUF export: this LLaMA has linear biases, which transformers' GGUF loader does not read")
    _rope_theta(config)
    state = state_of(model)
    if state.rotation is not None:
        raise ConfigError("GGUF cannot hold a rotated model: it needs an online Hadamard before every down_proj")
    for name, rec in state.records.items():
        if rec.act_grid is not None or rec.kv_bits is not None:
            raise ConfigError(f"GGUF cannot hold {name}'s activation / KV quantizer")
        if rec.grid is not None and rec.grid.ggml_type is None:
            raise ConfigError(f"GGUF cannot hold {name}'s weights on {rec.grid!r} exactly")
    modules = dict(model.named_modules())
    for name, rec in state.records.items():
        cols = get_weight(modules[name]).shape[1]
        if rec.grid is not None and cols % 32:
            raise ConfigError(f"{name}: {cols} input features do not split into llama.cpp blocks of 32")
    if source_gguf is None:
        check_tokenizer(tokenizer)


def _hparams(writer, model: nn.Module, n_layers: int, name: str) -> None:
    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    writer.add_name(name)
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_rope_freq_base(_rope_theta(c))
    writer.add_layer_norm_rms_eps(float(c.rms_norm_eps))
    writer.add_rope_dimension_count(head_dim)
    if head_dim != c.hidden_size // c.num_attention_heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_vocab_size(model.get_input_embeddings().weight.shape[0])


def _cast(t: torch.Tensor, other: str) -> tuple[np.ndarray, Any, float]:
    """(array to write, raw ggml type or None, max |change|) of a tensor outside the compressed linears."""
    from gguf import GGMLQuantizationType, dequantize, quantize

    x = t.detach().cpu().float().contiguous()
    kind = "f32" if x.dim() == 1 or other == "f32" else other
    if kind == "q8_0" and x.shape[-1] % 32:
        kind = "f16"
    if kind == "f32":
        return x.numpy(), None, 0.0
    if kind == "f16":
        data, raw = x.numpy().astype(np.float16), None
    else:
        raw = _ggml(kind)
        data = quantize(x.numpy(), raw)
    back = dequantize(data.view(np.uint8) if raw is not None else data, raw or GGMLQuantizationType.F16)
    change = float(np.abs(back.reshape(x.shape) - x.numpy()).max()) if x.numel() else 0.0
    return data, raw, change


def save_gguf(model: nn.Module, tokenizer: Any, path: str | os.PathLike, metadata: dict[str, Any], *,
              other: str = "f16", source_gguf: str | None = None) -> GGUFReport:
    """Write a compressed LLaMA model as one GGUF file (see the module docstring).

    Args:
        model: a model compressed by crescendo whose weight grids are llama.cpp types (fmt=q8_0 / q4_0 /
            q4_1); uncompressed models are written with every matrix in `other`.
        tokenizer: a byte-level BPE fast tokenizer, or None (no vocabulary is written then; llama.cpp
            needs one, transformers' model loader does not).
        path: the .gguf file to create; must not exist (ConfigError), written to a temporary sibling
            and renamed, so a failure leaves nothing.
        metadata: JSON-able run metadata, stored under `crescendo.metadata` (recipe under `crescendo.recipe`);
            durations are left out (`outputs.without_timings`), so identical runs write identical files.
        other: type of the tensors outside the compressed linears: f16 (default), bf16, f32, or q8_0.
        source_gguf: the GGUF file the model was loaded from; its tokenizer keys are copied verbatim.

    Raises:
        ConfigError: the model, its state, its tokenizer or the path cannot be written (nothing written).
        VerifyError: a compressed weight that is not on its recorded grid.

    Usage (a model loaded with its tokenizer; the tests run this on a tiny LLaMA)::

        compress(model, "gptq:w4,g32,sym,fmt=q4_0", calibration)
        save_gguf(model, tokenizer, "out/model-q4_0.gguf", {"recipe": "gptq:w4,g32,sym,fmt=q4_0"}).types
        # {'q4_0': 14, 'f16': 2, 'f32': 5}
    """
    from gguf import MODEL_ARCH, GGUFWriter, get_tensor_name_map

    out = Path(path)
    if out.exists():
        raise ConfigError(f"output file {out} exists")
    check_output_file(out)
    if other not in OTHER_TYPES:
        raise ConfigError(f"unknown GGUF type {other!r} for the other tensors; expected one of {', '.join(OTHER_TYPES)}")
    check_gguf_model(model, tokenizer, source_gguf)
    adapter = get_adapter(model)
    n_layers = len(adapter.blocks(model))
    if n_layers != model.config.num_hidden_layers:
        raise ModelError(f"the model has {n_layers} decoder blocks, its config says {model.config.num_hidden_layers}")
    names = get_tensor_name_map(MODEL_ARCH.LLAMA, n_layers)
    report = GGUFReport(out)
    infos = []  # first pass: every tensor's type and size (the header precedes the data) and the cast changes
    for gguf_name, key, data, raw, kind, change in _tensors(model, names, other):
        if change:
            report.changed[key] = change
        report.types[kind] = report.types.get(kind, 0) + 1
        infos.append((gguf_name, data.shape, data.dtype, data.nbytes, raw))
    c = model.config

    metadata = without_timings(metadata)
    with atomic_output_file(out) as tmp:  # removed on any failure; no temporary of a killed run survives either
        writer = GGUFWriter(str(tmp), "llama")
        _hparams(writer, model, n_layers, str(metadata.get("model", getattr(c, "name_or_path", "")) or "crescendo"))
        counts = {k: v for k, v in report.types.items() if k in ("q4_0", "q4_1", "q8_0")}
        writer.add_file_type(_file_type(max(counts, key=counts.get) if counts else other))
        writer.add_quantization_version(2)
        if source_gguf is not None:
            copy_tokenizer_fields(writer, source_gguf)
            report.tokenizer = f"copied from {Path(source_gguf).name}"
        elif tokenizer is not None:
            add_tokenizer_fields(writer, tokenizer, model.get_input_embeddings().weight.shape[0])
            report.tokenizer = "byte-level BPE (gpt2)"
        writer.add_string("crescendo.version", __version__)
        if metadata.get("recipe"):
            writer.add_string("crescendo.recipe", str(metadata["recipe"]))
        writer.add_string("crescendo.metadata", json.dumps({**metadata, "format": "gguf", "other": other,
                                                            "changed_by_cast": report.changed}, default=str))
        for gguf_name, shape, dtype, nbytes, raw in infos:
            writer.add_tensor_info(gguf_name, shape, dtype, nbytes, raw_dtype=raw)  # quantized: (rows, row bytes)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for _, _, data, _, _, _ in _tensors(model, names, other):  # second pass: the data, one tensor at a time
            writer.write_tensor_data(data)
        writer.close()
    return report


def _tensors(model: nn.Module, names, other: str):
    """(GGUF name, state-dict key, array, raw ggml type, type name, max |change| of the cast) of every
    tensor in state-dict order, one group of a block-wise model loaded at a time (`export.streaming`);
    a tied repeat is left out (llama.cpp falls back to token_embd without output.weight)."""
    records = state_of(model).records
    modules = dict(model.named_modules())
    c = model.config
    tied = tied_keys(model)
    for key, t in state_items(model):
        if key in tied:
            continue
        module_name, _, suffix = key.rpartition(".")
        gguf_name = names.get_name(module_name)
        if gguf_name is None:
            raise ConfigError(f"tensor {key} has no place in a llama.cpp LLaMA file")
        gguf_name += f".{suffix}"
        rec = records.get(module_name)
        perm = None
        if module_name.endswith(("q_proj", "k_proj")) and suffix == "weight":
            heads = c.num_attention_heads if module_name.endswith("q_proj") else c.num_key_value_heads
            perm = rotary_permutation(t.shape[0], heads)
        if rec is not None and rec.grid is not None and suffix == "weight":
            data, kind = _compressed(key, get_weight(modules[module_name]), rec, perm)
            yield gguf_name, key, data, _ggml(kind), kind, 0.0
        else:
            x = t if perm is None else t[perm]
            data, raw, change = _cast(x, other)
            kind = raw.name.lower() if raw is not None else ("f32" if data.dtype == np.float32 else "f16")
            yield gguf_name, key, data, raw, kind, change


def _file_type(kind: str) -> int:
    from gguf import LlamaFileType

    return int({"q4_0": LlamaFileType.MOSTLY_Q4_0, "q4_1": LlamaFileType.MOSTLY_Q4_1,
                "q8_0": LlamaFileType.MOSTLY_Q8_0, "f32": LlamaFileType.ALL_F32,
                "bf16": LlamaFileType.MOSTLY_BF16}.get(kind, LlamaFileType.MOSTLY_F16))


def _compressed(key: str, weight: torch.Tensor, rec, perm: torch.Tensor | None) -> tuple[np.ndarray, str]:
    """Block bytes of one compressed linear, checked against gguf-py's dequantizer bit for bit."""
    from gguf import dequantize

    grid, kind = rec.grid, rec.grid.ggml_type
    params = {k: v.detach().cpu() for k, v in rec.grid_params.items()}
    weight = weight.detach().cpu().float()
    if perm is not None:
        weight, params = weight[perm], {k: v[perm] for k, v in params.items()}
    codes = grid.encode_all(weight, params)
    data = pack_blocks(kind, codes, grid.store_params(params))
    back = torch.from_numpy(dequantize(data, _ggml(kind)).copy()).reshape(weight.shape)
    if not torch.equal(back, weight):  # equal as float32 values; llama.cpp's Q4_0 writes 0 as -0 when d < 0
        i = int((back != weight).reshape(-1).nonzero()[0])
        raise VerifyError(f"tensor {key} index {i}: weight {weight.reshape(-1)[i].item()!r} is not on its recorded "
                          f"{kind.upper()} grid (the file would hold {back.reshape(-1)[i].item()!r})")
    return data, kind
