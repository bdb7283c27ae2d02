"""Scoring order predictors against measured orders, cell by cell and pooled.

A *cell* is a set of methods whose every order was measured on one model under one protocol, for
one or more calibration seeds. Its truth: the best order by mean metric, the advantage of the best
order over the runner-up (per seed and on average), and the noise, the spread of that advantage
over seeds. A cell is *decisive* when neither of its best two orders collapsed and its mean
advantage exceeds the noise; a call on a non-decisive cell is "within noise" whatever it says.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from statistics import mean
from typing import Any

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
    def noise(self) -> float:
        """Spread (max - min) of the per-seed advantage of the mean-best order over the runner-up;
        0 with one seed."""
        values = [self.advantage(s) for s in self.seeds]
        return max(values) - min(values) if len(values) > 1 else 0.0

    @property
    def decisive(self) -> bool:
        a, b = self.ranked[:2]
        return a not in self.collapsed and b not in self.collapsed and self.advantage() > self.noise

    def regret(self, order: Sequence[str]) -> float:
        return self.mean(self.best) - self.mean(tuple(order))


@dataclass
class Score:
    """One predictor's record over a set of cells."""

    predictor: str
    cells: int = 0
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
            "predictor": self.predictor, "cells": self.cells, "decisive": self.decisive, "calls": self.calls,
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
