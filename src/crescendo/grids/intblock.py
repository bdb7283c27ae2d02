"""Symmetric INT-k with one float scale per block of columns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..types import check_bits
from .base import F32, Grid, IntegerForm, Params, ParamStorage, check_group_size, device_constant, register_grid
from .elements import positive_zero, round_half_even


@register_grid
@dataclass(frozen=True)
class IntBlockGrid(Grid):
    """Symmetric INT-k with one scale per block: scale = amax / (2^(k-1) - 1), round half to even.

    Values lie in ±(2^(k-1) - 1) times the scale. An all-zero block records scale 0 and projects
    everything to 0 (the grid {0}); the division is guarded. Params: {"scale": (rows,)}.
    Codes: the signed multiple of the scale plus 2^(k-1).
    """

    bits: int
    block_size: int = 32
    type_name: ClassVar[str] = "intblock"
    format_names: ClassVar[dict] = {f"int{k}b": {"bits": k} for k in range(2, 9)}

    def __post_init__(self) -> None:
        check_bits(self.bits, "INT-block bit-width")
        check_group_size(self.block_size, "block size")

    @property
    def group_size(self) -> int:  # type: ignore[override]
        return self.block_size

    @property
    def bits_per_element(self) -> float:
        return float(self.bits)

    def param_bits(self) -> float:
        return 16.0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1

    def fit(self, w: torch.Tensor) -> Params:
        return {"scale": w.float().abs().amax(dim=1) / device_constant(self.qmax, w)}  # (rows,)

    def _multiples(self, w: torch.Tensor, params: Params) -> torch.Tensor:
        scale = params["scale"].to(F32)[:, None]  # (rows, 1)
        safe = torch.where(scale == 0, torch.ones_like(scale), scale)
        k = round_half_even(w.float() / safe).clamp(-self.qmax, self.qmax)
        return torch.where(scale == 0, torch.zeros_like(k), k)

    def project(self, w: torch.Tensor, params: Params) -> torch.Tensor:
        return positive_zero(self._multiples(w, params) * params["scale"].to(F32)[:, None], w)

    def integer_form(self) -> IntegerForm:
        return IntegerForm(self.bits, True, self.block_size)

    def integer_params(self, params: Params) -> tuple[torch.Tensor, torch.Tensor]:
        scale = params["scale"].to(F32)
        return scale, torch.zeros(scale.shape, dtype=torch.int64, device=scale.device)

    @property
    def code_bits(self) -> int:
        return self.bits

    def encode(self, w: torch.Tensor, params: Params) -> torch.Tensor:
        return self._multiples(w, params).to(torch.int64) + 2 ** (self.bits - 1)

    def decode(self, codes: torch.Tensor, params: Params) -> torch.Tensor:
        k = (codes.to(torch.int64) - 2 ** (self.bits - 1)).to(F32)
        return k * params["scale"].to(F32)[:, None] + 0.0

    def param_storage(self) -> dict[str, ParamStorage]:
        return {"scale": ParamStorage("scale", F32)}
