"""Racing evaluation: early stops, ties, the error rate under no difference, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest

from crescendo.analysis.sequential import confidence_sequence, race, unit_order
from crescendo.analysis.uncertainty import Margin
from crescendo.units import UnitsError


def _table(values: dict[str, np.ndarray]):
    calls = []

    def values_of(name, ids):
        calls.append((name, len(ids)))
        return values[name][ids]

    return values_of, calls


def test_a_clear_winner_stops_early():
    rng = np.random.default_rng(0)
    a = rng.normal(3.0, 0.3, 64)
    values_of, _ = _table({"a": a, "b": a + 0.1 + rng.normal(0, 0.02, 64)})
    r = race(values_of, ["a", "b"], 64, kind="window-loss", round_size=4)
    assert r.stop == "one remains" and r.winner == "a"
    assert r.units_used("a") <= 16 and r.dropped["b"]["by"] == "a"
    assert r.ids("a").tolist() == unit_order(64, 0)[: r.units_used("a")].tolist()  # one fixed, seeded order


def test_identical_candidates_are_equivalent():
    a = np.random.default_rng(1).normal(3.0, 0.3, 64)
    values_of, _ = _table({"a": a, "b": a.copy()})
    r = race(values_of, ["a", "b"], 64, kind="window-loss")
    assert r.stop == "equivalent" and r.winner is None and r.units_used("a") < 64


def test_a_near_tie_runs_out_of_units():
    rng = np.random.default_rng(2)
    a = rng.normal(3.0, 0.3, 64)
    values_of, _ = _table({"a": a, "b": a + 0.006 + rng.normal(0, 0.03, 64)})
    r = race(values_of, ["a", "b"], 64, kind="window-loss")
    assert r.stop == "units exhausted" and r.units_used("a") == r.units_used("b") == 64


def test_three_candidates_drop_the_worst_first():
    rng = np.random.default_rng(3)
    n = 2000
    base = (rng.random(n) < 0.85).astype(float)
    flip = lambda p: np.where(rng.random(n) < p, 1 - base, base)  # noqa: E731
    good, mid, bad = base, flip(0.02), flip(0.3)
    values_of, calls = _table({"good": good, "mid": mid, "bad": bad})
    r = race(values_of, ["good", "mid", "bad"], n, kind="correct", round_size=100)
    assert "bad" in r.dropped and r.units_used("bad") < r.units_used("good")
    assert sum(k for name, k in calls if name == "bad") == r.units_used("bad")  # no unit evaluated twice


def test_error_rate_when_there_is_no_difference():
    """Two candidates drawn from the same distribution: a race may name a winner at most about
    1 - confidence of the time."""
    rng = np.random.default_rng(4)
    winners = 0
    for k in range(300):
        a = rng.normal(3.0, 0.3, 64)
        values_of, _ = _table({"a": a, "b": a + rng.normal(0, 0.03, 64)})
        winners += race(values_of, ["a", "b"], 64, kind="window-loss", seed=k).winner is not None
    assert winners / 300 <= 0.06


def test_bounded_sequence_is_honest_without_discordant_units():
    lo, hi = confidence_sequence(np.zeros(250), alpha=0.05, t_star=2500, bounded=True)
    assert lo < -0.01 and hi > 0.01  # 250 agreeing images do not prove equivalence within 0.1 points
    assert confidence_sequence(np.zeros(1), 0.05, 16, bounded=False) == (-np.inf, np.inf)
    lo, hi = confidence_sequence(np.array([0.1, 0.12, 0.11]), 0.05, 16, bounded=False)
    assert lo < 0.1 < 0.12 < hi  # three units of a Gaussian: wide, never a point


@pytest.mark.parametrize("kwargs, match", [
    ({"confidence": 1.2}, "confidence"),
    ({"confidence": 0.5}, "confidence"),
    ({"round_size": 1}, "at least 2 units"),
    ({"round_size": 128}, "at least one round"),
    ({"margin": Margin(0.1, relative=False)}, "relative margin"),
])
def test_bad_races_are_refused(kwargs, match):
    values_of, _ = _table({"a": np.zeros(64), "b": np.zeros(64)})
    with pytest.raises(UnitsError, match=match):
        race(values_of, ["a", "b"], 64, kind="window-loss", **kwargs)


def test_negative_or_infinite_margin_is_refused():
    with pytest.raises(UnitsError, match="margin"):
        Margin(-0.01, relative=True)
    with pytest.raises(UnitsError, match="margin"):
        Margin(float("inf"), relative=False)
