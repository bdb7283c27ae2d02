"""Block-wise max-scaled number formats as `Grid`s: OCP Microscaling (MX), HBFP and INT-k block.

Every format here shares one scale per block of `block_size` consecutive columns of one row (the
reduction axis), derived from the block's largest magnitude. `fit` records that scale, `project` rounds
onto the grid it defines, and `encode`/`decode` give the integer codes an exporter stores, such that
`decode(encode(project(w, p), p), p, dtype) == project(w, p)` bit for bit.

All math is done in float32 whatever the input dtype (bfloat16 included) and returned in the input
dtype; powers of two are built from their bit patterns, so scales are exact on every device.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..errors import ConfigError
from ..types import Grid, Params, check_bits

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


def _round_half_even(x: torch.Tensor) -> torch.Tensor:
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
    q = _round_half_even(x / step) * step
    return q.clamp(-el.max_normal, el.max_normal)


def element_values(element: str) -> torch.Tensor:
    """Sorted non-negative values representable by an MX element type (float32, CPU).

    >>> element_values("e2m1").tolist()
    [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    """
    el = _element(element)
    n_codes = 2 ** (el.bits - 1)  # every code with the sign bit clear
    values = element_from_codes(torch.arange(n_codes, dtype=torch.uint8), el)
    return torch.unique(values[values <= el.max_normal])  # drops the NaN/Inf codes; sorted


def element_to_codes(q: torch.Tensor, el: ElementType) -> torch.Tensor:
    """Bit patterns (uint8, sign|exponent|mantissa; two's complement for int8) of element values q."""
    if el.ebits == 0:
        return _round_half_even(q * 2**el.mbits).to(torch.int8).view(torch.uint8)
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


def _element(name: str) -> ElementType:
    if name not in ELEMENTS:
        raise ConfigError(f"unknown MX element type {name!r}; expected one of {', '.join(ELEMENTS)}")
    return ELEMENTS[name]


def _check_block(block_size: int) -> None:
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ConfigError(f"block size must be an integer >= 1, got {block_size!r}")


def _finish(out: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return (out + 0.0).to(like.dtype)  # + 0.0 turns -0.0 into +0.0, so pruned weights stay +0


# -- the grids ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MXGrid(Grid):
    """OCP Microscaling (MX) v1.0 block format: E8M0 shared scale + `element` per value.

    Shared scale X = 2^(floor(log2 amax) - emax_elem) per block (clamped to E8M0's [-127, 127]; an
    all-zero block gets -127 and stays zero); elements = w / X rounded to nearest, ties to even,
    subnormals kept, saturated at ± the element's max normal. Params: {"exponent": (rows,)}.

    >>> MXGrid("e2m1").quantize(torch.tensor([[6.0, 2.5, -5.0, 0.25]])).tolist()
    [[6.0, 2.0, -4.0, 0.0]]
    """

    element: str
    block_size: int = 32
    name: ClassVar[str] = "mx"

    def __post_init__(self) -> None:
        _element(self.element)
        _check_block(self.block_size)

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

    def fit(self, w: torch.Tensor) -> Params:
        amax = w.float().abs().amax(dim=1)  # (rows,)
        e = floor_log2(amax) - self.spec.emax
        e = torch.where(amax == 0, torch.full_like(e, E8M0_MIN), e).clamp(E8M0_MIN, E8M0_MAX)
        return {"exponent": e.to(torch.float32)}

    def project(self, w: torch.Tensor, params: Params) -> torch.Tensor:
        scale = exp2i(params["exponent"])[:, None]  # (rows, 1)
        q = round_to_element(w.float() / scale, self.spec)  # (rows, k) element values
        return _finish(q * scale, w)

    def encode(self, w: torch.Tensor, params: Params) -> torch.Tensor:
        """uint8 element bit patterns (rows, k) of w rounded onto the grid."""
        scale = exp2i(params["exponent"])[:, None]
        return element_to_codes(round_to_element(w.float() / scale, self.spec), self.spec)

    def decode(self, codes: torch.Tensor, params: Params, dtype: torch.dtype = F32) -> torch.Tensor:
        """Values (rows, k) in `dtype` of uint8 element codes (rows, k)."""
        scale = exp2i(params["exponent"])[:, None]
        return (element_from_codes(codes, self.spec) * scale + 0.0).to(dtype)


@dataclass(frozen=True)
class HBFPGrid(Grid):
    """Hybrid block floating point (Drumond et al. 2018; Harma et al. 2022): `bits` include the sign.

    Shared exponent e = ceil(log2 amax) per block (clamped to [-127, 127], an 8-bit exponent; an
    all-zero block gets -127); step = 2^(e - bits + 1); w / step rounded half to even and clamped to
    ±(2^(bits-1) - 1), i.e. values within ±(2^e - step). When amax is a power of two, e = log2(amax)
    and amax itself saturates to 2^e - step. Params: {"exponent": (rows,)}. For the same reason a refit
    is not idempotent (0.501 -> 0.5 -> 127/256 at 8 bits): reuse the recorded params to re-project.
    """

    bits: int
    block_size: int = 64
    name: ClassVar[str] = "hbfp"

    def __post_init__(self) -> None:
        check_bits(self.bits, "HBFP bit-width", low=2, high=16)
        _check_block(self.block_size)

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
        return {"exponent": e.to(torch.float32)}

    def _step(self, params: Params) -> torch.Tensor:
        return exp2i(params["exponent"].to(torch.int32) - self.bits + 1)[:, None]  # (rows, 1)

    def encode(self, w: torch.Tensor, params: Params) -> torch.Tensor:
        """Signed integer multiples of the step (rows, k): int8 for bits <= 8, else int16."""
        k = _round_half_even(w.float() / self._step(params)).clamp(-self.qmax, self.qmax)
        return k.to(torch.int8 if self.bits <= 8 else torch.int16)

    def decode(self, codes: torch.Tensor, params: Params, dtype: torch.dtype = F32) -> torch.Tensor:
        return (codes.to(torch.float32) * self._step(params) + 0.0).to(dtype)

    def project(self, w: torch.Tensor, params: Params) -> torch.Tensor:
        step = self._step(params)
        k = _round_half_even(w.float() / step).clamp(-self.qmax, self.qmax)
        return _finish(k * step, w)


@dataclass(frozen=True)
class IntBlockGrid(Grid):
    """Symmetric INT-k with one scale per block: scale = amax / (2^(k-1) - 1), round half to even.

    Codes lie in ±(2^(k-1) - 1). An all-zero block records scale 0 and projects everything to 0 (the
    grid {0}); the division is guarded. Params: {"scale": (rows,)} (stored as 16 bits on export).
    """

    bits: int
    block_size: int = 32
    name: ClassVar[str] = "intblock"

    def __post_init__(self) -> None:
        check_bits(self.bits, "INT-block bit-width")
        _check_block(self.block_size)

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
        return {"scale": w.float().abs().amax(dim=1) / self.qmax}  # (rows,)

    def encode(self, w: torch.Tensor, params: Params) -> torch.Tensor:
        """Signed integer multiples of the scale (rows, k), int8."""
        scale = params["scale"].to(torch.float32)[:, None]  # (rows, 1)
        safe = torch.where(scale == 0, torch.ones_like(scale), scale)
        k = _round_half_even(w.float() / safe).clamp(-self.qmax, self.qmax)
        return torch.where(scale == 0, torch.zeros_like(k), k).to(torch.int8)

    def decode(self, codes: torch.Tensor, params: Params, dtype: torch.dtype = F32) -> torch.Tensor:
        scale = params["scale"].to(torch.float32)[:, None]
        return (codes.to(torch.float32) * scale + 0.0).to(dtype)

    def project(self, w: torch.Tensor, params: Params) -> torch.Tensor:
        return _finish(self.decode(self.encode(w, params), params), w)


# -- recipe names ------------------------------------------------------------------------------------
MX_NAMES = {
    "mxfp8": "e4m3", "mxfp8_e5m2": "e5m2", "mxfp6": "e2m3", "mxfp6_e3m2": "e3m2",
    "mxfp4": "e2m1", "mxint8": "int8",
}  # fmt: skip


def make_format_grid(name: str, block_size: int | None = None) -> Grid:
    """Build the grid of a recipe format name (PROTOCOL.md, "Method defaults").

    Names: mxfp8 (E4M3), mxfp8_e5m2, mxfp6 (E2M3), mxfp6_e3m2, mxfp4 (E2M1), mxint8 (blocks of 32);
    hbfp8 / hbfp6 / hbfp4 (blocks of 64); intKb for K in 2..8, e.g. int8b, int4b (blocks of 32).
    `block_size` overrides the default. Unknown names and block sizes < 1 raise ConfigError.

    >>> make_format_grid("mxfp4")
    MXGrid(element='e2m1', block_size=32)
    """
    key = name.strip().lower()
    if block_size is not None:
        _check_block(block_size)
    if key in MX_NAMES:
        return MXGrid(MX_NAMES[key], block_size or 32)
    if m := re.fullmatch(r"hbfp(\d+)", key):
        return HBFPGrid(int(m.group(1)), block_size or 64)
    if m := re.fullmatch(r"int(\d+)b", key):
        return IntBlockGrid(int(m.group(1)), block_size or 32)
    known = ", ".join(MX_NAMES) + ", hbfpK (K in 2..16) or intKb (K in 2..8)"
    raise ConfigError(f"unknown number format {name!r}; expected {known}")
