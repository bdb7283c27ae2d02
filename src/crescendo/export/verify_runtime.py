"""`verify` for the runtime formats: a GGUF file and a compressed-tensors directory, against their recipe.

Neither format stores a sparsity mask: a pruned weight is an exact zero. So the mask check is that
every layer the recipe prunes holds at least the zeros the recipe implies (each group of M has at
least N zeros for an N:M stage; the zero fraction is at least the stated ratio, less 0.5 points and
per-row rounding). Grid membership is checked on the stored integers (Q8_0 codes in [-127, 127],
compressed-tensors codes and zero points in their signed range, finite scales), and sizes against the
recipe: each compressed linear occupies exactly the bytes its grid implies.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import VerifyError
from .fit import weight_fits
from .recipe_check import Expectation, recipe_expectations

_LLAMA_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                  "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def check_zeros(key: str, weight: torch.Tensor, expect: Expectation | None) -> float:
    """The zero fraction of `weight` (out, in); VerifyError when it holds fewer zeros than the recipe prunes."""
    zeros = weight == 0
    if expect is None or not expect.pruned:
        return float(zeros.float().mean())
    out_f, in_f = zeros.shape
    for nm in expect.nm:
        if in_f % nm.m:
            raise VerifyError(f"tensor {key}: {in_f} columns do not split into groups of {nm.m}")
        counts = zeros.reshape(out_f, in_f // nm.m, nm.m).sum(dim=2)
        bad = (counts < nm.n).reshape(-1).nonzero()
        if len(bad):
            row, group = divmod(int(bad[0]), in_f // nm.m)
            raise VerifyError(f"tensor {key} row {row}, columns {group * nm.m}..{group * nm.m + nm.m - 1}: "
                              f"{int(counts[row, group])} of {nm.m} weights are zero, the recipe's {nm} needs {nm.n}")
    fraction = float(zeros.float().mean())
    if not expect.nm and expect.ratio_stages:
        target = min(expect.ratio_sum, 1.0)
        if fraction < target - 0.005 - expect.ratio_stages * 0.5 / in_f:
            raise VerifyError(f"tensor {key}: {fraction:.4f} of the weights are zero, the recipe prunes {target:.4f}")
    return fraction


def _llama_names(n_layers: int) -> tuple[list[str], list[str], list[str]]:
    blocks = [f"model.layers.{i}.{n}" for i in range(n_layers) for n in _LLAMA_LINEARS]
    return blocks + ["lm_head"], blocks, [n for n in blocks if n.endswith(("k_proj", "v_proj"))]


# -- GGUF -------------------------------------------------------------------------------------------------
def verify_gguf(path: Path, summary: dict[str, Any]) -> None:
    from gguf import MODEL_ARCH, GGUFReader, dequantize, get_tensor_name_map
    from gguf import GGMLQuantizationType as T

    from ..errors import ModelError
    from ..models.gguf_file import check_gguf

    try:
        summary_of_file = check_gguf(path)  # the structure, in bounded memory, before gguf-py reads it
        reader = GGUFReader(str(path))
    except ModelError as e:
        raise VerifyError(str(e)) from None
    except Exception as e:  # noqa: BLE001 -- a damaged file the walk let through: ValueError, struct / numpy errors
        raise VerifyError(f"file {path.name} cannot be read as GGUF: {e}") from None
    field = lambda key: reader.fields[key].contents() if key in reader.fields else None
    if field("general.architecture") != "llama":
        raise VerifyError(f"{path.name}: architecture {field('general.architecture')!r}, crescendo writes 'llama'")
    n_layers = field("llama.block_count")
    if not isinstance(n_layers, int) or not 1 <= n_layers <= len(summary_of_file.tensors):
        raise VerifyError(f"{path.name}: llama.block_count {str(n_layers)[:40]!r} is not a block count of its "
                          f"{len(summary_of_file.tensors)} tensors")
    recipe, meta = field("crescendo.recipe"), field("crescendo.metadata") or "{}"
    try:
        meta = json.loads(meta) if isinstance(meta, str) else None
    except ValueError:
        meta = None
    if not isinstance(meta, dict) or (recipe is not None and not isinstance(recipe, str)):
        raise VerifyError(f"{path.name}: crescendo.metadata / crescendo.recipe are malformed")
    other = meta.get("other", "f16")
    every, blocks, kv = _llama_names(n_layers)
    expectations = recipe_expectations(recipe, every, blocks, kv)
    names = get_tensor_name_map(MODEL_ARCH.LLAMA, n_layers)
    tensors = {t.name: t for t in reader.tensors}
    summary.update(recipe=recipe, tensors=len(tensors), bytes=path.stat().st_size, format="gguf")
    quantized = {T.Q4_0: "q4_0", T.Q4_1: "q4_1", T.Q8_0: "q8_0"}
    zero_total = elements = 0
    for hf in every:
        gguf_name = f"{names.get_name(hf)}.weight"
        expect = expectations.get(hf, Expectation())
        t = tensors.get(gguf_name)
        if t is None:
            if hf == "lm_head" and "token_embd.weight" in tensors:
                continue  # tied to the embedding
            raise VerifyError(f"tensor {gguf_name} ({hf}) is missing from {path.name}")
        kind = quantized.get(t.tensor_type, t.tensor_type.name.lower())
        want = expect.grid.ggml_type if expect.grid is not None else None
        if want is not None and kind != want:
            raise VerifyError(f"layer {hf}: the recipe puts its weights on {want.upper()}, {gguf_name} is {kind.upper()}")
        if want is None and kind in quantized.values() and kind != other:
            raise VerifyError(f"layer {hf}: the recipe does not quantize it, {gguf_name} is {kind.upper()}")
        data = np.asarray(t.data)
        rows, cols = int(t.shape[1]), int(t.shape[0])  # GGUF lists dimensions innermost first
        if kind in quantized.values():
            _check_blocks(gguf_name, kind, data.reshape(rows, -1))
            if want is not None:
                implied = expect.grid.avg_bits(cols) * rows * cols / 8
                if t.n_bytes != implied:
                    raise VerifyError(f"tensor {gguf_name}: {t.n_bytes} bytes, its {kind.upper()} grid implies {implied:g}")
        weight = torch.from_numpy(np.asarray(dequantize(data, t.tensor_type)).reshape(rows, cols).copy())
        if not torch.isfinite(weight).all():
            raise VerifyError(f"tensor {gguf_name}: holds values that are not finite")
        zero_total += int(check_zeros(gguf_name, weight, expect) * weight.numel())
        elements += weight.numel()
    for name, t in tensors.items():
        if t.tensor_type in (T.F32, T.F16) and not np.isfinite(np.asarray(t.data, dtype=np.float32)).all():
            raise VerifyError(f"tensor {name}: holds values that are not finite")
    summary.update(sparsity=zero_total / elements if elements else 0.0, other=other,
                   types=sorted({quantized.get(t.tensor_type, t.tensor_type.name.lower()) for t in reader.tensors}))


def _check_blocks(name: str, kind: str, blocks: np.ndarray) -> None:
    """Finite float16 block parameters; Q8_0 codes in [-127, 127] (llama.cpp never writes -128)."""
    rows = blocks.shape[0]
    nb_bytes = {"q8_0": 34, "q4_0": 18, "q4_1": 20}[kind]
    b = blocks.reshape(rows, -1, nb_bytes)
    params = b[..., : 4 if kind == "q4_1" else 2].copy().view(np.float16)
    if not np.isfinite(params).all():
        row = int(np.argwhere(~np.isfinite(params))[0][0])
        raise VerifyError(f"tensor {name} row {row}: a block scale is not finite")
    if kind == "q8_0":
        codes = b[..., 2:].copy().view(np.int8)
        if (codes == -128).any():
            row, block, j = (int(x) for x in np.argwhere(codes == -128)[0])
            raise VerifyError(f"tensor {name} row {row}, column {block * 32 + j}: code -128 is off the Q8_0 grid")


# -- compressed-tensors ------------------------------------------------------------------------------------
def verify_ct(directory: Path, summary: dict[str, Any]) -> None:
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationConfig
    from safetensors.torch import load_file

    try:
        config = json.loads((directory / "config.json").read_text())
        described = config.get("quantization_config")  # absent when the recipe only prunes
        qc = QuantizationConfig.model_validate(described) if described is not None else None
        tensors = load_file(str(directory / "model.safetensors"))
    except Exception as e:  # noqa: BLE001 -- missing / damaged files, a config compressed-tensors rejects
        raise VerifyError(f"{directory} is not a readable compressed-tensors export: {e}") from None
    meta = _crescendo_json(directory)
    recipe = meta.get("recipe")
    if recipe is not None and not isinstance(recipe, str):
        raise VerifyError(f"{directory / 'crescendo.json'}: recipe must be a string")
    every, blocks, kv = _linear_names_of(config)
    expectations = recipe_expectations(recipe, every, blocks, kv)
    groups = qc.config_groups.values() if qc is not None else []
    targeted = {name: scheme for scheme in groups for name in scheme.targets}
    summary.update(recipe=recipe, tensors=len(tensors), bytes=(directory / "model.safetensors").stat().st_size,
                   format="compressed-tensors", schemes=sorted({s.format for s in groups}))
    zero_total = elements = 0
    for name in every:
        expect = expectations.get(name, Expectation())
        scheme = targeted.get(name)
        if (expect.grid is None) != (scheme is None):
            raise VerifyError(f"layer {name}: the recipe {'quantizes' if expect.grid else 'does not quantize'} it, "
                              f"the config {'targets' if scheme else 'does not target'} it")
        if scheme is None:
            weight = tensors.get(f"{name}.weight")
            if weight is None and name == "lm_head":
                continue
            if weight is None:
                raise VerifyError(f"tensor {name}.weight is missing")
        else:
            _check_scheme(name, expect, scheme)
            local = {k.removeprefix(f"{name}."): v for k, v in tensors.items() if k.startswith(f"{name}.")}
            compressor = BaseCompressor.get_value_from_registry(scheme.format)
            for param in compressor.compression_param_names(scheme):
                if param not in local:
                    raise VerifyError(f"tensor {name}.{param} is missing")
            _check_codes(name, scheme, local)
            weight = compressor.decompress(local, scheme)["weight"]
        if not torch.isfinite(weight).all():
            raise VerifyError(f"tensor {name}.weight: holds values that are not finite")
        zero_total += int(check_zeros(f"{name}.weight", weight.float(), expect) * weight.numel())
        elements += weight.numel()
    summary.update(sparsity=zero_total / elements if elements else 0.0)


def _crescendo_json(directory: Path) -> dict:
    path = directory / "crescendo.json"
    if not path.exists():
        return {}
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise VerifyError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(meta, dict):
        raise VerifyError(f"{path} must hold a JSON object")
    return meta


def _linear_names_of(config: dict) -> tuple[list[str], list[str], list[str]]:
    """Every linear, the decoder-block linears and the k/v projections of the architecture in config.json,
    from a model built on the meta device (no weights are allocated, no code from the directory runs)."""
    from transformers import CONFIG_MAPPING, AutoModelForCausalLM

    from ..errors import CrescendoError
    from ..models.loading import check_model_config
    from .save import _linear_names

    if not isinstance(config, dict):
        raise VerifyError("config.json must hold a JSON object")
    config = {k: v for k, v in config.items() if k not in ("quantization_config", "auto_map")}
    try:
        check_model_config(config, "config.json")  # bounded sizes before even a meta model is built
    except CrescendoError as e:
        raise VerifyError(str(e)) from None
    if config.get("model_type") not in CONFIG_MAPPING:
        raise VerifyError(f"config.json names model type {config.get('model_type')!r}, unknown to transformers")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(CONFIG_MAPPING[config["model_type"]].from_dict(config))
    return _linear_names(model)


def _check_scheme(name: str, expect: Expectation, scheme) -> None:
    from .compressed_tensors import _weight_args

    w = scheme.weights
    group = w.group_size if w.strategy == "group" else None
    want = _weight_args(expect.grid) if weight_fits("compressed-tensors", expect.grid) else None
    if want is None or (want["num_bits"], want["type"], want["symmetric"], want["group_size"]) != \
            (w.num_bits, w.type, w.symmetric, group):
        raise VerifyError(f"layer {name}: the recipe puts its weights on {expect.grid!r}, the config stores "
                          f"{w.num_bits}-bit {'symmetric' if w.symmetric else 'asymmetric'} {w.strategy} {group or ''}")
    if (expect.act_grid is None) != (scheme.input_activations is None):
        raise VerifyError(f"layer {name}: the recipe's activation quantizer {expect.act_grid!r} disagrees with the "
                          f"config's {scheme.input_activations}")


def _check_codes(name: str, scheme, local: dict[str, torch.Tensor]) -> None:
    """Finite positive-or-negative (never zero) scales; stored integer codes and zero points in range."""
    bits = scheme.weights.num_bits
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    scale = local["weight_scale"]
    if scale.dtype == torch.uint8:  # E8M0 exponents: 255 is NaN
        if (scale == 255).any():
            raise VerifyError(f"tensor {name}.weight_scale: E8M0 code 255 (NaN)")
        return
    if not torch.isfinite(scale).all() or (scale == 0).any():
        raise VerifyError(f"tensor {name}.weight_scale: a scale is zero or not finite")
    for key in ("weight", "weight_zero_point"):
        t = local.get(key)
        if t is None or t.is_floating_point() or (key == "weight_zero_point" and t.dtype == torch.int32):
            continue  # float weights belong to no scheme here; packed zero points are unpacked by decompress
        bad = ((t.to(torch.int64) < lo) | (t.to(torch.int64) > hi)).reshape(-1).nonzero()
        if len(bad):
            i = int(bad[0])
            raise VerifyError(f"tensor {name}.{key} index {i}: {int(t.reshape(-1)[i])} is outside the "
                              f"{bits}-bit range [{lo}, {hi}]")
    packed = local.get("weight_packed")
    if packed is not None:
        rows, cols = (int(x) for x in local["weight_shape"])
        want = (rows, math.ceil(cols * bits / 32))
        if tuple(packed.shape) != want or packed.dtype != torch.int32:
            raise VerifyError(f"tensor {name}.weight_packed is {packed.dtype} {tuple(packed.shape)}, "
                              f"{bits}-bit codes of a {rows}x{cols} weight are int32 {want}")
