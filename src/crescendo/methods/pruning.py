"""Pruning methods: magnitude, Wanda, SparseGPT (unstructured and N:M)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import ConfigError
from ..kernels.obs import obs_sweep
from ..kernels.pruning import magnitude_scores, select_nm, select_smallest, wanda_scores
from ..state import LinearRecord
from ..types import NM, Targets, check_ratio
from . import args as A
from .base import MethodConfig, MethodSpec, Sparsity, register_method


@dataclass(frozen=True)
class PruneConfig(MethodConfig):
    """Shared by the per-layer pruners: unstructured `ratio` in [0, 1) or an `nm` pattern (exactly one)."""

    ratio: float | None = None
    nm: NM | None = None
    # zeros=pruned: weights that are already exactly zero (e.g. rounded to zero by an earlier
    # quantizer) count as pruned, so the ratio is pruned *on top of* them. By default they are
    # ordinary candidates, and every criterion here ranks them first: after rtn:w3 (38.5% zeros on
    # SmolLM2) a following ratio-0.1 pruner then removes nothing that was not zero already.
    zeros_pruned: bool = False
    target: Targets = field(default_factory=Targets)

    method = "prune"  # the registered name, set per subclass

    def __post_init__(self) -> None:
        if (self.ratio is None) == (self.nm is None):
            raise ConfigError("give exactly one of a pruning ratio or an N:M pattern")
        if self.ratio is not None:
            check_ratio(self.ratio)
        if self.zeros_pruned and self.nm is not None:
            raise ConfigError("zeros=pruned applies to unstructured ratios; an N:M pattern fixes the count per group")

    @property
    def targets(self) -> Targets:
        return self.target

    @property
    def sparsity(self) -> Sparsity:
        return Sparsity(self.ratio, self.nm)

    def text(self) -> str:
        args = [str(self.nm) if self.nm is not None else f"{self.ratio:g}"]
        args += ["zeros=pruned"] if self.zeros_pruned else []
        return f"{self.method}:" + ",".join(args + self._own_args() + self.target.args())

    def _own_args(self) -> list[str]:
        """Canonical text of a subclass's own settings (those that differ from the defaults)."""
        return []

    @classmethod
    def _parse_own(cls, positional: list[str], keyword: dict[str, str]) -> dict[str, Any]:
        """A subclass's own settings, consumed from the arguments."""
        return {}

    @classmethod
    def parse(cls, name: str, positional: list[str], keyword: dict[str, str]) -> PruneConfig:
        target = A.pop_targets(keyword)
        ratio, nm = A.parse_sparsity(positional, keyword)
        extra = cls._parse_own(positional, keyword)
        if "zeros" in keyword:
            zeros = keyword.pop("zeros")
            if zeros not in ("pruned", "candidates"):
                raise ConfigError(f"zeros must be 'pruned' or 'candidates', got {zeros!r}")
            extra["zeros_pruned"] = zeros == "pruned"
        A.reject_leftovers(name, positional, keyword)
        return cls(ratio=ratio, nm=nm, target=target, **extra)

    def prior(self, weight: torch.Tensor, record: LinearRecord) -> torch.Tensor | None:
        """The mask this stage prunes on top of: earlier stages' mask, plus exact zeros with zeros=pruned."""
        if not self.zeros_pruned:
            return record.mask
        zeros = weight == 0
        return zeros if record.mask is None else record.mask | zeros


@dataclass(frozen=True)
class MagnitudeConfig(PruneConfig):
    """Magnitude pruning: one threshold per matrix (SparseGPT's `--gmp`); N:M within groups of M inputs."""

    method = "magnitude"


@dataclass(frozen=True)
class WandaConfig(PruneConfig):
    """Wanda (Sun et al., 2024): score |W_ij| * ||X_j||_2, compared within each output row."""

    method = "wanda"


@dataclass(frozen=True)
class SparseGPTConfig(PruneConfig):
    """SparseGPT (Frantar & Alistarh, 2023): OBS reconstruction, mask chosen per block of columns."""

    block_size: int = 128  # columns per lazy-update block; also the mask-selection block
    dampening_fraction: float = 0.01  # λ = fraction * mean(diag H), added to H before inversion

    method = "sparsegpt"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.block_size < 1:
            raise ConfigError(f"block size must be >= 1, got {self.block_size}")
        if not 0 <= self.dampening_fraction < 1:
            raise ConfigError(f"dampening must be in [0, 1), got {self.dampening_fraction}")

    def _own_args(self) -> list[str]:
        return obs_args(self.block_size, self.dampening_fraction)

    @classmethod
    def _parse_own(cls, positional: list[str], keyword: dict[str, str]) -> dict[str, Any]:
        return parse_obs_args(keyword)


def obs_args(block_size: int, dampening_fraction: float) -> list[str]:
    """Canonical text of the OBS sweep settings that differ from the defaults (GPTQ and SparseGPT)."""
    return ([f"bs={block_size}"] if block_size != 128 else []) + (
        [f"damp={dampening_fraction:g}"] if dampening_fraction != 0.01 else [])


def parse_obs_args(keyword: dict[str, str]) -> dict[str, Any]:
    """`bs=` and `damp=` of an OBS-sweep method (GPTQ and SparseGPT), consumed."""
    out: dict[str, Any] = {}
    if "bs" in keyword:
        out["block_size"] = A.parse_int(keyword.pop("bs"), "block size")
    if "damp" in keyword:
        out["dampening_fraction"] = A.parse_float(keyword.pop("damp"), "dampening")
    return out


def _check_nm_fits(weight: torch.Tensor, nm: NM | None) -> None:
    if nm is not None and weight.shape[1] % nm.m:
        raise ConfigError(f"N:M {nm} needs in_features divisible by {nm.m}, got {weight.shape[1]}")


def _apply_mask(weight: torch.Tensor, mask: torch.Tensor, record: LinearRecord, nm: NM | None = None) -> torch.Tensor:
    weight = weight.masked_fill(mask, 0.0)
    record.mask = mask
    record.nm = nm if nm is not None else record.nm
    return weight  # zero is on every grid, so an earlier quantizer's grid still holds


def _select(scores: torch.Tensor, config: PruneConfig, prior: torch.Tensor | None, per_row: bool) -> torch.Tensor:
    if config.nm is not None:
        return select_nm(scores, config.nm, prior)
    return select_smallest(scores, float(config.ratio), prior, per_row=per_row)


def magnitude_linear(weight, stats, record: LinearRecord, config: MagnitudeConfig) -> torch.Tensor:
    _check_nm_fits(weight, config.nm)
    mask = _select(magnitude_scores(weight), config, config.prior(weight, record), per_row=False)
    return _apply_mask(weight, mask, record, config.nm)


def wanda_linear(weight, stats, record: LinearRecord, config: WandaConfig) -> torch.Tensor:
    _check_nm_fits(weight, config.nm)
    mask = _select(wanda_scores(weight, stats), config, config.prior(weight, record), per_row=True)
    return _apply_mask(weight, mask, record, config.nm)


def sparsegpt_linear(weight, hessian, record: LinearRecord, config: SparseGPTConfig) -> torch.Tensor:
    _check_nm_fits(weight, config.nm)
    result = obs_sweep(
        weight,
        hessian.prepared(config.dampening_fraction),
        sparsity=config.ratio or 0.0,
        nm=config.nm,
        prior_mask=config.prior(weight, record),
        grid=record.grid,  # after a quantizer: keep the updated weights on its recorded grid
        grid_params=record.grid_params,
        block_size=config.block_size,
    )
    record.mask = result.mask
    record.nm = config.nm if config.nm is not None else record.nm
    return result.weight


register_method(MethodSpec("magnitude", "prune", MagnitudeConfig, None, magnitude_linear))
register_method(MethodSpec("wanda", "prune", WandaConfig, "input_sq_norm", wanda_linear))
register_method(MethodSpec("sparsegpt", "prune", SparseGPTConfig, "hessian", sparsegpt_linear))
