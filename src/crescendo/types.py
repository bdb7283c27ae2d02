"""Typed values parsed once: sparsity patterns, quantization granularities and quantization grids.

A *grid* is the set of values a quantizer can produce for one tensor row, given parameters fitted on
a group of consecutive columns (the reduction axis). Every weight and activation quantizer in crescendo
(uniform RTN/GPTQ grids, MX, HBFP, INT-block) is a `Grid`; the engine only ever calls `fit`/`project`.
That one abstraction is what lets later stages keep earlier invariants: a pruner that updates weights
after a quantizer projects them back with the *recorded* parameters of that quantizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .errors import ConfigError

Params = dict[str, torch.Tensor]  # per-row parameters of one column group, each of shape (rows,)


@dataclass(frozen=True)
class NM:
    """N:M semi-structured sparsity: in every M consecutive input weights of a row, N are zero.

    Same convention as SparseGPT/Wanda (`prunen`, `prunem`): `NM(2, 4)` prunes 2 of every 4 (50%).
    """

    n: int
    m: int

    def __post_init__(self) -> None:
        if self.m < 1 or self.n < 1:
            raise ConfigError(f"N:M sparsity needs N >= 1 and M >= 1, got {self.n}:{self.m}")
        if self.n >= self.m:
            raise ConfigError(f"N:M sparsity needs N < M, got {self.n}:{self.m}")

    @property
    def ratio(self) -> float:
        return self.n / self.m

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"


def check_ratio(ratio: float, what: str = "sparsity ratio") -> float:
    """Validate a pruning ratio: must lie in [0, 1)."""
    ratio = float(ratio)
    if not 0.0 <= ratio < 1.0:
        raise ConfigError(f"{what} must be in [0, 1), got {ratio}")
    return ratio


def check_bits(bits: int, what: str = "bit-width", low: int = 2, high: int = 8) -> int:
    """Validate an integer bit-width: must lie in low..high (2..8 by default)."""
    if isinstance(bits, bool) or int(bits) != bits:
        raise ConfigError(f"{what} must be an integer, got {bits!r}")
    bits = int(bits)
    if not low <= bits <= high:
        raise ConfigError(f"{what} must be in {low}..{high}, got {bits}")
    return bits


class Grid:
    """A quantization grid along the reduction (column) axis of a 2-D tensor (rows, cols).

    Subclasses set `group_size` (columns sharing one set of parameters; None = one group spanning the
    whole row, i.e. per-channel for weights / per-token for activations) and implement `fit` and
    `project`. `project` must be idempotent: projecting a tensor already on the grid with the same
    parameters returns it unchanged, and 0 must always be representable (so pruned weights stay zero).
    """

    name: ClassVar[str] = "grid"
    group_size: int | None = None

    def fit(self, w: torch.Tensor) -> Params:
        """Parameters for one column group. w: (rows, k) -> {name: (rows,)}."""
        raise NotImplementedError

    def project(self, w: torch.Tensor, params: Params) -> torch.Tensor:
        """Round w (rows, k) onto the grid defined by params ({name: (rows,)}); returns (rows, k)."""
        raise NotImplementedError

    @property
    def bits_per_element(self) -> float:
        """Storage bits of one element (not counting shared parameters)."""
        raise NotImplementedError

    def param_bits(self) -> float:
        """Storage bits of the shared parameters of one (row, group); 0 if negligible."""
        return 0.0

    # -- generic helpers over all groups -------------------------------------------------------
    def groups(self, cols: int) -> list[tuple[int, int]]:
        g = self.group_size or cols
        return [(s, min(s + g, cols)) for s in range(0, cols, g)]

    def fit_all(self, w: torch.Tensor) -> Params:
        """Fit every column group. w: (rows, cols) -> {name: (rows, n_groups)}."""
        per_group = [self.fit(w[:, s:e]) for s, e in self.groups(w.shape[1])]
        return {k: torch.stack([p[k] for p in per_group], dim=1) for k in per_group[0]}

    def project_all(self, w: torch.Tensor, params: Params) -> torch.Tensor:
        """Project every column group with recorded params ({name: (rows, n_groups)})."""
        out = torch.empty_like(w)
        for gi, (s, e) in enumerate(self.groups(w.shape[1])):
            out[:, s:e] = self.project(w[:, s:e], {k: v[:, gi] for k, v in params.items()})
        return out

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        """Fit and project in one go (round-to-nearest onto a freshly fitted grid)."""
        return self.project_all(w, self.fit_all(w))

    def avg_bits(self, cols: int) -> float:
        """Average storage bits per element including the shared parameters."""
        n_groups = len(self.groups(cols))
        return self.bits_per_element + self.param_bits() * n_groups / cols


@dataclass(frozen=True)
class UniformGrid(Grid):
    """Uniform integer grid, as in RTN and GPTQ (IST-DASLab/gptq `quant.py`).

    Asymmetric (default): min-max over the group with the range forced to include 0, scale =
    (max - min) / (2^b - 1), integer zero point = round(-min / scale); 0 is exactly representable.
    Symmetric: scale = amax / (2^(b-1) - 1), signed integers in [-2^(b-1), 2^(b-1) - 1], zero point 0.
    """

    bits: int
    symmetric: bool = False
    group_size: int | None = None  # columns per group; None = per-channel (per-token for activations)
    name: ClassVar[str] = "uniform"

    def __post_init__(self) -> None:
        check_bits(self.bits)
        if self.group_size is not None and self.group_size < 1:
            raise ConfigError(f"group size must be >= 1, got {self.group_size}")

    @property
    def bits_per_element(self) -> float:
        return float(self.bits)

    def param_bits(self) -> float:
        # a 16-bit scale, plus a b-bit zero point when asymmetric
        return 16.0 + (0.0 if self.symmetric else float(self.bits))

    def fit(self, w: torch.Tensor) -> Params:
        w = w.float()
        zero_t = torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
        xmin = torch.minimum(w.min(dim=1).values, zero_t)
        xmax = torch.maximum(w.max(dim=1).values, zero_t)
        if self.symmetric:
            amax = torch.maximum(xmax, -xmin)
            amax = torch.where(amax == 0, torch.ones_like(amax), amax)
            scale = amax / (2 ** (self.bits - 1) - 1)
            return {"scale": scale, "zero": zero_t}
        dead = (xmin == 0) & (xmax == 0)
        xmin = torch.where(dead, -torch.ones_like(xmin), xmin)
        xmax = torch.where(dead, torch.ones_like(xmax), xmax)
        scale = (xmax - xmin) / (2**self.bits - 1)
        zero = torch.round(-xmin / scale)
        return {"scale": scale, "zero": zero}

    def levels(self) -> tuple[int, int]:
        """Inclusive integer range of the stored codes (before subtracting the zero point)."""
        if self.symmetric:
            return -(2 ** (self.bits - 1)), 2 ** (self.bits - 1) - 1
        return 0, 2**self.bits - 1

    def codes(self, w: torch.Tensor, params: Params) -> torch.Tensor:
        """Integer codes (as float) of w (rows, k) on the grid."""
        lo, hi = self.levels()
        scale, zero = params["scale"][:, None], params["zero"][:, None]
        return torch.clamp(torch.round(w / scale) + zero, lo, hi)

    def project(self, w: torch.Tensor, params: Params) -> torch.Tensor:
        scale, zero = params["scale"][:, None].to(w.dtype), params["zero"][:, None].to(w.dtype)
        lo, hi = self.levels()
        q = torch.clamp(torch.round(w / scale) + zero, lo, hi)
        return scale * (q - zero)
