"""What a model's files claim about its sizes, checked against each other before anything is allocated.

A config.json says how large a model is; the weights files say what they hold. Building the model
first and comparing shapes afterwards lets a crafted or mistaken config (hidden_size 4096 beside a
64-wide checkpoint) allocate gigabytes before the mismatch is found. So the safetensors headers are
read on their own (a few kilobytes, every field checked against the file's size), the config's model
is built on the meta device (no memory), and the two must agree: every tensor both name has the same
shape, and the config describes at most about as many parameters as the files hold. Only then is the
real model built.

Pure checks: nothing here loads weights or changes a model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelError, one_line

MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit on the JSON header
# bytes per element of every safetensors dtype (sub-byte float formats pack several elements per byte)
ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "I16": 2, "U16": 2, "F16": 2,
            "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "F64": 8, "I64": 8, "U64": 8, "C64": 8}
MAX_DIMS = 8
# Parameters a config may describe per byte of weights on disk: at least one bit per parameter (packed
# 2-bit codes, sparse bitmasks), with room for tied and rebuilt tensors. A float32 checkpoint may then
# describe at most 64 times what it holds, a config beside weights of another size far more.
PARAMETERS_PER_BYTE = 16


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def safetensors_header(path: str | Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{name: (dtype, shape)} of every tensor in a safetensors file, from its header alone (checked
    as `safetensors_layout` checks it)."""
    return {name: (dtype, shape) for name, (dtype, shape, _, _) in safetensors_layout(path).items()}


def safetensors_layout(path: str | Path) -> dict[str, tuple[str, tuple[int, ...], int, int]]:
    """{name: (dtype, shape, first byte, end byte)} of every tensor in a safetensors file, the byte
    range counted from the start of the file, from its header alone.

    Every field is checked against the file before anything is read beyond the header: the header
    length, the JSON object, each entry's dtype, shape and byte range (inside the file, the size its
    dtype and shape imply, no two ranges overlapping). ModelError naming the file otherwise."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            length = int.from_bytes(head, "little") if len(head) == 8 else -1
            if length < 0 or length > min(MAX_HEADER_BYTES, size - 8):
                raise ModelError(f"{path.name} is not a safetensors file (header length {length} does not fit "
                                 f"its {size} bytes)")
            raw = f.read(length)
    except OSError as e:
        raise ModelError(f"{path.name} cannot be read: {e.strerror or e}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ModelError(f"{path.name} is not a safetensors file (its header is not JSON: {one_line(e, 80)})") from None
    if not isinstance(header, dict):
        raise ModelError(f"{path.name} is not a safetensors file (its header is not a JSON object)")
    data_bytes = size - 8 - length
    out: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                raise ModelError(f"{path.name}: __metadata__ must map names to strings")
            continue
        where = f"{path.name}: tensor {name[:80]!r}"
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise ModelError(f"{where} must have exactly dtype, shape and data_offsets")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(dtype, str) or dtype not in ITEMSIZE:
            raise ModelError(f"{where}: unknown dtype {str(dtype)[:20]!r}")
        if (not isinstance(shape, list) or len(shape) > MAX_DIMS
                or not all(_is_int(d) and 0 <= d < 1 << 40 for d in shape)):
            raise ModelError(f"{where}: shape {str(shape)[:60]} is not a list of at most {MAX_DIMS} sizes")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets):
            raise ModelError(f"{where}: data_offsets {str(offsets)[:60]} is not a pair of integers")
        begin, end = offsets
        if not 0 <= begin <= end <= data_bytes:
            raise ModelError(f"{where}: bytes {begin}..{end} are outside the file's {data_bytes} data bytes")
        if end - begin != math.prod(shape) * ITEMSIZE[dtype]:
            raise ModelError(f"{where}: {end - begin} bytes, but {dtype} {tuple(shape)} needs "
                             f"{math.prod(shape) * ITEMSIZE[dtype]}")
        spans.append((begin, end, name))
        out[name] = (dtype, tuple(shape), 8 + length + begin, 8 + length + end)
    spans.sort()
    for (_, end, first), (begin, _, second) in zip(spans, spans[1:]):
        if begin < end:
            raise ModelError(f"{path.name}: tensors {first[:60]!r} and {second[:60]!r} overlap")
    return out


def directory_shapes(directory: str | Path) -> tuple[dict[str, tuple[int, ...]], int]:
    """({name: shape}, total bytes) over every .safetensors file of a model directory (headers only)."""
    shapes: dict[str, tuple[int, ...]] = {}
    held = 0
    for path in sorted(Path(directory).glob("*.safetensors")):
        shapes.update({name: shape for name, (_, shape) in safetensors_header(path).items()})
        held += path.stat().st_size
    return shapes, held


def meta_model(config: dict[str, Any], where: str) -> nn.Module:
    """The causal LM a config.json describes, built on the meta device (no memory is allocated).
    The config must have passed `loading.check_model_config` (bounded sizes)."""
    from transformers import CONFIG_MAPPING, AutoModelForCausalLM

    try:
        from huggingface_hub.errors import StrictDataclassError
    except ImportError:  # pragma: no cover - older huggingface_hub
        StrictDataclassError = ValueError  # noqa: N806

    config = {k: v for k, v in config.items() if k not in ("quantization_config", "auto_map")}
    model_type = config.get("model_type")
    if model_type not in CONFIG_MAPPING:
        raise ModelError(f"{where} names model type {str(model_type)[:40]!r}, which this transformers does not know")
    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(CONFIG_MAPPING[model_type].from_dict(config))
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, ZeroDivisionError, RuntimeError,
            StrictDataclassError) as e:
        raise ModelError(f"{where} does not describe a model transformers can build: {one_line(e, 160)}") from None


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # tied parameters once


def check_config_fits_tensors(config: dict[str, Any], shapes: dict[str, tuple[int, ...]], held_bytes: int,
                              where: str, model: nn.Module | None = None) -> nn.Module:
    """ModelError unless the model `config` describes agrees with what the weights files hold: equal shapes
    wherever both name a tensor (`shapes`, name -> shape), and at most PARAMETERS_PER_BYTE parameters per
    byte of weights (`held_bytes`). Returns the meta model (`model`, when given one already built)."""
    model = model if model is not None else meta_model(config, where)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for name, shape in shapes.items():
        want = expected.get(name)
        if want is not None and want != tuple(shape):
            raise ModelError(f"{where} gives tensor {name} the shape {want}, the weights hold {tuple(shape)}: the "
                             f"config and the weights disagree")
    described = parameter_count(model)
    if described > PARAMETERS_PER_BYTE * held_bytes + (1 << 20):
        raise ModelError(f"{where} describes {described:,} parameters, the weights hold {held_bytes:,} bytes: the "
                         f"config and the weights disagree")
    return model


def check_state_fits(state, model: nn.Module, where: str) -> None:
    """ModelError unless a saved compression state (`CompressionState.from_dict`, fields already typed)
    fits the model it is being attached to, before anything is built from it: a rotation of the model's
    own sizes (its online Hadamards are built from them), removed blocks that account for the blocks the
    model lacks, shared layers that are linears of the model with ranks and widths their weights allow.
    LoRA adapters attach after the sharing is rebuilt: `check_lora_fits`."""
    from .adapters import LINEAR_TYPES, get_adapter, weight_shape

    modules = dict(model.named_modules())

    def linear(name: str, what: str) -> tuple[int, int]:
        module = modules.get(name)
        if module is None or not isinstance(module, LINEAR_TYPES):
            raise ModelError(f"{where}: {what} names {name[:80]!r}, which is no linear layer of the model")
        return weight_shape(module)  # (out, in)

    config = getattr(model, "config", None)
    rotation = state.rotation
    if rotation is not None:
        adapter = get_adapter(model)
        sizes = (getattr(config, "hidden_size", None), getattr(config, "intermediate_size", None))
        if not adapter.rotatable or sizes != (rotation.hidden_size, rotation.intermediate_size):
            raise ModelError(f"{where}: the saved rotation (hidden {rotation.hidden_size}, intermediate "
                             f"{rotation.intermediate_size}) does not fit this {adapter.family} model {sizes}")
    removed = state.removed
    if removed is not None:
        present = len(get_adapter(model).blocks(model))
        if removed.original_layers - len(removed.removed) != present:
            raise ModelError(f"{where}: the saved block removal leaves {removed.original_layers - len(removed.removed)} "
                             f"of {removed.original_layers} blocks, the model has {present}")
    sharing = state.sharing
    if sharing is not None:
        for group in sharing.groups:
            for name in group.members:
                shape = linear(name, "the sharing state")
                if shape != (group.out_features, group.in_features) or group.rank > min(shape):
                    raise ModelError(f"{where}: the shared group of {name} (rank {group.rank}, "
                                     f"{group.out_features}x{group.in_features}) does not fit its {shape[0]}x{shape[1]} "
                                     f"weight")


def check_lora_fits(lora, model: nn.Module, where: str) -> None:
    """ModelError unless every LoRA target of a saved state is a linear of `model` that its rank fits."""
    from .adapters import LINEAR_TYPES, weight_shape

    if lora is None:
        return
    modules = dict(model.named_modules())
    for name in lora.targets:
        module = modules.get(name)
        module = getattr(module, "base_layer", module)  # a layer peft wrapped while transformers loaded it
        if module is None or not isinstance(module, LINEAR_TYPES):
            raise ModelError(f"{where}: the LoRA state names {name[:80]!r}, which is no linear layer of the model")
        out_f, in_f = weight_shape(module)
        if lora.rank > min(out_f, in_f):
            raise ModelError(f"{where}: LoRA rank {lora.rank} exceeds {name}'s {out_f}x{in_f} weight")
