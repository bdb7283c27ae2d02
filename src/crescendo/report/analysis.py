"""Order quantities of one experiment: CER per pruning ratio, A(Q -> P) per cell, and whether the
Progressive Intensity Hypothesis (003, Hypothesis 1) holds. Pure functions on `Experiment`s.

Notation, as in 003: "f1 -> f2" means f1 is applied first, and
    A(f1 -> f2) = M(f2 o f1) - M(f1 o f2).
So, with M = -perplexity (language models; M = accuracy for classifiers),
    A(Q -> P) = M(quantize first, then prune) - M(prune first, then quantize)
              = M(recipe "Q > P") - M(recipe "P > Q")
              = perplexity("P > Q") - perplexity("Q > P").
A > 0: quantizing first wins. The hypothesis predicts it does exactly when quantization is the weaker
method, i.e. when C_Q < C*_P (x = C*_P - C_Q > 0), and that A grows with x. A CER that is only a
bound still decides when it lies on one side of C_Q, touching included (`cer.compare_intensity`).
How the reference curve is read (dense anchor, log-perplexity, monotone envelope) is a
`CERSettings`; a curve that is not monotone gives no CER unless the envelope is asked for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..analysis.cer import CER, CERSettings, ReferenceCurve, pih_first, reference_curve
from ..analysis.metrics import ExpFit, fit_exponential, order_advantage
from ..analysis.ranks import spearman_test
from ..analysis.uncertainty import Comparison, compare
from ..units import UnitsError
from .data import PERPLEXITY, Experiment, Measurement, value_label

DEFAULT_CER = CERSettings()


def reference_of(exp: Experiment, settings: CERSettings = DEFAULT_CER) -> tuple[ReferenceCurve | None, str | None]:
    """The experiment's quantizer curve as `settings` reads it, and a warning when it gives no
    CER or only a flagged one (not monotone, nothing measured, no dense row to anchor at)."""
    dense = exp.dense.metric if exp.dense is not None else None
    if settings.scale == "log" and exp.metric_name != PERPLEXITY:
        return None, f"a log-perplexity CER needs M = -perplexity, not {exp.metric_name}: CER undefined"
    if settings.anchor == "dense" and (dense is None or math.isnan(dense)):
        return None, "a CER anchored at dense needs a dense row, and the store has none: CER undefined"
    curve = reference_curve(exp.quant_curve(), settings, dense)
    return curve, curve.problem


def cer_label(settings: CERSettings, metric_name: str) -> str:
    """The settings' label naming the experiment's own M ("linear in accuracy (%)" for classifiers)."""
    if metric_name == PERPLEXITY:
        return settings.label
    return settings.label.replace("log-perplexity", "log-perplexity (inapplicable)").replace(
        "linear in perplexity", f"linear in {value_label(metric_name)}")


def cer_by_ratio(exp: Experiment, settings: CERSettings = DEFAULT_CER) -> dict[float, CER | None]:
    """C*_P of P(r) alone against the experiment's quantizer curve; None where it is undefined
    (no usable curve, see `reference_of`, or P(r) alone has a NaN perplexity)."""
    curve, _ = reference_of(exp, settings)
    return {ratio: None if curve is None else curve.cer(measured.metric)
            for ratio, measured in exp.prune.items()}


def _side(difference: float) -> str | None:
    return "quant" if difference > 0 else "prune" if difference < 0 else None


@dataclass(frozen=True)
class Cell:
    """One (pruning ratio, bit-width) cell with both orders measured."""

    ratio: float
    bits: int
    cer: CER | None  # C*_P of P(ratio) alone
    m_prune_first: float  # M of "P > Q" (-perplexity, or accuracy)
    m_quant_first: float  # M of "Q > P"
    advantage_spread: float | None = None  # max - min of A over calibration seeds (None: one seed)
    comparison: Comparison | None = None  # "Q > P" against "P > Q" over units and seeds (None: no units)

    @property
    def c_q(self) -> float:
        return 16.0 / self.bits

    @property
    def c_p(self) -> float:
        return 1.0 / (1.0 - self.ratio)

    @property
    def advantage(self) -> float:
        """A(Q -> P) = M(Q first) - M(P first); inf when only one order collapsed, NaN when both."""
        return order_advantage(self.m_quant_first, self.m_prune_first)

    @property
    def within_noise(self) -> bool | None:
        """|A| below its spread over calibration seeds (None: one seed measured)."""
        if self.advantage_spread is None:
            return None
        return abs(self.advantage) <= self.advantage_spread

    @property
    def verdict(self) -> str | None:
        """The paired comparison's verdict on Q first against P first; None for rows without units."""
        return None if self.comparison is None else self.comparison.verdict

    @property
    def cer_difference(self) -> float | None:
        """x = C*_P - C_Q; when C*_P is a bound, x is the same kind of bound."""
        return None if self.cer is None else self.cer.value - self.c_q

    @property
    def predicted_first(self) -> str | None:
        """The hypothesis' order: the weaker method first ("quant" iff C_Q < C*_P). A bound decides
        whenever the interval it leaves lies on one side of C_Q, touching included: "C*_P <= 2.00"
        against C_Q = 2.00 (P measured better than 8 bits) is "prune". None for an exact tie
        (C*_P == C_Q), a bound reaching across C_Q, or no CER (see `cer.pih_first`)."""
        return pih_first(self.cer, self.c_q)

    @property
    def measured_first(self) -> str | None:
        """The order that measured better: the comparison's decisive verdict ("first better" = Q first);
        None when the comparison calls the orders equivalent or undetermined, or both collapsed. Rows
        without per-unit results fall back to the sign of A (no uncertainty; tables say so)."""
        if self.comparison is not None:
            return {"first better": "quant", "second better": "prune"}.get(self.comparison.verdict)
        a = self.advantage
        return None if math.isnan(a) else _side(a)

    @property
    def agrees(self) -> bool | None:
        if self.predicted_first is None or self.measured_first is None:
            return None
        return self.predicted_first == self.measured_first


def cells(exp: Experiment, settings: CERSettings = DEFAULT_CER) -> list[Cell]:
    """Every cell with both orders measured, by ratio then bits (high to low)."""
    cers = cer_by_ratio(exp, settings)
    found = {(r, b) for r, b, _ in exp.orders}
    out = []
    for r, b in sorted(found, key=lambda rb: (rb[0], -rb[1])):
        pf, qf = exp.orders.get((r, b, "prune")), exp.orders.get((r, b, "quant"))
        if pf is not None and qf is not None:
            out.append(Cell(r, b, cers.get(r), pf.metric, qf.metric, seed_spread(pf, qf),
                            paired(qf, pf, "Q > P", "P > Q")))
    return out


def paired(first: Measurement, second: Measurement, a: str = "first", b: str = "second") -> Comparison | None:
    """M(first) - M(second) over the seeds both measured, with its interval and verdict; None when a seed
    lacks per-unit results or the units cannot be paired."""
    seeds = sorted(set(first.seeds) & set(second.seeds))
    ua, ub = first.units_of(seeds), second.units_of(seeds)
    if not seeds or ua is None or ub is None:
        return None
    try:
        return compare(ua, ub, labels=(a, b))
    except UnitsError:
        return None


def seed_spread(prune_first, quant_first) -> float | None:
    """Spread (max - min) over the seeds both orders share of A(Q -> P) (the per-seed values are
    perplexities or accuracies; the spread of their difference is A's either way); None with fewer
    than two common seeds."""
    pf, qf = dict(prune_first.per_seed), dict(quant_first.per_seed)
    values = [pf[s] - qf[s] for s in sorted(set(pf) & set(qf))]
    if len(values) < 2 or not all(math.isfinite(v) for v in values):
        return None
    return max(values) - min(values)


@dataclass(frozen=True)
class Correlation:
    """Spearman's rho of A(Q -> P) against x = C*_P - C_Q and its two-sided p-value, with the
    method that gave it (exact permutation distribution up to 9 points, t approximation above);
    rho is None below 3 points or when one side is constant."""

    label: str
    n: int
    rho: float | None
    pvalue: float | None
    method: str = "-"


def spearman(label: str, xs: list[float], ys: list[float]) -> Correlation:
    """Spearman rank correlation with an exact p-value for small n (see `analysis.ranks`)."""
    test = spearman_test(xs, ys)
    return Correlation(label, test.n, test.rho, test.pvalue, test.method)


def _finite(c: Cell) -> bool:
    return c.cer_difference is not None and math.isfinite(c.advantage) and \
        math.isfinite(c.cer_difference)


def _xy(use: list[Cell]) -> tuple[list[float], list[float]]:
    """(x = C*_P - C_Q, A) of cells that passed `_finite`."""
    return [float(c.cer_difference or 0.0) for c in use], [c.advantage for c in use]


@dataclass(frozen=True)
class Summary:
    """Does the Progressive Intensity Hypothesis hold in one experiment?"""

    per_ratio: list[Correlation]
    pooled: Correlation
    agree: int  # cells whose predicted order is the measured better one
    decided: int  # cells where both the prediction and the measurement name an order
    total: int  # cells with both orders measured

    @property
    def agreement(self) -> float | None:
        return self.agree / self.decided if self.decided else None

    @property
    def verdict(self) -> str:
        """"supported" when A rises with x in most ratios and the predicted order is right in at
        least half the decided cells, "not supported" when neither, "mixed" otherwise."""
        rhos = [c.rho for c in self.per_ratio if c.rho is not None]
        if not rhos and self.agreement is None:
            return "insufficient data"
        rising = bool(rhos) and sum(rho > 0 for rho in rhos) > len(rhos) / 2
        ordered = self.agreement is not None and self.agreement >= 0.5
        if rising and ordered:
            return "supported"
        return "mixed" if rising or ordered else "not supported"


def summarize(all_cells: list[Cell]) -> Summary:
    """Per-ratio and pooled Spearman of A against x, and the share of correctly predicted orders.

    Within one ratio every cell shares C*_P, so a CER bound shifts all its x by one unknown constant
    and leaves the ranks, hence rho, unchanged: bound ratios count per ratio. Pooled over ratios the
    shifts differ, so the pooled rho uses exact CERs only. Non-finite A (a collapsed order) is left
    out of both: its rank would be real, but inf - inf is not.
    """
    per_ratio = []
    for ratio in sorted({c.ratio for c in all_cells}):
        use = [c for c in all_cells if c.ratio == ratio and _finite(c)]
        per_ratio.append(spearman(f"p = {ratio:g}", *_xy(use)))
    exact = [c for c in all_cells if _finite(c) and c.cer is not None and c.cer.is_exact]
    pooled = spearman("all ratios (exact CER only)", *_xy(exact))
    decided = [c for c in all_cells if c.agrees is not None]
    return Summary(per_ratio, pooled, sum(bool(c.agrees) for c in decided), len(decided),
                   len(all_cells))


def fit_by_ratio(all_cells: list[Cell]) -> dict[float, ExpFit]:
    """One y = a exp(b x) + c fit of A against x per pruning ratio (Figure 3), on finite points."""
    fits = {}
    for ratio in sorted({c.ratio for c in all_cells}):
        use = [c for c in all_cells if c.ratio == ratio and _finite(c)]
        if len(use) >= 2:
            xs, ys = _xy(use)
            fits[ratio] = fit_exponential(np.array(xs), np.array(ys))
    return fits


def multistage_series(exp: Experiment, total: float) -> dict[int, list[tuple[float, float, float]]]:
    """bits -> [(p2, value, A)] for P(total - p2) > Q(bits) > P(p2), by p2 (Figure 7); value is the
    perplexity (or accuracy) as measured.

    A is relative to p2 = 0 (all pruning before the quantizer): M(p2) - M(0), so A > 0 says that
    moving pruning after the quantizer helped. NaN where p2 = 0 was not measured.
    """
    return {bits: [(p2, value, a) for p2, value, a, _ in points]
            for bits, points in multistage_comparisons(exp, total).items()}


def multistage_comparisons(exp: Experiment, total: float) -> dict[int, list[tuple[float, float, float,
                                                                                     Comparison | None]]]:
    """As `multistage_series`, each point with the comparison of M(p2) against M(p2 = 0) (None: no units)."""
    out: dict[int, list[tuple[float, float, float, Comparison | None]]] = {}
    for bits in sorted({b for t, b, _ in exp.multistage if t == total}, reverse=True):
        points = exp.multistage_points(total, bits)
        base = points.get(0.0)
        series = []
        for p2, measured in points.items():
            a = order_advantage(measured.metric, base.metric) if base is not None else math.nan
            c = paired(measured, base, f"p2={p2:g}", "p2=0") if base is not None and p2 != 0.0 else None
            series.append((p2, measured.value, a, c))
        out[bits] = series
    return out
