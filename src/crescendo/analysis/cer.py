"""The compression equivalent ratio (003, Definition 3) and the Progressive-Intensity call made from it.

A CER maps a method's metric onto the reference quantizer's curve of (C_Q = 16 / bits, M) points.
Three choices shape that curve, all named in every report through `CERSettings.label`:

- anchor: "none" (default, 003's setting) uses the measured quantizer points only; "dense" adds the
  dense model as the point (C = 1, M(dense)), so a method better than the highest bit-width gets a
  value in [1, C_max-bits] instead of the bound "<= C".
- scale: "linear" (default, 003) interpolates M linearly between points; "log" interpolates
  log-perplexity (M = -perplexity must then be negative), which follows a curve spanning decades
  (22 -> 8,400 -> 2.5 M) far better than straight lines do.
- envelope: a reference curve should fall as C grows; one that rises somewhere (a higher ratio
  measured better, e.g. 8-bit RTN a hair better than dense) is *not monotone*. By default its CERs
  are undefined (`ReferenceCurve.cer` gives None and `ReferenceCurve.problem` says why) and
  `compression_equivalent_ratio` raises `NonMonotoneCurve`. With envelope=True the CER is read off
  the monotone envelope, the running minimum of M in C (each point taken as no better than any
  lower ratio), and the curve is still flagged.

Hypothesis 1 as a call: the weaker method (smaller CER) first. CERs outside the measured curve are
bounds; `compare_intensity` decides whenever the intervals they leave do not overlap, including
when they only touch (see there), and says None when they overlap.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from ..errors import ConfigError

Bound = Literal["exact", "lower", "upper"]
Anchor = Literal["none", "dense"]
Scale = Literal["linear", "log"]


@dataclass(frozen=True)
class CER:
    """A compression equivalent ratio (Definition 3), possibly only a bound.

    bound="exact": CER == value. bound="upper": CER <= value (the method beats every measured
    quantizer point; value is the smallest measured ratio). bound="lower": CER >= value (the method is
    worse than every measured point; value is the largest measured ratio). Bounds are strict in what
    was measured: "<= v" means the method measured strictly better than the quantizer at v.
    """

    value: float
    bound: Bound = "exact"

    def __post_init__(self) -> None:
        if self.bound not in ("exact", "lower", "upper"):
            raise ValueError(f"CER bound must be 'exact', 'lower' or 'upper', got {self.bound!r}")

    @property
    def is_exact(self) -> bool:
        return self.bound == "exact"

    def __str__(self) -> str:
        prefix = {"exact": "", "upper": "<= ", "lower": ">= "}[self.bound]
        return f"{prefix}{self.value:.2f}"


class NonMonotoneCurve(ValueError):
    """The reference curve rises somewhere: a higher compression ratio measured a better M."""

    def __init__(self, violations: Sequence[tuple[float, float]]) -> None:
        self.violations = tuple(violations)
        spans = ", ".join(f"{a:.2f} to {b:.2f}" for a, b in self.violations)
        super().__init__(f"the reference curve is not monotone: M rises from C = {spans}")


@dataclass(frozen=True)
class CERSettings:
    """How the reference curve is built and read (see the module docstring). The defaults are
    003's: measured points only, linear in M, a non-monotone curve gives no CER."""

    anchor: Anchor = "none"  # "dense": add (C = 1, M(dense)) to the curve
    scale: Scale = "linear"  # "log": interpolate log-perplexity instead of perplexity
    envelope: bool = False  # read a non-monotone curve off its monotone envelope

    def __post_init__(self) -> None:
        if self.anchor not in ("none", "dense"):
            raise ConfigError(f"CER anchor must be 'none' or 'dense', got {self.anchor!r}")
        if self.scale not in ("linear", "log"):
            raise ConfigError(f"CER scale must be 'linear' or 'log', got {self.scale!r}")

    @property
    def label(self) -> str:
        """e.g. "CER: linear in log-perplexity, anchored at dense (C = 1)"."""
        scale = "perplexity" if self.scale == "linear" else "log-perplexity"
        anchor = "anchored at dense (C = 1)" if self.anchor == "dense" else "not anchored"
        envelope = "; monotone envelope if the curve is not monotone" if self.envelope else ""
        return f"CER: linear in {scale}, {anchor}{envelope}"


def monotone_violations(curve: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """(C_a, C_b) for each pair of neighbouring points where M rises with C (flat is fine)."""
    points = sorted((float(r), float(m)) for r, m in curve)
    return [(r0, r1) for (r0, m0), (r1, m1) in zip(points, points[1:]) if m1 > m0]


def monotone_envelope(curve: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The running minimum of M in C: the largest non-increasing curve below every point."""
    out, worst = [], math.inf
    for r, m in sorted((float(r), float(m)) for r, m in curve):
        worst = min(worst, m)
        out.append((r, worst))
    return out


def _transform(scale: Scale):
    if scale == "linear":
        return lambda m: m

    def log_perplexity(m: float) -> float:  # M = -ppl -> -log(ppl): still higher is better
        if not m < 0:
            raise ValueError(f"a log-perplexity CER needs M = -perplexity < 0, got M = {m}")
        return -math.log(-m)

    return log_perplexity


def compression_equivalent_ratio(metric: float, curve: Sequence[tuple[float, float]], *,
                                 scale: Scale = "linear", envelope: bool = False) -> CER:
    """Definition 3: the quantization ratio C' at which the reference quantizer matches `metric`.

    `curve` holds the reference quantizer's measured points (C_Q = 16 / bits, M), plus the dense
    anchor (1, M(dense)) when the caller wants one. Between points the curve is interpolated linearly
    in M (003, Section 3.2: with the quantizer at 70% for C=2 and 60% for C=4, a method at 65% has
    CER 3), or in log-perplexity with scale="log". Outside the measured range nothing is
    extrapolated: a metric better than every point gives an upper bound at the smallest ratio, one
    worse than every point a lower bound at the largest (see `CER`). A crossing into a non-finite
    point (a collapsed quantizer, M = -inf) is only known to lie inside the segment, so it is
    reported as a bound at the finite end. On a flat stretch the smallest ratio is returned.

    Raises NonMonotoneCurve when M rises with C somewhere, unless envelope=True (then the running
    minimum is used); ValueError on an empty curve, NaN values, non-positive or duplicate ratios
    (aggregate seeds before calling), or a non-negative M with scale="log".

    >>> str(compression_equivalent_ratio(0.65, [(2.0, 0.70), (4.0, 0.60)]))
    '3.00'
    """
    target = float(metric)
    if math.isnan(target):
        raise ValueError("CER of a NaN metric is undefined")
    points = sorted((float(r), float(m)) for r, m in curve)
    if not points:
        raise ValueError("CER needs at least one measured point of the reference quantizer")
    ratios = [r for r, _ in points]
    if any(not math.isfinite(r) or r <= 0 for r in ratios):
        raise ValueError(f"compression ratios must be finite and positive, got {ratios}")
    if len(set(ratios)) != len(ratios):
        raise ValueError(f"duplicate compression ratios in the quantizer curve: {ratios}")
    if any(math.isnan(m) for _, m in points):
        raise ValueError("the quantizer curve contains a NaN metric")
    violations = monotone_violations(points)
    if violations and not envelope:
        raise NonMonotoneCurve(violations)
    if violations:
        points = monotone_envelope(points)
    t = _transform(scale)
    target, points = t(target), [(r, t(m)) for r, m in points]
    values = [m for _, m in points]

    if target > max(values):
        return CER(ratios[0], "upper")
    if target < min(values):
        return CER(ratios[-1], "lower")
    for i, (r, m) in enumerate(points):
        if m == target:
            # An exact hit on a collapsed point (-inf == -inf) only says "at least this ratio".
            return CER(r, "exact" if math.isfinite(m) else "lower")
        if i + 1 == len(points):
            break
        r_next, m_next = points[i + 1]
        if min(m, m_next) < target < max(m, m_next):
            if math.isfinite(m) and math.isfinite(m_next):
                return CER(r + (target - m) * (r_next - r) / (m_next - m), "exact")
            if math.isfinite(m):
                return CER(r, "lower")
            if math.isfinite(m_next):
                return CER(r_next, "upper")
            return CER(r, "lower")
    raise AssertionError("unreachable: a target within [min, max] crosses a piecewise-linear curve")


@dataclass(frozen=True)
class ReferenceCurve:
    """A reference quantizer curve as the CER will read it: points (anchor included), the settings,
    and whether it is monotone. `cer` is None wherever the curve may not be used."""

    points: tuple[tuple[float, float], ...]  # (C, M), sorted by C, the dense anchor included
    settings: CERSettings
    violations: tuple[tuple[float, float], ...]  # neighbouring ratios where M rises

    @property
    def monotone(self) -> bool:
        return not self.violations

    @property
    def usable(self) -> bool:
        return bool(self.points) and (self.monotone or self.settings.envelope)

    @property
    def problem(self) -> str | None:
        """A warning line for output and reports; None for a monotone, non-empty curve."""
        if not self.points:
            return "no reference quantizer point was measured: CER undefined"
        if self.monotone:
            return None
        spans = ", ".join(f"{a:.2f} to {b:.2f}" for a, b in self.violations)
        what = f"the reference curve is not monotone (M rises from C = {spans})"
        if self.settings.envelope:
            return f"{what}: CERs are read off its monotone envelope (running minimum of M)"
        return f"{what}: CER undefined (--cer-envelope reads it off the monotone envelope)"

    def cer(self, metric: float) -> CER | None:
        if not self.usable or math.isnan(metric):
            return None
        return compression_equivalent_ratio(metric, self.points, scale=self.settings.scale,
                                            envelope=self.settings.envelope)


def reference_curve(points: Sequence[tuple[float, float]], settings: CERSettings = CERSettings(),
                    dense: float | None = None) -> ReferenceCurve:
    """The curve `settings` asks for from measured (C_Q, M) points and the dense metric.

    Raises ConfigError when anchor="dense" and no dense metric is given.
    """
    pts = [(float(r), float(m)) for r, m in points if not math.isnan(float(m))]
    if settings.anchor == "dense":
        if dense is None or math.isnan(dense):
            raise ConfigError("a CER anchored at dense needs the dense model's metric")
        pts.append((1.0, float(dense)))
    pts.sort()
    return ReferenceCurve(tuple(pts), settings, tuple(monotone_violations(pts)))


def _interval(c: CER) -> tuple[float, float, bool, bool]:
    """(low, high, low strict, high strict) of the CERs a bound allows."""
    if c.bound == "exact":
        return c.value, c.value, False, False
    if c.bound == "upper":
        return -math.inf, c.value, False, True
    return c.value, math.inf, True, False


def compare_intensity(a: CER, b: CER) -> int | None:
    """-1 if a is the weaker method (smaller CER), 1 if the stronger, 0 for an exact tie, None
    when their bounds leave it open.

    Tie convention: two exact, equal CERs are a tie (equal intensity; the hypothesis names no
    order). A bound that only touches the other value still decides, because bounds are strict:
    "C*_P <= 2.00" against C_Q = 2.00 says P measured strictly better than the quantizer at 2.00, so
    P is the weaker. Two bounds on the same side (both "<= 2.00") carry no information. One corner
    is not strict: a collapsed method (M = -inf) against a collapsed last quantizer point gives
    ">= v" with equality possible; it is counted as the stronger (both orders collapse there too).
    """
    a_lo, a_hi, a_lo_strict, a_hi_strict = _interval(a)
    b_lo, b_hi, b_lo_strict, b_hi_strict = _interval(b)
    if a.is_exact and b.is_exact and a.value == b.value:
        return 0
    if a_hi < b_lo or (a_hi == b_lo and (a_hi_strict or b_lo_strict)):
        return -1
    if b_hi < a_lo or (b_hi == a_lo and (b_hi_strict or a_lo_strict)):
        return 1
    return None


def pih_first(cer_p: CER | None, c_q: float) -> Literal["quant", "prune"] | None:
    """Hypothesis 1 for a pruning method P against the reference quantizer at C_Q: the weaker first.

    "quant" when P is the stronger (C*_P > C_Q), "prune" when P is the weaker (C*_P < C_Q, or a
    bound "<= C_Q"), None for an exact tie, a missing CER, or a bound on the far side of C_Q (see
    `compare_intensity` for the tie convention).
    """
    if cer_p is None:
        return None
    side = compare_intensity(cer_p, CER(float(c_q)))
    return {1: "quant", -1: "prune"}.get(side) if side is not None else None


def progressive_intensity_order(cers: Mapping[str, CER]) -> list[str]:
    """Hypothesis 1 as an order chooser: method names sorted weakest (smallest CER) to strongest.

    Bounds compare by value; at equal values "CER <= v" sorts before "CER == v" before "CER >= v",
    which is the only order consistent with what each bound says. Pairs the bounds leave open (and
    exact ties) are ordered by name so the result is deterministic; `predicted_order` names them.
    """
    rank = {"upper": 0, "exact": 1, "lower": 2}
    return sorted(cers, key=lambda name: (cers[name].value, rank[cers[name].bound], name))


def predicted_order(cers: Mapping[str, CER]) -> tuple[list[str], list[tuple[str, str]]]:
    """The weakest-first order and the pairs (in that order) whose relative order the CERs leave
    open (overlapping bounds) or call a tie: the hypothesis makes no call on those."""
    order = progressive_intensity_order(cers)
    open_pairs = [(a, b) for i, a in enumerate(order) for b in order[i + 1:]
                  if compare_intensity(cers[a], cers[b]) in (None, 0)]
    return order, open_pairs
