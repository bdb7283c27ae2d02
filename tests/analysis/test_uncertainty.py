"""Per-unit results, paired comparisons with intervals, verdicts; coverage on synthetic data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from crescendo.analysis.uncertainty import (
    ACCURACY_MARGIN,
    Margin,
    compare,
    interval,
    mcnemar_p,
    verdict,
)
from crescendo.units import Units, UnitsError


def test_units_round_trip_and_metric():
    losses = Units("window-loss", [3.0, 3.5, 2.5], total=8, index=[5, 0, 7])
    back = Units.decode(*losses.encode())
    assert back.values.tolist() == [3.0, 3.5, 2.5] and back.index.tolist() == [5, 0, 7] and back.total == 8
    assert back.metric == pytest.approx(-math.exp(3.0))
    correct = Units("correct", [1, 0, 1, 1, 0, 0, 0, 1, 1], total=9)
    kind, total, ids, blob = correct.encode()
    assert ids is None and len(blob) == 2  # 9 bits in 2 bytes, unit ids implicit
    again = Units.decode(kind, total, ids, blob, n=9)
    assert again.values.tolist() == correct.values.tolist() and again.full
    assert again.metric == pytest.approx(100 * 5 / 9)


@pytest.mark.parametrize("build", [
    lambda: Units("nosuch", [1.0], total=1),
    lambda: Units("correct", [0.5], total=1),
    lambda: Units("window-loss", [1.0, 2.0], total=1),
    lambda: Units("window-loss", [1.0, 2.0], total=4, index=[1, 1]),
    lambda: Units("window-loss", [1.0], total=4, index=[4]),
    lambda: Units.decode("correct", 9, None, b"\x00", n=9),
    lambda: Units.decode("window-loss", 4, None, b"\x00" * 7),
])
def test_bad_units_are_refused(build):
    with pytest.raises(UnitsError):
        build()


def test_subset_keeps_ids():
    u = Units("window-loss", [1.0, 2.0, 3.0], total=3)
    assert u.subset([2, 0]).values.tolist() == [3.0, 1.0]
    with pytest.raises(UnitsError, match="not evaluated"):
        Units("window-loss", [1.0], total=3).subset([1])


def test_verdicts():
    assert verdict(0.1, 0.3, 0.05) == "first better"
    assert verdict(-0.3, -0.1, 0.05) == "second better"
    assert verdict(-0.01, 0.02, 0.05) == "equivalent"  # real or not, inside the margin
    assert verdict(0.01, 0.02, 0.05) == "equivalent"
    assert verdict(-0.1, 0.2, 0.05) == "undetermined"
    assert verdict(0.01, 0.02, 0.0) == "first better"


def test_perplexity_comparison_converts_the_log_ratio():
    rng = np.random.default_rng(0)
    base = rng.normal(3.0, 0.3, 64)
    a = Units("window-loss", base, total=64)
    b = Units("window-loss", base + 0.1 + rng.normal(0, 0.01, 64), total=64)
    c = compare(a, b, labels=("P > Q", "Q > P"))
    ppl_a, ppl_b = math.exp(base.mean()), math.exp(b.values.mean())
    assert c.difference == pytest.approx(ppl_b - ppl_a)  # A = M(first) - M(second) = ppl_2 - ppl_1
    assert c.interval[0] < c.difference < c.interval[1]
    assert c.verdict == "first better" and c.decisive and c.metric_name == "-perplexity"
    reverse = compare(b, a)
    assert reverse.verdict == "second better" and reverse.difference < 0
    same = compare(a, Units("window-loss", base + rng.normal(0, 1e-4, 64), total=64))
    assert same.verdict == "equivalent"


def test_accuracy_comparison_with_mcnemar():
    a = Units("correct", [1] * 900 + [0] * 100, total=1000)
    b = Units("correct", [1] * 850 + [0] * 150, total=1000)
    c = compare(a, b)
    assert c.difference == pytest.approx(5.0) and c.verdict == "first better"
    assert c.mcnemar_p[0] < 1e-10  # 50 discordant pairs, all one way
    assert mcnemar_p(np.array([1, 0]), np.array([0, 1])) == 1.0
    tiny = compare(Units("correct", [1] * 5 + [0] * 9995, total=10000), Units("correct", [0] * 10000, total=10000))
    assert tiny.verdict != "first better"  # 0.05 points: inside the 0.1-point margin's reach, never decisive


def test_raced_against_full_uses_common_units_and_says_so():
    full = Units("window-loss", np.linspace(2, 4, 16), total=16)
    raced = Units("window-loss", np.linspace(2, 4, 16)[[3, 1, 9, 12]] + 0.5, total=16, index=[3, 1, 9, 12])
    c = compare(full, raced)
    assert c.n_units == 4 and any("common units only" in n for n in c.notes)


@pytest.mark.parametrize("first, second, match", [
    (Units("window-loss", [1.0, 2.0], total=2), Units("correct", [1, 0], total=2), "different kinds"),
    (Units("window-loss", [1.0, 2.0], total=2), Units("window-loss", [1.0, 2.0], total=3), "different protocols"),
    (Units("window-loss", [1.0, 2.0], total=4), Units("window-loss", [1.0, 2.0], total=4, index=[2, 3]), "share 0"),
    ([Units("window-loss", [1.0, 2.0], total=2)] * 2, Units("window-loss", [1.0, 2.0], total=2), "seeds"),
    ([], Units("window-loss", [1.0, 2.0], total=2), "no per-unit results"),
])
def test_incomparable_runs_are_refused(first, second, match):
    with pytest.raises(UnitsError, match=match):
        compare(first, second)


@pytest.mark.parametrize("bad", [0.5, 1.0, 1.5, float("nan")])
def test_confidence_out_of_range(bad):
    u = Units("window-loss", [1.0, 2.0], total=2)
    with pytest.raises(UnitsError, match="confidence"):
        compare(u, u, confidence=bad)


@pytest.mark.parametrize("value", [-0.1, float("inf"), float("nan")])
def test_bad_margin(value):
    with pytest.raises(UnitsError, match="margin"):
        Margin(value, relative=False)


def test_margins_match_the_metric():
    u = Units("window-loss", [1.0, 2.0], total=2)
    with pytest.raises(UnitsError, match="relative margin"):
        compare(u, u, margin=ACCURACY_MARGIN)


def _coverage(n_units: int, seeds: int, seed_sd: float, draws: int, rng) -> float:
    """Share of draws whose 95% interval covers the true mean difference 0.3 of the model
    d_si = 0.3 + u_i + v_s + e_si (u ~ N(0, 1) per unit, v ~ N(0, seed_sd) per seed, e ~ N(0, 0.5))."""
    hits = 0
    for k in range(draws):
        u = rng.normal(0, 1, n_units)
        v = rng.normal(0, seed_sd, seeds)
        e = rng.normal(0, 0.5, (seeds, n_units))
        d = 0.3 + u[None, :] + v[:, None] + e
        _, lo, hi, _ = interval(d, n_boot=300, seed=k)
        hits += lo <= 0.3 <= hi
    return hits / draws


@pytest.mark.parametrize("n_units, seeds, seed_sd", [(64, 1, 0.0), (16, 1, 0.0), (64, 2, 0.3), (64, 3, 1.0)])
def test_interval_coverage_on_synthetic_data(n_units, seeds, seed_sd):
    coverage = _coverage(n_units, seeds, seed_sd, draws=1500, rng=np.random.default_rng(n_units * 10 + seeds))
    assert 0.93 <= coverage <= 0.97, coverage


def test_seed_variation_widens_the_interval():
    rng = np.random.default_rng(1)
    u = rng.normal(0, 1, 64)
    quiet = 0.3 + u[None, :] + rng.normal(0, 0.01, (2, 64))
    noisy = quiet + np.array([[-0.5], [0.5]])  # the seeds disagree by a whole unit
    _, lo_q, hi_q, _ = interval(quiet)
    _, lo_n, hi_n, method = interval(noisy)
    assert hi_n - lo_n > 5 * (hi_q - lo_q) and "2 seeds" in method


def test_rows_compare_only_within_one_model_and_protocol():
    from crescendo.analysis.uncertainty import compare_rows
    from crescendo.store import Row, RunMetrics

    def row(recipe, protocol="p", model="m", seed=0, units=True, shift=0.0):
        u = Units("window-loss", np.linspace(2, 4, 16) + shift, total=16) if units else None
        return Row.create(model, protocol, recipe, seed, "0.1.0", "run", RunMetrics.from_perplexity(10.0), units=u)

    assert compare_rows(row("a"), row("b", shift=0.2)).verdict == "first better"
    assert compare_rows(row("a"), row("b", protocol="p+race[r4]", shift=0.2)).verdict == "first better"
    for other, match in ((row("b", model="n"), "different models"), (row("b", protocol="q"), "different protocols"),
                         (row("b", units=False), "no per-unit results"), (row("b", seed=1), "seed by seed")):
        with pytest.raises(UnitsError, match=match):
            compare_rows(row("a"), other)
