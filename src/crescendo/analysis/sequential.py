"""Racing evaluation: spend a protocol's units only until the verdict is known.

Candidates (compressed models) are evaluated on the protocol's units in one fixed, seeded order
(a permutation of the unit ids), `round_size` units per round, every remaining candidate on the same
units. After each round, every pair of remaining candidates gets an anytime-valid confidence sequence
on the mean of their paired unit differences (log-loss differences for perplexity, correctness
differences for accuracy), read as a full comparison's interval would be (`uncertainty.verdict`): a
candidate is dropped as soon as some other candidate is better with the sequence's confidence, and a
pair whose sequence lies inside the equivalence margin is equivalent, never a drop. The race stops when one candidate remains, when every remaining pair lies
inside the equivalence margin (+-delta), or when the units run out: then every remaining candidate has
been evaluated in full and the verdict is the full evaluation's (`uncertainty.compare`).

Two anytime-valid confidence sequences, one per kind of unit:
- window losses (no bound; paired log-loss differences are close to Gaussian): Lai's t confidence
  sequence (T. L. Lai, "On confidence sequences", Annals of Statistics 1976; see also Wang and Ramdas,
  "Anytime-valid t-tests and confidence sequences for Gaussian means with unknown variance", 2023). The
  Bayes factor of mu = mu0 + theta sigma, theta ~ N(0, 1/c), against mu = mu0, with the scale-invariant
  prior d sigma / sigma on both sides, is sqrt(c / (t + c)) (Q0 / Q1)^(t/2) with Q0 = S + t (m - mu0)^2,
  Q1 = S + t c / (t + c) (m - mu0)^2, S the sum of squared deviations; it is a test martingale for the
  scale-invariant filtration, so by Ville's inequality {mu0 : BF_t < 1 / alpha} covers mu at every t at
  once. Solved for mu0: m +- sqrt(S / t * (K - 1) / (1 - K c / (t + c))), K = (sqrt((t + c) / c) / alpha)^(2/t)
  (everything when the denominator is <= 0). c = 0.1: effects of a few standard deviations, the size of
  an order advantage worth racing, are found soonest.
- correctness differences (bounded in [-1, 1], mostly 0): the Gaussian-mixture asymptotic confidence
  sequence of Waudby-Smith, Arbour, Sinha, Kennedy and Ramdas ("Time-uniform central limit theory and
  asymptotic confidence sequences", Annals of Statistics 2024, Theorem 2.2),
  m_t +- s_t sqrt(2 (t rho^2 + 1) / (t^2 rho^2) log(sqrt(t rho^2 + 1) / alpha)),
  rho^2 = (-2 log alpha + log(-2 log alpha + 1)) / t_star (tightest near t_star, a quarter of the units),
  with s_t^2 regularised as (1 + sum (d - m)^2) / (t + 1) (a [-1, 1] variable's variance is at most 1), so
  that a first round without a single discordant image cannot look certain.
Each pair's sequence is intersected with its earlier rounds', and alpha = (1 - confidence) / (number of
pairs) (Bonferroni over the pairs of the initial candidates), so the whole race errs with probability at
most 1 - confidence. Units are drawn without replacement from a finite set, which only shrinks the
variance of the running mean; `benchmarks/racing.py` replays races on stored full evaluations and
reports how often a raced verdict disagrees with the full one.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..units import UnitsError
from .uncertainty import Margin, check_confidence, default_margin, verdict

STOP_REASONS = ("one remains", "equivalent", "units exhausted")
LAI_C = 0.1  # prior precision of the standardised effect in Lai's t sequence (prior sd 1 / sqrt(c) = 3.2)


def unit_order(total: int, seed: int) -> np.ndarray:
    """The fixed evaluation order of a race: a seeded permutation of the unit ids 0..total-1."""
    return np.random.default_rng(seed).permutation(total)


def mixture_rho2(alpha: float, t_star: float) -> float:
    """rho^2 of the Gaussian mixture, tightest near t_star units."""
    return (-2 * math.log(alpha) + math.log(-2 * math.log(alpha) + 1)) / max(t_star, 1.0)


def t_sequence(d: np.ndarray, alpha: float, c: float = LAI_C) -> tuple[float, float]:
    """Lai's t confidence sequence for the mean of Gaussian d (unknown variance) at t = len(d)."""
    t = d.size
    if t < 2:
        return -math.inf, math.inf
    mean = float(d.mean())
    spread = float(((d - mean) ** 2).sum())
    k = (math.sqrt((t + c) / c) / alpha) ** (2 / t)
    denominator = 1 - k * c / (t + c)
    if denominator <= 0:
        return -math.inf, math.inf
    radius = math.sqrt(spread / t * (k - 1) / denominator)
    return mean - radius, mean + radius


def bounded_sequence(d: np.ndarray, alpha: float, t_star: float) -> tuple[float, float]:
    """The asymptotic confidence sequence for the mean of d in [-1, 1] at t = len(d), variance regularised."""
    t = d.size
    mean = float(d.mean())
    var = (1.0 + float(((d - mean) ** 2).sum())) / (t + 1)
    rho2 = mixture_rho2(alpha, t_star)
    radius = math.sqrt(var * 2 * (t * rho2 + 1) / (t * t * rho2) * math.log(math.sqrt(t * rho2 + 1) / alpha))
    return mean - radius, mean + radius


def confidence_sequence(d: np.ndarray, alpha: float, t_star: float, bounded: bool) -> tuple[float, float]:
    """The confidence sequence of a race for the mean of d (all units so far, in race order)."""
    return bounded_sequence(d, alpha, t_star) if bounded else t_sequence(d, alpha)


@dataclass
class RaceResult:
    """What a race measured and decided. `values[name]` holds the unit values in race order."""

    names: list[str]
    kind: str
    total: int
    order: np.ndarray  # unit ids in the order they were evaluated
    values: dict[str, np.ndarray]
    remaining: list[str]
    dropped: dict[str, dict]  # name -> {"after_units": t, "by": other}
    stop: str  # one of STOP_REASONS
    rounds: int
    confidence: float
    margin: Margin
    sequences: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)  # pair -> CS at the stop

    def units_used(self, name: str) -> int:
        return int(self.values[name].size)

    @property
    def winner(self) -> str | None:
        return self.remaining[0] if len(self.remaining) == 1 else None

    def ids(self, name: str) -> np.ndarray:
        return self.order[: self.units_used(name)]

    def to_dict(self) -> dict:
        return {"candidates": self.names, "remaining": self.remaining, "winner": self.winner, "stop": self.stop,
                "rounds": self.rounds, "confidence": self.confidence, "margin": self.margin.name,
                "units_used": {n: self.units_used(n) for n in self.names}, "total_units": self.total,
                "dropped": self.dropped,
                "sequences": {f"{a} - {b}": list(v) for (a, b), v in self.sequences.items()}}


def check_race(total: int, round_size: int, confidence: float, margin: Margin | None) -> None:
    """Refuse a race that cannot run: bad confidence or margin, a round larger than the units."""
    check_confidence(confidence)
    if margin is not None and not isinstance(margin, Margin):
        raise UnitsError(f"the margin must be a Margin, got {type(margin).__name__}")
    if isinstance(round_size, bool) or not isinstance(round_size, int) or round_size < 2:
        raise UnitsError(f"a racing round needs at least 2 units, got {round_size!r}")
    if total < round_size:
        raise UnitsError(f"racing needs at least one round: the protocol has {total} units, a round {round_size}")


def race(values_of: Callable[[str, np.ndarray], np.ndarray], names: Sequence[str], total: int, *, kind: str,
         margin: Margin | None = None, confidence: float = 0.95, round_size: int = 4, seed: int = 0,
         t_star: float | None = None) -> RaceResult:
    """Race `names` on a protocol of `total` units. `values_of(name, ids)` evaluates one candidate on the unit
    ids given (in that order) and returns their values (window losses or 0/1 correctness).

    Higher M wins: lower loss, more correct. Raises UnitsError for a bad confidence, margin or round size.
    """
    check_race(total, round_size, confidence, margin)
    names = list(dict.fromkeys(names))
    if len(names) < 2:
        raise UnitsError("a race needs at least two candidates")
    margin = margin or default_margin(kind)
    if kind == "window-loss" and not margin.relative:
        raise UnitsError("a perplexity race needs a relative margin (a fraction of perplexity)")
    delta = margin.on_scale / (1.0 if kind == "window-loss" else 100.0)  # correctness differences are fractions
    order = unit_order(total, seed)
    pairs = list(itertools.combinations(names, 2))
    alpha = (1 - confidence) / len(pairs)
    t_star = t_star if t_star is not None else max(round_size, total / 4)
    bounded = kind == "correct"
    values = {n: np.empty(0) for n in names}
    remaining = list(names)
    dropped: dict[str, dict] = {}
    seqs: dict[tuple[str, str], tuple[float, float]] = {}
    used, rounds, stop = 0, 0, "units exhausted"
    while used < total:
        ids = order[used:used + round_size]
        for n in remaining:
            got = np.asarray(values_of(n, ids), dtype=np.float64).reshape(-1)
            if got.size != ids.size:
                raise UnitsError(f"candidate {n}: {got.size} values for {ids.size} units")
            values[n] = np.concatenate([values[n], got])
        used += ids.size
        rounds += 1
        if used >= total:
            break
        worse: dict[str, str] = {}
        for a, b in itertools.combinations(remaining, 2):
            # d > 0 favours a: a lower loss, or a right where b is wrong
            d = values[b] - values[a] if kind == "window-loss" else values[a] - values[b]
            lo, hi = confidence_sequence(d, alpha, t_star, bounded)
            if (a, b) in seqs:
                lo, hi = max(lo, seqs[(a, b)][0]), min(hi, seqs[(a, b)][1])
            seqs[(a, b)] = (lo, hi)
            call = verdict(lo, hi, delta)  # the verdict of a full comparison, read on the sequence
            if call == "first better":
                worse.setdefault(b, a)
            elif call == "second better":
                worse.setdefault(a, b)
        for n, by in worse.items():
            dropped[n] = {"after_units": used, "by": by}
        remaining = [n for n in remaining if n not in worse]
        if len(remaining) == 1:
            stop = "one remains"
            break
        if delta > 0 and all(-delta < seqs[p][0] and seqs[p][1] < delta
                             for p in itertools.combinations(remaining, 2)):
            stop = "equivalent"
            break
    # pairs keep the orientation of `names`
    shown = {p: seqs[p] for p in pairs if p in seqs}
    return RaceResult(names=names, kind=kind, total=total, order=order, values=values, remaining=remaining,
                      dropped=dropped, stop=stop, rounds=rounds, confidence=confidence, margin=margin,
                      sequences=shown)


@dataclass(frozen=True)
class RaceSettings:
    """How a race runs: its confidence, units per round (None: a sixteenth of the protocol's units, at
    least 2), the seed of its unit order and the equivalence margin (None: the protocol's)."""

    confidence: float = 0.95
    round_size: int | None = None
    seed: int = 0
    margin: Margin | None = None

    def __post_init__(self) -> None:
        check_confidence(self.confidence)
        if self.round_size is not None and (isinstance(self.round_size, bool) or not isinstance(self.round_size, int)
                                            or self.round_size < 2):
            raise UnitsError(f"a racing round needs at least 2 units, got {self.round_size!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise UnitsError(f"the racing seed must be an integer >= 0, got {self.seed!r}")
        if self.margin is not None and not isinstance(self.margin, Margin):
            raise UnitsError(f"the racing margin must be a Margin, got {type(self.margin).__name__}")

    def rounds_of(self, total: int) -> int:
        """Units per round for a protocol of `total` units."""
        return self.round_size if self.round_size is not None else max(2, total // 16)

    def check(self, total: int) -> None:
        """Refuse, before anything is measured, a race the protocol's units cannot hold."""
        check_race(total, self.rounds_of(total), self.confidence, self.margin)

    def label(self) -> str:
        """What a raced row's protocol id carries: `+race` with any non-default setting."""
        parts = [f"c{self.confidence:g}"] if self.confidence != 0.95 else []
        parts += [f"r{self.round_size}"] if self.round_size is not None else []
        parts += [f"s{self.seed}"] if self.seed else []
        parts += [f"d{self.margin.value:g}"] if self.margin is not None else []
        return "+race" + (f"[{','.join(parts)}]" if parts else "")


def race_models(evaluator, models: dict, settings: RaceSettings) -> tuple[RaceResult, dict]:
    """Race the models {name: model} on `evaluator` (its `evaluation(model, units)`, `n_units`,
    `unit_kind` and `margin`); returns the race and each candidate's Evaluation over the units it used."""
    from ..units import Evaluation, Units

    total, kind = evaluator.n_units, evaluator.unit_kind
    settings.check(total)
    seconds: dict[str, float] = {name: 0.0 for name in models}

    def values_of(name: str, ids: np.ndarray) -> np.ndarray:
        found = evaluator.evaluation(models[name], [int(i) for i in ids])
        seconds[name] += found.seconds
        return found.units.values

    result = race(values_of, list(models), total, kind=kind, margin=settings.margin or evaluator.margin,
                  confidence=settings.confidence, round_size=settings.rounds_of(total), seed=settings.seed)
    evaluations = {}
    for name in models:
        units = Units(kind, result.values[name], total, result.ids(name))
        evaluations[name] = Evaluation(units.metric, units, seconds[name])
    return result, evaluations


def race_comparison(result: RaceResult, first: str, second: str):
    """The comparison of two raced candidates: from the full evaluation when both ran out of units, else
    from their pair's confidence sequence at the stop (converted to metric units)."""
    from ..units import Units
    from .uncertainty import Comparison, compare

    used_a, used_b = result.units_used(first), result.units_used(second)
    units_a = Units(result.kind, result.values[first], result.total, result.ids(first))
    units_b = Units(result.kind, result.values[second], result.total, result.ids(second))
    if used_a == used_b == result.total:
        return compare(units_a, units_b, margin=result.margin, confidence=result.confidence, labels=(first, second))
    if (first, second) in result.sequences:
        lo, hi = result.sequences[(first, second)]
    elif (second, first) in result.sequences:
        lo, hi = (-result.sequences[(second, first)][1], -result.sequences[(second, first)][0])
    else:
        lo, hi = -math.inf, math.inf
    n = min(used_a, used_b)
    if result.kind == "window-loss":
        p1 = math.exp(float(result.values[first][:n].mean()))
        d = float((result.values[second][:n] - result.values[first][:n]).mean())
        convert = (lambda x: p1 * math.expm1(x) if math.isfinite(x) else x)  # noqa: E731
        scale, metric, est, span = "log-ratio", "-perplexity", d, (lo, hi)
        difference, interval = convert(d), (convert(lo), convert(hi))
    else:
        est = 100.0 * float((result.values[first][:n] - result.values[second][:n]).mean())
        scale, metric, span = "accuracy points", "accuracy", (100 * lo, 100 * hi)
        difference, interval = est, span
    call = verdict(span[0], span[1], result.margin.on_scale)
    notes = [f"raced: {used_a} and {used_b} of {result.total} units"]
    method = (f"racing ({'Lai t' if result.kind == 'window-loss' else 'asymptotic'} confidence sequence, "
              f"{result.confidence:g} over {len(result.names) * (len(result.names) - 1) // 2} pair(s), stop: "
              f"{result.stop})")
    return Comparison(first=first, second=second, metric_name=metric, difference=difference, interval=interval,
                      scale=scale, scale_difference=est, scale_interval=span, verdict=call,
                      confidence=result.confidence, margin=result.margin, n_units=n, n_seeds=1,
                      total_units=result.total, method=method, notes=tuple(notes))
