"""Order-analysis metrics of 003 ("The Progressive Intensity Hypothesis"), as pure functions.

M is any "higher is better" metric (accuracy, or -perplexity for language models); nothing here
assumes which. Definitions implemented:

- Definition 2, performance gap: `performance_gap`.
- Definition 3, compression equivalent ratio (CER): `compression_equivalent_ratio` -> `CER`, its
  variants and the bound-aware Progressive-Intensity call (in `cer`, re-exported here).
- Definition 4, compression order advantage: `order_advantage`.
- Definition 6, interference, and Harma et al.'s orthogonality test: `interference`, `orthogonality`,
  on per-layer output errors from `layerwise_output_error`.
- Hypothesis 1 as an order chooser: `progressive_intensity_order`, `predicted_order`, `pih_first`.
- Section 5.2 / Figure 3, y = a * exp(b * x) + c per pruning ratio: `fit_exponential` -> `ExpFit`.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import OptimizeWarning, curve_fit

from .cer import (  # noqa: F401  (re-exported: the public home of every order metric)
    CER,
    Bound,
    CERSettings,
    NonMonotoneCurve,
    ReferenceCurve,
    compare_intensity,
    compression_equivalent_ratio,
    pih_first,
    predicted_order,
    progressive_intensity_order,
    reference_curve,
)

logger = logging.getLogger(__name__)


def performance_gap(m1: float, m2: float) -> float:
    """Definition 2: G(f1, f2) = M(f1(phi)) - M(f2(phi)); G > 0 means f2 is the stronger method.

    >>> performance_gap(70.0, 65.0)  # accuracy in %: f2 loses 5 points more than f1
    5.0
    """
    return float(m1) - float(m2)


def order_advantage(m_f1_then_f2: float, m_f2_then_f1: float) -> float:
    """Definition 4: A(f1 -> f2) = M((f2 o f1)(phi)) - M((f1 o f2)(phi)).

    `m_f1_then_f2` is the metric of the pipeline that applies f1 first. A > 0 means "f1 first" wins.
    """
    return float(m_f1_then_f2) - float(m_f2_then_f1)


# ---------------------------------------------------------------------------------------------------
# Exponential trend (Figure 3)
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExpFit:
    """y = a * exp(b * x) + c, or y = a * x + c when `linear` (the fallback; then b is 0)."""

    a: float
    b: float
    c: float
    linear: bool = False
    rss: float = 0.0  # residual sum of squares on the fitted points

    def predict(self, x: float | Sequence[float] | np.ndarray) -> float | np.ndarray:
        """Evaluate the fitted curve; a float for a scalar input, an array otherwise."""
        xs = np.asarray(x, dtype=np.float64)
        ys = self.a * xs + self.c if self.linear else self.a * np.exp(self.b * xs) + self.c
        return float(ys) if ys.ndim == 0 else ys


def _linear_fit(x: np.ndarray, y: np.ndarray) -> ExpFit:
    if np.ptp(x) == 0:  # one distinct x: the best line is the constant mean
        slope, intercept = 0.0, float(y.mean())
    else:
        slope, intercept = (float(v) for v in np.polyfit(x, y, 1))
    rss = float(np.sum((slope * x + intercept - y) ** 2))
    return ExpFit(slope, 0.0, intercept, linear=True, rss=rss)


def _exp_unit(u: np.ndarray, a: float, k: float, c: float) -> np.ndarray:
    return a * np.exp(k * u) + c


def fit_exponential(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> ExpFit:
    """Least-squares fit of y = a * exp(b * x) + c (Section 5.2: one fit per pruning ratio of
    A(Q -> P) against the CER difference C*_P - C_Q).

    Initial guess by variable projection: x is rescaled to [0, 1], and for a grid of rates k the
    model is linear in (a, c), solved exactly; the best grid point seeds scipy's `curve_fit`. That
    seed is close enough that the refinement converges for increasing and decreasing, convex and
    concave trends alike. With fewer than 3 distinct x values, or when the refinement fails or fits
    worse than a straight line, the result is the line y = a * x + c with `linear=True`.

    >>> fit = fit_exponential([0, 1, 2, 3], [2.0, 3.0, 5.0, 9.0])  # y = exp(ln2 * x) + 1
    >>> round(fit.b, 3), round(fit.c, 3)
    (0.693, 1.0)
    """
    xs = np.asarray(x, dtype=np.float64).ravel()
    ys = np.asarray(y, dtype=np.float64).ravel()
    if xs.size != ys.size or xs.size == 0:
        raise ValueError(f"need equally many x and y values (at least one), got {xs.size} and {ys.size}")
    if not (np.isfinite(xs).all() and np.isfinite(ys).all()):
        raise ValueError("x and y must be finite")
    line = _linear_fit(xs, ys)
    if np.unique(xs).size < 3:
        logger.debug("exponential fit needs 3 distinct x values, got %d: linear", np.unique(xs).size)
        return line

    x0, span = float(xs.min()), float(np.ptp(xs))
    u = (xs - x0) / span  # in [0, 1], so exp(k * u) stays in range for the whole grid
    rates = np.geomspace(0.05, 30.0, 40)
    best: tuple[float, float, float, float] | None = None  # (rss, a, k, c)
    for k in np.concatenate([-rates[::-1], rates]):
        basis = np.stack([np.exp(k * u), np.ones_like(u)], axis=1)
        (a_u, c), *_ = np.linalg.lstsq(basis, ys, rcond=None)
        rss = float(np.sum((basis @ np.array([a_u, c]) - ys) ** 2))
        if best is None or rss < best[0]:
            best = (rss, float(a_u), float(k), float(c))
    assert best is not None
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", OptimizeWarning)  # covariance is not needed
            params, _ = curve_fit(_exp_unit, u, ys, p0=best[1:], maxfev=20000)
    except (RuntimeError, ValueError) as err:
        logger.debug("exponential fit failed (%s): linear", err)
        return line
    a_u, k, c = (float(p) for p in params)
    b = k / span
    a = a_u * math.exp(-b * x0) if math.isfinite(b * x0) and abs(b * x0) < 700 else math.nan
    with np.errstate(all="ignore"):
        rss = float(np.sum((_exp_unit(u, a_u, k, c) - ys) ** 2))
    if not all(math.isfinite(v) for v in (a, b, c, rss)) or rss > line.rss:
        logger.debug("exponential fit degenerate or worse than a line: linear")
        return line
    return ExpFit(a, b, c, linear=False, rss=rss)


# ---------------------------------------------------------------------------------------------------
# Layer-wise errors: interference (Definition 6) and orthogonality (Harma et al.)
# ---------------------------------------------------------------------------------------------------


def layerwise_output_error(w_ref: torch.Tensor, w_new: torch.Tensor, x: torch.Tensor) -> float:
    """Squared output error of one linear layer: ||W_new X - W_ref X||_F^2 (delta_f in 003).

    w_ref, w_new: (out, in). x: (tokens, in), or (..., in), flattened to tokens. Computed as
    ||(W_new - W_ref) X|| in at least float32, since subtracting two large outputs loses precision.
    """
    if w_ref.shape != w_new.shape or w_ref.dim() != 2:
        shapes = f"{tuple(w_ref.shape)} and {tuple(w_new.shape)}"
        raise ValueError(f"weights must share one (out, in) shape, got {shapes}")
    if x.shape[-1] != w_ref.shape[1]:
        raise ValueError(f"inputs have {x.shape[-1]} features, the weight expects {w_ref.shape[1]}")
    dtype = torch.promote_types(torch.promote_types(w_ref.dtype, w_new.dtype), torch.float32)
    delta = w_new.to(dtype) - w_ref.to(dtype)  # (out, in)
    out = x.reshape(-1, x.shape[-1]).to(dtype) @ delta.T  # (tokens, out)
    return float(out.pow(2).sum())


def output_error_from_gram(w_ref: torch.Tensor, w_new: torch.Tensor, gram: torch.Tensor) -> float:
    """The same error from the Gram matrix H = X^T X (in, in) that GPTQ/SparseGPT already collect:
    ||D X^T||_F^2 = tr(D H D^T) with D = W_new - W_ref, so no activations need to be kept."""
    if w_ref.shape != w_new.shape or gram.shape != (w_ref.shape[1], w_ref.shape[1]):
        shapes = f"W {tuple(w_ref.shape)}, W' {tuple(w_new.shape)}, H {tuple(gram.shape)}"
        raise ValueError(f"shapes disagree: {shapes}")
    dtype = torch.promote_types(torch.promote_types(w_ref.dtype, gram.dtype), torch.float32)
    delta = w_new.to(dtype) - w_ref.to(dtype)  # (out, in)
    return float(((delta @ gram.to(dtype)) * delta).sum())


def _checked(errors: Mapping[str, float], what: str) -> dict[str, float]:
    out = {str(k): float(v) for k, v in errors.items()}
    bad = [k for k, v in out.items() if not math.isfinite(v) or v < 0]
    if bad:
        raise ValueError(f"{what}: squared errors must be finite and >= 0, not for layers {bad}")
    return out


@dataclass(frozen=True)
class Orthogonality:
    """Harma et al.'s test: a composition is orthogonal when its error is at most the sum of the
    single methods' errors (within a relative tolerance)."""

    composed_total: float  # sum over layers of the composition's error
    single_total: float  # sum over methods and layers of the single errors
    excess: dict[str, float]  # per layer: composed error - sum of single errors (> 0: worse)
    orthogonal: bool

    @property
    def excess_total(self) -> float:
        return self.composed_total - self.single_total


def orthogonality(
    single_errors: Sequence[Mapping[str, float]],
    composed_error: Mapping[str, float],
    rel_tol: float = 0.0,
) -> Orthogonality:
    """Orthogonality of a composition from per-layer squared output errors (layer -> error).

    Non-orthogonal when sum(composed) > (1 + rel_tol) * sum(singles). A layer missing from one
    single method's errors counts as 0 (that method left it alone); every layer of every single
    method must appear in `composed_error`, since the composition applies all of them.
    """
    if not single_errors:
        raise ValueError("orthogonality needs the errors of at least one single method")
    if rel_tol < 0:
        raise ValueError(f"rel_tol must be >= 0, got {rel_tol}")
    composed = _checked(composed_error, "composed error")
    singles = [_checked(errors, f"single error {i}") for i, errors in enumerate(single_errors)]
    missing = sorted({k for errors in singles for k in errors} - composed.keys())
    if missing:
        raise ValueError(f"layers with a single-method error but no composed error: {missing}")
    excess = {k: v - sum(errors.get(k, 0.0) for errors in singles) for k, v in composed.items()}
    composed_total = sum(composed.values())
    single_total = sum(sum(errors.values()) for errors in singles)
    return Orthogonality(
        composed_total=composed_total,
        single_total=single_total,
        excess=excess,
        orthogonal=composed_total <= (1.0 + rel_tol) * single_total,
    )


def interference(
    stage_error_in_pipeline: Mapping[str, float],
    stage_error_alone: Mapping[str, float],
    modified_layers: Sequence[str] | None = None,
) -> float:
    """Definition 6: Delta(f1 -> f2) = sum over u in X of delta_{f2 o f1}(u) - delta_{f2}(u).

    `stage_error_in_pipeline` holds, per unit, the error f2 makes inside the pipeline f2 o f1: the
    output error of f2(f1(W)) against f1(W), on f1's inputs (Appendix B.2's delta_{f2}(f1(W), f1(X));
    the composition's total error is f1's own plus this). `stage_error_alone` holds f2's error when
    applied alone, against the dense model. X, the units f2 modifies in f2 o f1, is
    `modified_layers`, by default every unit with a nonzero in-pipeline error; a unit f2 alone left
    unmodified (absent from `stage_error_alone`) counts 0 there.

    Delta < 0: f1 left f2 less to do (e.g. pruned weights RTN no longer rounds); Delta > 0: f1 made
    f2's job harder. Delta is not the composed error minus f2's error alone: that difference also
    holds f1's own error, which Definition 6's "additional error from mutual interaction" excludes.
    Harma et al.'s test (`orthogonality`) is the other number: composed - (sum of single errors) =
    Delta + 2 <delta_{f1}, delta_{f2 o f1}> (the cross term of the two error terms).

    The units are whatever the errors were measured on (linears, for the engine); as in 003, where X
    is taken at granularity t_f2, the value depends on that choice.
    """
    in_pipeline = _checked(stage_error_in_pipeline, "stage error in the pipeline")
    alone = _checked(stage_error_alone, "stage error alone")
    if modified_layers is None:
        units = [u for u, e in in_pipeline.items() if e > 0]
    else:
        units = list(dict.fromkeys(map(str, modified_layers)))
    missing = sorted(u for u in units if u not in in_pipeline)
    if missing:
        raise ValueError(f"units modified by the last stage without an in-pipeline error: {missing}")
    return sum(in_pipeline[u] - alone.get(u, 0.0) for u in units)
