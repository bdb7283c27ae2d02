"""What a recipe says each linear should hold, computed from layer names alone (no model needed).

Uses the engine's target selection (`Targets.select`): a stage targets every decoder-block linear
by default, or every linear whose name matches `include`, minus those matching `exclude`. Walking
the stages in order gives, per layer, whether it is pruned (and by which N:M patterns or unstructured
ratios, which add up across stages), the grid its weights end on, and its activation and KV
quantizers (a later stage replaces an earlier one, as `remove_transforms_` does).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..grids import Grid
from ..types import NM


@dataclass
class Expectation:
    """The state of one linear after the whole recipe."""

    pruned: bool = False
    nm: list[NM] = field(default_factory=list)
    ratio_sum: float = 0.0  # unstructured stages add up: each prunes `ratio` on top of the prior mask
    ratio_stages: int = 0
    coarse_stages: int = 0  # filter-pruning stages (their ratio is not checked element by element)
    grid: Grid | None = None
    act_grid: Grid | None = None
    kv_bits: int | None = None


def recipe_expectations(recipe: str | None, all_linears: list[str], block_linears: list[str],
                        kv_projections: list[str]) -> dict[str, Expectation]:
    """Layer name -> Expectation for every linear a stage of `recipe` touches ({} without a recipe).

    Reads each stage's config through the method protocol (targets, sparsity, grids, KV bits)."""
    if not recipe:
        return {}
    from ..recipe import parse_recipe  # imports the method registry

    kv_names = set(kv_projections)
    out: dict[str, Expectation] = {}
    stages = parse_recipe(recipe).stages
    names = (block_linears, all_linears)
    if any(s.kind == "share" for s in stages):  # before it, stages targeted the linears it factored
        names = (_unfactored(block_linears), _unfactored(all_linears))
    for stage in stages:
        spec, config = stage.spec, stage.config
        if stage.kind == "share":  # the linears it factors are gone (their masks and grids absorbed);
            shared = set(config.targets.select(*names))  # later stages target the factors
            out = {n: e for n, e in out.items() if n not in shared}
            names = (block_linears, all_linears)
            continue
        if config.targets is None:
            continue  # whole-model methods (rotation, block removal) change no record
        for name in config.targets.select(*names):
            e = out.setdefault(name, Expectation())
            sparsity = config.sparsity
            if sparsity is not None:
                e.pruned = True
                if sparsity.nm is not None:
                    e.nm.append(sparsity.nm)
                elif sparsity.granularity != "element":
                    e.coarse_stages += 1  # whole filters: counts round per layer, no element-level ratio
                else:
                    e.ratio_sum += float(sparsity.ratio)
                    e.ratio_stages += 1
            if spec.compress_linear is not None and config.weight_grid is not None:
                e.grid = config.weight_grid
            if config.act_grid is not None:
                e.act_grid = config.act_grid
            if config.kv_bits is not None and name in kv_names:
                e.kv_bits = config.kv_bits
    return out


def _unfactored(names: list[str]) -> list[str]:
    """The linear names before a share stage factored them (`X.basis`, `X.coefficient` -> `X`)."""
    from ..models.sharing import container_name

    return list(dict.fromkeys(container_name(n) for n in names))
