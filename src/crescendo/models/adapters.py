"""Architecture adapters: everything crescendo needs to know about one model family.

Where the blocks are, how a calibration batch runs through the model, how the last block's output
becomes logits (final norm, projections, LM head), which config key counts the layers, which linears
project keys and values, how a layer's weight reads as (out, in), and whether the family can be
rotated. Everything else (hooks, calibration, compression) is shared. Compressible layers are found
generically inside each block: nn.Linear, transformers' Conv1D, and nn.Conv2d, whose weight
(out, in, kh, kw) reads as (out, in * kh * kw) and whose input as the unfolded patches (OBC's view).
The vision adapters live in `vision_adapters`. An unknown architecture raises ModelError; nothing
falls back to a guess.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ..errors import ModelError
from ..types import Targets
from .adapter_base import LINEAR_TYPES, Adapter, _get, _get_optional, check_layer

__all__ = ["LINEAR_TYPES", "Adapter", "check_layer", "get_adapter", "get_weight", "set_weight_", "in_features",
           "input_rows", "weight_shape", "is_transposed", "select_targets", "tied_names", "_get", "_get_optional"]


def _llama_like(family: str) -> Adapter:
    return Adapter(family, "model.layers", "model.norm", "num_hidden_layers", ("k_proj", "v_proj"), rotatable=True)


_ADAPTERS = {
    **{f: _llama_like(f) for f in ("llama", "mistral", "qwen2", "qwen3")},
    "opt": Adapter("opt", "model.decoder.layers", "model.decoder.final_layer_norm", "num_hidden_layers",
                   ("k_proj", "v_proj"), post_norm_paths=("model.decoder.project_out",)),
    "gpt2": Adapter("gpt2", "transformer.h", "transformer.ln_f", "n_layer", None),
    "gpt_neox": Adapter("gpt_neox", "gpt_neox.layers", "gpt_neox.final_layer_norm", "num_hidden_layers", None),
}


def get_adapter(model: nn.Module) -> Adapter:
    """The adapter of `model`: a crescendo vision classifier (by its architecture), or a Hugging Face
    causal LM (by `config.model_type`); ModelError if there is none."""
    from .vision_adapters import vision_adapter

    vision = vision_adapter(model)
    if vision is not None:
        return vision
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in _ADAPTERS:
        known = ", ".join(sorted(_ADAPTERS))
        raise ModelError(f"no architecture adapter for model type {model_type!r} (supported: {known})")
    return _ADAPTERS[model_type]


def is_transposed(module: nn.Module) -> bool:
    """Conv1D keeps (in, out) weights; nn.Linear keeps (out, in), nn.Conv2d (out, in, kh, kw)."""
    return not isinstance(module, (nn.Linear, nn.Conv2d))


def get_weight(module: nn.Module) -> torch.Tensor:
    """A float32 copy of the weight as (out, in); a Conv2d's (out, in, kh, kw) as (out, in * kh * kw)."""
    w = module.weight.detach()
    if isinstance(module, nn.Conv2d):
        check_layer(module)
        w = w.reshape(w.shape[0], -1)
    return (w.t() if is_transposed(module) else w).float().clone(memory_format=torch.contiguous_format)


def set_weight_(module: nn.Module, weight: torch.Tensor) -> None:
    """Write an (out, in) weight back in the module's own layout and dtype."""
    w = weight.t() if is_transposed(module) else weight
    with torch.no_grad():
        module.weight.copy_(w.reshape(module.weight.shape).to(module.weight.dtype))


def weight_shape(module: nn.Module) -> tuple[int, int]:
    """(out, in) of the matrix view of the layer's weight."""
    n_in = in_features(module)
    return module.weight.numel() // n_in, n_in


def in_features(module: nn.Module) -> int:
    """Columns of the (out, in) view: in * kh * kw for a Conv2d."""
    if isinstance(module, nn.Conv2d):
        check_layer(module)
        return module.weight[0].numel()
    return module.weight.shape[0] if is_transposed(module) else module.weight.shape[1]


def input_rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as the (rows, in) matrix its (out, in) weight multiplies.

    Linear: every leading position is a row. Conv2d (B, C, H, W): the unfolded patches, one row per
    output position, columns ordered (C, kh, kw) like the flattened weight (OBC's view of a conv)."""
    if isinstance(module, nn.Conv2d):
        padding = module.padding
        if isinstance(padding, str):
            if padding == "valid":
                padding = 0
            else:  # "same": symmetric only for odd effective kernels
                sizes = [d * (k - 1) for d, k in zip(module.dilation, module.kernel_size)]
                if any(s % 2 for s in sizes):
                    raise ModelError("padding='same' with an even kernel pads asymmetrically; not supported")
                padding = tuple(s // 2 for s in sizes)
        cols = torch.nn.functional.unfold(x, module.kernel_size, dilation=module.dilation, padding=padding,
                                          stride=module.stride)  # (B, in*kh*kw, L)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    return x.reshape(-1, x.shape[-1])


def select_targets(model: nn.Module, adapter: Adapter, targets: Targets) -> dict[str, nn.Module]:
    """The linears a stage compresses (see `Targets`): name -> module, in module order."""
    every = {n: m for n, m in model.named_modules() if isinstance(m, LINEAR_TYPES)}
    names = targets.select(list(adapter.all_block_linears(model)), list(every))
    return {n: every[n] for n in names}


def tied_names(model: nn.Module, names: Iterable[str]) -> list[str]:
    """Target names whose weight tensor is shared with another module (e.g. lm_head tied to embeddings)."""
    owners: dict[int, list[str]] = {}
    for n, m in model.named_modules():
        w = getattr(m, "weight", None)
        if isinstance(w, torch.Tensor):
            owners.setdefault(id(w), []).append(n)
    modules = dict(model.named_modules())
    return [n for n in names if len(owners.get(id(modules[n].weight), [])) > 1]
