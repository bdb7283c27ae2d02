"""Pure math of block-wise max-scaled number formats (OCP Microscaling elements, exact powers of two).

The grids built on it live beside it (mx.py, hbfp.py, intblock.py). All math is done in
float32 whatever the input dtype; powers of two are built from their bit patterns, so scales are
exact on every device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError

F32 = torch.float32  # the compute dtype of every kernel here
E8M0_MIN, E8M0_MAX = -127, 127  # OCP MX shared-scale range (E8M0 code 255 is NaN, never produced)


@dataclass(frozen=True)
class ElementType:
    """One MX element type: sign + `ebits` exponent bits + `mbits` mantissa bits (OCP MX v1.0).

    `ebits == 0` is MXINT8: a two's-complement integer with `mbits` fraction bits (scale 2^-6).
    """

    ebits: int
    mbits: int
    emax: int  # exponent of the largest normal, the `emax_elem` of the shared-scale rule
    max_normal: float

    @property
    def bias(self) -> int:
        return 2 ** (self.ebits - 1) - 1 if self.ebits else 0

    @property
    def bits(self) -> int:
        return 8 if self.ebits == 0 else 1 + self.ebits + self.mbits


ELEMENTS: dict[str, ElementType] = {
    "e4m3": ElementType(4, 3, 8, 448.0),  # S.1111.111 is NaN, so the top binade stops at 1.75 * 2^8
    "e5m2": ElementType(5, 2, 15, 57344.0),  # exponent field 31 is Inf/NaN (IEEE-like)
    "e3m2": ElementType(3, 2, 4, 28.0),  # FP6/FP4 have no Inf/NaN: every code is a number
    "e2m3": ElementType(2, 3, 2, 7.5),
    "e2m1": ElementType(2, 1, 2, 6.0),
    # MXINT8: codes k/64, k in [-127, 127]; -128 (= -2.0) is legal in the spec but never produced,
    # keeping the grid symmetric as microsoft/microxcaling does. decode() still accepts it.
    "int8": ElementType(0, 6, 0, 127.0 / 64.0),
}


# -- exact power-of-two helpers ---------------------------------------------------------------------
def exp2i(e: torch.Tensor) -> torch.Tensor:
    """Exact float32 2**e for integer-valued e (any shape), e in [-149, 127], built from bit patterns.

    torch.exp2/ldexp go through approximate vector math on some backends; scales must be exact.
    """
    e = e.to(torch.int32)
    one = torch.ones_like(e)
    normal = (e + 127).clamp(min=1) << 23  # biased exponent field, zero mantissa
    subnormal = one << (e + 149).clamp(0, 22)  # 2^-149 is the last mantissa bit
    return torch.where(e >= -126, normal, subnormal).view(torch.float32)


def floor_log2(x: torch.Tensor) -> torch.Tensor:
    """floor(log2|x|) as int32, exact (via frexp, unlike log2 which rounds near powers of two)."""
    return torch.frexp(x.abs())[1] - 1


def ceil_log2(x: torch.Tensor) -> torch.Tensor:
    """ceil(log2|x|) as int32, exact: a power of two maps to its own exponent."""
    mant, e = torch.frexp(x.abs())
    return torch.where(mant == 0.5, e - 1, e)


def round_half_even(x: torch.Tensor) -> torch.Tensor:
    return torch.round(x)  # torch.round is round-half-to-even (IEEE roundTiesToEven)


# -- element rounding and bit patterns --------------------------------------------------------------
def _element_exponent(a: torch.Tensor, el: ElementType) -> torch.Tensor:
    """Exponent p of the binade of each |element| a, so that the element step is 2^(p - mbits)."""
    if el.ebits == 0:
        return torch.zeros_like(a, dtype=torch.int32)  # fixed point: one step 2^-mbits everywhere
    # subnormals share the exponent of the smallest normal; above emax everything saturates anyway
    return floor_log2(a).clamp(1 - el.bias, el.emax)


def round_to_element(x: torch.Tensor, el: ElementType) -> torch.Tensor:
    """Round float32 x (any shape) to the nearest element value, ties to even, saturate at ±max normal."""
    step = exp2i(_element_exponent(x, el) - el.mbits)
    # x / step is exact (power-of-two division); rounding the integer significand half-to-even is
    # rounding the mantissa field to even, including across the subnormal/normal boundary
    q = round_half_even(x / step) * step
    return q.clamp(-el.max_normal, el.max_normal)


def element_values(element: str) -> torch.Tensor:
    """Sorted non-negative values representable by an MX element type (float32, CPU).

    >>> element_values("e2m1").tolist()
    [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    """
    el = element_type(element)
    n_codes = 2 ** (el.bits - 1)  # every code with the sign bit clear
    values = element_from_codes(torch.arange(n_codes, dtype=torch.uint8), el)
    return torch.unique(values[values <= el.max_normal])  # drops the NaN/Inf codes; sorted


def element_to_codes(q: torch.Tensor, el: ElementType) -> torch.Tensor:
    """Bit patterns (uint8, sign|exponent|mantissa; two's complement for int8) of element values q."""
    if el.ebits == 0:
        return round_half_even(q * 2**el.mbits).to(torch.int8).view(torch.uint8)
    a = q.abs()
    p = _element_exponent(a, el)
    significand = (a / exp2i(p - el.mbits)).to(torch.int32)  # integer, implicit bit included
    normal = a >= 2.0 ** (1 - el.bias)
    field_e = torch.where(normal, p + el.bias, torch.zeros_like(p))
    field_m = torch.where(normal, significand - 2**el.mbits, significand)
    sign = (q < 0).to(torch.int32)  # -0.0 encodes as +0
    code = (sign << (el.ebits + el.mbits)) | (field_e << el.mbits) | field_m
    return code.to(torch.uint8)


def element_from_codes(codes: torch.Tensor, el: ElementType) -> torch.Tensor:
    """Element values (float32) of uint8 bit patterns; inverse of `element_to_codes`."""
    if el.ebits == 0:
        return codes.view(torch.int8).to(torch.float32) / 2**el.mbits
    c = codes.to(torch.int32)
    field_m = c & (2**el.mbits - 1)
    field_e = (c >> el.mbits) & (2**el.ebits - 1)
    negative = ((c >> (el.ebits + el.mbits)) & 1) == 1
    normal = field_e > 0
    p = torch.where(normal, field_e - el.bias, torch.full_like(field_e, 1 - el.bias))
    significand = torch.where(normal, field_m + 2**el.mbits, field_m).to(torch.float32)
    a = significand * exp2i(p - el.mbits)
    return torch.where(negative, -a, a)


def element_type(name: str) -> ElementType:
    if name not in ELEMENTS:
        raise ConfigError(f"unknown MX element type {name!r}; expected one of {', '.join(ELEMENTS)}")
    return ELEMENTS[name]


def positive_zero(out: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`out` in `like`'s dtype with -0.0 turned into +0.0, so pruned weights stay +0."""
    return (out + 0.0).to(like.dtype)
