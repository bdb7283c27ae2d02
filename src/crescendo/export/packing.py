"""Pure packing math of the packed export: bit-packing, grid codes and grid specs as JSON.

Nothing here touches files, models or devices. Every grid crescendo records (uniform RTN/GPTQ, MX,
HBFP, INT-k block) maps a weight matrix (out, in) that lies on it to *unsigned* integer codes of
`code_bits(grid)` bits each and back, such that `decode_codes(encode_codes(w)) == w` bit for bit in
float32 (the dtype every compression kernel computes in). The codes of the kept (non-pruned)
elements are then bit-packed, least significant bit first, into a flat uint8 stream.
"""

from __future__ import annotations

import torch

from ..errors import VerifyError
from ..kernels.formats import HBFPGrid, IntBlockGrid, MXGrid
from ..types import Grid, Params, UniformGrid

F32 = torch.float32


# -- bit packing -------------------------------------------------------------------------------------
def packed_nbytes(count: int, bits: int) -> int:
    """Bytes that `count` codes of `bits` bits each occupy once packed (the last byte zero-padded)."""
    return (count * bits + 7) // 8


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned integer codes (any shape, each < 2**bits) into a flat uint8 tensor.

    Code i occupies bits [i*bits, (i+1)*bits) of the stream, least significant bit first (within a
    code and within a byte), so any width from 1 to 16 packs densely with no per-row padding.

    >>> pack_bits(torch.tensor([1, 2, 3, 0]), 2).tolist()  # 0b00_11_10_01
    [57]
    """
    flat = codes.reshape(-1).to(torch.int64)
    shifts = torch.arange(bits, dtype=torch.int64)
    stream = ((flat[:, None] >> shifts) & 1).to(torch.uint8).reshape(-1)  # (count * bits,)
    pad = (-stream.numel()) % 8
    if pad:
        stream = torch.cat([stream, stream.new_zeros(pad)])
    weights = (1 << torch.arange(8, dtype=torch.int64)).to(torch.uint8)
    # a byte holds 8 stream bits; summing bit << position is exact in uint8 (no overlaps)
    return (stream.reshape(-1, 8) * weights).sum(dim=1, dtype=torch.uint8)


def unpack_bits(data: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of `pack_bits`: the first `count` codes (int64, flat) of a packed uint8 stream."""
    expected = packed_nbytes(count, bits)
    if data.dtype != torch.uint8 or data.dim() != 1 or data.numel() != expected:
        raise VerifyError(
            f"packed stream holds {data.numel()} {data.dtype} bytes, expected {expected} uint8 bytes "
            f"for {count} codes of {bits} bits"
        )
    stream = ((data.to(torch.int64)[:, None] >> torch.arange(8, dtype=torch.int64)) & 1).reshape(-1)
    stream = stream[: count * bits].reshape(count, bits)
    return (stream << torch.arange(bits, dtype=torch.int64)).sum(dim=1)


def pack_mask(kept: torch.Tensor) -> torch.Tensor:
    """1 bit per element, row-major, 1 = kept (stored), 0 = pruned (exactly zero)."""
    return pack_bits(kept.reshape(-1).to(torch.int64), 1)


def unpack_mask(data: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """The (out, in) bool `kept` matrix of a packed bitmask."""
    return unpack_bits(data, 1, shape[0] * shape[1]).reshape(shape).bool()


# -- grid codes --------------------------------------------------------------------------------------
def code_bits(grid: Grid) -> int:
    """Width of one stored code: the grid's element bits (MX: the element's bit pattern)."""
    if isinstance(grid, MXGrid):
        return grid.spec.bits
    if isinstance(grid, (UniformGrid, HBFPGrid, IntBlockGrid)):
        return grid.bits
    raise VerifyError(f"cannot pack weights on grid {grid!r}: no packed encoding for {type(grid).__name__}")


def _offset(grid: Grid) -> int:
    """Added to signed integer codes so that they are stored unsigned."""
    if isinstance(grid, UniformGrid):
        return 2 ** (grid.bits - 1) if grid.symmetric else 0
    if isinstance(grid, (HBFPGrid, IntBlockGrid)):
        return 2 ** (grid.bits - 1)
    return 0  # MX codes are already unsigned bit patterns


def _group_params(params: Params, gi: int) -> Params:
    return {k: v[:, gi] for k, v in params.items()}


def encode_codes(grid: Grid, w: torch.Tensor, params: Params) -> torch.Tensor:
    """Unsigned codes (out, in) int64 of a weight matrix on `grid` with recorded per-group `params`."""
    w = w.to(F32)
    out = torch.empty(w.shape, dtype=torch.int64)
    for gi, (s, e) in enumerate(grid.groups(w.shape[1])):
        p = _group_params(params, gi)
        if isinstance(grid, UniformGrid):
            c = grid.codes(w[:, s:e], p).to(torch.int64)
        elif isinstance(grid, MXGrid):
            c = grid.encode(w[:, s:e], p).to(torch.int64)  # uint8 bit patterns
        else:
            c = grid.encode(w[:, s:e], p).to(torch.int64)  # signed multiples of the step / scale
        out[:, s:e] = c + _offset(grid)
    return out


def decode_codes(grid: Grid, codes: torch.Tensor, params: Params) -> torch.Tensor:
    """Float32 values (out, in) of unsigned codes (out, in); the inverse of `encode_codes`."""
    signed = codes.to(torch.int64) - _offset(grid)
    out = torch.empty(codes.shape, dtype=F32)
    for gi, (s, e) in enumerate(grid.groups(codes.shape[1])):
        p = _group_params(params, gi)
        c = signed[:, s:e]
        if isinstance(grid, UniformGrid):
            # the same expression as UniformGrid.project, so the float32 result is identical
            out[:, s:e] = p["scale"][:, None].to(F32) * (c.to(F32) - p["zero"][:, None].to(F32))
        elif isinstance(grid, MXGrid):
            out[:, s:e] = grid.decode(c.to(torch.uint8), p, F32)
        else:
            out[:, s:e] = grid.decode(c, p, F32)
    return out


# -- grid parameters on disk -------------------------------------------------------------------------
def param_tensors(grid: Grid, params: Params) -> dict[str, torch.Tensor]:
    """The stored form of recorded grid parameters {name: (out, n_groups)}.

    Scales stay float32 (rounding them to 16 bits would move every weight off the saved grid);
    integer zero points become uint8 and power-of-two exponents int8, both exact.
    """
    if isinstance(grid, UniformGrid):
        stored = {"scale": params["scale"].to(F32).contiguous()}
        if not grid.symmetric:
            stored["zero_point"] = params["zero"].to(torch.uint8).contiguous()
        return stored
    if isinstance(grid, (MXGrid, HBFPGrid)):
        return {"exponent": params["exponent"].to(torch.int8).contiguous()}
    if isinstance(grid, IntBlockGrid):
        return {"scale": params["scale"].to(F32).contiguous()}
    raise VerifyError(f"no stored parameters for grid {grid!r}")


def params_from_tensors(grid: Grid, stored: dict[str, torch.Tensor]) -> Params:
    """Recorded grid parameters (float32, as the quantizers keep them) from their stored form."""
    if isinstance(grid, UniformGrid):
        scale = stored["scale"].to(F32)
        zero = stored["zero_point"].to(F32) if not grid.symmetric else torch.zeros_like(scale)
        return {"scale": scale, "zero": zero}
    if isinstance(grid, (MXGrid, HBFPGrid)):
        return {"exponent": stored["exponent"].to(F32)}
    return {"scale": stored["scale"].to(F32)}


def param_names(grid: Grid) -> list[str]:
    """Names of the stored parameter tensors of a grid (suffixes after `<layer>.weight.`)."""
    if isinstance(grid, UniformGrid):
        return ["scale"] + ([] if grid.symmetric else ["zero_point"])
    if isinstance(grid, (MXGrid, HBFPGrid)):
        return ["exponent"]
    return ["scale"]


def param_ranges(grid: Grid) -> dict[str, tuple[float, float]]:
    """Inclusive valid ranges of stored integer parameters (checked by `verify`)."""
    if isinstance(grid, UniformGrid) and not grid.symmetric:
        return {"zero_point": (0, 2**grid.bits - 1)}
    if isinstance(grid, (MXGrid, HBFPGrid)):
        return {"exponent": (-127, 127)}
    return {}


# -- grids as JSON -----------------------------------------------------------------------------------
def grid_to_dict(grid: Grid | None) -> dict | None:
    """A JSON-able description of a grid, enough to rebuild it with `grid_from_dict`."""
    if grid is None:
        return None
    if isinstance(grid, UniformGrid):
        return {"type": "uniform", "bits": grid.bits, "symmetric": grid.symmetric, "group_size": grid.group_size}
    if isinstance(grid, MXGrid):
        return {"type": "mx", "element": grid.element, "block_size": grid.block_size}
    if isinstance(grid, HBFPGrid):
        return {"type": "hbfp", "bits": grid.bits, "block_size": grid.block_size}
    if isinstance(grid, IntBlockGrid):
        return {"type": "intblock", "bits": grid.bits, "block_size": grid.block_size}
    raise VerifyError(f"cannot describe grid {grid!r} on disk: unknown grid type {type(grid).__name__}")


def grid_from_dict(d: dict | None) -> Grid | None:
    """Inverse of `grid_to_dict`; a malformed entry raises VerifyError (never executes anything)."""
    if d is None:
        return None
    try:
        kind = d["type"]
        if kind == "uniform":
            return UniformGrid(int(d["bits"]), bool(d["symmetric"]), d["group_size"])
        if kind == "mx":
            return MXGrid(str(d["element"]), int(d["block_size"]))
        if kind == "hbfp":
            return HBFPGrid(int(d["bits"]), int(d["block_size"]))
        if kind == "intblock":
            return IntBlockGrid(int(d["bits"]), int(d["block_size"]))
    except (KeyError, TypeError, ValueError) as e:
        raise VerifyError(f"malformed grid entry {d!r}: {e}") from None
    raise VerifyError(f"unknown grid type in {d!r}")
