"""What one measured run records, whatever the metric: the base of the language and vision outcomes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .units import Units

if TYPE_CHECKING:
    from .api import CompressionResult
    from .store import RunMetrics


@dataclass(kw_only=True)
class Outcome:
    """One compressed model measured under a protocol: what every metric's outcome records.

    Subclasses add the measured figure and define `metric` (M, higher is better)."""

    recipe: str
    summary: dict[str, Any]
    stages: list[dict[str, Any]] = field(default_factory=list)
    compress_seconds: float = 0.0
    eval_seconds: float = 0.0
    units: Units | None = None  # per-unit results of the evaluation (windows or test images)

    @property
    def metric(self) -> float:
        raise NotImplementedError


@dataclass(frozen=True)
class Measured:
    """What a bench's `measure` returns: the typed metrics of a row, the evaluation seconds and the
    per-unit results the row stores beside them."""

    metrics: RunMetrics
    seconds: float
    units: Units | None


def stage_rows(result: CompressionResult) -> list[dict[str, Any]]:
    """The per-stage part of an outcome: method, stage text, seconds, and any details the stage reported."""
    return [{"method": s.method, "stage": s.stage, "seconds": s.seconds, **({"details": s.details} if s.details else {})}
            for s in result.stages]
