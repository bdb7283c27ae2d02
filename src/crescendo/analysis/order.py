"""The order study: every permutation of n methods, prefixes shared, checked against the
Progressive Intensity Hypothesis' cheap prediction.

Permutations form a trie: the model after each distinct prefix is computed once and branched by deep
copy, so an n-method study costs sum_{k=1..n} n!/(n-k)! stage applications instead of n * n!
(n=3: 15 instead of 18; n=4: 64 instead of 96), and its depth-1 nodes are the single-method runs the
CER and the prediction need anyway. Only the current branch of the trie is held in memory (plus,
with layer-wise errors, the parent of each complete order, whose last stage is compared with it).

Two error numbers are reported per complete order, from per-linear output errors:
- interference, 003's Definition 6, Delta(f1 -> ... -> fn): the last stage's error inside the
  pipeline (its output error against the model it was applied to) minus its error alone;
- excess, Harma et al.'s orthogonality test: the composed model's error minus the sum of every
  single method's error (> 0: not orthogonal). See `metrics.interference` for how they relate.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from ..errors import ConfigError
from ..recipe import Stage, parse_recipe, parse_stage
from .cer import CER, CERSettings, compare_intensity, predicted_order, reference_curve
from .metrics import interference, order_advantage, orthogonality, performance_gap

log = logging.getLogger(__name__)


class Evaluator(Protocol):
    """What an order study needs from a model + data pair. M is higher-is-better."""

    metric_name: str

    def metric(self, model: nn.Module) -> float: ...

    def fresh(self) -> nn.Module: ...

    def apply(self, model: nn.Module, stage: Stage) -> None: ...

    def layer_errors(self, model: nn.Module) -> dict[str, Any] | None: ...

    # Optional: stage_errors(reference, model) -> per-linear errors of `model` against `reference`
    # on the reference's inputs ({"per_linear": {...}}), for Definition 6. Without it, an evaluator
    # with the Workbench's `calibration`, `layerwise_samples` and `compute()` is measured directly.


@dataclass
class OrderStudy:
    methods: list[str]
    metric_name: str
    dense: float
    singles: dict[str, float]
    orders: list[dict[str, Any]]  # {"order": [m1, m2, ...], "metric": M}
    curve: list[tuple[int, float, float]]  # (bits, C_Q = 16/bits, M) of the reference quantizer
    cer: dict[str, CER | None]  # None: undefined (see curve_warning)
    gaps: dict[str, float]  # "f1 | f2" -> G(f1, f2)
    advantage: dict[str, float]  # "order a || order b" -> M(a) - M(b)
    best_order: list[str]
    predicted_order: list[str]
    stage_applications: int
    naive_stage_applications: int
    layer_errors: dict[str, dict[str, Any]] = field(default_factory=dict)  # recipe -> LayerwiseError dict
    orthogonality: dict[str, dict[str, Any]] = field(default_factory=dict)  # order -> verdict and excess
    interference: dict[str, float | None] = field(default_factory=dict)  # order -> Δ(f1 -> ... -> fn)
    prediction_open: list[tuple[str, str]] = field(default_factory=list)  # pairs the CERs cannot order
    cer_settings: CERSettings = CERSettings()
    curve_monotone: bool = True
    curve_warning: str | None = None

    @property
    def agrees(self) -> bool | None:
        """Does the measured best order follow the hypothesis? False when it puts a method the CERs
        call stronger before a weaker one; None when no such violation exists but the CERs leave a
        pair open (bounds on one side, an exact tie) or are undefined; True otherwise."""
        if not self.predicted_order:
            return None
        cers = {k: v for k, v in self.cer.items() if v is not None}
        for i, a in enumerate(self.best_order):
            if any(compare_intensity(cers[a], cers[b]) == 1 for b in self.best_order[i + 1:]):
                return False
        return None if self.prediction_open else True

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
    cer_settings: CERSettings = CERSettings(),
) -> OrderStudy:
    """Measure dense, each method alone, every permutation and the reference-quantizer curve.

    methods: stage strings, e.g. ["sparsegpt:0.5", "gptq:w4"] (n >= 2, distinct).
    reference: the reference quantizer as a template over bit-width `{b}` (003 uses the same
    quantizer's weight+activation curve: "rtn:w{b}a{b}").
    on_result(kind, recipe, metric) is called after every measurement (e.g. to store it).
    memo: measurements shared between studies on the same evaluator ({recipe: (metric, layer errors)}):
    a study of (P, Q1) then (P, Q2) measures the dense model and P alone once. Stages are still applied
    where a longer order needs them; only their evaluation is skipped.
    cer_settings: how the reference curve is read (dense anchor, log-perplexity, monotone envelope);
    a curve that is not monotone is flagged in `curve_warning` and, unless the envelope is asked
    for, leaves every CER (and so the prediction) undefined.
    """
    stages = [parse_stage(m) for m in methods]
    names = [s.text for s in stages]
    if len(names) < 2:
        raise ValueError("an order study needs at least two methods")
    if len(set(names)) != len(names):
        raise ValueError(f"methods must be distinct, got {names}")
    if cer_settings.scale == "log" and evaluator.metric_name != "-perplexity":
        raise ConfigError(f"a log-perplexity CER needs M = -perplexity, not {evaluator.metric_name}")
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
            path = prefix + (i,)
            order = tuple(names[j] for j in path)
            key = order_key(order)
            complete = len(path) == len(stages)
            measure = (len(path) == 1 or complete) and (
                key not in memo or (layerwise and not _memo_complete(memo[key][1], complete)))
            # the last branch may consume its parent, unless its last stage is compared with it
            last = pos == len(remaining) - 1 and not (measure and complete and layerwise)
            child = model if last and prefix else _copy(model)
            evaluator.apply(child, stages[i])
            applications += 1
            if len(path) == 1 or complete:
                if measure:
                    m = evaluator.metric(child)
                    report("single" if len(path) == 1 else "order", key, m)
                    le = evaluator.layer_errors(child) if layerwise else None
                    if le is not None and complete and le.get("per_linear"):
                        stage = _stage_errors(evaluator, model, child)
                        le = {**le, "last_stage_per_linear": None if stage is None else stage["per_linear"]}
                    memo[key] = (m, le)
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

    ref = reference_curve([(c, m) for _, c, m in curve], cer_settings, dense)
    cer = {n: ref.cer(singles[n]) for n in names}
    decided = {n: c for n, c in cer.items() if c is not None}
    predicted, open_pairs = predicted_order(decided) if len(decided) == len(names) else ([], [])
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
        predicted_order=predicted,
        stage_applications=applications,
        naive_stage_applications=len(names) * len(list(itertools.permutations(names))),
        layer_errors=errors,
        prediction_open=open_pairs,
        cer_settings=cer_settings,
        curve_monotone=ref.monotone,
        curve_warning=ref.problem,
    )
    if errors:
        _error_analysis(study, errors)
    return study


def _copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)


def _memo_complete(errors: dict[str, Any] | None, complete: bool) -> bool:
    """Whether memoised layer errors hold all a study needs (a complete order: its last stage too)."""
    return errors is not None and (not complete or not errors.get("per_linear")
                                   or "last_stage_per_linear" in errors)


def _stage_errors(evaluator: Evaluator, reference: nn.Module, model: nn.Module) -> dict[str, Any] | None:
    """Per-linear errors of `model` against `reference` (the last stage's own error in a pipeline),
    from the evaluator's `stage_errors`, else measured on a Workbench's calibration windows."""
    own = getattr(evaluator, "stage_errors", None)
    if own is not None:
        return own(reference, model)
    needed = ("calibration", "layerwise_samples", "compute")
    if not all(hasattr(evaluator, a) for a in needed):
        log.warning("evaluator cannot measure a stage against its input model: no interference")
        return None
    from ..eval.layerwise import layerwise_error

    calib = evaluator.calibration[: evaluator.layerwise_samples]  # type: ignore[attr-defined]
    with evaluator.compute():  # type: ignore[attr-defined]
        return layerwise_error(reference, model, calib).to_dict()


def _error_analysis(study: OrderStudy, errors: dict[str, dict[str, Any]]) -> None:
    """Per complete order: Harma's orthogonality test (composed error against the sum of the single
    errors, and that excess) and 003's interference Δ (the last stage's in-pipeline error against its
    error alone), from per-linear errors. Orders without per-linear errors (rotated or block-removed
    models) get neither."""
    single_err = {n: errors[n]["per_linear"] for n in study.methods if errors.get(n, {}).get("per_linear")}
    if len(single_err) != len(study.methods):
        return
    for entry in study.orders:
        key = order_key(entry["order"])
        composed = errors.get(key, {}).get("per_linear")
        if not composed:
            continue
        verdict = orthogonality([single_err[n] for n in study.methods], composed)
        study.orthogonality[key] = {
            "orthogonal": verdict.orthogonal,
            "composed_error": verdict.composed_total,
            "sum_single_errors": verdict.single_total,
            "excess": verdict.excess_total,
        }
        stage = errors[key].get("last_stage_per_linear")
        last = entry["order"][-1]
        study.interference[key] = None if stage is None else interference(stage, single_err[last])


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
        "cer_method": study.cer_settings.label,
        "curve_monotone": study.curve_monotone,
        "curve_warning": study.curve_warning,
        "cer": {k: (None if v is None else v.value if v.is_exact else str(v)) for k, v in study.cer.items()},
        "gap": study.gaps,
        "advantage": study.advantage,
        "best_order": study.best_order,
        "predicted_order": study.predicted_order,
        "prediction_agrees": study.agrees,
        "prediction_open": [f"{a} | {b}" for a, b in study.prediction_open],
        "orthogonal": study.orthogonal,
        "orthogonality": study.orthogonality,
        "interference": study.interference,
        "layer_errors": {k: {"total": v["total"], "per_block": v["per_block"]} for k, v in study.layer_errors.items()},
        "stage_applications": study.stage_applications,
        "naive_stage_applications": study.naive_stage_applications,
    }
