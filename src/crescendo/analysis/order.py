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
from ..units import Evaluation, Units, UnitsError
from .cer import CER, CERSettings, compare_intensity, predicted_order, reference_curve
from .metrics import interference, order_advantage, orthogonality, performance_gap
from .sequential import RaceResult, RaceSettings, race_comparison, race_models
from .uncertainty import Comparison, Margin, compare

log = logging.getLogger(__name__)


class Evaluator(Protocol):
    """What an order study needs from a model + data pair. M is higher-is-better.

    `evaluation(model, units=None)` measures M on every unit of the protocol, or on the unit ids given
    (racing), with the per-unit results (None for an evaluator that keeps none); `margin` is the
    protocol's equivalence margin."""

    metric_name: str
    margin: Margin

    def evaluation(self, model: nn.Module, units: Sequence[int] | None = None) -> Evaluation: ...

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
    units: dict[str, Units | None] = field(default_factory=dict)  # recipe -> per-unit results (raced: a part)
    comparisons: dict[str, Comparison] = field(default_factory=dict)  # "a || b" (as `advantage`) -> A's interval
    gap_comparisons: dict[str, Comparison] = field(default_factory=dict)  # "f1 | f2" (as `gaps`) -> G's interval
    races: dict[str, RaceResult] = field(default_factory=dict)  # "singles" / "orders" -> the race, with --race
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
    def best_comparison(self) -> Comparison | None:
        """The best measured order against the runner-up (A >= 0), or None without per-unit results."""
        ranked = sorted(self.orders, key=lambda o: o["metric"], reverse=True)
        best, runner_up = order_key(ranked[0]["order"]), order_key(ranked[1]["order"])
        if f"{best} || {runner_up}" in self.comparisons:
            return self.comparisons[f"{best} || {runner_up}"]
        found = self.comparisons.get(f"{runner_up} || {best}")
        return None if found is None else found.reversed()

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
    on_result: Callable[[str, str, Evaluation], None] | None = None,
    memo: dict[str, tuple[Evaluation, dict[str, Any] | None]] | None = None,
    cer_settings: CERSettings = CERSettings(),
    race: RaceSettings | None = None,
) -> OrderStudy:
    """Measure dense, each method alone, every permutation and the reference-quantizer curve.

    methods: stage strings, e.g. ["sparsegpt:0.5", "gptq:w4"] (n >= 2, distinct).
    reference: the reference quantizer as a template over bit-width `{b}` (003 uses the same
    quantizer's weight+activation curve: "rtn:w{b}a{b}").
    on_result(kind, recipe, evaluation) is called after every measurement (e.g. to store it).
    memo: measurements shared between studies on the same evaluator ({recipe: (evaluation, layer
    errors)}): a study of (P, Q1) then (P, Q2) measures the dense model and P alone once. Stages are
    still applied where a longer order needs them; only their evaluation is skipped.
    cer_settings: how the reference curve is read (dense anchor, log-perplexity, monotone envelope);
    a curve that is not monotone is flagged in `curve_warning` and, unless the envelope is asked
    for, leaves every CER (and so the prediction) undefined.
    race: race the singles against each other and the complete orders against each other
    (`sequential.race`) instead of evaluating them in full; the dense model and the reference curve
    are still evaluated in full (the CERs read the curve). Raced measurements are reported with the
    units they used and never enter `memo`.

    Every advantage A and gap G gets a paired comparison (`uncertainty.compare`, or the race's
    confidence sequence) when the evaluator keeps per-unit results.
    """
    stages = [parse_stage(m) for m in methods]
    names = [s.text for s in stages]
    if len(names) < 2:
        raise ValueError("an order study needs at least two methods")
    if len(set(names)) != len(names):
        raise ValueError(f"methods must be distinct, got {names}")
    if cer_settings.scale == "log" and evaluator.metric_name != "-perplexity":
        raise ConfigError(f"a log-perplexity CER needs M = -perplexity, not {evaluator.metric_name}")
    report = on_result or (lambda kind, recipe, found: None)
    memo = {} if memo is None else memo
    found: dict[str, Evaluation] = {}
    if "dense" not in memo:
        dense_model = evaluator.fresh()
        memo["dense"] = (evaluator.evaluation(dense_model), None)
        report("dense", "dense", memo["dense"][0])
        del dense_model
    found["dense"] = memo["dense"][0]
    dense = found["dense"].metric

    curve = []
    for b in bits:
        recipe = parse_recipe(reference.format(b=b))
        if str(recipe) not in memo:
            model = evaluator.fresh()
            for stage in recipe.stages:
                evaluator.apply(model, stage)
            memo[str(recipe)] = (evaluator.evaluation(model), None)
            report("curve", str(recipe), memo[str(recipe)][0])
            del model
        found[str(recipe)] = memo[str(recipe)][0]
        curve.append((int(b), 16.0 / b, memo[str(recipe)][0].metric))

    errors: dict[str, dict[str, Any]] = {}
    held: dict[str, nn.Module] = {}  # racing: the models to race, by recipe
    applications = 0

    def visit(model: nn.Module, prefix: tuple[int, ...]) -> None:
        nonlocal applications
        remaining = [i for i in range(len(stages)) if i not in prefix]
        for pos, i in enumerate(remaining):
            path = prefix + (i,)
            order = tuple(names[j] for j in path)
            key = order_key(order)
            complete = len(path) == len(stages)
            measured = len(path) == 1 or complete
            measure = measured and (race is not None or key not in memo
                                    or (layerwise and not _memo_complete(memo[key][1], complete)))
            # the last branch may consume its parent, unless its last stage is compared with it or it is
            # held for a race
            last = pos == len(remaining) - 1 and not (measure and complete and layerwise) and race is None
            child = model if last and prefix else _copy(model)
            evaluator.apply(child, stages[i])
            applications += 1
            if measured:
                le = memo[key][1] if key in memo and not measure else None
                if measure:
                    if race is None:
                        found[key] = evaluator.evaluation(child)
                        report("single" if len(path) == 1 else "order", key, found[key])
                    le = evaluator.layer_errors(child) if layerwise else None
                    if le is not None and complete and le.get("per_linear"):
                        stage = _stage_errors(evaluator, model, child)
                        le = {**le, "last_stage_per_linear": None if stage is None else stage["per_linear"]}
                    if race is None:
                        memo[key] = (found[key], le)
                else:
                    found[key] = memo[key][0]
                if race is not None:
                    held[key] = child if complete else _copy(child)
                if layerwise and le is not None:
                    errors[key] = le
            if len(path) < len(stages):
                visit(child, path)
            del child

    visit(evaluator.fresh(), ())
    races: dict[str, RaceResult] = {}
    if race is not None:
        for group, keys in (("singles", names), ("orders", [order_key(p) for p in itertools.permutations(names)])):
            result, evaluations = race_models(evaluator, {k: held.pop(k) for k in keys}, race)
            races[group] = result
            for key, value in evaluations.items():
                found[key] = value
                report("single" if group == "singles" else "order", key, value)

    singles = {n: found[n].metric for n in names}
    finals = {tuple(o): found[order_key(o)].metric for o in itertools.permutations(names)}
    ref = reference_curve([(c, m) for _, c, m in curve], cer_settings, dense)
    cer = {n: ref.cer(singles[n]) for n in names}
    decided = {n: c for n, c in cer.items() if c is not None}
    predicted, open_pairs = predicted_order(decided) if len(decided) == len(names) else ([], [])
    gaps = {f"{a} | {b}": performance_gap(singles[a], singles[b]) for a, b in itertools.permutations(names, 2)}
    ordered = sorted(finals.items(), key=lambda kv: kv[1], reverse=True)
    pairs = list(itertools.combinations(sorted(finals), 2))
    advantage = {f"{order_key(a)} || {order_key(b)}": order_advantage(finals[a], finals[b]) for a, b in pairs}
    comparisons = {f"{order_key(a)} || {order_key(b)}": c for a, b in pairs
                   if (c := _compare(found, races.get("orders"), order_key(a), order_key(b), evaluator)) is not None}
    gap_comparisons = {f"{a} | {b}": c for a, b in itertools.permutations(names, 2)
                       if (c := _compare(found, races.get("singles"), a, b, evaluator)) is not None}
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
        units={k: v.units for k, v in found.items()},
        comparisons=comparisons,
        gap_comparisons=gap_comparisons,
        races=races,
        layer_errors=errors,
        prediction_open=open_pairs,
        cer_settings=cer_settings,
        curve_monotone=ref.monotone,
        curve_warning=ref.problem,
    )
    if errors:
        _error_analysis(study, errors)
    return study


def _compare(found: dict[str, Evaluation], raced: RaceResult | None, first: str, second: str,
             evaluator: Evaluator) -> Comparison | None:
    """A paired comparison of two measured recipes: the race's, when they were raced, else from their units
    under the evaluator's margin; None when either has no units (an evaluator that keeps none)."""
    if raced is not None:
        return race_comparison(raced, first, second)
    a, b = found[first].units, found[second].units
    if a is None or b is None:
        return None
    try:
        return compare(a, b, margin=evaluator.margin, labels=(first, second))
    except UnitsError as err:
        log.warning("no comparison of %s and %s: %s", first, second, err)
        return None


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
        "gap_comparison": {k: c.to_dict() for k, c in study.gap_comparisons.items()},
        "advantage": study.advantage,
        "advantage_comparison": {k: c.to_dict() for k, c in study.comparisons.items()},
        "best_order": study.best_order,
        "best_order_verdict": None if (best := study.best_comparison) is None else best.to_dict(),
        "units": {k: None if u is None else {"used": len(u), "total": u.total} for k, u in study.units.items()},
        "races": {k: r.to_dict() for k, r in study.races.items()},
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

