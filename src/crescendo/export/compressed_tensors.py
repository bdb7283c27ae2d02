"""`save_compressed_tensors`: a directory `AutoModelForCausalLM.from_pretrained` loads with compressed-tensors.

Every compressed linear whose grid is an integer grid (`Grid.integer_form`: RTN / GPTQ uniform grids
per channel or group, INT-k block, llama.cpp Q8_0 / Q4_0) or an MX grid compressed-tensors has a format
for (MXFP4, MXFP6 E2M3, MXFP8 E4M3 in blocks of 32) is handed, with its recorded scales and zero
points, to compressed-tensors' own compressor for its scheme (`pack-quantized` for weight-only
W4A16 / W8A16, `int-quantized` for int8 W8A8 with dynamic per-token activations); the compressor
computes and packs the integer codes itself, and each layer is decompressed again with the same
library before anything is written: a weight that does not come back bit for bit is an error.
`config.json` gets the `quantization_config` compressed-tensors writes (`ModelCompressor.update_config`).

Scales are stored in float32 (crescendo's scales are float32; rounding them would move every weight
off the grid), zero points as int8 in compressed-tensors' signed convention. Pruned weights are stored
as the zeros they are: compressed-tensors no longer writes sparse formats, and vLLM dropped its
sparse kernels, so sparsity saves nothing on disk in this format.
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
from ..errors import ConfigError, VerifyError
from ..grids import Grid
from ..models.adapters import get_weight
from ..outputs import atomic_output_dir, check_output_dir, without_timings
from ..state import state_of
from .fit import CT_MX_ELEMENTS, act_fits, weight_fits
from .streaming import state_items, tied_keys

WEIGHTS = "model.safetensors"


def _weight_args(grid: Grid) -> dict:
    mx = grid.microscaling_form()
    if mx is not None:
        return {"num_bits": CT_MX_ELEMENTS[mx[0]], "type": "float", "symmetric": True, "strategy": "group",
                "group_size": mx[1], "dynamic": False, "scale_dtype": "torch.uint8", "zp_dtype": "torch.uint8"}
    form = grid.integer_form()
    strategy = "channel" if form.group_size is None else "group"
    return {"num_bits": form.bits, "type": "int", "symmetric": form.symmetric, "strategy": strategy,
            "group_size": form.group_size, "dynamic": False}


def _act_args(grid: Grid | None) -> dict | None:
    if grid is None:
        return None
    return {"num_bits": grid.bits, "type": "int", "symmetric": True, "strategy": "token", "dynamic": True}


def check_ct_model(model: nn.Module) -> None:
    """ConfigError when the model's compression state has no exact compressed-tensors description."""
    state = state_of(model)
    if state.rotation is not None:
        raise ConfigError("compressed-tensors cannot hold a rotated model: it needs an online Hadamard before "
                          "every down_proj at run time")
    modules = dict(model.named_modules())
    for name, rec in state.records.items():
        if rec.kv_bits is not None:
            raise ConfigError(f"{name}: crescendo's KV-cache fake-quantization has no compressed-tensors counterpart")
        if rec.act_grid is not None and not act_fits("compressed-tensors", rec.act_grid):
            raise ConfigError(f"{name}: activation quantizer {rec.act_grid!r} is not compressed-tensors' (use fmt=ct)")
        if rec.act_grid is not None and rec.grid is None:
            raise ConfigError(f"{name}: activations are quantized but weights are not; compressed-tensors "
                              f"schemes here quantize both")
        if rec.grid is None:
            continue
        if not weight_fits("compressed-tensors", rec.grid):
            raise ConfigError(f"{name}: weights on {rec.grid!r} are not stored exactly by compressed-tensors")
        cols = get_weight(modules[name]).shape[1]
        group = rec.grid.group_size
        if group is not None and cols % group:
            raise ConfigError(f"{name}: {cols} input features do not split into groups of {group}, "
                              f"which compressed-tensors requires")


def _scheme(grid: Grid, act: Grid | None, targets: list[str]):
    from compressed_tensors.compressors.format import infer_module_format
    from compressed_tensors.quantization import QuantizationScheme

    scheme = QuantizationScheme(targets=targets, weights=_weight_args(grid), input_activations=_act_args(act))
    scheme.format = infer_module_format(nn.Linear, scheme)
    if scheme.format == "pack-quantized" and not scheme.weights.symmetric:
        # packed zero points do not load back through transformers with this compressed-tensors
        # (vllm-project/llm-compressor#1618): store the codes one int8 each instead
        scheme.format = "naive-quantized"
    return scheme


def _compress_layer(key: str, weight: torch.Tensor, grid: Grid, params: dict, scheme) -> dict[str, torch.Tensor]:
    """compressed-tensors' own compressed tensors of one linear, checked by decompressing them again."""
    from compressed_tensors.compressors import BaseCompressor

    params = {k: v.detach().cpu() for k, v in params.items()}
    if grid.microscaling_form() is not None:  # the compressor stores 2^e as its E8M0 byte e + 127
        state = {"weight": weight, "weight_scale": grid.block_scales(params).contiguous()}
    else:
        scale, zero = grid.integer_params(params)
        # an all-zero group may record scale 0 (INT-k block, Q4_0): any scale gives its zeros back
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        state = {"weight": weight, "weight_scale": scale.contiguous(), "weight_zero_point": zero.to(torch.int8).contiguous()}
    compressor = BaseCompressor.get_value_from_registry(scheme.format)
    packed = compressor.compress(state, scheme)
    back = compressor.decompress(dict(packed), scheme)["weight"].to(weight.dtype)  # MX: bfloat16, exact
    if not torch.equal(back, weight):
        diff = (back.to(weight.dtype) != weight).reshape(-1).nonzero()
        i = int(diff[0]) if len(diff) else 0
        raise VerifyError(f"tensor {key} index {i}: compressed-tensors gives back {back.reshape(-1)[i].item()!r} "
                          f"for weight {weight.reshape(-1)[i].item()!r} (not on its recorded grid?)")
    return packed


def _write_tensors(model: nn.Module, records: dict, scheme_of: dict, path: Path) -> None:
    """Every tensor in state-dict order (`export.streaming`): a compressed linear's tensors where its
    weight comes, the others as they are, a tied repeat (lm_head / embeddings) left out (transformers
    re-ties it from the config)."""
    modules = dict(model.named_modules())
    tied = tied_keys(model)
    with SafetensorsStream(path, {"format": "pt"}) as stream:
        for key, t in state_items(model):
            if key in tied:
                continue
            name = key.removesuffix(".weight")
            if key.endswith(".weight") and name in scheme_of:
                rec = records[name]
                weight = get_weight(modules[name]).detach().cpu()
                for k, v in _compress_layer(key, weight, rec.grid, rec.grid_params, scheme_of[name]).items():
                    stream.add(f"{name}.{k}", v)
            else:
                stream.add(key, t.detach().cpu().contiguous())


def save_compressed_tensors(model: nn.Module, tokenizer: Any, out_dir: str | os.PathLike,
                            metadata: dict[str, Any]) -> Path:
    """Write a compressed model in the compressed-tensors layout (see the module docstring).

    Args:
        model: a model compressed by crescendo with integer weight grids (and, for W8A8, activations on
            compressed-tensors' grid: `rtn:w8a8,sym,fmt=ct`).
        tokenizer: its tokenizer (saved beside the weights), or None.
        out_dir: a new or empty directory; written whole or not at all.
        metadata: JSON-able run metadata, written to crescendo.json.

    Raises:
        ConfigError: a state, grid or shape compressed-tensors cannot describe exactly (nothing written).
        VerifyError: a weight compressed-tensors does not give back bit for bit.

    Usage (the tests run this on a tiny LLaMA and compare the reloaded weights bit for bit)::

        compress(model, "sparsegpt:0.5 > gptq:w4,g128", calibration)
        save_compressed_tensors(model, tokenizer, "out/llama-w4a16", {"recipe": "sparsegpt:0.5 > gptq:w4,g128"})
        AutoModelForCausalLM.from_pretrained("out/llama-w4a16")  # with compressed-tensors installed
    """
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import QuantizationConfig, QuantizationStatus

    out = check_output_dir(out_dir)
    check_ct_model(model)
    modules = dict(model.named_modules())
    records = {n: r for n, r in state_of(model).records.items() if r.grid is not None}
    groups: dict[tuple, list[str]] = {}
    for name, rec in records.items():
        groups.setdefault((json.dumps(_weight_args(rec.grid)), json.dumps(_act_args(rec.act_grid))), []).append(name)
    schemes = {}
    for i, names in enumerate(groups.values()):
        rec = records[names[0]]
        schemes[f"group_{i}"] = _scheme(rec.grid, rec.act_grid, sorted(names))
    scheme_of = {name: group for group in schemes.values() for name in group.targets}
    for name in scheme_of:
        if modules[name].weight.dtype != torch.float32:
            raise ConfigError(f"{name}: compressed-tensors export writes float32 models; cast with --dtype float32")
    qconfig = None
    if schemes:
        formats = {s.format for s in schemes.values()}
        qconfig = QuantizationConfig(config_groups=schemes, quantization_status=QuantizationStatus.COMPRESSED,
                                     format=formats.pop() if len(formats) == 1 else "mixed-precision")
    with atomic_output_dir(out) as tmp:
        model.config.save_pretrained(tmp)
        generation = getattr(model, "generation_config", None)
        if generation is not None:
            generation.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        _write_tensors(model, records, scheme_of, tmp / WEIGHTS)
        ModelCompressor(quantization_config=qconfig).update_config(str(tmp))
        (tmp / "crescendo.json").write_text(json.dumps({**without_timings(metadata), "crescendo_version": __version__,
                                                        "format": "compressed-tensors",
                                                        "state": state_of(model).to_dict()}, indent=2, default=str))
    return out
