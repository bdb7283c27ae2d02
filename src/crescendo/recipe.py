"""Recipes: ordered stages parsed once from a string or a YAML file.

String grammar: stages separated by `>`; a stage is `method[:args]`; args are comma separated, each
either positional (`0.5`, `2:4`, `w4a4`, `g128`, `sym`, `actorder`) or `key=value`.

    "sparsegpt:0.5 > gptq:w4,g128"      "wanda:2:4 > rtn:w8a8"      "magnitude:0.5 > mxfp4"

YAML: a list of stages, each a string or a mapping `{method: name, args: [...], key: value}`:

    stages:
      - sparsegpt:0.5
      - {method: gptq, bits: 4, group: 128}
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import CrescendoError, RecipeError
from .methods import METHODS
from .methods.base import MethodSpec

_STAGE = re.compile(r"^\s*([A-Za-z][A-Za-z0-9_\-]*)\s*(?::(.*))?$")
MAX_RECIPE_CHARS = 10_000  # a recipe string or YAML file; far above any real pipeline
MAX_STAGES = 64


@dataclass(frozen=True)
class Stage:
    """One method placed in a pipeline."""

    method: str
    config: Any
    text: str  # canonical spelling, e.g. "gptq:w4,g128"

    @property
    def spec(self) -> MethodSpec:
        return METHODS.get(self.method)

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def calibrated(self) -> bool:
        """Whether this stage, as configured, reads calibration data."""
        spec = self.spec
        return spec.statistic_for(self.config) is not None or spec.needs_calibration

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class Recipe:
    """An ordered tuple of stages. `str(recipe)` round-trips through `parse_recipe`."""

    stages: tuple[Stage, ...]

    def __str__(self) -> str:
        return " > ".join(s.text for s in self.stages) if self.stages else "dense"

    def __len__(self) -> int:
        return len(self.stages)

    def __add__(self, other: Recipe) -> Recipe:
        return Recipe(self.stages + other.stages)


def parse_stage(text: str) -> Stage:
    """Parse one stage like `gptq:w4,g128` into a validated Stage."""
    m = _STAGE.match(text)
    if not m:
        raise RecipeError(f"malformed recipe stage {text.strip()!r}: expected 'method[:args]'")
    name, rest = m.group(1).lower(), (m.group(2) or "").strip()
    spec = METHODS.get(name)
    positional: list[str] = []
    keyword: dict[str, str] = {}
    if rest:
        for token in rest.split(","):
            token = token.strip()
            if not token:
                raise RecipeError(f"malformed recipe stage {text.strip()!r}: empty argument")
            if "=" in token:
                key, _, value = token.partition("=")
                key = key.strip().lower()
                if key in keyword:
                    raise RecipeError(f"stage {text.strip()!r}: argument {key!r} is given twice")
                keyword[key] = value.strip()
            elif token.lower() in (p.lower() for p in positional):
                raise RecipeError(f"stage {text.strip()!r}: argument {token!r} is given twice")
            else:
                positional.append(token)
    try:
        config = spec.parse(positional, keyword)
    except CrescendoError as e:
        raise RecipeError(f"stage {text.strip()!r}: {e}") from None
    return Stage(method=name, config=config, text=config.text())


def parse_recipe(recipe: str | Recipe | list | tuple) -> Recipe:
    """Parse a recipe string (`a > b > c`), a list of stage strings, or return a Recipe unchanged.

    Checks what needs no model: every stage's arguments, at most MAX_STAGES stages, and a rotation
    only as the first stage (it would densify pruned weights and move every weight off its grid)."""
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, (list, tuple)):
        if len(recipe) > MAX_STAGES:
            raise RecipeError(f"a recipe has at most {MAX_STAGES} stages, got {len(recipe)}")
        parts = [p if isinstance(p, str) else _stage_from_mapping(p) for p in recipe]
    elif isinstance(recipe, str):
        if len(recipe) > MAX_RECIPE_CHARS:
            raise RecipeError(f"a recipe has at most {MAX_RECIPE_CHARS} characters, got {len(recipe)}")
        if not recipe.strip():
            raise RecipeError("empty recipe")
        parts = recipe.split(">")
    else:
        raise RecipeError(f"a recipe is a string or a list of stages, got {type(recipe).__name__}")
    if len(parts) > MAX_STAGES:
        raise RecipeError(f"a recipe has at most {MAX_STAGES} stages, got {len(parts)}")
    if any(not p.strip() for p in parts):
        raise RecipeError(f"malformed recipe {_short(recipe)}: empty stage")
    stages = tuple(parse_stage(p) for p in parts)
    for position, stage in enumerate(stages):
        if stage.kind == "rotate" and position > 0:
            raise RecipeError(f"{stage} must be the first stage (it would densify pruned weights and move "
                              f"quantized ones off their grids)")
        if stage.kind == "fold" and any(s.config.weight_grid is not None for s in stages[:position]):
            raise RecipeError(f"{stage} must come before every weight quantization stage (folding rescales "
                              f"quantized weights off their grids)")
    check_zero_representable(stages)
    return Recipe(stages)


def check_zero_representable(stages: tuple[Stage, ...] | list[Stage]) -> None:
    """RecipeError when the stages, in this order, would prune layers whose weights lie on a grid without
    0 (llama.cpp's Q4_1), before or after the pruning, as far as the recipe alone tells: stages with the
    same targets (both the default, or the same include / exclude) reach the same layers. Targets that
    differ are compared against the model's layer names before anything changes (`validate_recipe`)."""
    pruned: set = set()
    zeroless: dict = {}  # targets -> the grid without 0 their weights lie on
    for stage in stages:
        targets = stage.config.targets
        if targets is None:
            continue
        grid = stage.config.weight_grid if stage.spec.compress_linear is not None else None
        if stage.config.sparsity is not None:
            clash = zeroless.get(targets)
            pruned.add(targets)
        elif grid is not None and not grid.represents_zero:
            clash = grid if targets in pruned else None
            zeroless[targets] = grid
        else:
            if grid is not None:
                zeroless.pop(targets, None)
            continue
        if clash is not None:
            raise RecipeError(f"stage {stage}: its layers would be pruned and on {clash!r}, which cannot represent 0 "
                              f"(pruned weights must stay exactly zero); use a symmetric format such as fmt=q4_0")


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_SCALARS = (str, int, float, bool)


def _stage_from_mapping(entry: Any) -> str:
    if not isinstance(entry, dict) or "method" not in entry:
        raise RecipeError(f"malformed YAML stage {_short(entry)}: expected a string or a mapping with 'method'")
    entry = dict(entry)
    name = entry.pop("method")
    args = entry.pop("args", [])
    if not isinstance(name, str):
        raise RecipeError(f"YAML stage method must be a string, got {_short(name)}")
    if not isinstance(args, list) or not all(isinstance(a, _SCALARS) for a in args):
        raise RecipeError(f"YAML stage {name!r}: 'args' must be a list of plain values, got {_short(args)}")
    for key, value in entry.items():
        if not isinstance(key, str) or not isinstance(value, _SCALARS):
            raise RecipeError(f"YAML stage {name!r}: option {_short(key)} must map to a plain value")
    parts = [str(a) for a in args] + [f"{k}={v}" for k, v in entry.items()]
    return f"{name}:{','.join(parts)}" if parts else name


class _NoAliasLoader(yaml.SafeLoader):
    """YAML without anchors or aliases: a recipe never needs them, and nested aliases ("billion
    laughs") expand into documents far larger than the file."""

    def compose_node(self, parent, index):  # type: ignore[override]
        if self.check_event(yaml.AliasEvent) or getattr(self.peek_event(), "anchor", None):
            event = self.peek_event()
            raise RecipeError(f"recipe files may not use YAML anchors or aliases (line {event.start_mark.line + 1})")
        return super().compose_node(parent, index)


def load_recipe(spec: str) -> Recipe:
    """A recipe string, or a path to a YAML file (`*.yaml` / `*.yml`) holding one (UTF-8, at most
    MAX_RECIPE_CHARS characters, no anchors or aliases)."""
    if spec.strip().lower().endswith((".yaml", ".yml")):
        path = Path(spec.strip())
        if not path.is_file():
            raise RecipeError(f"recipe file not found: {path}")
        if path.stat().st_size > 4 * MAX_RECIPE_CHARS:
            raise RecipeError(f"recipe file {path} is {path.stat().st_size} bytes; recipes are small (at most "
                              f"{4 * MAX_RECIPE_CHARS} bytes)")
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise RecipeError(f"recipe file {path} is not UTF-8 text (byte {e.start})") from None
        try:
            data = yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 (a SafeLoader subclass)
        except yaml.YAMLError as e:
            raise RecipeError(f"recipe file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
        stages = data.get("stages") if isinstance(data, dict) else data
        if isinstance(stages, str):
            return parse_recipe(stages)
        if not isinstance(stages, list) or not stages:
            raise RecipeError(f"recipe file {path} must hold a non-empty list under 'stages'")
        return parse_recipe(stages)
    return parse_recipe(spec)
