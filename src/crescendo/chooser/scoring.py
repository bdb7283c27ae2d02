"""Scoring order predictors against measured orders, cell by cell and pooled.

A *cell* is a set of methods whose every order was measured on one model under one protocol, for
one or more calibration seeds. Its truth: the best order by mean metric and the advantage A of the
best order over the runner-up. Whether A is a finding is judged by one of two rules:

- "interval" (the default): the paired comparison of the best order with the runner-up on their
  per-unit results, all seeds together (`analysis.uncertainty.compare`: evaluation sampling and
  seed-to-seed variation), must say "first better". Cells whose rows have no per-unit results
  (measured before they were kept) cannot be judged by it and are counted apart.
- "spread" (the rule of the first hold-out): A exceeds its spread over seeds. With one seed, or with
  data-free methods (no seed spread at all), any nonzero A passes, which is why it was replaced.

A cell is *decisive* when neither of its best two orders collapsed and its rule passes; a call on a
non-decisive cell is "within noise" whatever it says.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from statistics import mean
from typing import Any

from ..analysis.uncertainty import Comparison, Margin, compare
from ..units import Units

RULES = ("interval", "spread")

Z95 = 1.959963984540054


def wilson_interval(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (95% by default); (0, 1) for no trials.

    >>> [round(x, 3) for x in wilson_interval(9, 10)]
    [0.596, 0.982]
    """
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class Cell:
    """Every order of `methods` measured (metric M, higher is better) for one or more seeds."""

    model: str
    protocol: str
    methods: tuple[str, ...]
    orders: dict[tuple[str, ...], dict[int, float]]  # order -> seed -> M
    collapsed: set[tuple[str, ...]] = field(default_factory=set)  # orders whose model collapsed
    units: dict[tuple[str, ...], dict[int, Units]] = field(default_factory=dict)  # order -> seed -> per-unit results
    margin: Margin | None = None  # the protocol's equivalence margin (None: the metric's default)
    rule: str = "interval"  # how `decisive` is judged (RULES)
    data_free: bool = False  # no method draws on calibration data: no seed-to-seed spread exists

    @property
    def seeds(self) -> list[int]:
        common = set.intersection(*(set(v) for v in self.orders.values()))
        return sorted(common)

    def mean(self, order: tuple[str, ...]) -> float:
        return mean(self.orders[order][s] for s in self.seeds)

    @property
    def ranked(self) -> list[tuple[str, ...]]:
        return sorted(self.orders, key=self.mean, reverse=True)

    @property
    def best(self) -> tuple[str, ...]:
        return self.ranked[0]

    def advantage(self, seed: int | None = None) -> float:
        """M(best) - M(runner-up): per seed, or of the means."""
        a, b = self.ranked[:2]
        if seed is None:
            return self.mean(a) - self.mean(b)
        return self.orders[a][seed] - self.orders[b][seed]

    @property
    def has_units(self) -> bool:
        """Whether the best two orders have per-unit results for every seed (the interval rule needs them)."""
        a, b = self.ranked[:2]
        return all(s in self.units.get(o, {}) for o in (a, b) for s in self.seeds)

    @cached_property
    def comparison(self) -> Comparison | None:
        """The best order against the runner-up, paired over units and seeds; None without per-unit results."""
        if not self.has_units:
            return None
        a, b = self.ranked[:2]
        return compare([self.units[a][s] for s in self.seeds], [self.units[b][s] for s in self.seeds],
                       margin=self.margin, labels=(" > ".join(a), " > ".join(b)))

    @property
    def noise(self) -> float:
        """Spread (max - min) of the per-seed advantage of the mean-best order over the runner-up;
        0 with one seed."""
        values = [self.advantage(s) for s in self.seeds]
        return max(values) - min(values) if len(values) > 1 else 0.0

    @property
    def decisive_spread(self) -> bool:
        """The first hold-out's rule: neither best order collapsed and A exceeds its spread over seeds."""
        a, b = self.ranked[:2]
        return bool(a not in self.collapsed and b not in self.collapsed and self.advantage() > self.noise)

    @property
    def decisive_interval(self) -> bool | None:
        """Neither best order collapsed and the paired comparison says the best is better; None without units."""
        if self.comparison is None:
            return None
        a, b = self.ranked[:2]
        return bool(a not in self.collapsed and b not in self.collapsed and self.comparison.verdict == "first better")

    @property
    def decisive(self) -> bool | None:
        """Decisive under the cell's rule (None: the interval rule without per-unit results)."""
        if self.rule not in RULES:
            raise ValueError(f"unknown decisiveness rule {self.rule!r} (one of {', '.join(RULES)})")
        return self.decisive_spread if self.rule == "spread" else self.decisive_interval

    def regret(self, order: Sequence[str]) -> float:
        return self.mean(self.best) - self.mean(tuple(order))


@dataclass
class Score:
    """One predictor's record over a set of cells."""

    predictor: str
    cells: int = 0
    unjudged: int = 0  # cells the rule cannot judge (no per-unit results): left out of every count
    decisive: int = 0
    calls: int = 0  # decisive cells where it made a call
    hits: int = 0  # decisive cells it called right
    hit_or_noise: int = 0  # of all cells: right, or within noise (any call, or an abstention there)
    abstentions: int = 0
    regrets: list[float] = field(default_factory=list)  # on decisive cells it called wrong
    cost_fraction: list[float] = field(default_factory=list)  # seconds / exhaustive seconds, per cell

    def to_dict(self) -> dict[str, Any]:
        lo, hi = wilson_interval(self.hits, self.calls)
        lo2, hi2 = wilson_interval(self.hit_or_noise, self.cells)
        return {
            "predictor": self.predictor, "cells": self.cells, "unjudged": self.unjudged, "decisive": self.decisive,
            "calls": self.calls,
            "hits": self.hits, "hit_rate": self.hits / self.calls if self.calls else None, "hit_rate_95": [lo, hi],
            "hit_or_within_noise": self.hit_or_noise, "hit_or_within_noise_rate": self.hit_or_noise / self.cells
            if self.cells else None, "hit_or_within_noise_95": [lo2, hi2], "abstentions": self.abstentions,
            "mean_regret": mean(self.regrets) if self.regrets else 0.0,
            "worst_regret": max(self.regrets) if self.regrets else 0.0,
            "mean_cost_fraction": mean(self.cost_fraction) if self.cost_fraction else None,
        }


def score(predictor: str, cells: Sequence[Cell], calls: Mapping[int, Sequence[str] | None],
          cost_fraction: Mapping[int, float] | None = None) -> Score:
    """Score `calls` (cell index -> chosen order, None for an abstention) on `cells`.

    An abstention on a decisive cell is neither a hit nor a miss, and is not "within noise": it
    lowers the hit-or-within-noise rate, which is over every cell."""
    out = Score(predictor)
    for i, cell in enumerate(cells):
        if cell.decisive is None:
            out.unjudged += 1
            continue
        out.cells += 1
        choice = calls.get(i)
        if cost_fraction is not None and i in cost_fraction:
            out.cost_fraction.append(cost_fraction[i])
        if choice is None:
            out.abstentions += 1
            if not cell.decisive:
                out.hit_or_noise += 1
            if cell.decisive:
                out.decisive += 1
            continue
        if not cell.decisive:
            out.hit_or_noise += 1
            continue
        out.decisive += 1
        out.calls += 1
        if tuple(choice) == cell.best:
            out.hits += 1
            out.hit_or_noise += 1
        else:
            out.regrets.append(cell.regret(choice))
    return out
