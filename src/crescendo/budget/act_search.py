"""Evolutionary search of per-block mixed-precision activation ratios (MixA-Q, seed 004, App. 6).

A genome holds one ratio r_i per block, on the grid {0, 0.1, ..., upper}: the fraction of the block's
tokens whose activations drop from the base bit-width to the low one (`mixact` stage). Its cost is
the equivalent activation bit-width of eqs. 3-5 (`accounting.equivalent_bits`, MixA-Q's variant:
a compressed token saves half its computation when low = base / 2), with per-block MACs from the
model's shapes and the computation no ratio can touch (stem, head) as the fixed term C.

The initial population comes from uniform-sum sampling (Algorithm 1; the sum range from a relative
cost range as App. 6.1 derives it) or from naive uniform sampling. Each generation makes as many
children as the population (two binary tournaments by Pareto rank, uniform crossover, a neighbour
step on each gene with probability `mutation_rate`) and keeps the best `population` of parents and
children by Pareto rank on (accuracy up, equivalent bits down), then accuracy. Every configuration
is evaluated once; the fitness is whatever `evaluate(model)` returns (a held-out split, not the
test set, in the benchmark).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from torch import nn

from ..errors import ConfigError
from ..models.adapters import get_adapter, in_features
from ..recipe import parse_recipe
from .accounting import equivalent_bits
from .sampling import naive_uniform_ratios, uniform_sum_ratios

Genome = tuple[float, ...]
SAMPLERS = ("uniform-sum", "uniform")


@dataclass(frozen=True)
class ActSearchConfig:
    base_bits: int = 4  # activation bits of the uncompressed tokens
    low_bits: int = 2  # of the compressed ones (MixA-Q: half of the base)
    sampler: str = "uniform-sum"
    cost_range: tuple[float, float] = (0.65, 0.95)  # relative computation the initial population spans (App. 6.1)
    upper: float = 0.8  # largest ratio of a block (seed 004: 0.8)
    population: int = 12
    generations: int = 2  # after the initial population (Fig. 8: "after only two generations")
    mutation_rate: float = 0.3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        lo, hi = self.cost_range
        if not 0 <= lo <= hi <= 1:
            raise ConfigError(f"cost range must satisfy 0 <= low <= high <= 1, got {self.cost_range}")
        if self.population < 2 or self.generations < 0 or not 0 <= self.mutation_rate <= 1:
            raise ConfigError("population >= 2, generations >= 0 and a mutation rate in [0, 1] are needed")
        if not 0 < self.upper <= 1:
            raise ConfigError(f"upper must be in (0, 1], got {self.upper}")


@dataclass
class ActPoint:
    recipe: str
    genome: Genome
    accuracy: float  # the search's fitness
    eq_bits: float
    generation: int

    def to_dict(self) -> dict:
        return {**asdict(self), "genome": list(self.genome)}


class ActSpace:
    """Blocks of a model, their MACs, and how ratios become a recipe and equivalent bits."""

    def __init__(self, model: nn.Module, base_bits: int, low_bits: int, upper: float = 0.8,
                 resolution: float = 0.1) -> None:
        adapter = get_adapter(model)
        positions = adapter.positions(model)
        self.blocks_path = adapter.blocks_path
        self.gmacs = [sum(positions.get(n, 1) * in_features(m) * (m.weight.numel() // in_features(m))
                          for n, m in adapter.block_linears(model, i).items()) / 1e9
                      for i in range(len(adapter.blocks(model)))]
        block_params = {id(p) for b in adapter.blocks(model) for p in b.parameters()}
        # the fixed term C: every other layer's MACs (stem, head), one application per output position
        self.fixed_gmacs = _outside_macs(model, block_params) / 1e9
        self.base_bits, self.low_bits = base_bits, low_bits
        self.upper, self.resolution = upper, resolution
        self.options = [round(k * resolution, 10) for k in range(int(math.floor(upper / resolution + 1e-9)) + 1)]
        parse_recipe(self.recipe(tuple(0.0 for _ in self.gmacs)))  # validates the bit-widths now

    @property
    def n(self) -> int:
        return len(self.gmacs)

    def recipe(self, genome: Genome) -> str:
        by: dict[float, list[int]] = {}
        for i, r in enumerate(genome):
            by.setdefault(r, []).append(i)
        stages = []
        for r in sorted(by):
            ids = by[r]
            which = str(ids[0]) if len(ids) == 1 else "(?:" + "|".join(map(str, ids)) + ")"
            stages.append(f"mixact:a{self.base_bits},low={self.low_bits},ratio={r:g},"
                          f"include=^{re.escape(self.blocks_path)}\\.{which}\\.")
        return str(parse_recipe(" > ".join(stages)))

    def eq_bits(self, genome: Genome) -> float:
        """Eq. 5 with MixA-Q's ratios (eq. 3: 1 - r/2)."""
        return equivalent_bits(list(genome), self.gmacs, self.fixed_gmacs, self.base_bits, "mixa-q")

    def sum_range(self, cost_range: tuple[float, float]) -> tuple[float, float]:
        """App. 6.1: [(1 - c_hi) n 2, (1 - c_lo) n 2], capped at n * upper (equal-cost blocks assumed)."""
        lo, hi = cost_range
        return (1 - hi) * self.n * 2, min((1 - lo) * self.n * 2, self.n * self.upper)

    def mutate(self, genome: Genome, rng: np.random.Generator, rate: float) -> Genome:
        out = []
        for r in genome:
            if rng.random() < rate:
                k = self.options.index(r)
                near = [self.options[j] for j in (k - 1, k + 1) if 0 <= j < len(self.options)]
                r = near[int(rng.integers(len(near)))]
            out.append(r)
        return tuple(out)


def _outside_macs(model: nn.Module, block_params: set[int]) -> float:
    """MACs per image of the compressible layers outside the blocks (the patch embedding, the head)."""
    import torch

    macs = {"total": 0.0}
    handles = []
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, (nn.Linear, nn.Conv2d)) and id(weight) not in block_params:
            def hook(m, args, out):
                per_sample = out[0].numel() // (out.shape[1] if isinstance(m, nn.Conv2d) else out.shape[-1])
                macs["total"] += per_sample * in_features(m) * (m.weight.numel() // in_features(m))
            handles.append(module.register_forward_hook(hook))
    try:
        config = model.config
        with torch.no_grad():
            model(torch.zeros(1, config.in_channels, config.image_size, config.image_size))
    finally:
        for h in handles:
            h.remove()
    return macs["total"]


def pareto_ranks(points: Sequence[ActPoint]) -> list[int]:
    """Non-dominated sorting on (accuracy up, eq bits down): rank 0 is the front."""
    ranks = [-1] * len(points)
    left, rank = set(range(len(points))), 0
    while left:
        front = {i for i in left if not any(
            points[j].accuracy >= points[i].accuracy and points[j].eq_bits <= points[i].eq_bits
            and (points[j].accuracy > points[i].accuracy or points[j].eq_bits < points[i].eq_bits) for j in left)}
        for i in front:
            ranks[i] = rank
        left -= front
        rank += 1
    return ranks


def front(points: Sequence[ActPoint]) -> list[ActPoint]:
    """The Pareto front, by increasing equivalent bits."""
    ranks = pareto_ranks(points)
    return sorted((p for p, r in zip(points, ranks) if r == 0), key=lambda p: (p.eq_bits, -p.accuracy))


def search_act_ratios(space: ActSpace, config: ActSearchConfig, evaluate: Callable[[str], float],
                      on_point: Callable[[ActPoint], None] | None = None) -> list[ActPoint]:
    """Every configuration the search evaluated, in order. `evaluate(recipe)` returns the fitness."""
    rng = np.random.default_rng(config.seed)
    seen: dict[Genome, ActPoint] = {}

    def visit(genome: Genome, generation: int) -> ActPoint:
        if genome not in seen:
            recipe = space.recipe(genome)
            seen[genome] = ActPoint(recipe, genome, float(evaluate(recipe)), space.eq_bits(genome), generation)
            if on_point is not None:
                on_point(seen[genome])
        return seen[genome]

    sum_range = space.sum_range(config.cost_range)
    population = []
    for _ in range(config.population):
        if config.sampler == "uniform-sum":
            ratios = uniform_sum_ratios(space.n, sum_range, space.upper, rng, resolution=space.resolution)
        else:
            ratios = naive_uniform_ratios(space.n, space.upper, rng, resolution=space.resolution)
        population.append(visit(tuple(float(r) for r in ratios), 0))
    population = _survivors(population, config.population)
    for generation in range(1, config.generations + 1):
        ranks = {id(p): r for p, r in zip(population, pareto_ranks(population))}
        children = []
        for _ in range(config.population):
            a, b = (_tournament(population, ranks, rng) for _ in range(2))
            pick = rng.random(space.n) < 0.5
            child = tuple(x if keep else y for x, y, keep in zip(a.genome, b.genome, pick))
            children.append(visit(space.mutate(child, rng, config.mutation_rate), generation))
        population = _survivors(population + children, config.population)
    return list(seen.values())


def _tournament(population: list[ActPoint], ranks: dict[int, int], rng: np.random.Generator) -> ActPoint:
    i, j = (int(k) for k in rng.integers(len(population), size=2))
    a, b = population[i], population[j]
    key = (lambda p: (-ranks[id(p)], p.accuracy))
    return a if key(a) >= key(b) else b


def _survivors(points: list[ActPoint], n: int) -> list[ActPoint]:
    unique = list({p.genome: p for p in points}.values())
    ranks = pareto_ranks(unique)
    order = sorted(range(len(unique)), key=lambda i: (ranks[i], -unique[i].accuracy))
    return [unique[i] for i in order[:n]]
