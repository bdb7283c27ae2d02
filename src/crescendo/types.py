"""Typed values parsed once: sparsity patterns and range-checked ratios and bit-widths.

Quantization grids, the other typed values, live in `crescendo.grids`.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError


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
