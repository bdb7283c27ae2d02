"""The packed tensors of one compressed linear, and their manifest entry.

A linear `L` whose record has a grid and/or a pruning mask is stored as (K = "L.weight"):

    K.bitmask     uint8, 1 bit per element of the (out, in) matrix, row-major, LSB first; 1 = kept
    K.codes       uint8, the `bits`-bit unsigned codes of the kept elements only, row-major, LSB first
    K.values      model dtype, the kept elements themselves (pruned but not quantized layers)
    K.scale       float32 (out, n_groups)   uniform and INT-block grids
    K.zero_point  uint8   (out, n_groups)   asymmetric uniform grids
    K.exponent    int8    (out, n_groups)   MX (E8M0 scale exponent) and HBFP (shared exponent)

Only the kept elements are stored, so the size on disk is about (1 - p) * b + 1 bits per weight.
Weights are always (out, in), whatever the module's own layout (GPT-2's Conv1D is transposed).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import VerifyError
from ..grids import Grid, Params, grid_from_dict
from .packing import pack_bits, pack_mask, packed_nbytes, unpack_bits, unpack_mask

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def dtype_of(name: str) -> torch.dtype:
    if not isinstance(name, str) or name not in DTYPES:
        raise VerifyError(f"unsupported weight dtype {name!r} in the manifest")
    return DTYPES[name]


def pack_linear(
    key: str, weight: torch.Tensor, mask: torch.Tensor | None, grid: Grid | None, params: Params | None,
    dtype: torch.dtype,
) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and manifest entry of one compressed linear.

    key: the weight's state-dict name ("model.layers.0.mlp.up_proj.weight").
    weight: (out, in) float32 values, as the module holds them (upcast from `dtype`).
    mask: (out, in) bool, True = pruned, or None. grid/params: the recorded grid, or None.
    """
    out_f, in_f = weight.shape
    kept = torch.ones(out_f, in_f, dtype=torch.bool) if mask is None else ~mask.cpu()
    weight = weight.cpu()
    tensors: dict[str, torch.Tensor] = {}
    entry: dict = {"shape": [out_f, in_f], "dtype": dtype_name(dtype), "grid": grid.to_dict() if grid is not None else None,
                   "masked": mask is not None, "kept": int(kept.sum())}
    if mask is not None:
        tensors[f"{key}.bitmask"] = pack_mask(kept)
    if grid is None:
        tensors[f"{key}.values"] = weight[kept].to(dtype).contiguous()
        return tensors, entry
    if params is None:
        raise VerifyError(f"{key}: the record has a grid but no grid parameters")
    params = {k: v.detach().cpu() for k, v in params.items()}
    bits = grid.code_bits
    entry["bits"] = bits
    tensors[f"{key}.codes"] = pack_bits(grid.encode_all(weight, params)[kept], bits)
    for name, value in grid.store_params(params).items():
        tensors[f"{key}.{name}"] = value
    return tensors, entry


def linear_tensor_names(key: str, entry: dict) -> list[str]:
    """Every tensor name `pack_linear` writes for this entry (the manifest and the file must agree)."""
    grid = grid_from_dict(entry.get("grid"))
    names = [f"{key}.bitmask"] if entry.get("masked") else []
    if grid is None:
        return names + [f"{key}.values"]
    return names + [f"{key}.codes"] + [f"{key}.{n}" for n in grid.param_storage()]


def entry_shape(key: str, entry: dict) -> tuple[int, int]:
    """The (out, in) shape of a manifest entry: two positive integers, or VerifyError."""
    shape = entry.get("shape") if isinstance(entry, dict) else None
    if (not isinstance(shape, list) or len(shape) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in shape)):
        raise VerifyError(f"manifest entry of {key} is malformed: shape {str(shape)[:60]} must be two positive "
                          f"integers")
    return shape[0], shape[1]


def read_kept(key: str, entry: dict, get: Callable[[str], torch.Tensor]) -> torch.Tensor:
    """The (out, in) bool matrix of kept elements (all True for a layer without a mask).

    The manifest's shape is checked against the stored tensors' lengths before anything of that shape
    is allocated: a crafted shape (40000 x 40000 over a few bytes of data) fails here, in bounded memory."""
    out_f, in_f = entry_shape(key, entry)
    masked = entry.get("masked")
    if not isinstance(masked, bool):
        raise VerifyError(f"manifest entry of {key} is malformed: masked must be true or false, got {masked!r}")
    if not masked:
        _check_dense_length(key, entry, get, out_f * in_f, (out_f, in_f))
        return torch.ones(out_f, in_f, dtype=torch.bool)
    packed = _checked(get, f"{key}.bitmask", torch.uint8, (packed_nbytes(out_f * in_f, 1),))
    return unpack_mask(packed, (out_f, in_f))


def _check_dense_length(key: str, entry: dict, get: Callable[[str], torch.Tensor], n: int,
                        shape: tuple[int, int]) -> None:
    """An unmasked layer stores all `n` elements: its values (or codes) must be that long."""
    grid = grid_from_dict(entry.get("grid"))
    name, expected = (f"{key}.values", n) if grid is None else (f"{key}.codes", packed_nbytes(n, grid.code_bits))
    t = get(name)
    if t.dim() != 1 or t.numel() != expected:
        raise VerifyError(f"tensor {name} holds {t.numel()} elements; the manifest's shape {shape} needs {expected}")


def unpack_linear(
    key: str, entry: dict, get: Callable[[str], torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor | None, Grid | None, Params | None, torch.Tensor | None]:
    """Rebuild one linear from its tensors: (weight (out, in) float32, mask (True = pruned) or None,
    grid, params, unsigned codes (out, in) or None). The weight is exact: the float32 values the
    quantizer produced (cast to the saved dtype, they are what the module held).

    `get(name)` returns a stored tensor. Structural problems (a missing tensor, a wrong dtype, a
    length that does not match the bitmask) raise VerifyError naming the tensor.
    """
    kept = read_kept(key, entry, get)
    dtype = dtype_of(str(entry.get("dtype")))
    grid = grid_from_dict(entry.get("grid"))
    out_f, in_f = kept.shape
    n_kept = int(kept.sum())
    if n_kept != entry.get("kept", n_kept):
        raise VerifyError(f"tensor {key}.bitmask keeps {n_kept} elements, the manifest says {entry['kept']}")
    mask = ~kept if entry["masked"] else None
    if grid is None:
        values = _checked(get, f"{key}.values", dtype, (n_kept,))
        weight = torch.zeros(out_f, in_f, dtype=torch.float32)
        weight[kept] = values.float()  # exact upcast
        return weight, mask, None, None, None
    n_groups = len(grid.groups(in_f))
    stored = {}
    for name, storage in grid.param_storage().items():
        stored[name] = _checked(get, f"{key}.{name}", storage.dtype, (out_f, n_groups))
    params = grid.load_params(stored)
    bits = grid.code_bits
    packed = _checked(get, f"{key}.codes", torch.uint8, (packed_nbytes(n_kept, bits),))
    codes = torch.zeros(out_f, in_f, dtype=torch.int64)
    codes[kept] = unpack_bits(packed, bits, n_kept)
    weight = grid.decode_all(codes, params).masked_fill(~kept, 0.0)
    return weight, mask, grid, params, codes


def _checked(get: Callable[[str], torch.Tensor], name: str, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    t = get(name)
    if t.dtype != dtype or tuple(t.shape) != shape:
        raise VerifyError(f"tensor {name} is {t.dtype} {tuple(t.shape)}, expected {dtype} {shape}")
    return t
