"""What a method is: a frozen, validated config plus functions that apply it, registered by name.

Every config implements one protocol (`MethodConfig`): its canonical recipe text, the linears it
targets, the weight and activation grids and KV bits it leaves behind, the sparsity it imposes, and
a `parse` classmethod that turns its own recipe arguments into a config. The engine, summaries,
exports and `verify` read configs only through this protocol.

Per-linear methods implement `compress_linear(weight, stats, record, config) -> weight`, where
`weight` is the (out, in) float32 matrix, `stats` the calibration statistic the method asked for
(the layer Hessian X^T X, or the per-input squared norm), and `record` the layer's
`crescendo.state.LinearRecord`: its pruning mask and the grid its weights lie on. A method reads
the record to keep earlier invariants and updates it with what it did. Whole-model methods
(rotation, block removal) implement `apply_model` instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ..grids import Grid
from ..registry import Registry
from ..types import NM, Targets

Kind = Literal["prune", "quantize", "rotate", "share", "adapt", "fold"]
Statistic = Literal["hessian", "input_sq_norm"]


@dataclass(frozen=True)
class Sparsity:
    """The pruning a per-layer stage adds: a ratio or an N:M pattern, of elements or of whole filters."""

    ratio: float | None = None
    nm: NM | None = None
    granularity: str = "element"  # "element" (counted per weight) or "filter" (whole rows, rounded per layer)

    @property
    def fraction(self) -> float:
        return self.nm.ratio if self.nm is not None else float(self.ratio or 0.0)


class MethodConfig:
    """The protocol of every method config (frozen dataclasses validated in __post_init__).

    Subclasses override what applies to them; the defaults describe a method that changes nothing.
    """

    def text(self) -> str:
        """Canonical recipe text; `parse_stage(config.text())` gives an equal config."""
        raise NotImplementedError

    @property
    def targets(self) -> Targets | None:
        """The linears a per-layer method compresses; None for whole-model methods."""
        return None

    @property
    def weight_grid(self) -> Grid | None:
        """The grid the stage puts target weights on (None: weights keep their grid)."""
        return None

    @property
    def act_grid(self) -> Grid | None:
        """The grid of the activation quantizer attached to target inputs (None: none)."""
        return None

    @property
    def kv_bits(self) -> int | None:
        """KV-cache fake-quantization bits on k_proj / v_proj outputs (None: none)."""
        return None

    @property
    def sparsity(self) -> Sparsity | None:
        """The pruning a per-layer pruner adds on top of earlier masks (None: no per-layer pruning)."""
        return None

    @classmethod
    def parse(cls, name: str, positional: list[str], keyword: dict[str, str]) -> MethodConfig:
        """Build a config from a stage's arguments (consumes what it understands; leftovers raise)."""
        raise NotImplementedError


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: name, kind, config class and how to apply it."""

    name: str
    kind: Kind
    config_cls: type[MethodConfig]
    # calibration statistic per linear, None (data-free), or a function of the config (a criterion
    # option that needs data, e.g. `filter:0.3,by=act`)
    statistic: Statistic | Callable[[Any], Statistic | None] | None = None
    compress_linear: Callable[..., torch.Tensor] | None = None
    attach_linear: Callable[..., None] | None = None  # e.g. activation quantizers, after the weights
    apply_model: Callable[..., None] | None = None  # whole-model methods (rotation, block removal)
    needs_calibration: bool = False  # whole-model methods that read calibration data
    requires: Callable[[], None] | None = None  # raises ConfigError naming a missing optional dependency
    # check(model, adapter, config, earlier_stages): refuses, before anything changes, a placement in
    # a recipe (or on an already compressed model) whose invariants the stage could not keep
    check: Callable[..., None] | None = None

    def statistic_for(self, config: Any) -> Statistic | None:
        """The statistic this configuration of the method needs (None: data-free)."""
        return self.statistic(config) if callable(self.statistic) else self.statistic

    def parse(self, positional: list[str], keyword: dict[str, str]) -> Any:
        return self.config_cls.parse(self.name, positional, keyword)

    @property
    def calibrated(self) -> bool:
        """Whether some configuration of the method reads calibration data (see `Stage.calibrated`)."""
        return self.statistic is not None or self.needs_calibration


METHODS: Registry[MethodSpec] = Registry("method")


def register_method(spec: MethodSpec) -> MethodSpec:
    return METHODS.add(spec.name, spec)
