"""Whole-model stages: QuaRot rotation (`rotate`), SLEB block removal (`sleb`), batch-norm folding (`foldbn`)."""

from __future__ import annotations

from dataclasses import dataclass

from ..engine.block_removal import remove_blocks_, select_blocks_greedy
from ..errors import ConfigError
from ..models.batchnorm import fold_batchnorm_
from ..state import state_of
from ..types import check_ratio
from . import args as A
from .base import MethodConfig, MethodSpec, register_method


@dataclass(frozen=True)
class RotateConfig(MethodConfig):
    """QuaRot randomized Hadamard rotation of the residual stream, plus online Hadamard before down_proj."""

    seed: int = 0  # seed of the random signs of the residual rotation
    value_hadamard: bool = True  # also rotate attention values per head (exact, offline)

    def text(self) -> str:
        args = ([f"seed={self.seed}"] if self.seed else []) + ([] if self.value_hadamard else ["novalue"])
        return "rotate" + (":" + ",".join(args) if args else "")

    @classmethod
    def parse(cls, name: str, positional: list[str], keyword: dict[str, str]) -> RotateConfig:
        seed = A.parse_int(keyword.pop("seed"), "seed") if "seed" in keyword else 0
        value = not A.pop_flag(positional, "novalue")
        A.reject_leftovers(name, positional, keyword)
        return cls(seed=seed, value_hadamard=value)


def rotate_model(model, adapter, config: RotateConfig, calibration, *, progress: bool = True,
                 batch_size: int | None = None) -> None:
    if state_of(model).compressed:
        raise ConfigError("rotate must come before any compression stage (it would densify pruned weights)")
    adapter.rotate(model, seed=config.seed, value_hadamard=config.value_hadamard)


@dataclass(frozen=True)
class SLEBConfig(MethodConfig):
    """SLEB (Song et al., 2024): remove whole decoder blocks, greedily, by calibration perplexity.

    ratio: fraction of decoder blocks to remove (rounded to a whole number of blocks, at least one).
    samples: calibration windows used to score candidates (SLEB's score is a full forward per
    candidate; fewer windows keep it affordable on a CPU).
    """

    ratio: float
    samples: int = 8

    def __post_init__(self) -> None:
        check_ratio(self.ratio, "block removal ratio")
        if self.ratio <= 0:
            raise ConfigError("sleb needs a ratio > 0")
        if self.samples < 1:
            raise ConfigError(f"sleb samples must be >= 1, got {self.samples}")

    def text(self) -> str:
        return f"sleb:{self.ratio:g}" + (f",samples={self.samples}" if self.samples != 8 else "")

    @classmethod
    def parse(cls, name: str, positional: list[str], keyword: dict[str, str]) -> SLEBConfig:
        if len(positional) != 1:
            raise ConfigError("sleb needs one ratio, e.g. sleb:0.1")
        samples = A.parse_int(keyword.pop("samples"), "samples") if "samples" in keyword else 8
        A.reject_leftovers(name, [], keyword)
        return cls(A.parse_float(positional[0], "block removal ratio"), samples)


def sleb_model(model, adapter, config: SLEBConfig, calibration, *, progress: bool = True,
               batch_size: int | None = None) -> None:
    n_blocks = len(adapter.blocks(model))
    n_remove = max(1, int(round(config.ratio * n_blocks)))
    if n_remove >= n_blocks:
        raise ConfigError(f"sleb:{config.ratio:g} would remove all {n_blocks} blocks")
    windows = calibration[: config.samples]
    chosen = select_blocks_greedy(model, adapter, windows, n_remove, progress=progress,
                                  batch_size=min(batch_size, len(windows)) if batch_size else None)
    remove_blocks_(model, adapter, chosen)


register_method(MethodSpec("rotate", "rotate", RotateConfig, apply_model=rotate_model))
@dataclass(frozen=True)
class FoldBNConfig(MethodConfig):
    """Fold every batch norm that follows a convolution into it (eval-mode running statistics).

    A recipe without `foldbn` leaves batch norms alone: they stay float layers after the compressed
    convs. With it, the compressed conv weights are the folded ones (what integer inference runs).
    It must come before any weight quantization (folding rescales weights off their grids); pruning
    masks survive it (a zero stays zero).
    """

    def text(self) -> str:
        return "foldbn"

    @classmethod
    def parse(cls, name: str, positional: list[str], keyword: dict[str, str]) -> FoldBNConfig:
        A.reject_leftovers(name, positional, keyword)
        return cls()


def _batchnorm_pairs(model, adapter) -> list[tuple[str, str]]:
    pairs = adapter.batchnorm_pairs(model) if hasattr(adapter, "batchnorm_pairs") else []
    if not pairs:
        raise ConfigError(f"foldbn: {adapter.family} has no batch norm after a convolution (nothing to fold)")
    return pairs


def _check_foldbn(model, adapter, config: FoldBNConfig, earlier=()) -> None:
    state = state_of(model)
    for conv, _ in _batchnorm_pairs(model, adapter):
        record = state.records.get(conv)
        if record is not None and record.grid is not None:
            raise ConfigError(f"foldbn after quantizing {conv}: folding would move its weights off their grid")


def foldbn_model(model, adapter, config: FoldBNConfig, calibration, *, progress: bool = True,
                 batch_size: int | None = None) -> None:
    _check_foldbn(model, adapter, config)
    pairs = _batchnorm_pairs(model, adapter)
    fold_batchnorm_(model, pairs)
    state_of(model).folded_batchnorm.extend(pairs)


def _check_sleb(model, adapter, config: SLEBConfig, earlier) -> None:
    """Block removal needs a family that has blocks to remove; removing a block of a shared model
    would take a basis other blocks use with it."""
    adapter.check_block_removal()
    if state_of(model).sharing is not None or any(s.method == "share" for s in earlier):
        raise ConfigError("sleb after share: removing a block would drop a basis other blocks share; remove blocks first")


register_method(MethodSpec("sleb", "prune", SLEBConfig, apply_model=sleb_model, needs_calibration=True,
                           check=_check_sleb))
register_method(MethodSpec("foldbn", "fold", FoldBNConfig, apply_model=foldbn_model, check=_check_foldbn))
