"""Raced sweeps: every (ratio, bits) cell answers its two questions, which method is weaker (G) and
which order is better (A), with evaluation that stops when the answer is known.

A cell's singles P(r) and Q(b) are raced against each other, and its orders P(r) > Q(b) and
Q(b) > P(r) against each other (`analysis.sequential.race`), on the protocol's units in one seeded
order. Every candidate is evaluated on a prefix of that order, so a single that several cells race
(P(r) against every Q(b)) keeps one growing prefix: its row holds every unit any of its races
needed, and replaying a race from the stored rows gives the same verdict. Raced rows are stored under
the protocol id plus the race's label (`sotu-v1-quick+race`), never as full-protocol rows; the dense
model is evaluated in full under the plain protocol id.

Raced sweeps run in one lane on this machine (no Ray, no lanes): a single's prefix grows across
cells, which a split of the cells between processes would race on. A cell whose two order rows are
stored is skipped on a rerun; a single's stored units are reused, and its model rebuilt only when a
new race needs more units.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from . import __version__
from .analysis.sequential import RaceResult, RaceSettings, race, unit_order
from .cache import PrefixCache
from .errors import ConfigError
from .recipe import Recipe, parse_recipe
from .store import ResultStore, Row, record_run, run_key
from .sweep import SweepTask
from .units import Units

log = logging.getLogger(__name__)


class UnitMemo:
    """The unit values of one candidate on a prefix of the race order, evaluated once each; the model is
    built (by `build`) only when a race asks for units the memo does not hold."""

    def __init__(self, bench, order: np.ndarray, build: Callable[[], nn.Module], stored: Units | None = None) -> None:
        self.bench, self.order, self.build = bench, order, build
        self.values = np.empty(0)
        self.seconds = 0.0
        self._model: nn.Module | None = None
        if stored is not None and np.array_equal(stored.index, order[: len(stored)]):
            self.values = stored.values.copy()  # a rerun: the units a previous race evaluated

    @property
    def model(self) -> nn.Module:
        if self._model is None:
            self._model = self.build()
        return self._model

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        """Values of `ids`, which must continue the evaluated prefix or lie inside it."""
        start = int(np.flatnonzero(self.order == ids[0])[0])
        stop = start + ids.size
        if stop > self.values.size:
            new = self.order[self.values.size:stop]
            found = self.bench.evaluation(self.model, [int(i) for i in new])
            self.seconds += found.seconds
            self.values = np.concatenate([self.values, found.units.values])
        return self.values[start:stop]

    def units(self, kind: str, total: int) -> Units:
        return Units(kind, self.values, total, self.order[: self.values.size])

    def release(self) -> None:
        self._model = None


def cells_of(tasks: Sequence[SweepTask]) -> list[tuple[SweepTask, SweepTask, SweepTask, SweepTask]]:
    """(P alone, Q alone, P > Q, Q > P) of every cell of a sweep's tasks."""
    singles = {t.recipe: t for t in tasks if t.kind == "single"}
    orders = {(t.extra["ratio"], t.extra["bits"], t.extra["quant"], t.extra["first"]): t
              for t in tasks if t.kind == "order"}
    out = []
    for (ratio, bits, quant, first), pq in sorted(orders.items(), key=lambda kv: (kv[0][0], -kv[0][1], kv[0][2])):
        if first != "prune":
            continue
        qp = orders[(ratio, bits, quant, "quant")]
        stages = parse_recipe(pq.recipe).stages
        depth = int(pq.extra.get("prefix_stages", 0))
        p_alone = str(Recipe(stages[: depth + 1]))
        q_alone = str(Recipe(stages[:depth] + stages[depth + 1:]))
        out.append((singles[p_alone], singles[q_alone], pq, qp))
    return out


def run_raced_sweep(bench, model_name: str, protocol_name: str, tasks: Sequence[SweepTask], store: ResultStore, *,
                    seed: int, race_settings: RaceSettings, cache: PrefixCache | None = None,
                    device: str | None = None, on_row: Callable[[Row], None] | None = None) -> dict[str, int]:
    """Race every cell of `tasks` (from `sweep.grid_tasks`, without multi-stage rows); returns counts
    {"total", "skipped", "computed", "elsewhere"} as `sweep.run_sweep` does."""
    if any(t.kind == "multistage" for t in tasks):
        raise ConfigError("--race races the order cells; run the multi-stage rows without --race")
    total = bench.n_units
    race_settings.check(total)
    raced_protocol = protocol_name + race_settings.label()
    order = unit_order(total, race_settings.seed)
    counts = {"total": len(tasks), "skipped": 0, "computed": 0, "elsewhere": 0}
    torch.manual_seed(seed)

    def key(task: SweepTask) -> str:
        protocol = protocol_name if task.kind == "dense" else raced_protocol
        return run_key(model_name, protocol, task.recipe, seed, __version__)

    written: set[str] = set()

    def put(task: SweepTask, units: Units, timings: dict, extra: dict[str, Any] | None = None) -> None:
        """Store a row (a single's row again, with more units, when a later race needed them)."""
        from .store import RunMetrics

        metric = units.metric
        metrics = (RunMetrics.from_perplexity(-metric) if units.kind == "window-loss" else RunMetrics.from_accuracy(metric))
        protocol = protocol_name if task.kind == "dense" else raced_protocol
        row = record_run(store, model=model_name, protocol=protocol, recipe=task.recipe, seed=seed, kind=task.kind,
                         metrics=metrics, timings=timings, extra={**task.extra, **(extra or {})}, device=device,
                         units=units)
        if task.recipe not in written:
            counts["computed"] += 1
            written.add(task.recipe)
            if on_row:
                on_row(row)

    dense = next((t for t in tasks if t.kind == "dense"), None)
    if dense is not None:
        if store.has(key(dense)):
            counts["skipped"] += 1
        else:
            found = bench.measure(bench.model)
            put(dense, found.units, {"eval_seconds": found.seconds})
    memos: dict[str, UnitMemo] = {}
    built: dict[str, nn.Module] = {}

    def model_of(recipe: str, base: str | None = None) -> nn.Module:
        """The model after `recipe` (built on a copy of `base`'s model for its last stage; prefixes
        with a calibrated stage go through the prefix cache)."""
        if recipe in built:
            return built[recipe]
        parsed = parse_recipe(recipe)
        calibrated = any(s.spec.calibrated for s in parsed.stages)
        cache_key = (cache.key(model_name, bench.protocol_id, seed, recipe)
                     if cache and calibrated and base is None and cache.holds(bench.model) else None)
        model = cache.get(cache_key) if cache_key else None
        if model is None:
            if base is not None:
                model = copy.deepcopy(model_of(base))
                bench.compress_inplace(model, Recipe(parsed.stages[-1:]))
            else:
                model, _ = bench.compress(parsed)
            if cache_key:
                cache.put(cache_key, model)
        built[recipe] = model
        return model

    def memo(task: SweepTask, base: str | None = None) -> UnitMemo:
        if task.recipe not in memos:
            stored = store.get(key(task))
            memos[task.recipe] = UnitMemo(bench, order, lambda: model_of(task.recipe, base),
                                          stored.units if stored is not None else None)
        return memos[task.recipe]

    def race_pair(a: UnitMemo, b: UnitMemo, names: tuple[str, str]) -> RaceResult:
        table = dict(zip(names, (a, b)))
        return race(lambda name, ids: table[name](ids), list(names), total, kind=bench.unit_kind,
                    margin=race_settings.margin or bench.margin, confidence=race_settings.confidence,
                    round_size=race_settings.rounds_of(total), seed=race_settings.seed)

    cells = cells_of(tasks)
    for i, (p_task, q_task, pq_task, qp_task) in enumerate(cells):
        if store.has(key(pq_task)) and store.has(key(qp_task)):
            counts["skipped"] += 2
            continue
        start = time.perf_counter()
        p, q = memo(p_task), memo(q_task)
        singles = race_pair(p, q, (p_task.recipe, q_task.recipe))
        pq = memo(pq_task, base=p_task.recipe)
        qp = memo(qp_task, base=q_task.recipe)
        orders = race_pair(pq, qp, (pq_task.recipe, qp_task.recipe))
        seconds = time.perf_counter() - start
        for task, m, result in ((pq_task, pq, orders), (qp_task, qp, orders)):
            put(task, m.units(bench.unit_kind, total), {"seconds": seconds, "eval_seconds": m.seconds},
                {"race": _summary(result)})
        for task, m in ((p_task, p), (q_task, q)):  # the longest prefix any race needed so far
            put(task, m.units(bench.unit_kind, total), {"eval_seconds": m.seconds}, {"race": _summary(singles)})
        for recipe in (pq_task.recipe, qp_task.recipe):
            built.pop(recipe, None)
            memos.pop(recipe, None)
        later = {t.recipe for cell in cells[i + 1:] for t in cell[:2]}
        for recipe in [r for r in built if r not in later]:  # singles no later cell races
            built.pop(recipe)
            memos.pop(recipe, None)
    return counts


def _summary(result: RaceResult) -> dict[str, Any]:
    return {"stop": result.stop, "winner": result.winner, "units_used": {n: result.units_used(n) for n in result.names},
            "total_units": result.total, "confidence": result.confidence}
