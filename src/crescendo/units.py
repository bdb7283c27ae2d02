"""Per-unit evaluation results: the pieces a protocol's metric is the mean of, kept so that any two
runs under one protocol compare pairwise, later, without re-running anything.

A language protocol's units are its evaluation windows: a unit's value is the window's loss (mean
cross-entropy of its predicted tokens, nats), and perplexity = exp(mean of the values). A vision
protocol's units are its test images: a unit's value is 1 when the top-1 prediction is right, else 0,
and accuracy = 100 x mean. A unit is named by its position in the protocol's fixed order (window i,
test image i), so a run that saw only some units (a raced evaluation) says which.

Stored compactly (`encode` / `decode`): window losses as little-endian float64, correctness as one
bit per image, unit ids (only when they are not 0..n-1) as little-endian uint32.

>>> u = Units("window-loss", [3.0, 3.2], total=64)
>>> round(u.metric, 3), u.full
(-22.198, False)
>>> Units.decode(*u.encode()).values.tolist()
[3.0, 3.2]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import CrescendoError

# kind -> (what a unit's value is, the metric M it averages into)
KINDS = {
    "window-loss": "loss of one evaluation window (nats per predicted token); M = -exp(mean)",
    "correct": "1 if the top-1 prediction of one test image is right, else 0; M = 100 * mean",
}
MAX_UNITS = 1 << 24  # far above any protocol's (10,000 test images; a few thousand windows)


class UnitsError(CrescendoError, ValueError):
    """Per-unit results that cannot be built, decoded or compared (kinds, sizes, unit sets)."""


@dataclass(frozen=True, eq=False)
class Units:
    """The per-unit values of one evaluation.

    kind: "window-loss" or "correct" (see KINDS). values: (n,) float64. index: (n,) unit ids, distinct,
    each in [0, total); default 0..n-1 (the protocol's first n units, in order). total: how many units
    the protocol defines (a full evaluation has them all)."""

    kind: str
    values: np.ndarray
    total: int
    index: np.ndarray | None = None

    def __init__(self, kind: str, values, total: int, index=None) -> None:
        if kind not in KINDS:
            raise UnitsError(f"unknown unit kind {kind!r} (one of {', '.join(KINDS)})")
        vals = np.asarray(values, dtype=np.float64).reshape(-1)
        if isinstance(total, bool) or not isinstance(total, (int, np.integer)) or not 1 <= total <= MAX_UNITS:
            raise UnitsError(f"units: total must be an integer in [1, {MAX_UNITS}], got {total!r}")
        total = int(total)
        if not 1 <= vals.size <= total:
            raise UnitsError(f"units: {vals.size} values for a protocol of {total} units")
        if index is None:
            ids = np.arange(vals.size, dtype=np.int64)
        else:
            ids = np.asarray(index).reshape(-1)
            if ids.size and not np.issubdtype(ids.dtype, np.integer):
                raise UnitsError("units: unit ids must be integers")
            ids = ids.astype(np.int64)
            if ids.size != vals.size:
                raise UnitsError(f"units: {ids.size} unit ids for {vals.size} values")
            if ids.min() < 0 or ids.max() >= total or np.unique(ids).size != ids.size:
                raise UnitsError(f"units: unit ids must be distinct and in [0, {total})")
        if kind == "correct" and not np.isin(vals, (0.0, 1.0)).all():
            raise UnitsError("units: correctness values must be 0 or 1")
        vals.setflags(write=False)
        ids.setflags(write=False)
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "values", vals)
        object.__setattr__(self, "total", total)
        object.__setattr__(self, "index", ids)

    def __len__(self) -> int:
        return int(self.values.size)

    @property
    def full(self) -> bool:
        """Whether these are all the protocol's units (a full evaluation)."""
        return self.values.size == self.total

    @property
    def metric(self) -> float:
        """M over these units: -perplexity for window losses, accuracy in percent for correctness."""
        mean = math.fsum(self.values.tolist()) / self.values.size
        if self.kind == "window-loss":
            return -math.exp(mean) if mean < 709 else -math.inf
        return 100.0 * math.fsum(self.values.tolist()) / self.values.size  # as accuracy() computes it

    def subset(self, ids: Sequence[int] | np.ndarray) -> Units:
        """The values of the units `ids` (every one must be present), in the order given."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        pos = {int(u): i for i, u in enumerate(self.index)}
        missing = [int(u) for u in ids if int(u) not in pos]
        if missing:
            raise UnitsError(f"units: {len(missing)} requested units were not evaluated (e.g. unit {missing[0]})")
        take = np.fromiter((pos[int(u)] for u in ids), dtype=np.int64, count=ids.size)
        return Units(self.kind, self.values[take], self.total, ids)

    # -- storage -------------------------------------------------------------------------------------
    def encode(self) -> tuple[str, int, bytes | None, bytes]:
        """(kind, total, ids or None when 0..n-1, values) as compact bytes."""
        ids = None if np.array_equal(self.index, np.arange(len(self))) else self.index.astype("<u4").tobytes()
        if self.kind == "correct":
            values = np.packbits(self.values.astype(np.uint8)).tobytes()
        else:
            values = self.values.astype("<f8").tobytes()
        return self.kind, self.total, ids, values

    @classmethod
    def decode(cls, kind: str, total: int, ids: bytes | None, values: bytes, n: int | None = None) -> Units:
        """Inverse of `encode`; `n` (the number of units) is needed for bit-packed correctness when the
        unit ids are not stored (else it is read from them). Inconsistent sizes raise UnitsError."""
        if kind not in KINDS:
            raise UnitsError(f"stored units have an unknown kind {kind!r}")
        index = None
        if ids is not None:
            if len(ids) % 4:
                raise UnitsError("stored unit ids are not whole uint32 values")
            index = np.frombuffer(ids, dtype="<u4").astype(np.int64)
            n = index.size if n is None else n
        if kind == "correct":
            if n is None or not 0 < n <= 8 * len(values) or len(values) != (n + 7) // 8:
                raise UnitsError(f"stored correctness bits ({len(values)} bytes) do not hold {n} units")
            vals = np.unpackbits(np.frombuffer(values, dtype=np.uint8))[:n].astype(np.float64)
        else:
            if len(values) % 8:
                raise UnitsError("stored window losses are not whole float64 values")
            vals = np.frombuffer(values, dtype="<f8").astype(np.float64)
            if n is not None and vals.size != n:
                raise UnitsError(f"stored window losses: {vals.size} values, {n} expected")
        return cls(kind, vals, int(total), index)

    def to_dict(self) -> dict:
        """JSON form (for --json outputs): kind, total, ids, values."""
        return {"kind": self.kind, "total": self.total, "ids": self.index.tolist(), "values": self.values.tolist()}


@dataclass(frozen=True)
class Evaluation:
    """One model measured under a protocol: M, its per-unit results (None for an evaluator that keeps
    none) and the seconds the evaluation took."""

    metric: float
    units: Units | None = None
    seconds: float = 0.0
