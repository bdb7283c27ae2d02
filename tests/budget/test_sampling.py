"""Invariants and distributions of the ratio samplers (crescendo.budget.sampling, seed 004 Alg. 1)."""

from collections import Counter

import numpy as np
import pytest
from scipy.stats import chisquare

from crescendo.budget.sampling import naive_uniform_ratios, uniform_sum_ratios
from crescendo.errors import ConfigError

# seed 004, App. 6.1: Swin-Tiny has 6 blocks, ratios <= 0.8, sum of ratios in [0.6, 4.2]
N, UPPER, SUM_RANGE = 6, 0.8, (0.6, 4.2)
S_GRID = list(range(6, 43))  # the 37 admissible sums in units of 0.1
DRAWS = 3000


def units(ratios: list[float], resolution: float = 0.1) -> list[int]:
    """Ratios in integer units of the resolution, checking that each one is an exact grid point."""
    out = []
    for r in ratios:
        k = round(r / resolution)
        assert r == round(k * resolution, 10), f"{r} is not a multiple of {resolution}"
        out.append(k)
    return out


@pytest.fixture(scope="module")
def uniform_sum_samples() -> list[list[float]]:
    rng = np.random.default_rng(1234)
    return [uniform_sum_ratios(N, SUM_RANGE, UPPER, rng) for _ in range(DRAWS)]


def test_uniform_sum_invariants(uniform_sum_samples):
    for ratios in uniform_sum_samples:
        assert len(ratios) == N
        k = units(ratios)
        assert all(0 <= x <= 8 for x in k)
        assert 6 <= sum(k) <= 42
        assert sum(ratios) == pytest.approx(sum(k) / 10, abs=1e-9)


def test_uniform_sum_target_sums_are_uniform(uniform_sum_samples):
    counts = Counter(sum(units(r)) for r in uniform_sum_samples)
    observed = [counts[s] for s in S_GRID]
    assert sum(observed) == DRAWS  # no sum outside the range
    assert chisquare(observed).pvalue > 1e-3  # expected: DRAWS / 37 in every bin


def test_naive_sums_are_not_uniform():
    rng = np.random.default_rng(1234)
    sums: list[int] = []
    while len(sums) < DRAWS:
        ratios = naive_uniform_ratios(N, UPPER, rng)
        k = units(ratios)
        assert all(0 <= x <= 8 for x in k)
        if 6 <= sum(k) <= 42:  # condition on the same range, then apply the same test
            sums.append(sum(k))
    counts = Counter(sums)
    assert chisquare([counts[s] for s in S_GRID]).pvalue < 1e-6


def test_naive_covers_grid_uniformly():
    rng = np.random.default_rng(7)
    counts = Counter(k for _ in range(500) for k in units(naive_uniform_ratios(N, UPPER, rng)))
    assert sorted(counts) == list(range(9))
    assert chisquare([counts[k] for k in range(9)]).pvalue > 1e-3


def test_two_blocks_exact_distribution():
    # n = 2, sum fixed at 1.0 (S = 10), U = 8: Dirichlet(1) gives r_0 ~ Uniform(0, 10), accepted when
    # r_0 in [2, 8]. Largest-remainder rounding of (r_0, 10 - r_0) rounds r_0 to the nearest integer,
    # so P(k) = 0.5/6 for k = 2 and 8 and 1/6 for k = 3..7.
    rng = np.random.default_rng(99)
    first = Counter(units(uniform_sum_ratios(2, (1.0, 1.0), 0.8, rng))[0] for _ in range(DRAWS))
    assert sorted(first) == list(range(2, 9))
    expected = np.array([0.5, 1, 1, 1, 1, 1, 0.5]) / 6 * DRAWS
    assert chisquare([first[k] for k in range(2, 9)], expected).pvalue > 1e-3


def test_deterministic_given_seed():
    a = [uniform_sum_ratios(N, SUM_RANGE, UPPER, np.random.default_rng(5)) for _ in range(3)]
    b = [uniform_sum_ratios(N, SUM_RANGE, UPPER, np.random.default_rng(5)) for _ in range(3)]
    assert a == b
    assert naive_uniform_ratios(N, UPPER, np.random.default_rng(5)) == naive_uniform_ratios(
        N, UPPER, np.random.default_rng(5)
    )


def test_edge_cases():
    rng = np.random.default_rng(0)
    assert uniform_sum_ratios(N, (4.8, 4.8), UPPER, rng) == [0.8] * N  # S = n * U: one feasible point
    assert uniform_sum_ratios(N, (0.0, 0.0), UPPER, rng) == [0.0] * N
    assert uniform_sum_ratios(1, (0.3, 0.3), UPPER, rng) == [0.3]
    # bounds off the grid move inwards: [0.65, 0.95] -> sums 0.7, 0.8 or 0.9
    for _ in range(50):
        assert sum(units(uniform_sum_ratios(N, (0.65, 0.95), UPPER, rng))) in (7, 8, 9)


def test_other_resolution_and_alpha():
    rng = np.random.default_rng(3)
    for _ in range(200):
        ratios = uniform_sum_ratios(4, (0.5, 2.0), 0.75, rng, alpha=0.5, resolution=0.05)
        k = units(ratios, 0.05)
        assert all(0 <= x <= 15 for x in k) and 10 <= sum(k) <= 40


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(n=0),
        dict(n=2.5),
        dict(sum_range=(2.0, 1.0)),
        dict(sum_range=(-0.1, 1.0)),
        dict(sum_range=(0.6, 4.9)),  # above n * upper = 4.8
        dict(sum_range=(0.61, 0.69)),  # no grid point inside
        dict(upper=1.5),
        dict(upper=-0.1),
        dict(alpha=0.0),
        dict(resolution=0.0),
        dict(max_tries=0),
    ],
)
def test_uniform_sum_validation(kwargs):
    args = {**dict(n=N, sum_range=SUM_RANGE, upper=UPPER, rng=np.random.default_rng(0)), **kwargs}
    with pytest.raises(ConfigError):
        uniform_sum_ratios(**args)


def test_gives_up_after_max_tries():
    # alpha = 2 draws r directly: S = 4.7 with n = 6, U = 0.8 is accepted with probability ~1e-8
    with pytest.raises(ConfigError, match=r"max_tries=10 .*n=6.*upper=0.8"):
        uniform_sum_ratios(N, (4.7, 4.7), UPPER, np.random.default_rng(0), alpha=2.0, max_tries=10)


def test_large_sums_draw_the_slack():
    """n = 30, U = 0.8, S near n * U: hopeless by direct rejection, a few draws through the slack."""
    rng = np.random.default_rng(0)
    draws = [uniform_sum_ratios(30, (19.2, 22.5), 0.8, rng, max_tries=10_000) for _ in range(200)]
    sums = [sum(units(r)) for r in draws]
    assert all(192 <= s <= 225 for s in sums) and all(max(r) <= 0.8 for r in draws)
    # the slack keeps the per-position symmetry of Dirichlet(1): every block has the same mean ratio
    means = np.mean(np.array(draws), axis=0)
    assert np.ptp(means) < 0.06 and abs(means.mean() - np.mean(sums) / 300) < 1e-9


def test_slack_draw_matches_direct_distribution():
    """Where both paths work (n = 3, U = 0.8, S = 1.6 and its mirror 0.8), r and U - r mirror each other."""
    rng = np.random.default_rng(5)
    high = Counter(tuple(units(uniform_sum_ratios(3, (1.6, 1.6), 0.8, rng))) for _ in range(4000))
    low = Counter(tuple(8 - k for k in units(uniform_sum_ratios(3, (0.8, 0.8), 0.8, rng))) for _ in range(4000))
    keys = sorted(set(high) | set(low))
    assert set(high) == set(low)
    observed = np.array([[high[k] for k in keys], [low[k] for k in keys]])
    from scipy.stats import chi2_contingency

    assert chi2_contingency(observed).pvalue > 0.001


def test_naive_validation():
    with pytest.raises(ConfigError):
        naive_uniform_ratios(0, UPPER, np.random.default_rng(0))
    with pytest.raises(ConfigError):
        naive_uniform_ratios(N, 2.0, np.random.default_rng(0))
