"""Evolutionary search for per-block (pruning ratio, weight bits) under a BOP or size reduction target.

MixA-Q (seed 004, App. 6.1) searches per-block compression ratios with an evolutionary algorithm whose
initial population comes from uniform-sum sampling (Algorithm 1), and compares it with naive uniform
sampling after a few generations (Tab. 6, Fig. 8). OBC (seed 000, App. A.10) compresses under BOP
reduction targets with mixed bit-widths and 2:4 pruning. This module joins the two: a genome holds one
(pruning ratio or 2:4, weight bits) gene per decoder block (`crescendo.budget.genome`), every candidate
is repaired to meet the target before it is evaluated (costs come from the genome, not from
compressing), fitness is the evaluator's metric M (-perplexity) of the compressed copy, and the search
is (mu + lambda) elitist with tournament selection, uniform crossover and neighbour mutation.

>>> result = search(bench, SearchConfig(target_bops=8, generations=2, population=4))  # doctest: +SKIP
>>> result.best.recipe, result.best.perplexity, [p.bop_reduction for p in result.pareto]  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..types import check_bits, check_ratio
from .genome import (
    NM_24,
    Genome,
    SearchSpace,
    Targets,
    prune_stage,
    quant_stage,
    ratio_sum_range,
)
from .sampling import naive_uniform_ratios, uniform_sum_ratios

log = logging.getLogger(__name__)
SAMPLERS = ("uniform-sum", "uniform")


MAX_POPULATION = 1024  # every genome is a compressed model to evaluate; far above the papers' 8-64
MAX_GENERATIONS = 1024


@dataclass(frozen=True)
class SearchConfig:
    """Settings of one search; `search` validates nothing else."""

    target_bops: float | None = None  # minimum BOP reduction vs dense W16A16 (OBC's target)
    target_size: float | None = None  # minimum storage reduction vs dense 16-bit
    sampler: str = "uniform-sum"  # initial ratios: seed 004's Algorithm 1, or naive "uniform"
    generations: int = 4  # offspring rounds after the initial population
    population: int = 8  # N: kept per generation, and offspring made per generation
    seed: int = 0  # the one numpy Generator's seed: same seed, same search
    bits: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8)  # weight bit-width choices per block
    prune: str = "magnitude"  # pruning method or template over {r}; data-free keeps candidates cheap
    quant: str = "rtn"  # quantizer or template over {b}, e.g. rtn:w{b}a{b} to quantize activations too
    max_ratio: float = 0.8  # upper bound u on a block's pruning ratio (seed 004 uses 0.8)
    allow_nm: bool = True  # 2:4 as a pruning option (halves MACs: the only sparsity BOPs count)
    nm_probability: float = 0.2  # chance that a sampled block's pruning is 2:4 instead of its ratio
    mutation_rate: float = 0.3  # per-gene mutation probability
    count_unstructured: bool = False  # let unstructured sparsity reduce BOPs (default: OBC's hardware view)

    def __post_init__(self) -> None:
        if self.target_bops is None and self.target_size is None:
            raise ConfigError("give a BOP reduction target, a size reduction target, or both")
        for what, value in (("BOP reduction target", self.target_bops), ("size reduction target", self.target_size)):
            if value is not None and not (math.isfinite(value) and value >= 1.0):
                raise ConfigError(f"{what} must be a number >= 1, got {value}")
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        if (isinstance(self.population, bool) or int(self.population) != self.population
                or not 2 <= self.population <= MAX_POPULATION):
            raise ConfigError(f"population must be an integer in 2..{MAX_POPULATION}, got {self.population}")
        if (isinstance(self.generations, bool) or int(self.generations) != self.generations
                or not 1 <= self.generations <= MAX_GENERATIONS):
            raise ConfigError(f"generations must be an integer in 1..{MAX_GENERATIONS}, got {self.generations}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be an integer >= 0, got {self.seed!r}")
        if not self.bits:
            raise ConfigError("need at least one bit-width choice")
        for b in self.bits:
            check_bits(b)
        check_ratio(self.max_ratio, "maximum pruning ratio")
        for b in self.bits:  # method names and templates fail here, before any model is loaded
            quant_stage(self.quant, b)
        prune_stage(self.prune, NM_24 if self.allow_nm else 0.5)
        for what, value in (("nm_probability", self.nm_probability), ("mutation_rate", self.mutation_rate)):
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{what} must be in [0, 1], got {value}")


@dataclass
class SearchPoint:
    """One evaluated configuration."""

    recipe: str
    genome: Genome
    metric: float  # M, higher is better (-perplexity for a Workbench)
    perplexity: float | None
    bop_reduction: float
    size_reduction: float
    generation: int

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["genome"] = [list(g) for g in self.genome]
        return out


@dataclass
class SearchResult:
    best: SearchPoint
    pareto: list[SearchPoint]  # M vs BOP reduction over every evaluated point
    evaluated: list[SearchPoint]  # in evaluation order, each distinct recipe once
    config: SearchConfig
    sum_range: tuple[float, float]  # ratio-sum range of the uniform-sum sampler
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"best": self.best.to_dict(), "pareto": [p.to_dict() for p in self.pareto],
                "evaluated": len(self.evaluated), "config": asdict(self.config),
                "sum_range": list(self.sum_range), "seconds": self.seconds}


def pareto_front(points: Sequence[SearchPoint]) -> list[SearchPoint]:
    """Points no other point beats on both M and BOP reduction, by increasing BOP reduction.

    Example: of (M, BOPs) = (-10, 4), (-12, 8), (-13, 6), the last is dominated by the second.
    """
    front = [p for p in points if not any(
        q.metric >= p.metric and q.bop_reduction >= p.bop_reduction
        and (q.metric > p.metric or q.bop_reduction > p.bop_reduction) for q in points)]
    return sorted(front, key=lambda p: (p.bop_reduction, -p.metric))


def _initial_ratios(space: SearchSpace, config: SearchConfig, sum_range: tuple[float, float],
                    rng: np.random.Generator) -> list[float]:
    n = len(space.blocks)
    if config.sampler == "uniform-sum":
        return uniform_sum_ratios(n, sum_range, config.max_ratio, rng)
    return naive_uniform_ratios(n, config.max_ratio, rng)


def _quant_factors(space: SearchSpace, targets: Targets) -> list[float]:
    """Relative cost kept by quantizing a block to each choice (for the sampler's sum range)."""
    bops = targets.bops is not None  # the sum range follows the BOP target when there is one
    return [b / 16 * (space.act_bits(b) / 16 if bops else 1.0) for b in space.bits]


def _tournament(population: list[SearchPoint], rng: np.random.Generator) -> SearchPoint:
    i, j = (int(k) for k in rng.integers(len(population), size=2))
    return population[i] if population[i].metric >= population[j].metric else population[j]


def search(
    bench: Any,
    config: SearchConfig,
    store: Any | None = None,
    on_point: Callable[[SearchPoint], None] | None = None,
) -> SearchResult:
    """Evolutionary search of per-block (pruning, bits) under the config's targets.

    Generation 0 is `population` genomes: ratios from the sampler, bits uniform over the choices,
    each repaired to meet the targets. Each later generation makes `population` children (two binary
    tournaments, uniform crossover, mutation, repair) and keeps the best `population` distinct
    recipes of parents and children (elitist). A recipe is compressed and evaluated once; every
    evaluation becomes a Row of kind "search" in `store` (when given) with metrics perplexity,
    bop_reduction and size_reduction and extra genome, generation, sampler and seed.

    Parameters:
        bench: a Workbench (or anything with `model`, `compress(recipe)` and `metric(model)`).
        config: targets, sampler, sizes and seed (see SearchConfig).
        store: a ResultStore, or None.
        on_point: called with each newly evaluated point (progress display).

    Returns:
        the best point (its recipe reproduces its metric when compressed again), the Pareto front of
        every evaluated point, and all of them.
    """
    start = time.perf_counter()
    space = SearchSpace(bench.model, config.bits, config.prune, config.quant, config.max_ratio,
                        allow_nm=config.allow_nm, count_unstructured=config.count_unstructured)
    targets = Targets(config.target_bops, config.target_size)
    space.check_feasible(targets)
    target = config.target_bops if config.target_bops is not None else config.target_size
    sum_range = ratio_sum_range(len(space.blocks), target, _quant_factors(space, targets), config.max_ratio)
    rng = np.random.default_rng(config.seed)
    seen: dict[str, SearchPoint] = {}

    def evaluate(genome: Genome, generation: int) -> SearchPoint:
        recipe = space.recipe(genome)
        if recipe in seen:
            return seen[recipe]
        began = time.perf_counter()
        model, _ = bench.compress(recipe)
        metric = float(bench.metric(model))
        del model
        metric = -math.inf if math.isnan(metric) else metric  # a collapsed model ranks last
        bops, size = space.reductions(genome)
        ppl = -metric if bench.metric_name == "-perplexity" else None
        point = SearchPoint(recipe, genome, metric, ppl, bops, size, generation)
        seen[recipe] = point
        if store is not None:
            _record(store, bench, config, point, time.perf_counter() - began)
        if on_point is not None:
            on_point(point)
        log.info("search g%d: %s  M %.4f  BOPs %.2fx", generation, recipe, metric, bops)
        return point

    population = []
    for _ in range(config.population):
        genome = space.sample(rng, _initial_ratios(space, config, sum_range, rng), config.nm_probability)
        population.append(evaluate(space.repair(genome, targets, rng), 0))
    population = _survivors(population, config.population)
    for generation in range(1, config.generations + 1):
        children = []
        for _ in range(config.population):
            a, b = _tournament(population, rng), _tournament(population, rng)
            child = space.mutate(space.crossover(a.genome, b.genome, rng), rng, config.mutation_rate)
            children.append(evaluate(space.repair(child, targets, rng), generation))
        population = _survivors(population + children, config.population)
    evaluated = list(seen.values())
    best = max(evaluated, key=lambda p: p.metric)  # the first evaluated among equals
    return SearchResult(best, pareto_front(evaluated), evaluated, config, sum_range, time.perf_counter() - start)


def _survivors(points: list[SearchPoint], n: int) -> list[SearchPoint]:
    unique = list({p.recipe: p for p in points}.values())  # first occurrence keeps its place
    return sorted(unique, key=lambda p: -p.metric)[:n]  # stable: earlier points win ties


def _record(store: Any, bench: Any, config: SearchConfig, point: SearchPoint, seconds: float) -> None:
    from ..store import RunMetrics, record_run

    more = {"bop_reduction": point.bop_reduction, "size_reduction": point.size_reduction}
    metrics = (RunMetrics.from_perplexity(point.perplexity, **more) if point.perplexity is not None
               else RunMetrics(metric=point.metric, metric_name=bench.metric_name, **more))
    record_run(store, model=bench.model_name, protocol=bench.protocol_id, recipe=point.recipe, seed=config.seed,
               kind="search", metrics=metrics, timings={"seconds": seconds},
               extra={"genome": [list(g) for g in point.genome], "generation": point.generation,
                      "sampler": config.sampler, "seed": config.seed, "target_bops": config.target_bops,
                      "target_size": config.target_size}, device=getattr(bench, "device", None))


def plot_pareto(runs: Mapping[str, Sequence[SearchPoint] | SearchResult] | Sequence[SearchPoint],
                path: str | Path) -> Path:
    """PNG of perplexity (or M) against BOP reduction: every evaluated point faint, each run's Pareto
    front as a step line. Several runs (e.g. {"uniform-sum": r1, "uniform": r2}) compare samplers as
    in seed 004's Figure 8.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not isinstance(runs, Mapping):
        runs = {"search": runs}
    fig = Figure(figsize=(6, 4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    use_ppl = all(p.perplexity is not None for r in runs.values() for p in _points(r))
    value = (lambda p: p.perplexity) if use_ppl else (lambda p: p.metric)
    finite = [value(p) for r in runs.values() for p in _points(r) if math.isfinite(value(p))]
    for k, (label, run) in enumerate(runs.items()):
        points = [p for p in _points(run) if math.isfinite(value(p))]
        color = f"C{k}"
        ax.scatter([p.bop_reduction for p in points], [value(p) for p in points], s=14, alpha=0.35, color=color)
        front = [p for p in pareto_front(points)]
        ax.step([p.bop_reduction for p in front], [value(p) for p in front], where="post", marker="o",
                color=color, label=f"{label} ({len(points)} points)")
    if use_ppl and finite and min(finite) > 0 and max(finite) / min(finite) > 10:
        ax.set_yscale("log")
    ax.set_xlabel("BOP reduction (x, vs dense W16A16)")
    ax.set_ylabel("perplexity (lower is better)" if use_ppl else "M (higher is better)")
    ax.set_title("search: Pareto front")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path = Path(path)
    fig.savefig(path, format="png", bbox_inches="tight")
    return path


def _points(run: Sequence[SearchPoint] | SearchResult) -> list[SearchPoint]:
    return list(run.evaluated) if isinstance(run, SearchResult) else list(run)


__all__ = ["NM_24", "SAMPLERS", "SearchConfig", "SearchPoint", "SearchResult", "pareto_front", "plot_pareto", "search"]
