"""Spearman's rho with exact permutation p-values for small n, against hand-counted permutations."""

from __future__ import annotations

import itertools

import pytest
from scipy import stats

from crescendo.analysis.ranks import EXACT_MAX_N, spearman_test


def test_perfect_correlation_at_n4_is_2_of_24():
    result = spearman_test([1.0, 2.0, 3.0, 4.0], [0.1, 0.5, 0.7, 9.0])
    assert result.rho == pytest.approx(1.0)
    assert result.pvalue == pytest.approx(2 / 24)  # rho = +1 or -1: 2 of the 24 pairings
    assert result.method == "exact (24 permutations)"


def test_n3_perfect_is_one_third():
    result = spearman_test([3.0, 2.0, 1.0], [1.0, 2.0, 3.0])
    assert result.rho == pytest.approx(-1.0) and result.pvalue == pytest.approx(2 / 6)


def test_rho_08_at_n4_counts_eight_of_24():
    # y ranks (1, 3, 2, 4): sum d^2 = 2, rho = 1 - 6 * 2 / (4 * 15) = 0.8. |rho| >= 0.8 needs
    # sum d^2 <= 2 (identity + 3 adjacent swaps) or >= 18 (their reversals): 8 of 24 permutations.
    result = spearman_test([1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0])
    assert result.rho == pytest.approx(0.8)
    assert result.pvalue == pytest.approx(8 / 24)
    asymptotic = stats.spearmanr([1, 2, 3, 4], [1, 3, 2, 4]).pvalue
    assert asymptotic == pytest.approx(0.2)  # what the report printed before: not exact


def _brute_force(x, y):
    rx, ry = stats.rankdata(x), stats.rankdata(y)

    def rho(ranks):
        return float(stats.pearsonr(rx, ranks).statistic)

    observed = rho(ry)
    values = [rho([ry[i] for i in perm]) for perm in itertools.permutations(range(len(y)))]
    tol = 1e-12
    ge = sum(v >= observed - tol for v in values) / len(values)
    le = sum(v <= observed + tol for v in values) / len(values)
    return observed, min(1.0, 2 * min(ge, le))


def test_ties_use_midranks_and_every_permutation():
    # A = 0 exactly at two bit-widths (SLEB): tied y values
    x, y = [0.6, -0.07, -1.4, -2.0], [0.0, 0.0, 92.4, 36.3]
    rho, p = _brute_force(x, y)
    result = spearman_test(x, y)
    assert result.rho == pytest.approx(rho) and result.pvalue == pytest.approx(p)
    assert result.method.startswith("exact")


def test_above_the_exact_limit_the_t_approximation_is_named():
    n = EXACT_MAX_N + 1
    x = list(range(n))
    y = [v if v % 3 else -v for v in x]
    result = spearman_test(x, y)
    reference = stats.spearmanr(x, y)
    assert result.pvalue == pytest.approx(reference.pvalue)
    assert result.method == "asymptotic (t, n - 2 df)"


def test_too_few_or_constant_points_give_no_value():
    assert spearman_test([1.0, 2.0], [2.0, 1.0]).rho is None
    constant = spearman_test([1.0, 2.0, 3.0], [5.0, 5.0, 5.0])
    assert constant.rho is None and constant.pvalue is None and constant.method == "-"
