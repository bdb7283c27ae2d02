"""llama.cpp's legacy block types Q8_0, Q4_0 and Q4_1 as grids, so a recipe can land exactly on them.

Each type quantizes blocks of 32 consecutive weights of a row with float16 block parameters
(ggml-quants.c, `quantize_row_q8_0_ref` / `quantize_row_q4_0_ref` / `quantize_row_q4_1_ref`; gguf-py
`quants.py` reproduces them in numpy):

    Q8_0  d = amax / 127,            q = roundf(x / d) in [-127, 127],      value = q * d
    Q4_0  d = (signed max|x|) / -8,  q = min(15, trunc(x / d + 8.5)),       value = (q - 8) * d
    Q4_1  d = (max - min) / 15,      q = min(15, trunc((x - min) / d + 0.5)), value = d * q + m

llama.cpp divides by the float32 `d` (it multiplies by `1/d`) and then stores `d` (and `m`) as
float16, so the values it stores are the codes times the *rounded* parameters. The fit here does
the same: the parameters a grid records are the float16 values (what the file holds and what every
value is computed from), plus the float32 reciprocal (and, for Q4_1, the float32 minimum) that
llama.cpp rounds with, so that round-to-nearest onto this grid writes the very bytes llama.cpp's own
quantizer writes. A GGUF file holds only the float16 parameters (every value is computed from them);
crescendo's packed layout also keeps the two float32 helpers, so a reloaded record is the fitted one.

Q4_1 cannot represent 0 exactly (its values are `d * q + m`), so it cannot hold pruned weights:
`represents_zero` is False and recipes that prune a Q4_1 layer are refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..errors import ConfigError
from .base import (
    F32,
    Grid,
    IntegerForm,
    Params,
    ParamStorage,
    device_constant,
    register_grid,
)

F16 = torch.float16
BLOCK = 32  # QK8_0 = QK4_0 = QK4_1


@dataclass(frozen=True)
class _Kind:
    bits: int
    symmetric: bool
    param_bits: float  # float16 d (and m) per block


KINDS = {"q8_0": _Kind(8, True, 16.0), "q4_0": _Kind(4, True, 16.0), "q4_1": _Kind(4, False, 32.0)}


def _reciprocal(d: torch.Tensor) -> torch.Tensor:
    """`d ? 1.0f/d : 0.0f` of ggml-quants.c, in float32."""
    safe = torch.where(d == 0, torch.ones_like(d), d)
    return torch.where(d == 0, torch.zeros_like(d), torch.ones_like(d) / safe)


def _to_f16(x: torch.Tensor) -> torch.Tensor:
    """Round float32 to the nearest float16 (ties to even, as GGML_FP32_TO_FP16) and back, exactly."""
    return x.to(F16).to(F32)


def _roundf(x: torch.Tensor) -> torch.Tensor:
    """C roundf (halves away from zero), exactly: floor(|x| + 0.5) can round up 0.49999997."""
    a = x.abs()
    floored = torch.floor(a)
    return torch.sign(x) * (floored + torch.floor(2 * (a - floored)))


@register_grid
@dataclass(frozen=True)
class GGMLGrid(Grid):
    """A llama.cpp block type (`kind` = "q8_0", "q4_0" or "q4_1") on blocks of 32 columns.

    Params: {"scale": d, "inverse": 1/d as llama.cpp rounds with it} and for Q4_1 also {"min": m,
    "offset": the float32 minimum}; `scale` and `min` hold float16 values. Codes: Q4_0 / Q4_1 the
    stored nibble q in [0, 15]; Q8_0 the int8 q plus 128.

    >>> g = GGMLGrid("q4_0")
    >>> g.quantize(torch.tensor([[-8.0, 3.9, 0.0] + [1.0] * 29]))[0, :3].tolist()
    [-8.0, 4.0, 0.0]
    """

    kind: str
    type_name: ClassVar[str] = "ggml"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"unknown llama.cpp block type {self.kind!r}; expected one of {', '.join(KINDS)}")

    @property
    def group_size(self) -> int:  # type: ignore[override]
        return BLOCK

    @property
    def spec(self) -> _Kind:
        return KINDS[self.kind]

    @property
    def represents_zero(self) -> bool:
        return self.spec.symmetric

    @property
    def bits_per_element(self) -> float:
        return float(self.spec.bits)

    def param_bits(self) -> float:
        return self.spec.param_bits

    @property
    def ggml_type(self) -> str:
        return self.kind

    def integer_form(self) -> IntegerForm | None:
        # Q8_0 and Q4_0 are symmetric integers times a float16 scale; Q4_1's `d * q + m` has no
        # integer zero point
        return IntegerForm(self.spec.bits, True, BLOCK) if self.spec.symmetric else None

    def integer_params(self, params: Params) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.spec.symmetric:
            raise NotImplementedError(f"{self!r} is not an integer grid")
        scale = params["scale"].to(F32)
        return scale, torch.zeros(scale.shape, dtype=torch.int64, device=scale.device)

    # -- quantization ------------------------------------------------------------------------------
    def fit(self, w: torch.Tensor) -> Params:
        w = w.float()  # (rows, k)
        if self.kind == "q4_1":
            lo, hi = w.min(dim=1).values, w.max(dim=1).values
            d = (hi - lo) / device_constant(15.0, w)
            return {"scale": _to_f16(d), "min": _to_f16(lo), "inverse": _reciprocal(d), "offset": lo}
        if self.kind == "q4_0":
            # the element of largest magnitude, the first one on ties, with its sign
            at = w.abs().argmax(dim=1, keepdim=True)
            d = w.gather(1, at)[:, 0] / device_constant(-8.0, w)
        else:
            d = w.abs().amax(dim=1) / device_constant(127.0, w)
        return {"scale": _to_f16(d), "inverse": _reciprocal(d)}

    def codes(self, w: torch.Tensor, params: Params) -> torch.Tensor:
        """The stored integers (float32, (rows, k)) of w: the nibble for Q4_x, the signed q for Q8_0.

        Values already on the grid keep their own code; every other value gets llama.cpp's (which
        rounds with the float32 parameters). The two agree except where a float16 scale is subnormal
        and far from its float32 original, where llama.cpp's rule would move a value that is on the grid.
        """
        w = w.float()
        inverse = params["inverse"].to(F32)[:, None]
        if self.kind == "q8_0":
            theirs = _roundf(w * inverse).clamp(-127, 127) + 0.0  # an int8 has no -0
        elif self.kind == "q4_0":
            theirs = torch.trunc(w * inverse + 8.5).clamp(0, 15)
        else:
            theirs = torch.trunc((w - params["offset"].to(F32)[:, None]) * inverse + 0.5).clamp(0, 15)
        d = params["scale"].to(F32)[:, None]
        below = params["min"].to(F32)[:, None] if self.kind == "q4_1" else 0.0
        lo, hi = {"q8_0": (-127, 127), "q4_0": (0, 15), "q4_1": (0, 15)}[self.kind]
        own = torch.round((w - below) / torch.where(d == 0, torch.ones_like(d), d)) + (8 if self.kind == "q4_0" else 0)
        own = torch.where(d == 0, torch.zeros_like(own) + (8 if self.kind == "q4_0" else 0), own).clamp(lo, hi) + 0.0
        return torch.where(self._values(own, params) == w, own, theirs)

    def _values(self, q: torch.Tensor, params: Params) -> torch.Tensor:
        """gguf-py's dequantization, operation for operation, so the float32 results are identical."""
        d = params["scale"].to(F32)[:, None]
        if self.kind == "q8_0":
            return q * d
        if self.kind == "q4_0":
            return d * (q - 8)
        return d * q + params["min"].to(F32)[:, None]

    def project(self, w: torch.Tensor, params: Params) -> torch.Tensor:
        return self._values(self.codes(w, params), params).to(w.dtype)

    # -- all blocks at once: rows of whole blocks are reshaped to one block per row ---------------------
    def fit_all(self, w: torch.Tensor) -> Params:
        rows, cols = w.shape
        if cols % BLOCK:
            return super().fit_all(w)
        return {k: v.reshape(rows, cols // BLOCK) for k, v in self.fit(w.reshape(-1, BLOCK)).items()}

    def _per_group(self, x: torch.Tensor, params: Params, fn, dtype: torch.dtype) -> torch.Tensor:
        rows, cols = x.shape
        if cols % BLOCK:
            return super()._per_group(x, params, fn, dtype)
        flat = {k: v.reshape(-1) for k, v in params.items()}  # (rows, n_blocks) row-major = block order
        return fn(x.reshape(-1, BLOCK), flat).reshape(rows, cols).to(dtype)

    # -- storage -----------------------------------------------------------------------------------
    @property
    def code_bits(self) -> int:
        return self.spec.bits

    def encode(self, w: torch.Tensor, params: Params) -> torch.Tensor:
        q = self.codes(w, params).to(torch.int64)
        return q + 128 if self.kind == "q8_0" else q

    def decode(self, codes: torch.Tensor, params: Params) -> torch.Tensor:
        q = codes.to(torch.int64) - (128 if self.kind == "q8_0" else 0)
        return self._values(q.to(F32), params)

    def param_storage(self) -> dict[str, ParamStorage]:
        # the float16 block parameters (all a GGUF file holds), plus the float32 rounding helpers so a
        # reloaded record rounds later updates exactly as the fitted one did
        signed = self.kind == "q4_0"  # d = (signed max) / -8
        stored = {"scale": ParamStorage("scale", F16, signed=signed), "inverse": ParamStorage("inverse", F32, signed=signed)}
        if self.kind == "q4_1":
            stored.update(min=ParamStorage("min", F16, signed=True), offset=ParamStorage("offset", F32, signed=True))
        return stored
