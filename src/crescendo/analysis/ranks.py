"""Spearman's rank correlation with a p-value that is exact where it matters (few points).

003's Figure 3 asks whether A(Q -> P) rises with C*_P - C_Q; a sweep gives 3 to 6 points per pruning
ratio. The usual t approximation is meaningless there: at n = 4 a perfect correlation has the exact
two-sided p-value 2/24 = 0.083 (two of the 24 pairings give |rho| = 1), while the approximation
prints 0.000. Up to EXACT_MAX_N points every pairing of y with x is enumerated (ties handled by
midranks, each of the n! permutations counted once, so tied values weigh correctly); above it the t
approximation with n - 2 degrees of freedom is used. The method is returned with the value, and
reports print it next to every p-value.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

EXACT_MAX_N = 9  # 9! = 362,880 pairings, a few seconds; 10! would be ten times that
MIN_POINTS = 3  # a rank correlation of 2 points is always +-1: not evidence


@dataclass(frozen=True)
class RankTest:
    """rho and its two-sided p-value; None where undefined (too few points, a constant side)."""

    n: int
    rho: float | None
    pvalue: float | None
    method: str  # "exact (24 permutations)", "asymptotic (t, n - 2 df)", or "-" without a value


def _rho_against(rx: np.ndarray):
    """Spearman's rho of fixed x ranks against y values along the last axis (vectorised)."""
    cx = rx - rx.mean()

    def statistic(y: np.ndarray, axis: int = -1) -> np.ndarray:
        ry = stats.rankdata(y, axis=-1)
        cy = ry - ry.mean(axis=-1, keepdims=True)
        return (cx * cy).sum(axis=-1) / np.sqrt((cx ** 2).sum() * (cy ** 2).sum(axis=-1))

    return statistic


def spearman_test(xs: Sequence[float], ys: Sequence[float]) -> RankTest:
    """Spearman's rho of ys against xs with a two-sided p-value, exact for n <= EXACT_MAX_N.

    The exact value is scipy's permutation test over every pairing (`permutation_type="pairings"`,
    n! resamples): p = 2 * min(P(rho* >= rho), P(rho* <= rho)), capped at 1.

    >>> round(spearman_test([1, 2, 3, 4], [1, 2, 3, 4]).pvalue, 4)  # 2 / 24
    0.0833
    """
    x, y = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"need two equally long sequences, got {x.shape} and {y.shape}")
    n = int(x.size)
    if n < MIN_POINTS or np.ptp(stats.rankdata(x)) == 0 or np.ptp(stats.rankdata(y)) == 0:
        return RankTest(n, None, None, "-")
    if n > EXACT_MAX_N:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = stats.spearmanr(x, y)
        rho, p = float(result.statistic), float(result.pvalue)
        return RankTest(n, rho, None if math.isnan(p) else p, "asymptotic (t, n - 2 df)")
    permutations = math.factorial(n)
    result = stats.permutation_test((y,), _rho_against(stats.rankdata(x)), permutation_type="pairings",
                                    n_resamples=permutations, vectorized=True, alternative="two-sided")
    return RankTest(n, float(result.statistic), float(result.pvalue),
                    f"exact ({permutations} permutations)")
