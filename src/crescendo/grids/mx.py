"""OCP Microscaling (MX) v1.0 block formats: an E8M0 shared scale per block, one element type per value."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .base import F32, Grid, Params, ParamStorage, check_group_size, register_grid
from .elements import (
    ELEMENTS,
    ElementType,
    element_from_codes,
    element_to_codes,
    element_type,
    exp2i,
    floor_log2,
    positive_zero,
    round_to_element,
)

E8M0_MIN, E8M0_MAX = -127, 127  # shared-scale exponent range (E8M0 code 255 is NaN, never produced)


@register_grid
@dataclass(frozen=True)
class MXGrid(Grid):
    """OCP Microscaling (MX) v1.0 block format: E8M0 shared scale + `element` per value.

    Shared scale X = 2^(floor(log2 amax) - emax_elem) per block (clamped to E8M0's [-127, 127]; an
    all-zero block gets -127 and stays zero); elements = w / X rounded to nearest, ties to even,
    subnormals kept, saturated at ± the element's max normal. Params: {"exponent": (rows,)}.
    Codes are the elements' bit patterns (sign | exponent | mantissa; two's complement for MXINT8).

    >>> MXGrid("e2m1").quantize(torch.tensor([[6.0, 2.5, -5.0, 0.25]])).tolist()
    [[6.0, 2.0, -4.0, 0.0]]
    """

    element: str
    block_size: int = 32
    type_name: ClassVar[str] = "mx"
    format_names: ClassVar[dict] = {
        "mxfp8": {"element": "e4m3"}, "mxfp8_e5m2": {"element": "e5m2"}, "mxfp6": {"element": "e2m3"},
        "mxfp6_e3m2": {"element": "e3m2"}, "mxfp4": {"element": "e2m1"}, "mxint8": {"element": "int8"},
    }  # fmt: skip

    def __post_init__(self) -> None:
        element_type(self.element)
        check_group_size(self.block_size, "block size")

    @property
    def group_size(self) -> int:  # type: ignore[override]
        return self.block_size

    @property
    def spec(self) -> ElementType:
        return ELEMENTS[self.element]

    @property
    def bits_per_element(self) -> float:
        return float(self.spec.bits)

    def param_bits(self) -> float:
        return 8.0  # one E8M0 scale per block

    def microscaling_form(self) -> tuple[str, int]:
        return self.element, self.block_size

    def block_scales(self, params: Params) -> torch.Tensor:
        return exp2i(params["exponent"])

    def fit(self, w: torch.Tensor) -> Params:
        amax = w.float().abs().amax(dim=1)  # (rows,)
        e = floor_log2(amax) - self.spec.emax
        e = torch.where(amax == 0, torch.full_like(e, E8M0_MIN), e).clamp(E8M0_MIN, E8M0_MAX)
        return {"exponent": e.to(F32)}

    def _elements(self, w: torch.Tensor, params: Params) -> tuple[torch.Tensor, torch.Tensor]:
        scale = exp2i(params["exponent"])[:, None]  # (rows, 1)
        return round_to_element(w.float() / scale, self.spec), scale

    def project(self, w: torch.Tensor, params: Params) -> torch.Tensor:
        q, scale = self._elements(w, params)
        return positive_zero(q * scale, w)

    @property
    def code_bits(self) -> int:
        return self.spec.bits

    def encode(self, w: torch.Tensor, params: Params) -> torch.Tensor:
        q, _ = self._elements(w, params)
        return element_to_codes(q, self.spec).to(torch.int64)

    def decode(self, codes: torch.Tensor, params: Params) -> torch.Tensor:
        scale = exp2i(params["exponent"])[:, None]
        return element_from_codes(codes.to(torch.uint8), self.spec) * scale + 0.0

    def param_storage(self) -> dict[str, ParamStorage]:
        return {"exponent": ParamStorage("exponent", torch.int8, E8M0_MIN, E8M0_MAX)}
