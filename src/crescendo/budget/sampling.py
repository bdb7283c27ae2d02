"""Samplers of per-block compression ratios on a fixed grid (multiples of `resolution`).

`uniform_sum_ratios` is Algorithm 1 of seed 004 (MixA-Q, App. 6.1, "Uniform-Sum Compression Ratio
Sampling"): the *sum* of the ratios, a proxy for the total computation saved, is uniform over the
requested range, so a search population covers every budget evenly. `naive_uniform_ratios` draws each
ratio independently; its sums pile up around n * U / 2 (a central limit), which is what Algorithm 1
exists to avoid.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import ConfigError

_EPS = 1e-9  # tolerance when converting float bounds to integer grid units
_FIRST_BATCH, _MAX_BATCH = 64, 8192  # Dirichlet draws per vectorised rejection round


def _check_common(n: int, upper: float, resolution: float) -> None:
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ConfigError(f"number of blocks n must be an integer >= 1, got {n!r}")
    if not (math.isfinite(resolution) and 0.0 < resolution <= 1.0):
        raise ConfigError(f"resolution must be in (0, 1], got {resolution}")
    if not 0.0 <= upper <= 1.0:
        raise ConfigError(f"upper bound on a compression ratio must be in [0, 1], got {upper}")


def _to_units(values: np.ndarray, resolution: float) -> list[float]:
    # round so that e.g. 7 * 0.1 is returned as 0.7, not 0.7000000000000001
    return [round(int(k) * resolution, 10) for k in values]


def _largest_remainder(r: np.ndarray, total: int) -> np.ndarray:
    """Round r (non-negative, summing to `total` up to float error) to integers summing to `total`.

    Algorithm 1, lines 12-21: floor everything, then give the missing units one each to the entries
    with the largest fractional remainders (ties go to the lower index: a stable sort).
    """
    R = np.floor(r).astype(np.int64)  # (n,)
    diff = total - int(R.sum())
    if diff > 0:
        order = np.argsort(-(r - R), kind="stable")
        R[order[:diff]] += 1
    return R


def uniform_sum_ratios(
    n: int,
    sum_range: tuple[float, float],
    upper: float,
    rng: np.random.Generator,
    alpha: float = 1.0,
    resolution: float = 0.1,
    max_tries: int = 1_000_000,
) -> list[float]:
    """Draw n compression ratios whose sum is uniform over `sum_range` (seed 004, Algorithm 1).

    Steps, in integer units of `resolution` (x10 for 0.1, line 3):

    1. S_min = ceil(s_min / resolution), S_max = floor(s_max / resolution), U = floor(upper /
       resolution), and S_max is capped at n * U; bounds off the grid thus move inwards, so every
       sum stays inside the range.
    2. Target sum S: a uniform integer in the inclusive range [S_min, S_max] (line 5).
    3. Repeat: (r_1..r_n) ~ Dirichlet(alpha, ..., alpha), r_i <- r_i * S, until every r_i <= U
       (lines 6-11). Draws are made in vectorised batches and the first acceptable one (in draw
       order) is kept, which has exactly the distribution of the one-at-a-time loop.
    4. Largest-remainder rounding so the integers sum exactly to S (lines 12-21), divide back.

    One edge case the continuous loop cannot reach: when S = n * U the only feasible vector is every
    ratio at U (a Dirichlet draw hits it with probability 0), so it is returned directly.

    Large sums: for alpha = 1 the accepted draw is uniform on {r : sum r = S, 0 <= r_i <= U}, and
    r -> U - r maps that set onto the same set at sum n * U - S, preserving uniformity. So when
    S > n * U / 2 the loop draws the slack U - r at sum n * U - S instead: same distribution, but
    acceptance no longer collapses (n = 30, U = 0.8, S = 19.2 is hopeless directly and takes a few
    draws this way). Other alphas are not symmetric under the map and always draw r directly.

    Parameters:
        n: number of blocks / layers.
        sum_range: (s_min, s_max), the range of the sum of ratios, 0 <= s_min <= s_max <= n * upper.
        upper: upper bound u on each ratio, in [0, 1].
        rng: the random generator; the result is a pure function of its state.
        alpha: concentration of the symmetric Dirichlet (1.0: uniform on the simplex).
        resolution: grid step of the returned ratios.
        max_tries: Dirichlet draws allowed before giving up with ConfigError. Acceptance falls fast as
            S nears n * U (about ((n*U - S) / S)^(n-1) for Dirichlet(1)): for seed 004's Swin-Tiny
            setting, n = 6, U = 0.8, S = 4.2 needs ~17,000 draws on average.

    Returns:
        n ratios, each an exact multiple of `resolution` (rounded to 10 decimals), in [0, upper],
        summing to S * resolution.

    Example (seed 004's Swin-Tiny setting):
        >>> r = uniform_sum_ratios(6, (0.6, 4.2), 0.8, np.random.default_rng(0))
        >>> len(r), 6 <= round(sum(r) * 10) <= 42, max(r) <= 0.8
        (6, True, True)
    """
    _check_common(n, upper, resolution)
    s_min, s_max = (float(s) for s in sum_range)
    if not 0.0 <= s_min <= s_max <= n * upper + _EPS:
        raise ConfigError(
            f"sum range must satisfy 0 <= s_min <= s_max <= n * upper = {n * upper:g}, "
            f"got [{s_min:g}, {s_max:g}]"
        )
    if not (math.isfinite(alpha) and alpha > 0.0):
        raise ConfigError(f"Dirichlet concentration alpha must be positive, got {alpha}")
    if isinstance(max_tries, bool) or int(max_tries) != max_tries or max_tries < 1:
        raise ConfigError(f"max_tries must be an integer >= 1, got {max_tries!r}")

    U = math.floor(upper / resolution + _EPS)
    S_min = math.ceil(s_min / resolution - _EPS)
    S_max = min(math.floor(s_max / resolution + _EPS), n * U)
    if S_min > S_max:
        raise ConfigError(
            f"sum range [{s_min:g}, {s_max:g}] holds no multiple of resolution {resolution:g} "
            f"reachable with {n} ratios <= {upper:g}"
        )

    S = int(rng.integers(S_min, S_max, endpoint=True))
    if S == n * U:
        return _to_units(np.full(n, U), resolution)

    slack = alpha == 1.0 and 2 * S > n * U  # draw U - r at the complementary sum (see above)
    total = n * U - S if slack else S
    tries, batch = 0, _FIRST_BATCH
    while tries < max_tries:
        size = min(batch, max_tries - tries)
        r = rng.dirichlet(np.full(n, float(alpha)), size=size) * total  # (size, n)
        ok = np.flatnonzero((r <= U).all(axis=1))
        if ok.size:
            chosen = U - r[ok[0]] if slack else r[ok[0]]
            return _to_units(_largest_remainder(chosen, S), resolution)
        tries += size
        batch = min(2 * batch, _MAX_BATCH)  # hard targets need many draws; grow the batch
    raise ConfigError(
        f"no Dirichlet draw met the upper bound within max_tries={max_tries} "
        f"(n={n}, target sum={S * resolution:g}, sum_range=[{s_min:g}, {s_max:g}], upper={upper:g}, "
        f"alpha={alpha:g}); lower s_max, raise upper or raise max_tries"
    )


def naive_uniform_ratios(
    n: int, upper: float, rng: np.random.Generator, resolution: float = 0.1
) -> list[float]:
    """Draw n ratios independently and uniformly from the grid {0, resolution, ..., upper}.

    The "naive uniform sampling" baseline of seed 004 (Tab. 6, Fig. 8). `upper` off the grid is
    rounded down to the largest grid point below it.

    Example:
        >>> r = naive_uniform_ratios(6, 0.8, np.random.default_rng(0))
        >>> len(r), all(0.0 <= x <= 0.8 for x in r)
        (6, True)
    """
    _check_common(n, upper, resolution)
    U = math.floor(upper / resolution + _EPS)
    return _to_units(rng.integers(0, U, endpoint=True, size=n), resolution)
