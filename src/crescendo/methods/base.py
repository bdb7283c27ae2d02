"""What a method is: a frozen, validated config plus functions that apply it, registered by name.

Per-linear methods implement `compress_linear(weight, stats, record, config) -> weight`, where
`weight` is the (out, in) float32 matrix, `stats` the calibration statistic the method asked for
(the layer Hessian X^T X, or the per-input squared norm), and `record` the layer's history: its
pruning mask and the grid its weights lie on. A method reads the record to keep earlier invariants
and updates it with what it did. Whole-model methods (rotation, block removal) implement
`apply_model` instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from ..registry import Registry
from ..grids import Grid, Params
from ..types import NM

Kind = Literal["prune", "quantize", "rotate", "share", "adapt"]
Statistic = Literal["hessian", "input_sq_norm"]


@dataclass
class LinearRecord:
    """What earlier stages did to one linear layer (weights as (out, in))."""

    name: str
    mask: torch.Tensor | None = None  # (out, in) bool, True = pruned (held at exactly zero)
    nm: NM | None = None  # the N:M pattern the mask follows, when a pruner imposed one
    grid: Grid | None = None  # the grid the weights lie on
    grid_params: Params | None = None  # {name: (out, n_groups)}
    act_grid: Grid | None = None  # per-token activation quantizer on the input
    kv_bits: int | None = None  # KV fake-quantization of this projection's output (k_proj / v_proj)
    history: list[str] = field(default_factory=list)

    @property
    def sparsity(self) -> float:
        return float(self.mask.float().mean()) if self.mask is not None else 0.0

    def weight_bits(self, in_features: int) -> float:
        """Average storage bits per weight element, scales included (16 when not quantized)."""
        return self.grid.avg_bits(in_features) if self.grid is not None else 16.0


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: name, kind, config class and how to apply it."""

    name: str
    kind: Kind
    config_cls: type
    parse: Callable[[str, list[str], dict[str, str]], Any]  # (name, positional, keyword) -> config
    statistic: Statistic | None = None  # calibration statistic per linear, or None (data-free)
    compress_linear: Callable[..., torch.Tensor] | None = None
    attach_linear: Callable[..., None] | None = None  # e.g. activation quantizers, after the weights
    apply_model: Callable[..., None] | None = None  # whole-model methods (rotation, block removal)
    needs_calibration: bool = False  # whole-model methods that read calibration data


METHODS: Registry[MethodSpec] = Registry("method")


def register_method(spec: MethodSpec) -> MethodSpec:
    return METHODS.add(spec.name, spec)
