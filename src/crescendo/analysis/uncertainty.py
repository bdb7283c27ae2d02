"""How large a difference between two runs could be by chance, and the verdict it supports.

`compare(first, second)` takes the per-unit results (`crescendo.units.Units`) of two runs under one
protocol, one `Units` per calibration seed on each side, and returns the difference in the protocol's
metric, A = M(first) - M(second), with a 95% interval and a verdict.

The interval. On the common units i (those both runs evaluated) and seeds s = 1..S, let
d_si = the paired difference of unit values, oriented so that d > 0 favours `first`:
  - perplexity: d_si = loss_second,si - loss_first,si, the log-ratio scale (mean d = log(ppl_2 / ppl_1));
  - accuracy: d_si = 100 * (correct_first,si - correct_second,si), in accuracy points.
The estimate is D = mean_s D_s with D_s = mean_i d_si. Its variance has two parts:
  - V_eval: evaluation sampling, the variance of mean_i (mean_s d_si) under a paired bootstrap that
    resamples units (jointly across seeds and both runs; B replicates, seeded);
  - V_seed = max(0, var_s(D_s) / S - MS_res / (n S)): seed-to-seed variation beyond what the unit-by-seed
    noise already explains, MS_res being the residual mean square of the S x n table of d_si
    (two-way layout without replication). 0 with one seed.
The 95% interval is D +- sqrt(t_{n-1}^2 V_eval + t_{S-1}^2 V_seed) (t quantiles at 0.975): each part is
scaled by the t quantile of its own degrees of freedom, so one seed's interval is D +- t_{n-1} se_boot and
two seeds (one degree of freedom between them) widen it by t_1 = 12.7 on the seed part alone. On
synthetic data with known variance components this covers the true difference 93.6-96.8% of the time
(1-5 seeds, 16-64 units; `tests/analysis/test_uncertainty.py`), where the Welch-Satterthwaite interval
falls to 87% with two seeds.

For perplexity, the verdict is read on the log-ratio scale and the interval is converted to perplexity
points as A = P_1 (exp(D) - 1), P_1 being the first run's perplexity (exp of its mean loss over the
common units and seeds): the same verdict, in the units the tables print. For accuracy, an exact McNemar
test per seed (discordant pairs, two-sided binomial) is reported beside the interval.

The verdict, with margin delta (the protocol's; 0.5% of perplexity, i.e. |D| < log 1.005, or 0.1
accuracy points): "equivalent" when the interval lies inside (-delta, +delta); else "first better" when it
lies above 0, "second better" when below; else "undetermined". Equivalence is checked first: a difference
that is real but smaller than the margin is not a finding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from ..units import Units, UnitsError

VERDICTS = ("first better", "second better", "equivalent", "undetermined")
DECISIVE = ("first better", "second better")
DEFAULT_BOOTSTRAP = 2000


@dataclass(frozen=True)
class Margin:
    """The practical margin delta inside which two runs are called equivalent.

    relative=True: a fraction of perplexity (0.005 = 0.5%), compared on the log-ratio scale as
    log(1 + value); relative=False: points of the metric itself (accuracy points)."""

    value: float
    relative: bool

    def __post_init__(self) -> None:
        if isinstance(self.value, bool) or not isinstance(self.value, (int, float)) or not math.isfinite(self.value) \
                or self.value < 0:
            raise UnitsError(f"the equivalence margin must be a finite number >= 0, got {self.value!r}")
        if self.relative and self.value >= 1:
            raise UnitsError(f"a relative margin is a fraction of perplexity below 1, got {self.value!r}")

    @property
    def on_scale(self) -> float:
        """delta on the comparison scale (log-ratio for a relative margin)."""
        return math.log1p(self.value) if self.relative else float(self.value)

    @property
    def name(self) -> str:
        return f"{100 * self.value:g}% of perplexity" if self.relative else f"{self.value:g} accuracy points"


PERPLEXITY_MARGIN = Margin(0.005, relative=True)
ACCURACY_MARGIN = Margin(0.1, relative=False)


def default_margin(kind: str) -> Margin:
    """The margin of a unit kind's metric when the protocol names none."""
    return PERPLEXITY_MARGIN if kind == "window-loss" else ACCURACY_MARGIN


def check_confidence(confidence: float) -> float:
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0.5 < confidence < 1:
        raise UnitsError(f"the confidence level must lie in (0.5, 1), got {confidence!r}")
    return float(confidence)


@dataclass(frozen=True)
class Comparison:
    """A = M(first) - M(second) with its interval and verdict (see the module docstring)."""

    first: str
    second: str
    metric_name: str  # "-perplexity" or "accuracy"
    difference: float  # A, in metric units (perplexity points or accuracy points)
    interval: tuple[float, float]  # A's interval at `confidence`
    scale: str  # "log-ratio" (perplexity) or "accuracy points"
    scale_difference: float  # D on the comparison scale
    scale_interval: tuple[float, float]
    verdict: str
    confidence: float
    margin: Margin
    n_units: int  # common units compared
    n_seeds: int
    total_units: int  # units the protocol defines
    method: str
    mcnemar_p: tuple[float, ...] | None = None  # accuracy: per seed
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def decisive(self) -> bool:
        return self.verdict in DECISIVE

    def to_dict(self) -> dict:
        return {"first": self.first, "second": self.second, "metric": self.metric_name, "difference": self.difference,
                "interval": list(self.interval), "scale": self.scale, "scale_difference": self.scale_difference,
                "scale_interval": list(self.scale_interval), "verdict": self.verdict, "confidence": self.confidence,
                "margin": self.margin.name, "n_units": self.n_units, "n_seeds": self.n_seeds,
                "total_units": self.total_units, "method": self.method,
                "mcnemar_p": None if self.mcnemar_p is None else list(self.mcnemar_p), "notes": list(self.notes)}

    def reversed(self) -> Comparison:
        """The same comparison with `first` and `second` swapped (A and its interval negated)."""
        flip = {"first better": "second better", "second better": "first better"}
        return replace(self, first=self.second, second=self.first, difference=-self.difference,
                       interval=(-self.interval[1], -self.interval[0]), scale_difference=-self.scale_difference,
                       scale_interval=(-self.scale_interval[1], -self.scale_interval[0]),
                       verdict=flip.get(self.verdict, self.verdict),
                       mcnemar_p=self.mcnemar_p)

    def text(self, digits: int = 3) -> str:
        """`+9.008 [+7.1, +10.9], first better` (A in metric units)."""
        lo, hi = self.interval
        return f"{self.difference:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}], {self.verdict}"


def verdict(lo: float, hi: float, delta: float) -> str:
    """The verdict of an interval [lo, hi] on the comparison scale with margin delta."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "undetermined"
    if delta > 0 and -delta < lo and hi < delta:
        return "equivalent"
    if lo > 0:
        return "first better"
    if hi < 0:
        return "second better"
    return "undetermined"


def _as_seeds(side: Units | Sequence[Units], what: str) -> list[Units]:
    seeds = [side] if isinstance(side, Units) else list(side)
    if not seeds or not all(isinstance(u, Units) for u in seeds):
        raise UnitsError(f"{what}: no per-unit results to compare (rows measured before units were kept have none)")
    return seeds


def paired_table(first: Sequence[Units], second: Sequence[Units]) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """(common unit ids, first values (S, n), second values (S, n), kind) over the units every run evaluated."""
    runs = list(first) + list(second)
    kinds = {u.kind for u in runs}
    if len(kinds) != 1:
        raise UnitsError(f"cannot compare units of different kinds: {', '.join(sorted(kinds))}")
    totals = {u.total for u in runs}
    if len(totals) != 1:
        raise UnitsError(f"cannot compare unit sets of different protocols ({', '.join(map(str, sorted(totals)))} "
                         "units)")
    common = runs[0].index
    for u in runs[1:]:
        common = np.intersect1d(common, u.index)
    if common.size < 2:
        raise UnitsError(f"the runs share {common.size} evaluated unit(s); a comparison needs at least 2")
    a = np.stack([u.subset(common).values for u in first])
    b = np.stack([u.subset(common).values for u in second])
    return common, a, b, kinds.pop()


def _bootstrap_variance(x: np.ndarray, n_boot: int, rng: np.random.Generator) -> float:
    """Variance of the mean of x under resampling its entries with replacement (B replicates). Few
    distinct values (correctness differences) are resampled exactly as category counts."""
    n = x.size
    values, counts = np.unique(x, return_counts=True)
    if values.size <= 64:
        means = rng.multinomial(n, counts / n, size=n_boot) @ values / n
    else:
        means = np.empty(n_boot)
        chunk = max(1, (1 << 22) // n)
        for start in range(0, n_boot, chunk):
            stop = min(n_boot, start + chunk)
            means[start:stop] = x[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    return float(means.var(ddof=1))


def interval(d: np.ndarray, confidence: float = 0.95, n_boot: int = DEFAULT_BOOTSTRAP,
             seed: int = 0) -> tuple[float, float, float, str]:
    """(estimate, lo, hi, method) for the mean of the paired differences d (S seeds x n units)."""
    from scipy import stats

    d = np.atleast_2d(np.asarray(d, dtype=np.float64))
    s, n = d.shape
    if n < 2:
        raise UnitsError("an interval needs at least 2 units")
    if not np.isfinite(d).all():
        return math.nan, -math.inf, math.inf, "non-finite unit values: no interval"
    q = 0.5 + confidence / 2
    v_eval = _bootstrap_variance(d.mean(axis=0), n_boot, np.random.default_rng(seed))
    per_seed = d.mean(axis=1)
    half_sq = stats.t.ppf(q, n - 1) ** 2 * v_eval
    method = f"paired bootstrap over {n} units (B={n_boot}, seed {seed}), t_{n - 1} x its standard error"
    if s > 1:
        resid = d - d.mean(axis=0, keepdims=True) - per_seed[:, None] + d.mean()
        ms_res = float((resid ** 2).sum() / ((n - 1) * (s - 1)))
        v_seed = max(0.0, float(per_seed.var(ddof=1)) / s - ms_res / (n * s))
        half_sq += stats.t.ppf(q, s - 1) ** 2 * v_seed
        method += f", plus seed-to-seed variation over {s} seeds (t_{s - 1})"
    estimate = float(per_seed.mean())
    half = math.sqrt(half_sq)
    return estimate, estimate - half, estimate + half, method


def mcnemar_p(first: np.ndarray, second: np.ndarray) -> float:
    """Exact two-sided McNemar test of paired 0/1 outcomes: binomial test of the discordant pairs."""
    from scipy import stats

    b = int(((first == 1) & (second == 0)).sum())
    c = int(((first == 0) & (second == 1)).sum())
    if b + c == 0:
        return 1.0
    return float(min(1.0, 2 * stats.binom.cdf(min(b, c), b + c, 0.5)))


def compare(first: Units | Sequence[Units], second: Units | Sequence[Units], *, margin: Margin | None = None,
            confidence: float = 0.95, labels: tuple[str, str] = ("first", "second"),
            n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0) -> Comparison:
    """A = M(first) - M(second) on the units both evaluated, its interval and verdict.

    `first` / `second`: one Units per calibration seed (paired by position: seed k of one side with seed
    k of the other). Raises UnitsError for runs of different unit kinds or protocols, unequal seed
    counts, or fewer than two common units; comparing a raced run with a full one uses their common
    units only, and the result's notes say so.

    >>> a = Units("correct", [1, 1, 0, 1] * 50, total=200)
    >>> b = Units("correct", [1, 0, 0, 1] * 50, total=200)
    >>> compare(a, b).verdict
    'first better'
    """
    confidence = check_confidence(confidence)
    first_s, second_s = _as_seeds(first, labels[0]), _as_seeds(second, labels[1])
    if len(first_s) != len(second_s):
        raise UnitsError(f"{labels[0]} has {len(first_s)} seeds, {labels[1]} {len(second_s)}: seeds are compared in "
                         "pairs")
    common, a, b, kind = paired_table(first_s, second_s)
    margin = margin or default_margin(kind)
    if kind == "window-loss":
        if not margin.relative:
            raise UnitsError("a perplexity comparison needs a relative margin (a fraction of perplexity)")
        d, scale, metric_name = b - a, "log-ratio", "-perplexity"
    else:
        if margin.relative:
            raise UnitsError("an accuracy comparison needs a margin in accuracy points")
        d, scale, metric_name = 100.0 * (a - b), "accuracy points", "accuracy"
    est, lo, hi, method = interval(d, confidence, n_boot, seed)
    call = verdict(lo, hi, margin.on_scale)
    notes = []
    total = first_s[0].total
    if any(not u.full for u in first_s + second_s):
        notes.append(f"common units only: {common.size} of the protocol's {total}")
    if kind == "window-loss":
        p1 = math.exp(float(a.mean()))
        convert = (lambda x: p1 * math.expm1(x) if math.isfinite(x) else x)  # noqa: E731
        difference, span = convert(est), (convert(lo), convert(hi))
        mcn = None
    else:
        difference, span = est, (lo, hi)
        mcn = tuple(mcnemar_p(a[k], b[k]) for k in range(a.shape[0]))
    return Comparison(first=labels[0], second=labels[1], metric_name=metric_name, difference=difference,
                      interval=span, scale=scale, scale_difference=est, scale_interval=(lo, hi), verdict=call,
                      confidence=confidence, margin=margin, n_units=int(common.size), n_seeds=a.shape[0],
                      total_units=total, method=method, mcnemar_p=mcn, notes=tuple(notes))


def base_protocol(protocol_id: str) -> str:
    """A protocol id without its racing label: raced rows compare with full rows of the same protocol."""
    return protocol_id.split("+race", 1)[0]


def compare_rows(first, second, *, margin: Margin | None = None, confidence: float = 0.95,
                 n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0) -> Comparison:
    """Compare two stored rows (or lists of rows, one per calibration seed, paired by seed) of one model
    under one protocol, on the units both evaluated. Raises UnitsError for rows of different models or
    protocols (a raced row and a full row of the same protocol compare on their common units, and the
    comparison's notes say so), of different seeds, or without per-unit results."""
    firsts = list(first) if isinstance(first, (list, tuple)) else [first]
    seconds = list(second) if isinstance(second, (list, tuple)) else [second]
    rows = firsts + seconds
    models = {r.model for r in rows}
    protocols = {base_protocol(r.protocol) for r in rows}
    if len(models) != 1:
        raise UnitsError(f"cannot compare rows of different models: {', '.join(sorted(models))}")
    if len(protocols) != 1:
        raise UnitsError(f"cannot compare rows of different protocols: {', '.join(sorted(protocols))}")
    if [r.seed for r in firsts] != [r.seed for r in seconds]:
        raise UnitsError("rows are compared seed by seed: give the same calibration seeds on both sides")
    missing = [r.recipe for r in rows if r.units is None]
    if missing:
        raise UnitsError(f"row {missing[0]!r} has no per-unit results (measured before they were kept): no interval")
    return compare([r.units for r in firsts], [r.units for r in seconds], margin=margin, confidence=confidence,
                   labels=(firsts[0].recipe, seconds[0].recipe), n_boot=n_boot, seed=seed)
