"""What an order predictor may measure, each thing at most once, with its cost counted.

A predictor asks a `Measurements` object for the dense model's metric, a method's metric alone, a
composed order's metric or a data-free look at the weights; the first request computes it (stage
applications share prefixes), later requests are free. The cost is kept in the units an exhaustive
order study is counted in (stage applications, evaluations, seconds), so every decision states what
it cost next to what the full study would have.
"""

from __future__ import annotations

import copy
import itertools
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..analysis.sequential import RaceResult, RaceSettings, race, race_models
from ..errors import ConfigError
from ..recipe import Stage
from ..units import Evaluation, Units

COLLAPSE_RETAINED = 0.25  # a model keeping less than this share of dense quality is collapsed


@dataclass
class Cost:
    """What a decision (or a study) cost."""

    stage_applications: int = 0
    evaluations: int = 0  # full evaluations under the protocol (perplexity or accuracy)
    weight_passes: int = 0  # data-free passes over the weights (no forward pass)
    seconds: float = 0.0
    partial_evaluations: float = 0.0  # raced evaluations, in full evaluations (units used / the protocol's)

    @property
    def counted(self) -> float:
        """Stage applications plus evaluations (raced ones by the share of units they used)."""
        return self.stage_applications + self.evaluations + self.partial_evaluations

    def to_dict(self) -> dict[str, Any]:
        return {"stage_applications": self.stage_applications, "evaluations": self.evaluations,
                "partial_evaluations": self.partial_evaluations, "weight_passes": self.weight_passes,
                "seconds": self.seconds}


def exhaustive_cost(n: int) -> Cost:
    """Stage applications and evaluations of the exhaustive order study of n methods: every
    distinct prefix applied once (sum_k n!/(n-k)!), dense + n singles + n! orders evaluated."""
    applications = sum(math.perm(n, k) for k in range(1, n + 1))
    return Cost(stage_applications=applications, evaluations=1 + n + math.factorial(n))


def retained(dense: float, metric: float, metric_name: str, chance: float | None = None) -> float:
    """Share of the dense model's quality a model keeps: dense / perplexity for M = -perplexity,
    (accuracy - chance) / (dense - chance) for accuracy."""
    if metric_name == "-perplexity":
        return (-dense) / (-metric) if metric < 0 and math.isfinite(metric) else 0.0
    floor = 0.0 if chance is None else chance
    return (metric - floor) / (dense - floor) if dense > floor else 0.0


class Measurements:
    """Lazy, memoized measurements of `stages` on `evaluator` (the order-study Evaluator protocol:
    `fresh()`, `apply(model, stage)`, `evaluation(model)`, `metric_name`). Each measurement keeps its
    Evaluation (M and the per-unit results) in `evaluations`."""

    def __init__(self, evaluator: Any, stages: Sequence[Stage], known: Mapping[str, float] | None = None,
                 known_errors: Mapping[str, float | None] | None = None,
                 known_units: Mapping[str, Units] | None = None, race: RaceSettings | None = None) -> None:
        """known / known_errors / known_units: metrics (recipe or "dense" -> M), last-block calibration
        errors and full per-unit results already measured (e.g. rows of a results store, to replay a
        predictor on stored cells). They are served without computing but counted in the cost as if
        measured. race: race the candidates a predictor compares (the settings of `race`; None: evaluate
        them in full, except for a predictor that only races, which then uses RaceSettings())."""
        self.evaluator = evaluator
        self.stages = list(stages)
        self.names = [s.text for s in self.stages]
        self.cost = Cost()
        self.measured: dict[str, float] = {}  # recipe -> M
        self.evaluations: dict[str, Evaluation] = {}  # recipe -> M with its per-unit results (measured here)
        self.known = dict(known or {})
        self.known_errors = dict(known_errors or {})
        self.known_units = dict(known_units or {})
        self.race_settings = race
        self._models: dict[tuple[int, ...], nn.Module] = {}  # composed prefixes kept for reuse
        self._applied: set[tuple[int, ...]] = set()  # prefixes whose stage application was counted
        self._dense_weights: dict[str, torch.Tensor] | None = None

    # -- the metric ---------------------------------------------------------------------------------
    @property
    def metric_name(self) -> str:
        return self.evaluator.metric_name

    def _timed(self, fn):
        start = time.perf_counter()
        try:
            return fn()
        finally:
            self.cost.seconds += time.perf_counter() - start

    def dense(self) -> float:
        if "dense" not in self.measured:
            if "dense" in self.known:
                self.measured["dense"] = self.known["dense"]
            else:
                self.evaluations["dense"] = self._timed(lambda: self.evaluator.evaluation(self.evaluator.fresh()))
                self.measured["dense"] = self.evaluations["dense"].metric
            self.cost.evaluations += 1
        return self.measured["dense"]

    def key(self, path: tuple[int, ...]) -> str:
        return " > ".join(self.names[i] for i in path)

    def _count_applications(self, path: tuple[int, ...]) -> None:
        for k in range(1, len(path) + 1):
            if path[:k] not in self._applied:
                self._applied.add(path[:k])
                self.cost.stage_applications += 1

    def model(self, path: tuple[int, ...]) -> nn.Module:
        """The model after the stages `path` (indices into the methods), prefixes shared."""
        if path in self._models:
            return self._models[path]
        base = self.evaluator.fresh() if len(path) == 1 else copy.deepcopy(self.model(path[:-1]))

        def apply() -> nn.Module:
            self.evaluator.apply(base, self.stages[path[-1]])
            return base

        self._models[path] = self._timed(apply)
        self._count_applications(path)
        return self._models[path]

    def metric(self, path: tuple[int, ...]) -> float:
        """M of the model after the stages `path` (a single method when len(path) == 1)."""
        key = self.key(path)
        if key not in self.measured:
            if key in self.known:
                self._count_applications(path)
                self.measured[key] = self.known[key]
            else:
                model = self.model(path)
                self.evaluations[key] = self._timed(lambda: self.evaluator.evaluation(model))
                self.measured[key] = self.evaluations[key].metric
            self.cost.evaluations += 1
        return self.measured[key]

    def calibration_error(self, path: tuple[int, ...]) -> float | None:
        """Relative output error of the last block against the dense model on the evaluator's
        layer-wise calibration windows; None where it is undefined (blocks removed)."""
        key = self.key(path)
        if key in self.known_errors:
            self._count_applications(path)
            return self.known_errors[key]
        model = self.model(path)
        errors = self._timed(lambda: self.evaluator.layer_errors(model, per_linear=False))
        return None if errors is None else errors["per_block"][-1]

    def race(self, paths: Sequence[tuple[int, ...]]) -> RaceResult:
        """Race the models after `paths` (prefixes shared) on the protocol's units. Replayed from
        `known_units` when every candidate's full per-unit results are known (the race reads the units it
        would have evaluated), else the models are built and raced. Evaluations are counted by the share
        of the units they used."""
        keys = [self.key(p) for p in paths]
        if all(k in self.known_units for k in keys):
            stored = {k: self.known_units[k] for k in keys}
            if any(not u.full for u in stored.values()):
                raise ConfigError("a race replays full evaluations only; some stored units are raced themselves")
            for p in paths:
                self._count_applications(p)
            kind, total = next(iter(stored.values())).kind, next(iter(stored.values())).total
            s = self.race_settings or RaceSettings()
            s.check(total)
            result = race(lambda name, ids: stored[name].values[ids], keys, total, kind=kind,
                          margin=s.margin or self.evaluator.margin,
                          confidence=s.confidence, round_size=s.rounds_of(total), seed=s.seed)
        else:
            models = {k: self.model(p) for k, p in zip(keys, paths)}
            result, found = self._timed(lambda: race_models(self.evaluator, models, self.race_settings or RaceSettings()))
            for k, value in found.items():
                self.evaluations[k] = value
        for k in keys:
            self.measured.setdefault(k, Units(result.kind, result.values[k], result.total, result.ids(k)).metric)
            self.cost.partial_evaluations += result.units_used(k) / result.total
        return result

    def single(self, i: int) -> float:
        return self.metric((i,))

    def chance(self) -> float | None:
        return getattr(self.evaluator, "chance", None)

    def collapsed(self, metric: float) -> bool:
        return retained(self.dense(), metric, self.metric_name, self.chance()) < COLLAPSE_RETAINED

    # -- data-free looks at the weights -------------------------------------------------------------
    def dense_weights(self) -> dict[str, torch.Tensor]:
        """(out, in) float32 weights of every linear the methods target, from the dense model."""
        if self._dense_weights is None and callable(getattr(self.evaluator, "dense_weights", None)):
            self._dense_weights = self._timed(lambda: self.evaluator.dense_weights(self.stages))
            self.cost.weight_passes += 1
        if self._dense_weights is None:
            from ..models.adapters import get_adapter, get_weight, select_targets

            def read() -> dict[str, torch.Tensor]:
                model = self.evaluator.fresh()
                adapter = get_adapter(model)
                names: dict[str, nn.Module] = {}
                for stage in self.stages:
                    if stage.config.targets is not None:
                        names.update(select_targets(model, adapter, stage.config.targets))
                return {n: get_weight(m) for n, m in names.items()}

            self._dense_weights = self._timed(read)
            self.cost.weight_passes += 1
        return self._dense_weights

    def orders(self) -> list[tuple[int, ...]]:
        return list(itertools.permutations(range(len(self.stages))))

    def release(self) -> None:
        self._models.clear()
