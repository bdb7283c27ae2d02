"""Block-wise max-scaled formats as recipe stages: MX (OCP v1.0), HBFP, INT-k block.

`mxfp4` quantizes weights; `mxfp8:w,a` also activations (per token, blocks along the hidden size);
`mxfp4:a` activations only; `bs=16` changes the block size. Weights are rounded to nearest (no
calibration), so the format's grid is recorded and later stages keep to it. Every block format a grid
type registers (`Grid.format_names`) is a stage of the same name.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import ConfigError
from ..grids import Grid, format_names, make_format_grid
from ..state import LinearRecord
from ..types import Targets
from . import args as A
from .base import MethodConfig, MethodSpec, register_method
from .quantization import ActivationQuantizer, activation_quantizer_for, add_input_transform_, remove_transforms_


@dataclass(frozen=True)
class FormatConfig(MethodConfig):
    """A block format applied to weights and/or activations."""

    format: str
    block_size: int | None = None  # None = the format's default (32 for MX / INT block, 64 for HBFP)
    weights: bool = True
    activations: bool = False
    target: Targets = field(default_factory=Targets)

    def __post_init__(self) -> None:
        if not (self.weights or self.activations):
            raise ConfigError(f"{self.format} must quantize weights (w), activations (a) or both")
        self.grid  # validates the name and block size now, not mid-compression

    @property
    def grid(self) -> Grid:
        return make_format_grid(self.format, self.block_size)

    @property
    def targets(self) -> Targets:
        return self.target

    @property
    def weight_grid(self) -> Grid | None:
        return self.grid if self.weights else None

    @property
    def act_grid(self) -> Grid | None:
        return self.grid if self.activations else None

    def text(self) -> str:
        parts = []
        if (self.weights, self.activations) != (True, False):
            parts += (["w"] if self.weights else []) + (["a"] if self.activations else [])
        if self.block_size is not None:
            parts.append(f"bs={self.block_size}")
        parts += self.target.args()
        return self.format + (":" + ",".join(parts) if parts else "")

    @classmethod
    def parse(cls, name: str, positional: list[str], keyword: dict[str, str]) -> FormatConfig:
        target = A.pop_targets(keyword)
        tokens = [t.lower() for t in positional]
        if len(set(tokens)) != len(tokens):
            raise ConfigError(f"repeated argument in {name}: {', '.join(positional)}")
        known = [t for t in tokens if t in ("w", "a", "wa")]
        block = A.parse_int(keyword.pop("bs"), "block size") if "bs" in keyword else None
        A.reject_leftovers(name, [t for t in tokens if t not in known], keyword)
        weights = not known or bool({"w", "wa"} & set(known))
        activations = bool({"a", "wa"} & set(known))
        return cls(name, block, weights, activations, target)


def format_linear(weight, stats, record: LinearRecord, config: FormatConfig) -> torch.Tensor:
    if not config.weights:
        return weight
    grid = config.grid
    params = grid.fit_all(weight)
    q = grid.project_all(weight, params)
    if record.mask is not None:
        q = q.masked_fill(record.mask, 0.0)
    record.grid, record.grid_params = grid, params
    return q


def attach_format_activations(module, record: LinearRecord, config: FormatConfig, adapter, model) -> None:
    if config.activations:
        remove_transforms_(module, ActivationQuantizer)
        add_input_transform_(module, activation_quantizer_for(module, config.grid))
        record.act_grid = config.grid


for _name in sorted(format_names()):
    register_method(MethodSpec(_name, "quantize", FormatConfig, None, format_linear, attach_format_activations))
