"""Pure bit-packing math of the packed export.

Nothing here touches files, models or devices. Every grid maps a weight matrix that lies on it to
*unsigned* integer codes of `grid.code_bits` bits each (`Grid.encode_all`); the codes of the kept
(non-pruned) elements are bit-packed here, least significant bit first, into a flat uint8 stream.
"""

from __future__ import annotations

import torch

from ..errors import VerifyError


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
