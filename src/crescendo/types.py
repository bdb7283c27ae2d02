"""Typed values parsed once: sparsity patterns, layer targets, range-checked ratios and bit-widths.

Quantization grids, the other typed values, live in `crescendo.grids`.
"""

from __future__ import annotations

import re
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

    @classmethod
    def parse(cls, text: str) -> NM:
        """`"2:4"` -> NM(2, 4); anything else raises ConfigError."""
        m = re.fullmatch(r"\s*(\d+):(\d+)\s*", text)
        if not m:
            raise ConfigError(f"N:M pattern must look like 2:4, got {text!r}")
        return cls(int(m.group(1)), int(m.group(2)))

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


MAX_PATTERN_LENGTH = 500  # include/exclude regexes are matched against every module name


@dataclass(frozen=True)
class Targets:
    """Which linears a per-layer stage compresses: every decoder-block linear by default, or those
    whose name matches `include` (which may also reach outside the blocks, e.g. `lm_head`), minus
    those matching `exclude`. Both are Python regular expressions, validated here (before any model
    is loaded); a pattern that matches no module is an error when the stage is applied."""

    include: str | None = None
    exclude: str | None = None

    def __post_init__(self) -> None:
        for what, pattern in (("include", self.include), ("exclude", self.exclude)):
            if pattern is None:
                continue
            if not pattern or len(pattern) > MAX_PATTERN_LENGTH:
                raise ConfigError(f"{what} pattern must have 1 to {MAX_PATTERN_LENGTH} characters")
            try:
                re.compile(pattern)
            except re.error as e:
                raise ConfigError(f"{what} pattern {pattern!r} is not a valid regular expression: {e}") from None

    def args(self) -> list[str]:
        """The recipe arguments that spell these targets."""
        return ([f"include={self.include}"] if self.include is not None else []) + (
            [f"exclude={self.exclude}"] if self.exclude is not None else [])

    def select(self, block_linears: list[str], all_linears: list[str]) -> list[str]:
        """Names targeted, given every decoder-block linear and every linear of the model."""
        names = block_linears
        if self.include is not None:
            names = [n for n in all_linears if re.search(self.include, n)]
            if not names:
                raise ConfigError(f"include pattern {self.include!r} matches no linear module")
        if self.exclude is not None:
            kept = [n for n in names if not re.search(self.exclude, n)]
            if len(kept) == len(names):
                raise ConfigError(f"exclude pattern {self.exclude!r} matches no targeted module")
            names = kept
        return names
