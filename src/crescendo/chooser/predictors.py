"""Order predictors: cheap rules that choose the order of compression methods, or abstain.

Each predictor is registered by name, states what it can judge, what it measures (its cost model)
and why it decides as it does. `decide(predictor, evaluator, methods)` runs it and returns a
`Decision`: the chosen order or an abstention with its reason, what was measured, and the cost
next to the exhaustive study's. How well they choose is measured on a pre-registered hold-out
(docs/results/chooser/), not asserted here.

Vocabulary: P = a per-layer pruner (magnitude, Wanda, SparseGPT), Q = a quantizer with a weight
grid (RTN, GPTQ, a block format). "Q first" = the recipe `Q > P`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ..analysis.sequential import RaceSettings
from ..errors import ConfigError
from ..recipe import Stage, parse_stage
from ..registry import Registry
from ..units import Units
from .measurements import COLLAPSE_RETAINED, Cost, Measurements, exhaustive_cost, retained

COMPENSATING = ("sparsegpt", "gptq")  # methods that update the weights they keep from calibration data
NEAR_LOSSLESS = 0.975  # a single keeping this share of dense quality is "near-lossless"
ABSORBED = 0.99  # share of a pruner's quota already met by exact zeros that makes Q > P equal Q alone


@dataclass
class Decision:
    """What a predictor chose (`order`, method texts in application order) or why it abstained."""

    predictor: str
    methods: list[str]
    order: list[str] | None
    reason: str
    measured: dict[str, float] = field(default_factory=dict)
    evidence: dict[str, Any] = field(default_factory=dict)
    cost: Cost = field(default_factory=Cost)
    exhaustive: Cost = field(default_factory=Cost)

    @property
    def abstained(self) -> bool:
        return self.order is None

    def to_dict(self) -> dict[str, Any]:
        return {"predictor": self.predictor, "methods": self.methods, "order": self.order,
                "abstained": self.abstained, "reason": self.reason, "measured": self.measured,
                "evidence": self.evidence, "cost": self.cost.to_dict(), "exhaustive": self.exhaustive.to_dict()}


class Predictor:
    """Base of every order predictor. `races`: whether racing evaluation (--race) applies to it."""

    races: ClassVar[bool] = False

    name: ClassVar[str]
    summary: ClassVar[str]  # the rule, in one sentence
    cost_model: ClassVar[str]  # what it measures
    judges: ClassVar[str]  # which method combinations it can judge

    def check(self, stages: Sequence[Stage]) -> None:
        """Raise ConfigError when the predictor cannot judge these methods (saying what it judges)."""

    def choose(self, m: Measurements) -> tuple[list[int] | None, str, dict[str, Any]]:
        """(order as method indices, or None to abstain; the reason; evidence)."""
        raise NotImplementedError


PREDICTORS: Registry[Predictor] = Registry("order predictor")


def register_predictor(cls: type[Predictor]) -> type[Predictor]:
    PREDICTORS.add(cls.name, cls())
    return cls


def _prune_and_quant(stages: Sequence[Stage], who: str) -> tuple[int, int]:
    """Indices (pruner, quantizer) of a two-method pair, or ConfigError."""
    if len(stages) != 2:
        raise ConfigError(f"predictor {who} judges two methods (a pruner and a quantizer), got {len(stages)}")
    prune = [i for i, s in enumerate(stages) if s.config.sparsity is not None]
    quant = [i for i, s in enumerate(stages) if s.config.weight_grid is not None and s.config.sparsity is None]
    if len(prune) != 1 or len(quant) != 1:
        raise ConfigError(f"predictor {who} judges a per-layer pruner with a weight quantizer, got "
                          f"{' and '.join(s.text for s in stages)}")
    return prune[0], quant[0]


def _weaker_first(m: Measurements, indices: Sequence[int]) -> tuple[list[int] | None, str, dict[str, Any]]:
    """Progressive intensity: every method alone, the one keeping more quality first. With racing asked
    for, the singles are raced against each other and compared on the units they used."""
    if m.race_settings is not None:
        return _race_order(m, [(i,) for i in indices], lambda path: path[0], "weaker first, raced")
    singles = {i: m.single(i) for i in indices}
    evidence = {"singles": {m.names[i]: v for i, v in singles.items()}}
    values = sorted(singles.values())
    if any(math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) for a, b in zip(values, values[1:])):
        return None, "two methods alone measure the same: the weaker-first rule cannot order them", evidence
    order = sorted(indices, key=lambda i: -singles[i])
    return order, "weaker first: " + " > ".join(f"{m.names[i]} (M {singles[i]:.4g})" for i in order), evidence


def _race_order(m: Measurements, paths, index_of, what: str) -> tuple[list | None, str, dict[str, Any]]:
    """Race the models after `paths` and rank them: the winner first, then by M over the units every
    candidate evaluated (metrics over different units are never compared). Returns the ranked
    `index_of(path)` values, a reason and the race as evidence."""
    result = m.race(paths)
    n = min(result.units_used(k) for k in result.names)
    common = {k: Units(result.kind, result.values[k][:n], result.total, result.order[:n]).metric for k in result.names}
    ranked = sorted(paths, key=lambda p: (m.key(p) != result.winner, -common[m.key(p)]))
    used = {k: result.units_used(k) for k in result.names}
    evidence = {"stop": result.stop, "units_used": used, "total_units": result.total, "remaining": result.remaining,
                "confidence": result.confidence, "metric_on_common_units": common}
    most = max(used.values())
    if result.winner is not None:
        reason = f"{what}: {result.winner} won at {result.confidence:.0%} after {most} of {result.total} units"
    elif result.stop == "equivalent":
        reason = f"{what}: equivalent within {result.margin.name} after {most} of {result.total} units; leader named"
    else:
        reason = f"{what}: nothing separated before the units ran out; the full evaluation's leader"
    return [index_of(p) for p in ranked], reason, evidence


@register_predictor
class ProgressiveIntensity(Predictor):
    """003's Progressive Intensity Hypothesis as a chooser, bound-aware.

    The CER of each method is its single's metric read on the reference quantizer's curve; the curve
    is monotone, so ordering by CER is ordering by the singles' metric (a CER that is only a bound
    orders the same way, which is what bound-aware means here). Weaker (higher M) first.
    """

    name = "pih"
    races = True  # with --race, the singles are raced against each other
    summary = "measure every method alone and apply the weaker (higher M) first"
    cost_model = "n stage applications and n evaluations (the singles); no reference curve needed"
    judges = "any n >= 2 methods"

    def choose(self, m: Measurements):
        return _weaker_first(m, range(len(m.stages)))


def absorbed_fraction(weights: dict[str, torch.Tensor], prune: Stage, quant: Stage) -> float:
    """Share of the pruner's new pruning quota that lands on weights the quantizer rounds to exactly
    zero, counted at the pruner's own selection granularity (SparseGPT: per block of columns across
    all rows; Wanda: per row; magnitude: per matrix; N:M: per group of M). The quantizer's grid is
    fitted on the dense weights (RTN; for GPTQ an approximation: its error feedback moves weights
    before rounding)."""
    sparsity = prune.config.sparsity
    if getattr(prune.config, "zeros_pruned", False):
        return 0.0  # zeros count as pruned: the quota is taken on top of them
    grid = quant.config.weight_grid
    quota = absorbed = 0.0
    masks = _zero_masks(weights, grid)
    for name, w in weights.items():
        zeros = masks[name]  # (out, in)
        if sparsity.nm is not None:
            groups = zeros[:, : w.shape[1] // sparsity.nm.m * sparsity.nm.m].reshape(w.shape[0], -1, sparsity.nm.m)
            per = groups.sum(dim=2).clamp(max=sparsity.nm.n)
            quota += groups.shape[0] * groups.shape[1] * sparsity.nm.n
            absorbed += float(per.sum())
            continue
        ratio = float(sparsity.ratio)
        if prune.method == "sparsegpt":
            block = prune.config.block_size
            parts = [zeros[:, s:s + block] for s in range(0, w.shape[1], block)]
        elif prune.method == "wanda":
            parts = list(zeros)
        else:
            parts = [zeros]
        for part in parts:
            k = round(part.numel() * ratio)
            quota += k
            absorbed += min(int(part.sum()), k)
    return absorbed / quota if quota else 0.0


_ZERO_MASKS: dict[tuple[int, str], tuple[dict, dict[str, torch.Tensor]]] = {}


def _zero_masks(weights: dict[str, torch.Tensor], grid) -> dict[str, torch.Tensor]:
    """Where `grid`, fitted on each weight, rounds to exactly zero; memoized for the same weights
    (the entry holds the weights, so their id cannot be reused while it lives)."""
    key = (id(weights), repr(grid))
    if key not in _ZERO_MASKS:
        if len(_ZERO_MASKS) >= 8:
            _ZERO_MASKS.pop(next(iter(_ZERO_MASKS)))
        _ZERO_MASKS[key] = (weights, {n: grid.project_all(w, grid.fit_all(w)) == 0 for n, w in weights.items()})
    return _ZERO_MASKS[key][1]


@register_predictor
class ZeroAbsorption(Predictor):
    """Quantize-first equals the quantizer alone when the quantizer already rounded to zero at least
    the pruner's quota of weights in every selection block: every pruning criterion ranks exact
    zeros first, so the pruner then removes nothing new (the audit's zero trap). Q > P then keeps
    Q's quality and its zeros count toward the sparsity: choose Q first. Otherwise abstain."""

    name = "zeros"
    summary = "data-free: if the quantizer's exact zeros meet the pruner's quota block by block, Q first"
    cost_model = "one data-free pass over the weights (no forward pass, no evaluation)"
    judges = "a per-layer pruner (magnitude, Wanda, SparseGPT) with a weight quantizer"

    def check(self, stages):
        _prune_and_quant(stages, self.name)

    def choose(self, m: Measurements):
        p, q = _prune_and_quant(m.stages, self.name)
        fraction = absorbed_fraction(m.dense_weights(), m.stages[p], m.stages[q])
        evidence = {"absorbed_fraction": fraction}
        if fraction >= ABSORBED:
            return [q, p], (f"{m.names[q]} rounds to zero {fraction:.1%} of {m.names[p]}'s quota: quantizing first "
                            f"leaves the pruner nothing new to remove"), evidence
        return None, f"no zero absorption ({fraction:.1%} of the pruning quota is already zero)", evidence


@register_predictor
class Compensation(Predictor):
    """The stage that compensates errors goes last. SparseGPT and GPTQ update the weights they keep
    from calibration statistics, so placed last they absorb the other method's error too (SparseGPT
    after a quantizer re-fits its updates onto the recorded grid); RTN, magnitude, Wanda and the block
    formats compensate nothing. With one compensating method, it goes last; with none or both,
    abstain."""

    name = "compensation"
    summary = "structural: the one method that compensates errors (SparseGPT, GPTQ) goes last"
    cost_model = "nothing measured"
    judges = "two methods of which exactly one is SparseGPT or GPTQ"

    def check(self, stages):
        if len(stages) != 2:
            raise ConfigError(f"predictor {self.name} judges two methods, got {len(stages)}")

    def choose(self, m: Measurements):
        comp = [i for i, s in enumerate(m.stages) if s.method in COMPENSATING]
        if len(comp) != 1:
            what = "both" if len(comp) == 2 else "neither"
            return None, f"{what} of the methods compensate errors: the rule does not apply", {}
        other = 1 - comp[0]
        return [other, comp[0]], f"{m.names[comp[0]]} compensates errors, so it goes last", {}


@register_predictor
class Auto(Predictor):
    """A composite of the signals the committed sweeps showed (designed on docs/results/order and
    rotation, judged on the pre-registered hold-out): for a pruner P and a quantizer Q,

    1. zero absorption (data-free): Q first when Q's zeros meet P's quota;
    2. measure Q alone; if it collapses, abstain (collapsed orders flip under small perturbations);
    3. Q near-lossless (keeps >= 97.5% of dense quality): Q first, so that the other method is
       applied to an almost unchanged model and, when it compensates, also absorbs Q's error;
    4. otherwise measure P alone; abstain if it collapses too, else prune first (Harma et al.:
       pruning first lets the quantizer fit its grid to the weights that remain).

    Any other combination of methods falls back to the weaker-first rule on the singles.
    """

    name = "auto"
    summary = "zero absorption, then Q near-lossless -> Q first, else P first; abstain when collapsed"
    cost_model = "a data-free weight pass, then Q alone (and P alone when Q is lossy): at most 2 stage " \
                 "applications and 3 evaluations (dense, Q, P)"
    judges = "any n >= 2 methods (pruner x quantizer pairs get the composite rule, others weaker-first)"

    def choose(self, m: Measurements):
        try:
            p, q = _prune_and_quant(m.stages, self.name)
        except ConfigError:
            order, reason, evidence = _weaker_first(m, range(len(m.stages)))
            collapsed = [m.names[i] for i in range(len(m.stages)) if m.collapsed(m.single(i))]
            if collapsed:
                return None, f"{', '.join(collapsed)} alone collapse(s): orders flip under small perturbations", evidence
            return order, reason, evidence
        fraction = absorbed_fraction(m.dense_weights(), m.stages[p], m.stages[q])
        evidence: dict[str, Any] = {"absorbed_fraction": fraction}
        if fraction >= ABSORBED:
            return [q, p], f"zero absorption ({fraction:.1%} of the quota already zero): Q first", evidence
        dense, mq = m.dense(), m.single(q)
        kept_q = retained(dense, mq, m.metric_name, m.chance())
        evidence["retained"] = {m.names[q]: kept_q}
        if kept_q < COLLAPSE_RETAINED:
            return None, f"{m.names[q]} alone collapses (keeps {kept_q:.0%} of dense quality): both orders do", evidence
        if kept_q >= NEAR_LOSSLESS:
            return [q, p], f"{m.names[q]} is near-lossless (keeps {kept_q:.1%}): Q first", evidence
        mp = m.single(p)
        kept_p = retained(dense, mp, m.metric_name, m.chance())
        evidence["retained"][m.names[p]] = kept_p
        if kept_p < COLLAPSE_RETAINED:
            return None, f"{m.names[p]} alone collapses (keeps {kept_p:.0%}): both orders do", evidence
        return [p, q], f"{m.names[q]} is lossy (keeps {kept_q:.1%}): prune first so the grid fits what remains", evidence


@register_predictor
class CalibrationError(Predictor):
    """Build every order (prefixes shared) and pick the one whose composed model's last block is
    closest to the dense model's on a few calibration windows (relative output error): the
    propagated calibration error, with no evaluation on the protocol's test windows."""

    name = "calib-error"
    summary = "build every order, choose the lowest last-block calibration error against the dense model"
    cost_model = "every stage application of the exhaustive study, no evaluations; one calibration " \
                 "forward of each complete order and of the dense model on the evaluator's layer-wise windows"
    judges = "any n >= 2 methods on an evaluator with layer-wise errors, where no block is removed"

    def choose(self, m: Measurements):
        if not hasattr(m.evaluator, "layer_errors") and not m.known_errors:
            raise ConfigError("predictor calib-error needs an evaluator with layer-wise errors")
        errors = {}
        for order in m.orders():
            error = m.calibration_error(order)
            if error is None:
                return None, "layer-wise errors are undefined here (blocks were removed)", {}
            errors[order] = error
        ranked = sorted(errors, key=errors.get)
        evidence = {"last_block_error": {" > ".join(m.names[i] for i in o): e for o, e in errors.items()}}
        if math.isclose(errors[ranked[0]], errors[ranked[1]], rel_tol=1e-9):
            return None, "the orders have the same calibration error", evidence
        return list(ranked[0]), f"lowest last-block calibration error ({errors[ranked[0]]:.4g})", evidence


class KindFirst(Predictor):
    """A free baseline rule: every method of one kind before the others, nothing measured; methods of one
    kind keep the order they were given in. "prune-first" is Harma et al.'s rule (their theorem covers
    magnitude pruning with max-scaled block formats), "quant-first" its opposite. A predictor earns its
    cost only by beating these."""

    cost_model = "nothing measured"
    judges = "pruners with quantizers (at least one of each)"

    def __init__(self, kind: str, name: str, reason: str) -> None:
        self.kind, self.name, self.reason = kind, name, reason
        self.summary = f"free baseline: every {'pruner' if kind == 'prune' else 'quantizer'} first, nothing measured"

    def order(self, stages: Sequence[Stage]) -> list[int]:
        kinds = [s.kind for s in stages]
        if any(k not in ("prune", "quantize") for k in kinds) or len(set(kinds)) != 2:
            raise ConfigError(f"predictor {self.name} judges pruners with quantizers, got "
                              f"{' and '.join(s.text for s in stages)}")
        return sorted(range(len(stages)), key=lambda i: kinds[i] != self.kind)

    def check(self, stages):
        self.order(stages)

    def choose(self, m: Measurements):
        return self.order(m.stages), self.reason, {}


for _rule in (KindFirst("prune", "prune-first", "always prune first (Harma et al.)"),
              KindFirst("quantize", "quant-first", "always quantize first")):
    PREDICTORS.add(_rule.name, _rule)


@register_predictor
class Race(Predictor):
    """Build every order (prefixes shared; no singles, no reference curve) and race them on the
    protocol's units (`analysis.sequential`): evaluation stops as soon as an anytime-valid confidence
    sequence leaves one order, or the remaining orders are equivalent within the protocol's margin, or
    the units run out (a full evaluation). It always names the leader: the winner, else the order with
    the best metric over the units evaluated, and says how sure the race was."""

    name = "race"
    races = True
    summary = "build every order, race them on the protocol's units until the verdict is known"
    cost_model = "every stage application of the exhaustive study; evaluations only until the race stops " \
                 "(counted by the share of units used)"
    judges = "any n >= 2 methods"

    def choose(self, m: Measurements):
        ranked, reason, evidence = _race_order(m, m.orders(), lambda path: path, "raced orders")
        return list(ranked[0]), reason, evidence


def check_choice(predictor: str, methods: Sequence[str]) -> tuple[Predictor, list[Stage]]:
    """The predictor and parsed methods, or ConfigError/RecipeError before anything is measured."""
    rule = PREDICTORS.get(predictor)
    stages = [parse_stage(text) for text in methods]
    if len(stages) < 2 or len({s.text for s in stages}) != len(stages):
        raise ConfigError("choosing an order needs at least two distinct methods")
    rule.check(stages)
    return rule, stages


def decide(predictor: str, evaluator: Any, methods: Sequence[str], *, known: dict[str, float] | None = None,
           known_errors: dict[str, float] | None = None, known_units: dict[str, Units] | None = None,
           race: RaceSettings | None = None) -> Decision:
    """Run the predictor `predictor` on `methods` (stage strings) with `evaluator`; `known` /
    `known_errors` / `known_units` replay stored measurements (see `Measurements`); `race`: the settings
    of the racing predictor.

    Raises ConfigError (before measuring anything) for an unknown predictor, fewer than two or
    repeated methods, or methods the predictor cannot judge.
    """
    rule, stages = check_choice(predictor, methods)
    m = Measurements(evaluator, stages, known, known_errors, known_units, race)
    try:
        order, reason, evidence = rule.choose(m)
    finally:
        m.release()
    return Decision(predictor=rule.name, methods=m.names, order=None if order is None else [m.names[i] for i in order],
                    reason=reason, measured=dict(m.measured), evidence=evidence, cost=m.cost,
                    exhaustive=exhaustive_cost(len(stages)))
