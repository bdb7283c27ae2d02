"""The order study: every permutation of n methods, prefixes shared, checked against the
Progressive Intensity Hypothesis' cheap prediction.

Permutations form a trie: the model after each distinct prefix is computed once and branched by deep
copy, so an n-method study costs sum_{k=1..n} n!/(n-k)! stage applications instead of n * n!
(n=3: 15 instead of 18; n=4: 64 instead of 96), and its depth-1 nodes are the single-method runs the
CER and the prediction need anyway. Only the current branch of the trie is held in memory.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from ..recipe import Stage, parse_recipe, parse_stage
from .metrics import (
    CER,
    compression_equivalent_ratio,
    interference,
    order_advantage,
    orthogonality,
    performance_gap,
    progressive_intensity_order,
)

log = logging.getLogger(__name__)


class Evaluator(Protocol):
    """What an order study needs from a model + data pair. M is higher-is-better."""

    metric_name: str

    def metric(self, model: nn.Module) -> float: ...

    def fresh(self) -> nn.Module: ...

    def apply(self, model: nn.Module, stage: Stage) -> None: ...

    def layer_errors(self, model: nn.Module) -> dict[str, Any] | None: ...


@dataclass
class OrderStudy:
    methods: list[str]
    metric_name: str
    dense: float
    singles: dict[str, float]
    orders: list[dict[str, Any]]  # {"order": [m1, m2, ...], "metric": M}
    curve: list[tuple[int, float, float]]  # (bits, C_Q = 16/bits, M) of the reference quantizer
    cer: dict[str, CER]
    gaps: dict[str, float]  # "f1 | f2" -> G(f1, f2)
    advantage: dict[str, float]  # "order a || order b" -> M(a) - M(b)
    best_order: list[str]
    predicted_order: list[str]
    stage_applications: int
    naive_stage_applications: int
    layer_errors: dict[str, dict[str, Any]] = field(default_factory=dict)  # recipe -> LayerwiseError dict
    orthogonality: dict[str, dict[str, Any]] = field(default_factory=dict)  # order -> verdict
    interference: dict[str, float] = field(default_factory=dict)  # order -> Δ(f1 -> ... -> fn)

    @property
    def agrees(self) -> bool:
        return self.best_order == self.predicted_order

    @property
    def orthogonal(self) -> bool | None:
        if not self.orthogonality:
            return None
        return all(v["orthogonal"] for v in self.orthogonality.values())


def order_key(order: Sequence[str]) -> str:
    return " > ".join(order)


@torch.no_grad()
def run_order_study(
    evaluator: Evaluator,
    methods: Sequence[str],
    *,
    reference: str = "rtn:w{b}",
    bits: Sequence[int] = (8, 7, 6, 5, 4, 3),
    layerwise: bool = True,
    on_result: Callable[[str, str, float], None] | None = None,
    memo: dict[str, tuple[float, dict[str, Any] | None]] | None = None,
) -> OrderStudy:
    """Measure dense, each method alone, every permutation and the reference-quantizer curve.

    methods: stage strings, e.g. ["sparsegpt:0.5", "gptq:w4"] (n >= 2, distinct).
    reference: the reference quantizer as a template over bit-width `{b}` (003 uses the same
    quantizer's weight+activation curve: "rtn:w{b}a{b}").
    on_result(kind, recipe, metric) is called after every measurement (e.g. to store it).
    memo: measurements shared between studies on the same evaluator ({recipe: (metric, layer errors)}):
    a study of (P, Q1) then (P, Q2) measures the dense model and P alone once. Stages are still applied
    where a longer order needs them; only their evaluation is skipped.
    """
    stages = [parse_stage(m) for m in methods]
    names = [s.text for s in stages]
    if len(names) < 2:
        raise ValueError("an order study needs at least two methods")
    if len(set(names)) != len(names):
        raise ValueError(f"methods must be distinct, got {names}")
    report = on_result or (lambda kind, recipe, metric: None)
    memo = {} if memo is None else memo
    if "dense" not in memo:
        dense_model = evaluator.fresh()
        memo["dense"] = (evaluator.metric(dense_model), None)
        report("dense", "dense", memo["dense"][0])
        del dense_model
    dense = memo["dense"][0]

    curve = []
    for b in bits:
        recipe = parse_recipe(reference.format(b=b))
        if str(recipe) not in memo:
            model = evaluator.fresh()
            for stage in recipe.stages:
                evaluator.apply(model, stage)
            memo[str(recipe)] = (evaluator.metric(model), None)
            report("curve", str(recipe), memo[str(recipe)][0])
            del model
        curve.append((int(b), 16.0 / b, memo[str(recipe)][0]))

    singles: dict[str, float] = {}
    finals: dict[tuple[str, ...], float] = {}
    errors: dict[str, dict[str, Any]] = {}
    applications = 0

    def visit(model: nn.Module, prefix: tuple[int, ...]) -> None:
        nonlocal applications
        remaining = [i for i in range(len(stages)) if i not in prefix]
        for pos, i in enumerate(remaining):
            last = pos == len(remaining) - 1
            child = model if last and prefix else _copy(model)  # the last branch may consume its parent
            evaluator.apply(child, stages[i])
            applications += 1
            path = prefix + (i,)
            order = tuple(names[j] for j in path)
            if len(path) == 1 or len(path) == len(stages):
                key = order_key(order)
                if key not in memo or (layerwise and memo[key][1] is None):
                    m = evaluator.metric(child)
                    report("single" if len(path) == 1 else "order", key, m)
                    memo[key] = (m, evaluator.layer_errors(child) if layerwise else None)
                m, le = memo[key]
                if len(path) == 1:
                    singles[names[i]] = m
                if len(path) == len(stages):
                    finals[order] = m
                if layerwise and le is not None:
                    errors[key] = le
            if len(path) < len(stages):
                visit(child, path)
            del child

    visit(evaluator.fresh(), ())

    curve_points = [(c, m) for _, c, m in curve]
    cer = {n: compression_equivalent_ratio(singles[n], curve_points) for n in names} if curve_points else {}
    gaps = {f"{a} | {b}": performance_gap(singles[a], singles[b]) for a, b in itertools.permutations(names, 2)}
    ordered = sorted(finals.items(), key=lambda kv: kv[1], reverse=True)
    advantage = {
        f"{order_key(a)} || {order_key(b)}": order_advantage(ma, mb)
        for (a, ma), (b, mb) in itertools.combinations(sorted(finals.items()), 2)
    }
    study = OrderStudy(
        methods=names,
        metric_name=evaluator.metric_name,
        dense=dense,
        singles=singles,
        orders=[{"order": list(o), "metric": m} for o, m in finals.items()],
        curve=curve,
        cer=cer,
        gaps=gaps,
        advantage=advantage,
        best_order=list(ordered[0][0]),
        predicted_order=progressive_intensity_order(cer) if cer else [],
        stage_applications=applications,
        naive_stage_applications=len(names) * len(list(itertools.permutations(names))),
        layer_errors=errors,
    )
    if errors:
        _error_analysis(study, errors)
    return study


def _copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)


def _error_analysis(study: OrderStudy, errors: dict[str, dict[str, Any]]) -> None:
    """Harma's orthogonality test and 003's interference, per composed order, from per-linear errors."""
    single_err = {n: errors[n]["per_linear"] for n in study.methods if n in errors}
    for entry in study.orders:
        key = order_key(entry["order"])
        if key not in errors or len(single_err) != len(study.methods):
            continue
        composed = errors[key]["per_linear"]
        verdict = orthogonality([single_err[n] for n in study.methods], composed)
        study.orthogonality[key] = {
            "orthogonal": verdict.orthogonal,
            "composed_error": verdict.composed_total,
            "sum_single_errors": verdict.single_total,
        }
        last = entry["order"][-1]  # Δ(f1 -> f2): what the earlier stages do to the last one's error
        study.interference[key] = interference(composed, single_err[last])


def study_to_dict(study: OrderStudy) -> dict[str, Any]:
    """The JSON shape of `crescendo order --json` (metric M; perplexity = -M for language models)."""
    is_ppl = study.metric_name == "-perplexity"

    def show(m: float) -> float:
        return -m if is_ppl else m

    return {
        "metric": study.metric_name,
        "dense": show(study.dense),
        "singles": {k: show(v) for k, v in study.singles.items()},
        "orders": [{"order": o["order"], ("perplexity" if is_ppl else "metric"): show(o["metric"])} for o in study.orders],
        "curve": [{"bits": b, "ratio": c, ("perplexity" if is_ppl else "metric"): show(m)} for b, c, m in study.curve],
        "cer": {k: (v.value if v.bound == "exact" else str(v)) for k, v in study.cer.items()},
        "gap": study.gaps,
        "advantage": study.advantage,
        "best_order": study.best_order,
        "predicted_order": study.predicted_order,
        "prediction_agrees": study.agrees,
        "orthogonal": study.orthogonal,
        "orthogonality": study.orthogonality,
        "interference": study.interference,
        "layer_errors": {k: {"total": v["total"], "per_block": v["per_block"]} for k, v in study.layer_errors.items()},
        "stage_applications": study.stage_applications,
        "naive_stage_applications": study.naive_stage_applications,
    }
