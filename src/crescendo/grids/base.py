"""The `Grid` abstraction: the set of values a quantizer can produce, and how those values are stored.

A grid quantizes a 2-D tensor (rows, cols) along its reduction (column) axis: parameters (scales,
zero points, shared exponents) are fitted per row on groups of `group_size` consecutive columns, and
`project` rounds onto the grid those parameters define. Every weight and activation quantizer in
crescendo is a `Grid`; the engine only calls `fit`/`project`, which is what lets later stages keep
earlier invariants (a pruner that updates weights after a quantizer projects them back with the
*recorded* parameters of that quantizer).

A grid also owns its storage form, so exporters never test its type: `code_bits` and
`encode`/`decode` map values on the grid to unsigned integer codes and back, bit for bit in float32;
`param_storage` says how each recorded parameter is stored (dtype, valid range); `to_dict` /
`grid_from_dict` describe it as JSON. Adding a number format is one module defining a `Grid`
subclass decorated with `@register_grid`, plus its import in `crescendo.grids`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..errors import ConfigError, VerifyError
from ..registry import Registry

Params = dict[str, torch.Tensor]  # per-row parameters of one column group, each of shape (rows,)
F32 = torch.float32


@dataclass(frozen=True)
class ParamStorage:
    """How one recorded grid parameter is stored on disk.

    key: its name in `Params`; dtype: the stored dtype (exact for the values the grid produces);
    low/high: inclusive valid range of an integer parameter (checked by `verify`), None for floats;
    signed: whether a float parameter may be negative (`verify` refuses negative ones otherwise).
    """

    key: str
    dtype: torch.dtype
    low: int | None = None
    high: int | None = None
    signed: bool = False  # a float parameter that may be negative (llama.cpp's Q4_0 scale, Q4_1's minimum)


@dataclass(frozen=True)
class IntegerForm:
    """An integer grid: signed `bits`-bit q, one scale (and zero point unless symmetric) per row and group."""

    bits: int
    symmetric: bool
    group_size: int | None  # None = one group per row (per channel)


class Grid:
    """A quantization grid along the reduction (column) axis of a 2-D tensor (rows, cols).

    Subclasses are frozen dataclasses that set `type_name`, `group_size` (columns sharing one set of
    parameters; None = one group spanning the whole row, i.e. per channel for weights / per token for
    activations) and implement `fit`, `project`, `code_bits`, `encode`, `decode` and
    `param_storage`. `project` must be idempotent with recorded parameters, and 0 must be representable (so
    pruned weights stay zero) unless `represents_zero` says otherwise.
    """

    type_name: ClassVar[str] = "grid"
    # Block-format recipe stages this grid type provides: stage name -> constructor arguments
    # (e.g. {"mxfp4": {"element": "e2m1"}}); `block_size` is added from the stage's `bs=` option.
    format_names: ClassVar[dict[str, dict[str, Any]]] = {}
    group_size: int | None = None

    # -- quantization ------------------------------------------------------------------------------
    def fit(self, w: torch.Tensor) -> Params:
        """Parameters for one column group. w: (rows, k) -> {name: (rows,)}."""
        raise NotImplementedError

    def project(self, w: torch.Tensor, params: Params) -> torch.Tensor:
        """Round w (rows, k) onto the grid defined by params ({name: (rows,)}); returns (rows, k)."""
        raise NotImplementedError

    def column_projector(self, params: Params) -> Callable[[torch.Tensor], torch.Tensor]:
        """`project` of one column w (rows,) with fixed params, as a function: the GPTQ sweep calls
        it once per column, so a grid may precompute what does not change (same values as `project`)."""
        return lambda w: self.project(w[:, None], params)[:, 0]

    @property
    def bits_per_element(self) -> float:
        """Storage bits of one element (not counting shared parameters)."""
        raise NotImplementedError

    def param_bits(self) -> float:
        """Storage bits of the shared parameters of one (row, group) in a deployed format."""
        return 0.0

    @property
    def represents_zero(self) -> bool:
        """Whether 0 is on the grid whatever the fitted parameters (so pruned weights can stay zero).

        True for every grid but llama.cpp's Q4_1 (`d * q + m`); recipes that prune a layer whose
        grid cannot represent 0 are refused before anything changes."""
        return True

    # -- deployment formats --------------------------------------------------------------------------
    @property
    def ggml_type(self) -> str | None:
        """The llama.cpp tensor type ("q4_0", ...) whose blocks this grid's values are exactly, or None."""
        return None

    def integer_form(self) -> IntegerForm | None:
        """The grid as `scale * (q - zero_point)` with signed `bits`-bit integers q, if it is one (the form
        integer checkpoint formats such as compressed-tensors store), else None."""
        return None

    def integer_params(self, params: Params) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale float32, zero_point int64 in the signed convention), each (rows, n_groups), of recorded
        params, for a grid with an `integer_form`: every value is exactly `scale * (q - zero_point)`."""
        raise NotImplementedError(f"{self!r} is not an integer grid")

    def microscaling_form(self) -> tuple[str, int] | None:
        """(element type, block size) of an OCP Microscaling grid (power-of-two block scales), else None."""
        return None

    def block_scales(self, params: Params) -> torch.Tensor:
        """Float32 power-of-two scales (rows, n_blocks) of a grid with a `microscaling_form`."""
        raise NotImplementedError(f"{self!r} is not a microscaling grid")

    # -- storage -----------------------------------------------------------------------------------
    @property
    def code_bits(self) -> int:
        """Width of one stored (unsigned) code."""
        raise NotImplementedError

    def encode(self, w: torch.Tensor, params: Params) -> torch.Tensor:
        """Unsigned integer codes (rows, k) int64 of w (rows, k), which must lie on the grid."""
        raise NotImplementedError

    def decode(self, codes: torch.Tensor, params: Params) -> torch.Tensor:
        """Float32 values (rows, k) of unsigned codes (rows, k); `decode(encode(w)) == w` for w on
        the grid, bit for bit."""
        raise NotImplementedError

    def param_storage(self) -> dict[str, ParamStorage]:
        """Stored name -> how that parameter is stored (see `ParamStorage`)."""
        raise NotImplementedError

    def store_params(self, params: Params) -> dict[str, torch.Tensor]:
        """The stored form {stored name: (rows, n_groups)} of recorded parameters."""
        return {name: params[s.key].to(s.dtype).contiguous() for name, s in self.param_storage().items()}

    def load_params(self, stored: dict[str, torch.Tensor]) -> Params:
        """Recorded parameters (float32, as the quantizers keep them) from their stored form."""
        return {s.key: stored[name].to(F32) for name, s in self.param_storage().items()}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description, enough to rebuild the grid with `grid_from_dict`."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        return {"type": self.type_name, **fields}

    # -- generic helpers over all groups -------------------------------------------------------------
    def groups(self, cols: int) -> list[tuple[int, int]]:
        g = self.group_size or cols
        return [(s, min(s + g, cols)) for s in range(0, cols, g)]

    def fit_all(self, w: torch.Tensor) -> Params:
        """Fit every column group. w: (rows, cols) -> {name: (rows, n_groups)}."""
        per_group = [self.fit(w[:, s:e]) for s, e in self.groups(w.shape[1])]
        return {k: torch.stack([p[k] for p in per_group], dim=1) for k in per_group[0]}

    def project_all(self, w: torch.Tensor, params: Params) -> torch.Tensor:
        """Project every column group with recorded params ({name: (rows, n_groups)})."""
        return self._per_group(w, params, self.project, w.dtype)

    def encode_all(self, w: torch.Tensor, params: Params) -> torch.Tensor:
        """Unsigned codes (rows, cols) int64 of every group of w with recorded params."""
        return self._per_group(w.to(F32), params, self.encode, torch.int64)

    def decode_all(self, codes: torch.Tensor, params: Params) -> torch.Tensor:
        """Float32 values (rows, cols) of unsigned codes (rows, cols); inverse of `encode_all`."""
        return self._per_group(codes, params, self.decode, F32)

    def _per_group(self, x: torch.Tensor, params: Params, fn: Callable, dtype: torch.dtype) -> torch.Tensor:
        out = torch.empty(x.shape, dtype=dtype, device=x.device)
        for gi, (s, e) in enumerate(self.groups(x.shape[1])):
            out[:, s:e] = fn(x[:, s:e], {k: v[:, gi] for k, v in params.items()})
        return out

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        """Fit and project in one go (round-to-nearest onto a freshly fitted grid)."""
        return self.project_all(w, self.fit_all(w))

    def avg_bits(self, cols: int) -> float:
        """Average storage bits per element including the shared parameters."""
        n_groups = len(self.groups(cols))
        return self.bits_per_element + self.param_bits() * n_groups / cols


GRIDS: Registry[type[Grid]] = Registry("grid type")


def register_grid(cls: type[Grid]) -> type[Grid]:
    """Class decorator: register a grid type under its `type_name` (duplicates raise)."""
    GRIDS.add(cls.type_name, cls)
    return cls


def grid_from_dict(d: dict | None) -> Grid | None:
    """Inverse of `Grid.to_dict`. A malformed or unknown entry raises VerifyError (it is read from
    files that may not be trusted: nothing is executed, only registered grid types are built)."""
    if d is None:
        return None
    if not isinstance(d, dict) or not isinstance(d.get("type"), str) or d["type"] not in GRIDS:
        raise VerifyError(f"unknown or malformed grid entry {str(d)[:120]!r}")
    cls = GRIDS.get(d["type"])
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    names = {f.name for f in fields}
    required = {f.name for f in fields if f.default is dataclasses.MISSING}
    given = {k: v for k, v in d.items() if k != "type"}
    if not required <= set(given) <= names:
        raise VerifyError(f"grid entry {str(d)[:120]!r} must have the fields {sorted(required)} "
                          f"(and optionally {sorted(names - required)})")
    try:
        return cls(**given)
    except (ConfigError, TypeError, ValueError) as e:
        raise VerifyError(f"malformed grid entry {str(d)[:120]!r}: {e}") from None


def check_group_size(group_size: Any, what: str = "group size") -> None:
    if group_size is not None and (isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1):
        raise ConfigError(f"{what} must be an integer >= 1, got {group_size!r}")


def device_constant(value: float, like: torch.Tensor) -> torch.Tensor:
    """`value` as a 0-d float32 tensor on `like`'s device.

    Dividing by it instead of by a Python number keeps scale fitting bit-identical on every device:
    CUDA turns division by a host scalar into multiplication by its rounded reciprocal, which moves
    scales by one unit in the last place (and with them a large share of the rounded codes).
    """
    return torch.tensor(value, dtype=F32, device=like.device)
