"""Quantization grids: every number format crescendo quantizes onto, and how it is stored.

Importing this package registers the built-in grid types (explicitly, below). A new number format is
one module defining a `Grid` subclass with `@register_grid` (and `format_names` if it is a block
format used as a recipe stage), plus one import line here.
"""

from __future__ import annotations

from ..errors import ConfigError
from .base import F32, GRIDS, Grid, IntegerForm, Params, ParamStorage, device_constant, grid_from_dict, register_grid
from .ggml import GGMLGrid
from .hbfp import HBFPGrid
from .intblock import IntBlockGrid
from .mx import MXGrid
from .uniform import UniformGrid


def format_names() -> dict[str, type[Grid]]:
    """Every block-format recipe stage name -> the grid type that provides it."""
    return {name: GRIDS.get(t) for t in GRIDS for name in GRIDS.get(t).format_names}


def make_format_grid(name: str, block_size: int | None = None) -> Grid:
    """Build the grid of a block-format recipe name (PROTOCOL.md, "Method defaults").

    Names: mxfp8 (E4M3), mxfp8_e5m2, mxfp6 (E2M3), mxfp6_e3m2, mxfp4 (E2M1), mxint8 (blocks of 32);
    hbfp8 / hbfp6 / hbfp4 (blocks of 64); intKb for K in 2..8 (blocks of 32). `block_size`
    overrides the default. Unknown names and block sizes < 1 raise ConfigError.

    >>> make_format_grid("mxfp4")
    MXGrid(element='e2m1', block_size=32)
    """
    key = name.strip().lower()
    names = format_names()
    if key not in names:
        raise ConfigError(f"unknown number format {name!r}; expected one of {', '.join(sorted(names))}")
    cls = names[key]
    kwargs = dict(cls.format_names[key])
    if block_size is not None:
        kwargs["block_size"] = block_size
    return cls(**kwargs)


__all__ = ["GRIDS", "F32", "Grid", "IntegerForm", "Params", "ParamStorage", "UniformGrid", "MXGrid", "HBFPGrid", "IntBlockGrid", "GGMLGrid",
           "device_constant", "format_names", "grid_from_dict", "make_format_grid", "register_grid"]
