"""Rows of the results store -> one `Experiment` per method pair, as pure functions (no I/O, no plots).

An experiment is every sweep row sharing (model, protocol, prune template, quant template), the
templates being the ones `crescendo sweep` expands (`sparsegpt:{r}`, `rtn:w{b}a{b}`). Rows written
without templates in `extra` get them inferred from the recipe text and the row's ratio / bits, so a
store from an older sweep still reports. Dense rows carry no template: they belong to every
experiment of their (model, protocol).

Repeated runs of one recipe are reduced in two steps: per seed the newest row wins (a rerun under a
newer package version replaces the old one), then seeds are averaged. A collapsed seed (perplexity
inf) makes the mean inf, which is what a reader should see, not a mean that hides the collapse.
Rows measure M = -perplexity (language models) or M = top-1 accuracy (classifiers); a measurement
keeps the shown value (perplexity or accuracy) and which metric it is.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..store import Row
from ..units import Units

log = logging.getLogger(__name__)

SWEEP_KINDS = ("dense", "single", "order", "multistage")
FIRST_VALUES = ("prune", "quant")
_KEY_DIGITS = 6  # ratios are rounded to this many decimals before being used as dict keys


def ratio_key(value: Any) -> float:
    """A ratio as a dict key: 0.1 + 0.2 and 0.3 must land on one cell."""
    return round(float(value), _KEY_DIGITS)


def fmt_ratio(ratio: float) -> str:
    """How `crescendo sweep` writes a ratio into a recipe (`sparsegpt:0.05`)."""
    return f"{ratio:g}"


def method_name(template: str) -> str:
    """`sparsegpt:{r}` -> `sparsegpt`: the part of a stage template before its arguments."""
    return template.split(":", 1)[0]


def templatize(stage: str, value: str, placeholder: str) -> str:
    """Replace a number in a stage text by its placeholder: (`rtn:w4a4`, "4", "{b}") -> `rtn:w{b}a{b}`.

    Only whole numbers are replaced, so the 8 of `g128` stays when bits=8.
    """
    return re.sub(rf"(?<![\d.]){re.escape(value)}(?![\d.])", placeholder, stage)


@dataclass(frozen=True)
class ExperimentKey:
    """What identifies one experiment: model, protocol, the two stage templates and the stages every
    compressed recipe starts with (`rotate` for 003's QuaRot setting; "" for none)."""

    model: str
    protocol: str
    prune: str  # stage template with {r}, e.g. "sparsegpt:{r}"
    quant: str  # stage template with {b}, e.g. "rtn:w{b}a{b}"
    prefix: str = ""

    @property
    def prune_name(self) -> str:
        return method_name(self.prune)

    @property
    def quant_name(self) -> str:
        return method_name(self.quant)

    @property
    def label(self) -> str:
        after = f", after {self.prefix}" if self.prefix else ""
        return f"{self.prune} × {self.quant}{after} on {self.model} ({self.protocol})"

    @property
    def slug(self) -> str:
        """A file-name-safe identifier, unique per experiment."""
        text = "_".join((self.model, self.protocol, self.prune, self.quant) + ((self.prefix,) if self.prefix else ()))
        return re.sub(r"[^A-Za-z0-9]+", "-", text.replace("{", "").replace("}", "")).strip("-")


PERPLEXITY = "-perplexity"


def value_label(metric_name: str) -> str:
    """What a table shows for a metric: "perplexity" (M = -perplexity) or "accuracy (%)"."""
    return "perplexity" if metric_name == PERPLEXITY else "accuracy (%)" if metric_name == "accuracy" else metric_name


def metric_text(metric_name: str) -> str:
    """How a caption names M: "M = −perplexity" or "M = top-1 accuracy (%)"."""
    return "M = −perplexity" if metric_name == PERPLEXITY else (
        "M = top-1 accuracy (%)" if metric_name == "accuracy" else f"M = {metric_name}")


@dataclass(frozen=True)
class Measurement:
    """One recipe's result, reduced over seeds."""

    value: float  # perplexity, or M itself for other metrics; mean over seeds (inf: a collapsed seed)
    seeds: tuple[int, ...]
    per_block_error: tuple[float, ...] | None = None  # by depth, mean over seeds
    per_seed: tuple[tuple[int, float], ...] = ()  # (seed, perplexity) of every seed, in seed order
    zero_fraction: float | None = None  # weights exactly zero: pruned or rounded to zero (None: not stored)
    metric_name: str = PERPLEXITY  # what M is: -perplexity (language models) or accuracy (classifiers)
    units: tuple[tuple[int, Units | None], ...] = ()  # (seed, per-unit results or None) of every seed, in seed order

    def units_of(self, seeds: Sequence[int]) -> list[Units] | None:
        """The per-unit results of `seeds`, or None when one of them has none (measured before units were kept)."""
        found = dict(self.units)
        got = [found.get(s) for s in seeds]
        return None if any(u is None for u in got) else got

    @property
    def metric(self) -> float:
        """M (higher is better), the metric every order quantity uses: -perplexity or accuracy."""
        return -self.value if self.metric_name == PERPLEXITY else self.value

    @property
    def perplexity(self) -> float:
        """The perplexity (NaN when M is not -perplexity)."""
        return self.value if self.metric_name == PERPLEXITY else math.nan


@dataclass
class Experiment:
    """Everything measured for one method pair; keys are (rounded) ratios and integer bit-widths."""

    key: ExperimentKey
    dense: Measurement | None = None
    quant: dict[int, Measurement] = field(default_factory=dict)  # bits -> Q(b) alone
    prune: dict[float, Measurement] = field(default_factory=dict)  # ratio -> P(r) alone
    orders: dict[tuple[float, int, str], Measurement] = field(default_factory=dict)  # (r, b, first)
    multistage: dict[tuple[float, int, float], Measurement] = field(default_factory=dict)  # (total, b, p2)

    @property
    def ratios(self) -> list[float]:
        return sorted({r for r, _, _ in self.orders} | set(self.prune))

    @property
    def bits(self) -> list[int]:
        return sorted({b for _, b, _ in self.orders} | set(self.quant), reverse=True)

    @property
    def metric_name(self) -> str:
        """What M is in this experiment (every row of one model and protocol measures the same)."""
        for m in [self.dense, *self.quant.values(), *self.prune.values(), *self.orders.values()]:
            if m is not None:
                return m.metric_name
        return PERPLEXITY

    def quant_curve(self) -> list[tuple[float, float]]:
        """The reference quantizer's points (C_Q = 16 / bits, M); NaN runs are left out (unknown)."""
        return [(16.0 / b, m.metric) for b, m in sorted(self.quant.items())
                if not math.isnan(m.value)]

    def multistage_points(self, total: float, bits: int) -> dict[float, Measurement]:
        """p2 -> result of P(total - p2) > Q(bits) > P(p2), endpoints included.

        The endpoints p2 = 0 (`P(total) > Q`) and p2 = total (`Q > P(total)`) are the same recipes
        as two order rows, which the sweep stores once, as order rows; they are taken from there.
        """
        points = {p2: m for (t, b, p2), m in self.multistage.items() if t == total and b == bits}
        r = ratio_key(total)
        if 0.0 not in points and (r, bits, "prune") in self.orders:
            points[0.0] = self.orders[(r, bits, "prune")]
        if r not in points and (r, bits, "quant") in self.orders:
            points[r] = self.orders[(r, bits, "quant")]
        return dict(sorted(points.items()))

    @property
    def multistage_totals(self) -> list[float]:
        return sorted({t for t, _, _ in self.multistage})


def _mean(values: Sequence[float]) -> float:
    """Mean over seeds that keeps a collapse visible: any NaN gives NaN, any inf gives that inf."""
    if any(math.isnan(v) for v in values):
        return math.nan
    infinite = {v for v in values if math.isinf(v)}
    if infinite:
        return infinite.pop() if len(infinite) == 1 else math.nan  # +inf and -inf: undefined
    return math.fsum(values) / len(values)


def _value(row: Row) -> float:
    m = row.metrics
    if m.metric_name == PERPLEXITY:
        return m.perplexity if m.perplexity is not None else math.nan
    return m.metric


def _measurement(rows: Sequence[Row]) -> Measurement:
    names = {r.metrics.metric_name for r in rows}
    if len(names) > 1:
        raise ValueError(f"rows of one recipe measure different metrics {sorted(names)}")
    ppls = [_value(r) for r in rows]
    blocks = [r.metrics.per_block_error for r in rows]
    per_block: tuple[float, ...] | None = None
    if all(b for b in blocks) and len({len(b) for b in blocks}) == 1:
        per_block = tuple(_mean([float(b[i]) for b in blocks]) for i in range(len(blocks[0])))
    zeros = [r.metrics.zero_fraction for r in rows]
    zero = _mean([float(z) for z in zeros]) if all(z is not None for z in zeros) else None
    per_seed = tuple(sorted((r.seed, p) for r, p in zip(rows, ppls)))
    units = tuple(sorted(((r.seed, r.units) for r in rows), key=lambda su: su[0]))
    return Measurement(_mean(ppls), tuple(sorted(r.seed for r in rows)), per_block_error=per_block,
                       zero_fraction=zero, per_seed=per_seed, metric_name=names.pop(), units=units)


def _split(recipe: str) -> list[str]:
    return [s.strip() for s in recipe.split(">")]


def _templates(row: Row) -> tuple[str, str]:
    """(prune template, quant template) from `extra`, else inferred from the recipe text."""
    extra = row.extra
    prune, quant = extra.get("prune"), extra.get("quant")
    if isinstance(prune, str) and isinstance(quant, str):
        return prune, quant
    if not all(t is None or isinstance(t, str) for t in (prune, quant)):  # a stored row may say anything
        raise TypeError(f"extra prune / quant must be template strings, got {prune!r} / {quant!r}")
    stages = _split(row.recipe)
    if row.kind == "single":
        p = templatize(stages[0], fmt_ratio(extra["ratio"]), "{r}") if "ratio" in extra else None
        q = templatize(stages[0], str(extra["bits"]), "{b}") if "bits" in extra else None
        return (prune or p or "?"), (quant or q or "?")
    if row.kind == "order":
        i_p = 0 if extra["first"] == "prune" else 1
        p = templatize(stages[i_p], fmt_ratio(extra["ratio"]), "{r}")
        return prune or p, quant or templatize(stages[1 - i_p], str(extra["bits"]), "{b}")
    # multistage: [P(p1) >] Q > [P(p2)]; an absent stage had ratio 0
    i_q = 1 if float(extra["p1"]) > 0 else 0
    value, stage = (extra["p1"], stages[0]) if i_q == 1 else (extra["p2"], stages[-1])
    p = templatize(stage, fmt_ratio(float(value)), "{r}")
    return prune or p, quant or templatize(stages[i_q], str(extra["bits"]), "{b}")


def _slot(row: Row) -> tuple[str, tuple[Any, ...]]:
    """Where a row goes in its experiment: ("quant", (bits,)), ("orders", (r, b, first)), ..."""
    extra = row.extra
    if row.kind == "single":
        if extra.get("method") == "quant" or ("bits" in extra and "ratio" not in extra):
            return "quant", (int(extra["bits"]),)
        return "prune", (ratio_key(extra["ratio"]),)
    if row.kind == "order":
        if extra["first"] not in FIRST_VALUES:
            raise ValueError(f"first must be one of {FIRST_VALUES}, got {extra['first']!r}")
        return "orders", (ratio_key(extra["ratio"]), int(extra["bits"]), extra["first"])
    return "multistage", (ratio_key(extra["total"]), int(extra["bits"]), ratio_key(extra["p2"]))


@dataclass(frozen=True)
class ErrorAnalysis:
    """One composed order's two error numbers, as `crescendo order --store` records them."""

    model: str
    protocol: str
    recipe: str
    interference: float | None  # 003 Definition 6: last stage in the pipeline minus alone
    excess: float | None  # Harma: composed error minus the sum of the single errors
    composed_error: float | None
    sum_single_errors: float | None


def error_analyses(rows: Iterable[Row]) -> list[ErrorAnalysis]:
    """Rows that carry an interference or orthogonality-excess figure, newest per recipe."""
    newest: dict[tuple[str, str, str], Row] = {}
    for row in sorted(rows, key=lambda r: (r.created, r.key)):
        if row.metrics.interference is not None or row.metrics.orthogonality_excess is not None:
            newest[(row.model, row.protocol, row.recipe)] = row
    return [ErrorAnalysis(m, p, recipe, r.metrics.interference, r.metrics.orthogonality_excess,
                          r.metrics.composed_error, r.metrics.sum_single_errors)
            for (m, p, recipe), r in sorted(newest.items())]


def is_superseded(row: Row) -> bool:
    """A row marked superseded (`store.mark_superseded`: a defect voided it): kept in the store with the
    reason, never reported as current."""
    return bool(row.extra.get("superseded"))


def is_order_study_row(row: Row) -> bool:
    """A row `crescendo order --store` wrote (not a sweep row, though it shares the kinds)."""
    return row.extra.get("study") == "order" and row.kind != "dense"


@dataclass(frozen=True)
class Grouping:
    """The result of `group_rows`: experiments, and the rows that could not be placed (with why)."""

    experiments: list[Experiment]
    skipped: list[str]
    seeds: tuple[int, ...]
    versions: tuple[str, ...]
    errors: list[ErrorAnalysis] = field(default_factory=list)  # order-study error numbers


def _latest_per_seed(rows: Iterable[Row]) -> dict[tuple[str, str, str], list[Row]]:
    newest: dict[tuple[str, str, str, int], Row] = {}
    for row in sorted(rows, key=lambda r: (r.created, r.key)):
        newest[(row.model, row.protocol, row.recipe, row.seed)] = row  # later rows replace earlier
    by_recipe: dict[tuple[str, str, str], list[Row]] = {}
    for (model, protocol, recipe, _), row in newest.items():
        by_recipe.setdefault((model, protocol, recipe), []).append(row)
    return by_recipe


def group_rows(rows: Iterable[Row]) -> Grouping:
    """Sweep rows (kinds dense/single/order/multistage) -> experiments, sorted by key.

    Experiments are the (prune, quant) pairs of the order and multistage rows (and of single rows
    that name both templates). Single runs attach by their own method's template alone: two sweeps
    sharing a quantizer (SparseGPT x RTN, SLEB x RTN) store `rtn:w4a4` once, under one key, and both
    experiments need it. Rows of other kinds (order studies, searches) are ignored; a sweep row whose
    `extra` lacks the fields its kind needs is skipped and named in `skipped`. Rows
    `crescendo order --store` wrote are not sweep rows: their error numbers (Definition 6,
    Harma's excess) go to `errors`, and they are neither grouped nor reported as skipped. Rows marked
    superseded are left out entirely.
    """
    rows = [r for r in rows if not is_superseded(r)]
    errors = error_analyses(rows)
    rows = [r for r in rows if r.kind in SWEEP_KINDS and not is_order_study_row(r)]
    experiments: dict[ExperimentKey, Experiment] = {}
    dense: dict[tuple[str, str], Measurement] = {}
    singles: dict[tuple[str, str, str, str, str], dict[Any, Measurement]] = {}  # (m, p, prefix, slot, tpl)
    skipped: list[str] = []
    for (model, protocol, recipe), group in _latest_per_seed(rows).items():
        first = group[0]
        measured = _measurement(group)
        if first.kind == "dense":
            dense[(model, protocol)] = measured
            continue
        try:
            prune_tpl, quant_tpl = _templates(first)
            slot, key = _slot(first)
        except (KeyError, ValueError, TypeError, IndexError) as err:
            skipped.append(f"{recipe} ({first.kind}): {type(err).__name__} {err}")
            log.warning("report: skipping row %s (%s): %s", recipe, first.kind, err)
            continue
        prefix = str(first.extra.get("prefix", ""))
        if first.kind == "single":
            own = prune_tpl if slot == "prune" else quant_tpl
            singles.setdefault((model, protocol, prefix, slot, own), {})[key[0]] = measured
            if "?" in (prune_tpl, quant_tpl):
                continue  # an inferred single names only its own method: no pair to found
        exp_key = ExperimentKey(model, protocol, prune_tpl, quant_tpl, prefix)
        experiment = experiments.setdefault(exp_key, Experiment(exp_key))
        if first.kind != "single":
            getattr(experiment, slot)[key] = measured
    for k, exp in experiments.items():
        exp.dense = dense.get((k.model, k.protocol))
        exp.prune = dict(sorted(singles.get((k.model, k.protocol, k.prefix, "prune", k.prune), {}).items()))
        exp.quant = dict(sorted(singles.get((k.model, k.protocol, k.prefix, "quant", k.quant), {}).items()))
    ordered = [experiments[k] for k in sorted(experiments, key=lambda k: (k.model, k.protocol, k.prefix,
                                                                        k.quant, k.prune))]
    return Grouping(ordered, skipped, tuple(sorted({r.seed for r in rows})),
                    tuple(sorted({r.version for r in rows})), errors)
