"""What a recipe says each linear should hold, computed from layer names alone (no model needed).

Mirrors the engine's target selection (`models.adapters.select_targets`): a stage targets every
decoder-block linear by default, or every linear whose name matches `include`, minus those matching
`exclude`. Walking the stages in order gives, per layer, whether it is pruned (and by which N:M
patterns or unstructured ratios, which add up across stages), the grid its weights end on, and its
activation and KV quantizers (a later stage replaces an earlier one, as `remove_transforms_` does).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..grids import Grid
from ..types import NM

_KV_SUFFIXES = ("k_proj", "v_proj")


@dataclass
class Expectation:
    """The state of one linear after the whole recipe."""

    pruned: bool = False
    nm: list[NM] = field(default_factory=list)
    ratio_sum: float = 0.0  # unstructured stages add up: each prunes `ratio` on top of the prior mask
    ratio_stages: int = 0
    grid: Grid | None = None
    act_grid: Grid | None = None
    kv_bits: int | None = None


def stage_targets(config, all_linears: list[str], block_linears: list[str]) -> list[str]:
    """Names a stage with `config` compresses (see the module docstring)."""
    include, exclude = getattr(config, "include", None), getattr(config, "exclude", None)
    names = block_linears
    if include is not None:
        names = [n for n in all_linears if re.search(include, n)]
    if exclude is not None:
        names = [n for n in names if not re.search(exclude, n)]
    return names


def _weight_grid(config) -> Grid | None:
    if hasattr(config, "weight_grid"):
        return config.weight_grid
    return config.grid if getattr(config, "weights", False) and hasattr(config, "grid") else None


def _act_grid(config) -> Grid | None:
    if hasattr(config, "act_grid"):
        return config.act_grid
    return config.grid if getattr(config, "activations", False) and hasattr(config, "grid") else None


def recipe_expectations(recipe: str | None, all_linears: list[str], block_linears: list[str]) -> dict[str, Expectation]:
    """Layer name -> Expectation for every linear a stage of `recipe` touches ({} without a recipe)."""
    if not recipe:
        return {}
    from ..recipe import parse_recipe  # imports the method registry

    out: dict[str, Expectation] = {}
    for stage in parse_recipe(recipe).stages:
        spec, config = stage.spec, stage.config
        if spec.apply_model is not None:
            continue  # whole-model methods (rotation) change no record
        for name in stage_targets(config, all_linears, block_linears):
            e = out.setdefault(name, Expectation())
            if spec.kind == "prune":
                e.pruned = True
                if getattr(config, "nm", None) is not None:
                    e.nm.append(config.nm)
                else:
                    e.ratio_sum += float(config.ratio)
                    e.ratio_stages += 1
            if spec.kind != "quantize":
                continue
            if spec.compress_linear is not None and _weight_grid(config) is not None:
                e.grid = _weight_grid(config)
            act = _act_grid(config)
            if act is not None:
                e.act_grid = act
            kv = getattr(config, "kv_bits", None)
            if kv is not None and name.endswith(_KV_SUFFIXES):
                e.kv_bits = kv
    return out
