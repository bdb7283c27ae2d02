"""Coarse-granularity pruning: whole output filters (conv) or neurons (linear), by norm or by data.

`filter:0.3` prunes 30% of the rows of every target layer's (out, in) view: a conv's filters (out
channels), a linear's output neurons. The mask stays a plain (out, in) bool mask, so every later
stage keeps it (GPTQ holds the rows at zero, a later pruner adds on top). This is 003's granularity
axis (Definition 1: row / channel granularity) beside element-wise SparseGPT / Wanda / magnitude.

Criteria (`by=`):
- `l2` (default) / `l1`: the filter's weight norm (Li et al. 2017, "Pruning filters for efficient
  ConvNets", use l1);
- `act`: the filter's output energy on the calibration data, w_i H w_i^T with H = mean X^T X of
  the layer's (unfolded) input: the filters whose removal changes the layer's output least.

The count per layer is round(ratio * out) on top of the rows earlier stages pruned whole. What a
pruned filter leaves: its conv output is zero, so a batch norm (or folded bias) after it outputs a
constant channel; the compressed model computes exactly that.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import ConfigError
from ..kernels.pruning import select_smallest
from ..state import LinearRecord
from ..types import Targets, check_ratio
from . import args as A
from .base import MethodConfig, MethodSpec, Sparsity, register_method

CRITERIA = ("l2", "l1", "act")


@dataclass(frozen=True)
class FilterConfig(MethodConfig):
    """Prune `ratio` of the output filters (rows) of each target layer, by `by`."""

    ratio: float
    by: str = "l2"  # l2 | l1 (weight norm) | act (calibrated output energy w H w^T)
    target: Targets = field(default_factory=Targets)

    def __post_init__(self) -> None:
        check_ratio(self.ratio, "filter pruning ratio")
        if self.by not in CRITERIA:
            raise ConfigError(f"filter criterion must be one of {', '.join(CRITERIA)}, got {self.by!r}")

    @property
    def targets(self) -> Targets:
        return self.target

    @property
    def sparsity(self) -> Sparsity:
        return Sparsity(self.ratio, granularity="filter")

    def text(self) -> str:
        return "filter:" + ",".join([f"{self.ratio:g}"] + ([f"by={self.by}"] if self.by != "l2" else [])
                                    + self.target.args())

    @classmethod
    def parse(cls, name: str, positional: list[str], keyword: dict[str, str]) -> FilterConfig:
        target = A.pop_targets(keyword)
        ratio, nm = A.parse_sparsity(positional, keyword)
        if nm is not None:
            raise ConfigError("filter pruning takes a ratio of filters, not an N:M pattern")
        by = keyword.pop("by", "l2").lower()
        A.reject_leftovers(name, positional, keyword)
        return cls(float(ratio), by, target)


def filter_scores(weight: torch.Tensor, by: str, hessian: torch.Tensor | None = None) -> torch.Tensor:
    """Importance of each row of `weight` (out, in): (out,). `hessian` (in, in) = mean X^T X for "act".

    Example:
        >>> filter_scores(torch.tensor([[3.0, -4.0], [1.0, 0.0]]), "l2")
        tensor([5., 1.])
    """
    if by == "l2":
        return weight.norm(dim=1)
    if by == "l1":
        return weight.abs().sum(dim=1)
    if by == "act":
        if hessian is None:
            raise ConfigError("filter pruning by=act needs calibration statistics")
        return ((weight @ hessian.to(weight)) * weight).sum(dim=1)  # w_i H w_i^T
    raise ConfigError(f"unknown filter criterion {by!r}")


def select_filters(scores: torch.Tensor, ratio: float, prior_rows: torch.Tensor | None) -> torch.Tensor:
    """Rows to prune (out,) bool: round(ratio * out) lowest scores on top of `prior_rows`."""
    prior = None if prior_rows is None else prior_rows[:, None]
    return select_smallest(scores[:, None], ratio, prior, per_row=False)[:, 0]


def filter_linear(weight, stats, record: LinearRecord, config: FilterConfig) -> torch.Tensor:
    hessian = stats.matrix if stats is not None else None
    prior_rows = record.mask.all(dim=1) if record.mask is not None else None
    rows = select_filters(filter_scores(weight, config.by, hessian), config.ratio, prior_rows)
    mask = rows[:, None].expand_as(weight).clone()
    if record.mask is not None:
        mask |= record.mask
    record.mask = mask
    return weight.masked_fill(mask, 0.0)  # zero is on every grid: an earlier quantizer's grid holds


def _statistic(config: FilterConfig):
    return "hessian" if config.by == "act" else None


register_method(MethodSpec("filter", "prune", FilterConfig, _statistic, filter_linear))
