"""Uniform integer grids, as in RTN and GPTQ (IST-DASLab/gptq `quant.py`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..types import check_bits
from .base import F32, Grid, IntegerForm, Params, ParamStorage, check_group_size, device_constant, register_grid


def _integer_codes(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """q = clamp(round(w / scale) + zero, lo, hi): the one rounding rule of the uniform grids."""
    return torch.clamp(torch.round(w / scale) + zero, lo, hi)


@register_grid
@dataclass(frozen=True)
class UniformGrid(Grid):
    """Uniform integer grid per row and column group.

    Asymmetric (default): min-max over the group with the range forced to include 0, scale =
    (max - min) / (2^b - 1), integer zero point = round(-min / scale); 0 is exactly representable.
    Symmetric: scale = amax / (2^(b-1) - 1), signed integers in [-2^(b-1), 2^(b-1) - 1], zero point 0.
    Codes are stored unsigned: q for asymmetric grids, q + 2^(b-1) for symmetric ones.

    >>> UniformGrid(2).quantize(torch.tensor([[-1.0, 0.0, 0.9, 2.0]])).tolist()
    [[-1.0, 0.0, 1.0, 2.0]]
    """

    bits: int
    symmetric: bool = False
    group_size: int | None = None  # columns per group; None = per channel (per token for activations)
    type_name: ClassVar[str] = "uniform"

    def __post_init__(self) -> None:
        check_bits(self.bits)
        check_group_size(self.group_size)
        if not isinstance(self.symmetric, bool):
            raise TypeError(f"symmetric must be a bool, got {self.symmetric!r}")

    @property
    def bits_per_element(self) -> float:
        return float(self.bits)

    def param_bits(self) -> float:
        # a 16-bit scale, plus a b-bit zero point when asymmetric
        return 16.0 + (0.0 if self.symmetric else float(self.bits))

    def levels(self) -> tuple[int, int]:
        """Inclusive integer range of q (before subtracting the zero point)."""
        if self.symmetric:
            return -(2 ** (self.bits - 1)), 2 ** (self.bits - 1) - 1
        return 0, 2**self.bits - 1

    def fit(self, w: torch.Tensor) -> Params:
        w = w.float()
        zero_t = torch.zeros(w.shape[0], dtype=F32, device=w.device)
        xmin = torch.minimum(w.min(dim=1).values, zero_t)
        xmax = torch.maximum(w.max(dim=1).values, zero_t)
        if self.symmetric:
            amax = torch.maximum(xmax, -xmin)
            amax = torch.where(amax == 0, torch.ones_like(amax), amax)
            return {"scale": amax / device_constant(2 ** (self.bits - 1) - 1, w), "zero": zero_t}
        dead = (xmin == 0) & (xmax == 0)
        xmin = torch.where(dead, -torch.ones_like(xmin), xmin)
        xmax = torch.where(dead, torch.ones_like(xmax), xmax)
        scale = (xmax - xmin) / device_constant(2**self.bits - 1, w)
        return {"scale": scale, "zero": torch.round(-xmin / scale)}

    def codes(self, w: torch.Tensor, params: Params) -> torch.Tensor:
        """Integer values q (as float) of w (rows, k) on the grid, in `levels()`."""
        scale, zero = params["scale"][:, None].to(w.dtype), params["zero"][:, None].to(w.dtype)
        return _integer_codes(w, scale, zero, *self.levels())

    def project(self, w: torch.Tensor, params: Params) -> torch.Tensor:
        scale, zero = params["scale"][:, None].to(w.dtype), params["zero"][:, None].to(w.dtype)
        return scale * (self.codes(w, params) - zero)

    def column_projector(self, params: Params):
        # the same operations as `project`, with the broadcasts and casts done once per group
        lo, hi = self.levels()
        scale, zero = params["scale"].to(F32), params["zero"].to(F32)

        def project_column(w: torch.Tensor) -> torch.Tensor:
            return scale * (_integer_codes(w, scale, zero, lo, hi) - zero)

        return project_column

    def integer_form(self) -> IntegerForm:
        return IntegerForm(self.bits, self.symmetric, self.group_size)

    def integer_params(self, params: Params) -> tuple[torch.Tensor, torch.Tensor]:
        # q - zero is unchanged when both move to the signed range [-2^(b-1), 2^(b-1) - 1]
        zero = params["zero"].to(torch.int64) - (0 if self.symmetric else 2 ** (self.bits - 1))
        return params["scale"].to(F32), zero

    # -- storage -----------------------------------------------------------------------------------
    @property
    def code_bits(self) -> int:
        return self.bits

    def _offset(self) -> int:
        return -self.levels()[0]

    def encode(self, w: torch.Tensor, params: Params) -> torch.Tensor:
        return self.codes(w.to(F32), params).to(torch.int64) + self._offset()

    def decode(self, codes: torch.Tensor, params: Params) -> torch.Tensor:
        q = (codes.to(torch.int64) - self._offset()).to(F32)
        # the same expression as `project`, so the float32 result is identical
        return params["scale"][:, None].to(F32) * (q - params["zero"][:, None].to(F32))

    def param_storage(self) -> dict[str, ParamStorage]:
        # scales stay float32: rounding them to 16 bits would move every weight off the saved grid
        stored = {"scale": ParamStorage("scale", F32)}
        if not self.symmetric:
            stored["zero_point"] = ParamStorage("zero", torch.uint8, 0, 2**self.bits - 1)
        return stored

    def load_params(self, stored: dict[str, torch.Tensor]) -> Params:
        params = super().load_params(stored)
        if self.symmetric:
            params["zero"] = torch.zeros_like(params["scale"])
        return params


@register_grid
@dataclass(frozen=True)
class CTActivationGrid(UniformGrid):
    """Symmetric integers with compressed-tensors' scale: amax / ((2^b - 1) / 2), q in [-2^(b-1), 2^(b-1) - 1].

    compressed-tensors (`calculate_qparams`) divides the symmetric range by half the number of steps
    (127.5 for 8 bits, not 127), so +amax rounds to 128 and is clamped to 127. This is the grid its
    dynamic per-token activation quantizer puts inputs on when transformers runs a W8A8 checkpoint;
    `rtn:w8a8,sym,fmt=ct` uses it so the model crescendo measures is the one transformers runs.

    >>> grid, x = CTActivationGrid(8), torch.tensor([[-2.0, 1.0, 2.0]])
    >>> (grid.quantize(x) / grid.fit(x)["scale"][:, None]).round().tolist()  # +2 -> 127.5 -> 128 -> clamped
    [[-127.0, 64.0, 127.0]]
    """

    symmetric: bool = True
    type_name: ClassVar[str] = "uniform_ct"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.symmetric:
            raise TypeError("the compressed-tensors activation grid is symmetric")

    def fit(self, w: torch.Tensor) -> Params:
        w = w.float()
        amax = w.abs().amax(dim=1)  # (rows,); compressed-tensors includes 0 in the range, as |x| does
        amax = torch.where(amax == 0, torch.ones_like(amax), amax)  # an all-zero row stays zero either way
        scale = amax / device_constant((2**self.bits - 1) / 2, w)
        return {"scale": scale, "zero": torch.zeros_like(scale)}
