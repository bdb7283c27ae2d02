"""`load`: rebuild the exact compressed model from a `save_packed` directory.

Only JSON and safetensors are read: the config is parsed by the config class registered in
transformers for its `model_type` (an `auto_map` pointing at code in the directory is ignored), the
model is built with `AutoModelForCausalLM.from_config`, and no file is unpickled or imported.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ..errors import ModelError, VerifyError, one_line
from ..models.adapters import set_weight_, weight_shape
from ..models.batchnorm import restore_folded_structure_
from ..models.file_checks import check_config_fits_tensors, check_lora_fits, check_state_fits, safetensors_header
from ..models.loading import check_model_config
from ..models.sharing import restore_sharing_
from ..models.vision_io import build_from_document, is_vision_document
from ..state import CompressionState, record_from_dict, set_state_
from .adapters import load_adapters_
from .layout import dtype_of, entry_shape, linear_tensor_names, unpack_linear
from .manifest import check_manifest
from .save import FORMAT, MANIFEST, METADATA
from .transforms import attach_transforms_

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def read_json(path: Path) -> dict:
    """A JSON object from `path`; ModelError naming the file when it is missing or malformed."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelError(f"{path} not found") from None
    except (OSError, ValueError) as e:
        raise ModelError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path} must hold a JSON object")
    return data


def read_manifest(directory: Path) -> dict:
    """The manifest of a packed export, every field's type and range checked (`manifest.check_manifest`)."""
    manifest = read_json(directory / MANIFEST)
    if manifest.get("format") != FORMAT:
        raise ModelError(f"{directory / MANIFEST} is not a {FORMAT} manifest")
    return check_manifest(manifest, str(directory / MANIFEST))


def weights_path(directory: Path, manifest: dict) -> Path:
    """The manifest's weights file: a bare file name inside `directory`, checked before it is opened
    (a crafted manifest must not make `verify` or `load` read a file elsewhere, e.g. another export's
    weights or /etc/passwd; a symlink out of the directory is refused too)."""
    name = manifest.get("weights")
    if (not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name
            or "\0" in name):
        raise ModelError(f"the manifest's weights path {str(name)[:80]!r} must be a file name inside the export "
                         f"directory")
    path = directory / name
    if path.is_symlink() and path.resolve().parent != directory.resolve():
        raise ModelError(f"the manifest's weights file {name!r} links outside the export directory; it must be a "
                         f"file inside the export directory")
    return path


def read_tensors(directory: Path, manifest: dict) -> dict[str, torch.Tensor]:
    """Every tensor of the weights file (safetensors only; a damaged file raises ModelError)."""
    path = weights_path(directory, manifest)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelError(f"file {path.name} cannot be read: {e}") from None


def build_empty_model(directory: Path, dtype: torch.dtype, manifest: dict | None = None) -> nn.Module:
    """The architecture of config.json with fresh weights, from transformers' own classes only. With the
    export's manifest, config.json is first checked against what the export holds (the manifest's linear
    shapes, the weights file's header), so a config larger than its weights allocates nothing."""
    from transformers import CONFIG_MAPPING, AutoModelForCausalLM

    config_dict = read_json(directory / "config.json")
    if is_vision_document(config_dict):  # a crescendo vision model
        return build_from_document(config_dict, str(directory / "config.json")).to(dtype)
    config_dict.pop("quantization_config", None)  # describes the packed tensors, not the model to build
    config_dict.pop("auto_map", None)  # never code from the directory
    check_model_config(config_dict, str(directory / "config.json"))  # sizes bounded before anything is built
    if manifest is not None:
        shapes, held = stored_shapes(directory, manifest)
        check_config_fits_tensors(config_dict, shapes, held, str(directory / "config.json"))
    model_type = config_dict.get("model_type")
    if model_type not in CONFIG_MAPPING:
        raise ModelError(f"config.json names model type {model_type!r}, which this transformers does not know")
    config = CONFIG_MAPPING[model_type].from_dict(config_dict)
    return AutoModelForCausalLM.from_config(config, dtype=dtype)


def stored_shapes(directory: Path, manifest: dict) -> tuple[dict[str, tuple[int, ...]], int]:
    """(tensor name -> shape, bytes) of what an export holds: the weights file's header for its plain
    tensors, the manifest's shapes for its packed linears (read without loading a tensor)."""
    path = weights_path(directory, manifest)
    if not path.is_file():
        raise ModelError(f"file {path.name} is missing from {directory}")
    shapes = {name: shape for name, (_, shape) in safetensors_header(path).items()}
    for name, entry in linears_of(manifest).items():
        out_f, in_f = entry_shape(f"{name}.weight", entry)  # (out, in) whatever the module's layout
        shapes[f"{name}.weight"] = (in_f, out_f) if entry.get("transposed") is True else (out_f, in_f)  # GPT-2 Conv1D
    return shapes, path.stat().st_size


def linears_of(manifest: dict) -> dict[str, dict]:
    """The manifest's packed linears: {module name: entry}, or ModelError."""
    linears = manifest.get("linears")
    if not isinstance(linears, dict) or not all(isinstance(e, dict) for e in linears.values()):
        raise ModelError("the manifest is malformed: linears must map module names to entries")
    return linears


def _module_tensor(model: nn.Module, key: str) -> torch.Tensor:
    module_name, _, attr = key.rpartition(".")
    try:
        module = model.get_submodule(module_name) if module_name else model
    except AttributeError:
        raise ModelError(f"the saved tensor {key} has no place in the model") from None
    t = getattr(module, attr, None)
    if not isinstance(t, torch.Tensor):
        raise ModelError(f"the saved tensor {key} has no place in the model")
    return t


@torch.no_grad()
def _assign_(model: nn.Module, key: str, value: torch.Tensor) -> None:
    target = _module_tensor(model, key)
    if target.shape != value.shape:
        raise ModelError(f"tensor {key} is {tuple(value.shape)}, the model expects {tuple(target.shape)}")
    if target.dtype == value.dtype:
        target.copy_(value)
    else:  # keep the saved dtype (a float32 norm in a bfloat16 model); .data keeps tied params tied
        target.data = value.clone()


def _load_linears(model: nn.Module, manifest: dict, tensors: dict[str, torch.Tensor]) -> dict[str, tuple]:
    def get(name: str) -> torch.Tensor:
        if name not in tensors:
            raise VerifyError(f"tensor {name} is missing from the weights file")
        return tensors[name]

    modules = dict(model.named_modules())
    out = {}
    for name, entry in manifest["linears"].items():
        module = modules.get(name)
        if module is None or not hasattr(module, "weight"):
            raise ModelError(f"the manifest packs {name!r}, which the model does not have")
        shape = weight_shape(module)
        if entry_shape(f"{name}.weight", entry) != shape:  # before anything of the saved shape is allocated
            raise ModelError(f"{name}: the manifest's shape {entry['shape']} is not the module's {list(shape)}")
        weight, mask, grid, params, _ = unpack_linear(f"{name}.weight", entry, get)
        dtype = dtype_of(entry["dtype"])
        if module.weight.dtype != dtype:
            module.weight.data = module.weight.data.to(dtype)
        set_weight_(module, weight)  # casts the exact float32 values to the saved dtype
        out[name] = (mask, grid, params)
    return out


def load(directory: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, Any, dict]:
    """Rebuild a model saved by `save_packed`: identical weights, records and quantizers.

    Returns (model, tokenizer or None, metadata from crescendo.json). The model is in eval mode on
    `device`, with its compression state (`crescendo.state`) rebuilt (mask, grid, grid parameters, activation grid,
    KV bits, history) and every activation / KV quantizer and online Hadamard re-attached, so its
    logits equal the in-memory compressed model's bit for bit (same device and dtype).

    Raises:
        ModelError: a missing or damaged file, or tensors that do not fit the architecture.
        VerifyError: packed tensors that do not match their manifest entry.

    Example:
        >>> import tempfile, transformers
        >>> from crescendo import compress
        >>> from crescendo.export import save_packed
        >>> config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        ...                                   num_attention_heads=2, num_key_value_heads=2)
        >>> model = transformers.LlamaForCausalLM(config)
        >>> _ = compress(model, "magnitude:0.5 > rtn:w4,g16", progress=False)
        >>> out = save_packed(model, None, tempfile.mkdtemp() + "/llama-w4-s50", {"recipe": "magnitude:0.5 > rtn:w4,g16"})
        >>> reloaded, tokenizer, meta = load(out)
        >>> meta["recipe"], tokenizer is None
        ('magnitude:0.5 > rtn:w4,g16', True)
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    model = build_empty_model(directory, dtype_of(str(manifest.get("dtype"))), manifest)
    state = CompressionState.from_dict(manifest.get("state"))
    check_state_fits(state, model, str(directory / MANIFEST))  # before anything is built from it
    if state.sharing is not None:  # factored layers first: the saved tensors are the factors'
        restore_sharing_(model, state.sharing)
    restore_folded_structure_(model, state.folded_batchnorm)  # `foldbn` replaced batch norms by conv biases
    tensors = read_tensors(directory, manifest)
    rebuilt = _load_linears(model, manifest, tensors)
    packed_keys = {f"{n}.weight" for n in manifest["linears"]}
    plain = set(manifest.get("plain", []))
    expected = set(plain)
    for name, entry in manifest["linears"].items():
        expected.update(linear_tensor_names(f"{name}.weight", entry))
    extra = set(tensors) - expected
    if extra:
        raise ModelError(f"the weights file holds tensors the manifest does not list: {sorted(extra)[:3]}")
    for key in manifest.get("plain", []):
        if key not in tensors:
            raise ModelError(f"tensor {key} is missing from the weights file")
        _assign_(model, key, tensors[key])
    for alias, source in manifest.get("aliases", {}).items():
        a, s = _module_tensor(model, alias), _module_tensor(model, source)
        if a.data_ptr() != s.data_ptr():  # not tied in the rebuilt model: give it the same values
            _assign_(model, alias, s.detach().clone())
    covered = packed_keys | plain | set(manifest.get("aliases", {}))
    missing = [k for k in model.state_dict() if k not in covered]
    if missing:
        raise ModelError(f"the saved model lacks tensors the architecture needs: {missing[:3]}")

    for name, described in manifest.get("records", {}).items():
        mask, grid, params = rebuilt.get(name, (None, None, None))
        state.records[name] = record_from_dict(name, described, mask, grid, params)
    attach_transforms_(model, manifest.get("transforms", {}))
    check_lora_fits(state.lora, model, str(directory / MANIFEST))
    load_adapters_(model, directory, state.lora)  # before the buffer casts: they name the adapters' buffers
    _cast_buffers_(model, manifest.get("buffer_dtypes", {}))
    model.eval().to(device)
    for rec in state.records.values():
        rec.mask = rec.mask.to(device) if rec.mask is not None else None
        if rec.grid_params is not None:
            rec.grid_params = {k: v.to(device) for k, v in rec.grid_params.items()}
    set_state_(model, state)
    tokenizer = _load_tokenizer(directory)
    metadata = read_json(directory / METADATA) if (directory / METADATA).exists() else {}
    return model, tokenizer, metadata


def _cast_buffers_(model: nn.Module, dtypes: dict[str, str]) -> None:
    """Give rebuilt non-persistent buffers the dtype they had when saved."""
    for name, dtype_str in dtypes.items():
        module_name, _, attr = name.rpartition(".")
        module = model.get_submodule(module_name) if module_name else model
        buffer = module._buffers.get(attr)
        if buffer is None:
            raise ModelError(f"the saved model had a buffer {name!r} that the rebuilt one lacks")
        module._buffers[attr] = buffer.to(dtype_of(dtype_str))


def _load_tokenizer(directory: Path) -> Any:
    if not any((directory / f).exists() for f in _TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(directory), trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 - tokenizers raises bare Exceptions on corrupt files
        raise ModelError(f"the tokenizer in {directory} cannot be loaded ({one_line(exc)}); crescendo never runs "
                         f"code from a model directory") from None
