"""Whole-model stages: QuaRot rotation (`rotate`)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from ..models.rotation import rotate_llama_
from . import args as A
from .base import MethodSpec, register_method


@dataclass(frozen=True)
class RotateConfig:
    """QuaRot randomized Hadamard rotation of the residual stream, plus online Hadamard before down_proj."""

    seed: int = 0  # seed of the random signs of the residual rotation
    value_hadamard: bool = True  # also rotate attention values per head (exact, offline)

    def spec(self) -> str:
        args = ([f"seed={self.seed}"] if self.seed else []) + ([] if self.value_hadamard else ["novalue"])
        return "rotate" + (":" + ",".join(args) if args else "")


def _parse_rotate(name: str, positional: list[str], keyword: dict[str, str]) -> RotateConfig:
    seed = A.parse_int(keyword.pop("seed"), "seed") if "seed" in keyword else 0
    value = "novalue" not in positional
    A.reject_leftovers(name, [p for p in positional if p != "novalue"], keyword)
    return RotateConfig(seed=seed, value_hadamard=value)


def rotate_model(model, adapter, config: RotateConfig, calibration, progress: bool = True) -> None:
    if getattr(model, "crescendo_records", None):
        raise ConfigError("rotate must come before any compression stage (it would densify pruned weights)")
    rotate_llama_(model, seed=config.seed, value_hadamard=config.value_hadamard)


register_method(MethodSpec("rotate", "rotate", RotateConfig, _parse_rotate, apply_model=rotate_model))
