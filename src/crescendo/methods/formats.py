"""Block-wise max-scaled formats as recipe stages: MX (OCP v1.0), HBFP, INT-k block.

`mxfp4` quantizes weights; `mxfp8:w,a` also activations (per token, blocks along the hidden size);
`mxfp4:a` activations only; `bs=16` changes the block size. Weights are rounded to nearest (no
calibration), so the format's grid is recorded and later stages keep to it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..grids import Grid, format_names, make_format_grid
from . import args as A
from .base import LinearRecord, MethodSpec, register_method
from .quantization import ActivationQuantizer, add_input_transform_, remove_transforms_



@dataclass(frozen=True)
class FormatConfig:
    """A block format applied to weights and/or activations."""

    format: str
    block_size: int | None = None  # None = the format's default (32 for MX / INT block, 64 for HBFP)
    weights: bool = True
    activations: bool = False
    include: str | None = None
    exclude: str | None = None

    def __post_init__(self) -> None:
        if not (self.weights or self.activations):
            raise ConfigError(f"{self.format} must quantize weights (w), activations (a) or both")
        self.grid  # validates the name and block size now, not mid-compression

    @property
    def grid(self) -> Grid:
        return make_format_grid(self.format, self.block_size)

    def spec(self) -> str:
        parts = []
        if (self.weights, self.activations) != (True, False):
            parts += (["w"] if self.weights else []) + (["a"] if self.activations else [])
        if self.block_size is not None:
            parts.append(f"bs={self.block_size}")
        parts += A.targets_suffix(self.include, self.exclude)
        return self.format + (":" + ",".join(parts) if parts else "")


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


def attach_format_activations(module, record: LinearRecord, config: FormatConfig, model_config=None) -> None:
    if config.activations:
        remove_transforms_(module, ActivationQuantizer)
        add_input_transform_(module, ActivationQuantizer(config.grid))
        record.act_grid = config.grid


def _parse(name: str, positional: list[str], keyword: dict[str, str]) -> FormatConfig:
    include, exclude = A.pop_targets(keyword)
    tokens = {t.lower() for t in positional}
    unknown = tokens - {"w", "a", "wa"}
    A.reject_leftovers(name, sorted(unknown), {k: v for k, v in keyword.items() if k != "bs"})
    block = A.parse_int(keyword["bs"], "block size") if "bs" in keyword else None
    weights = not tokens or bool(tokens & {"w", "wa"})
    activations = bool(tokens & {"a", "wa"})
    return FormatConfig(name, block, weights, activations, include, exclude)


for _name in sorted(format_names()):
    register_method(MethodSpec(_name, "quantize", FormatConfig, _parse, None, format_linear, attach_format_activations))
