"""Hybrid block floating point (Drumond et al. 2018; Harma et al. 2022)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..types import check_bits
from .base import F32, Grid, Params, ParamStorage, check_group_size, register_grid
from .elements import ceil_log2, exp2i, positive_zero, round_half_even
from .mx import E8M0_MAX, E8M0_MIN


@register_grid
@dataclass(frozen=True)
class HBFPGrid(Grid):
    """HBFP: `bits` include the sign; one shared exponent per block.

    Shared exponent e = ceil(log2 amax) per block (clamped to [-127, 127], an 8-bit exponent; an
    all-zero block gets -127); step = 2^(e - bits + 1); w / step rounded half to even and clamped to
    ±(2^(bits-1) - 1), i.e. values within ±(2^e - step). When amax is a power of two, e = log2(amax)
    and amax itself saturates to 2^e - step. Params: {"exponent": (rows,)}. For the same reason a refit
    is not idempotent (0.501 -> 0.5 -> 127/256 at 8 bits): reuse the recorded params to re-project.
    Codes: the signed multiple of the step plus 2^(bits-1).
    """

    bits: int
    block_size: int = 64
    type_name: ClassVar[str] = "hbfp"
    format_names: ClassVar[dict] = {f"hbfp{k}": {"bits": k} for k in (4, 6, 8)}

    def __post_init__(self) -> None:
        check_bits(self.bits, "HBFP bit-width", low=2, high=16)
        check_group_size(self.block_size, "block size")

    @property
    def group_size(self) -> int:  # type: ignore[override]
        return self.block_size

    @property
    def bits_per_element(self) -> float:
        return float(self.bits)

    def param_bits(self) -> float:
        return 8.0  # one 8-bit shared exponent per block

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1

    def fit(self, w: torch.Tensor) -> Params:
        amax = w.float().abs().amax(dim=1)  # (rows,)
        e = ceil_log2(amax)
        e = torch.where(amax == 0, torch.full_like(e, E8M0_MIN), e).clamp(E8M0_MIN, E8M0_MAX)
        return {"exponent": e.to(F32)}

    def _step(self, params: Params) -> torch.Tensor:
        return exp2i(params["exponent"].to(torch.int32) - self.bits + 1)[:, None]  # (rows, 1)

    def _multiples(self, w: torch.Tensor, params: Params) -> torch.Tensor:
        return round_half_even(w.float() / self._step(params)).clamp(-self.qmax, self.qmax)

    def project(self, w: torch.Tensor, params: Params) -> torch.Tensor:
        return positive_zero(self._multiples(w, params) * self._step(params), w)

    @property
    def code_bits(self) -> int:
        return self.bits

    def encode(self, w: torch.Tensor, params: Params) -> torch.Tensor:
        return self._multiples(w, params).to(torch.int64) + 2 ** (self.bits - 1)

    def decode(self, codes: torch.Tensor, params: Params) -> torch.Tensor:
        k = (codes.to(torch.int64) - 2 ** (self.bits - 1)).to(F32)
        return k * self._step(params) + 0.0

    def param_storage(self) -> dict[str, ParamStorage]:
        return {"exponent": ParamStorage("exponent", torch.int8, E8M0_MIN, E8M0_MAX)}
