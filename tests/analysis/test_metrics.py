"""Order-analysis metrics against hand-computed values (Definitions 2-6 of 003)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from crescendo.analysis.metrics import (
    CER,
    ExpFit,
    compression_equivalent_ratio,
    fit_exponential,
    interference,
    layerwise_output_error,
    order_advantage,
    orthogonality,
    output_error_from_gram,
    performance_gap,
    progressive_intensity_order,
)

# ------------------------------------------------------------------ G and A (Definitions 2 and 4)


def test_performance_gap_and_order_advantage():
    assert performance_gap(70.0, 65.0) == 5.0  # accuracy: f2 is the stronger method
    assert performance_gap(-12.5, -10.0) == -2.5  # M = -perplexity: f1 (ppl 12.5) is stronger
    # Table 1 style: ppl 61.502 with Q first (P o Q), 61.901 with P first -> A(Q -> P) = 0.399.
    assert order_advantage(-61.502, -61.901) == pytest.approx(0.399)
    assert order_advantage(-61.901, -61.502) == pytest.approx(-0.399)


# ------------------------------------------------------------------ CER (Definition 3)

CURVE = [(4.0, 60.0), (2.0, 70.0)]  # the 003 example, deliberately unsorted


def test_cer_paper_example():
    cer = compression_equivalent_ratio(65.0, CURVE)
    assert cer == CER(3.0, "exact")
    assert str(cer) == "3.00" and cer.is_exact


def test_cer_hits_a_measured_point_exactly():
    assert compression_equivalent_ratio(60.0, CURVE) == CER(4.0, "exact")
    assert compression_equivalent_ratio(70.0, CURVE) == CER(2.0, "exact")


def test_cer_out_of_range_is_a_bound_never_a_clamp():
    better = compression_equivalent_ratio(75.0, CURVE)
    assert better == CER(2.0, "upper") and str(better) == "<= 2.00"
    worse = compression_equivalent_ratio(10.0, CURVE + [(16 / 3, 50.0)])
    assert worse == CER(16 / 3, "lower") and str(worse) == ">= 5.33"
    assert not worse.is_exact


def test_cer_with_negative_perplexity_metric():
    # M = -ppl: quantizer ppl 6.0 at C=2 (8 bit), 8.0 at C=4 (4 bit); method ppl 7.5 -> 3.5.
    cer = compression_equivalent_ratio(-7.5, [(2.0, -6.0), (4.0, -8.0)])
    assert cer.value == pytest.approx(3.5) and cer.bound == "exact"


def test_cer_non_monotone_curve_is_refused_unless_the_envelope_is_asked_for():
    # The curve dips below 65 between C=2 and C=3, recovers, then falls again: no silent first
    # crossing any more (tests/analysis/test_cer.py covers the envelope).
    curve = [(2.0, 70.0), (3.0, 60.0), (4.0, 68.0), (5.0, 50.0)]
    with pytest.raises(ValueError, match="not monotone"):
        compression_equivalent_ratio(65.0, curve)
    assert compression_equivalent_ratio(65.0, curve, envelope=True) == CER(2.5, "exact")


def test_cer_collapsed_quantizer_point_gives_a_bound():
    curve = [(2.0, -6.0), (4.0, -math.inf)]  # 4 bits collapsed: ppl inf
    assert compression_equivalent_ratio(-100.0, curve) == CER(2.0, "lower")
    assert compression_equivalent_ratio(-math.inf, curve) == CER(4.0, "lower")
    assert compression_equivalent_ratio(-math.inf, [(2.0, -6.0)]) == CER(2.0, "lower")


@pytest.mark.parametrize(
    "metric, curve",
    [
        (1.0, []),  # nothing measured
        (math.nan, CURVE),
        (1.0, [(2.0, 1.0), (2.0, 2.0)]),  # duplicate ratio: aggregate seeds first
        (1.0, [(0.0, 1.0)]),  # a compression ratio is positive
        (1.0, [(2.0, math.nan)]),
    ],
)
def test_cer_rejects_bad_input(metric, curve):
    with pytest.raises(ValueError):
        compression_equivalent_ratio(metric, curve)


def test_cer_rejects_unknown_bound():
    with pytest.raises(ValueError):
        CER(2.0, "about")  # type: ignore[arg-type]


# ------------------------------------------------------------------ Progressive intensity order


def test_progressive_intensity_order_weakest_first():
    cers = {"sparsegpt": CER(3.1), "rtn": CER(2.0), "gptq": CER(2.6)}
    assert progressive_intensity_order(cers) == ["rtn", "gptq", "sparsegpt"]


def test_progressive_intensity_order_bounds_and_ties():
    cers = {
        "b_exact": CER(2.0, "exact"),
        "a_exact": CER(2.0, "exact"),  # exact tie: by name
        "lower": CER(2.0, "lower"),  # CER >= 2 sorts after CER == 2
        "z_upper": CER(2.0, "upper"),  # CER <= 2 sorts before CER == 2
        "y_upper": CER(2.0, "upper"),  # same-side bounds with equal value: by name
        "big": CER(5.0, "lower"),
    }
    expected = ["y_upper", "z_upper", "a_exact", "b_exact", "lower", "big"]
    assert progressive_intensity_order(cers) == expected
    assert progressive_intensity_order({}) == []


# ------------------------------------------------------------------ Exponential fit (Figure 3)


@pytest.mark.parametrize(
    "a, b, c", [(0.5, 0.8, -1.0), (-0.02, 1.5, 0.3), (3.0, -0.7, 2.0), (-2.0, -1.2, 0.0)]
)
def test_fit_exponential_recovers_noiseless_parameters(a, b, c):
    x = np.linspace(-1.0, 4.0, 12)
    fit = fit_exponential(x, a * np.exp(b * x) + c)
    assert not fit.linear
    assert (fit.a, fit.b, fit.c) == pytest.approx((a, b, c), rel=1e-5, abs=1e-7)
    assert fit.rss < 1e-12
    assert fit.predict(2.0) == pytest.approx(a * math.exp(2 * b) + c, rel=1e-6)
    assert isinstance(fit.predict(2.0), float) and fit.predict(x).shape == x.shape


def test_fit_exponential_with_noise():
    rng = np.random.default_rng(0)
    a, b, c = 0.3, 1.1, -0.5
    x = np.linspace(0.0, 4.0, 30)
    y = a * np.exp(b * x) + c
    fit = fit_exponential(x, y + rng.normal(0.0, 0.01 * np.abs(y).mean(), x.size))
    assert not fit.linear
    assert (fit.a, fit.b, fit.c) == pytest.approx((a, b, c), rel=0.1, abs=0.05)
    assert np.abs(fit.predict(x) - y).max() < 0.1


def test_fit_exponential_falls_back_to_a_line():
    few = fit_exponential([1.0, 2.0, 2.0], [3.0, 5.0, 5.0])  # 2 distinct x: 3 parameters underdetermined
    assert few.linear and (few.a, few.c) == pytest.approx((2.0, 1.0))
    assert few.predict(4.0) == pytest.approx(9.0)
    const = fit_exponential([1.0], [7.0])
    assert const.linear and const.predict([0.0, 5.0]) == pytest.approx([7.0, 7.0])
    line = fit_exponential([0.0, 1.0, 2.0, 3.0], [1.0, 3.0, 5.0, 7.0])  # exact line: no exp beats it
    assert line.predict(10.0) == pytest.approx(21.0, rel=1e-3)
    assert isinstance(line, ExpFit)


def test_fit_exponential_rejects_bad_input():
    with pytest.raises(ValueError):
        fit_exponential([1.0, 2.0], [1.0])
    with pytest.raises(ValueError):
        fit_exponential([1.0, 2.0, 3.0], [1.0, math.nan, 2.0])


# ------------------------------------------------------------------ Layer-wise errors


def test_layerwise_output_error_hand_computed():
    w = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    w_new = torch.tensor([[1.0, 0.0], [3.0, 5.0]])  # delta = [[0, -2], [0, 1]]
    x = torch.tensor([[1.0, 1.0], [2.0, -1.0], [0.0, 3.0]])  # (tokens=3, in=2)
    # delta @ x_t = rows (-2, 1), (2, -1), (-6, 3): 5 + 5 + 45 = 55
    assert layerwise_output_error(w, w_new, x) == pytest.approx(55.0)
    assert layerwise_output_error(w, w_new, x.reshape(1, 3, 2)) == pytest.approx(55.0)
    assert output_error_from_gram(w, w_new, x.T @ x) == pytest.approx(55.0)
    assert layerwise_output_error(w, w, x) == 0.0
    with pytest.raises(ValueError):
        layerwise_output_error(w, w_new, torch.ones(3, 5))
    with pytest.raises(ValueError):
        layerwise_output_error(w, w_new[:1], x)


def test_orthogonality_two_layers_hand_computed():
    prune = {"q_proj": 1.0, "k_proj": 2.0}
    quant = {"q_proj": 0.5, "k_proj": 0.25}
    composed = {"q_proj": 1.25, "k_proj": 3.0}  # q: 1.25 < 1.5, k: 3.0 > 2.25
    result = orthogonality([prune, quant], composed)
    assert result.composed_total == pytest.approx(4.25)
    assert result.single_total == pytest.approx(3.75)
    assert result.excess == pytest.approx({"q_proj": -0.25, "k_proj": 0.75})
    assert result.excess_total == pytest.approx(0.5)
    assert not result.orthogonal
    assert orthogonality([prune, quant], composed, rel_tol=0.2).orthogonal  # 4.25 <= 1.2 * 3.75
    assert orthogonality([prune, quant], {"q_proj": 1.0, "k_proj": 2.75}).orthogonal  # equal: orthogonal


def test_orthogonality_missing_layers():
    # A method that leaves a layer alone may omit it; the composition must cover every layer.
    result = orthogonality([{"a": 1.0}, {"b": 2.0}], {"a": 1.0, "b": 2.0})
    assert result.orthogonal and result.excess == {"a": 0.0, "b": 0.0}
    with pytest.raises(ValueError):
        orthogonality([{"a": 1.0}, {"b": 2.0}], {"a": 1.0})
    with pytest.raises(ValueError):
        orthogonality([], {"a": 1.0})
    with pytest.raises(ValueError):
        orthogonality([{"a": -1.0}], {"a": 1.0})


def test_interference_hand_computed():
    # Definition 6: Delta(f1 -> f2) = sum over u in X of delta_{f2 o f1}(u) - delta_{f2}(u), where
    # delta_{f2 o f1}(u) is the error f2 makes on u inside the pipeline (against f1's output) and X
    # the units f2 modifies there (a nonzero error).
    in_pipeline = {"q_proj": 0.75, "k_proj": 0.0, "v_proj": 2.0}  # f2 left k_proj alone here
    alone = {"q_proj": 0.5, "k_proj": 0.25, "v_proj": 1.5}
    # X = {q_proj, v_proj}: (0.75 - 0.5) + (2.0 - 1.5) = 0.75; k_proj is not in X
    assert interference(in_pipeline, alone) == pytest.approx(0.75)
    assert interference(in_pipeline, alone, modified_layers=["q_proj"]) == pytest.approx(0.25)
    assert interference({"o_proj": 1.0}, alone) == pytest.approx(1.0)  # f2 alone left it: 0
    with pytest.raises(ValueError):
        interference(in_pipeline, alone, modified_layers=["o_proj"])


def _magnitude_prune(w: torch.Tensor, ratio: float) -> torch.Tensor:
    k = int(w.numel() * ratio)
    threshold = w.abs().flatten().kthvalue(k).values
    return torch.where(w.abs() <= threshold, torch.zeros_like(w), w)


def _rtn_symmetric(w: torch.Tensor, bits: int) -> torch.Tensor:
    qmax = 2 ** (bits - 1) - 1
    scale = w.abs().amax(dim=1, keepdim=True) / qmax  # per output row; 0 stays exactly 0
    return torch.round(w / scale).clamp(-qmax - 1, qmax) * scale


def test_real_prune_then_quantize_example():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(8, 16, generator=gen)
    x = torch.randn(32, 16, generator=gen)
    pruned, quantized = _magnitude_prune(w, 0.5), _rtn_symmetric(w, 4)
    composed = _rtn_symmetric(pruned, 4)  # Q o P: prune first, then quantize
    mask = pruned != 0
    # Magnitude pruning keeps each row's largest weight, so the RTN scale is unchanged: Q(P(W)) is
    # exactly RTN(W) on the survivors and 0 elsewhere (disjoint selectivity at element granularity).
    assert (mask.sum() == 64).item()
    expected = torch.where(mask, quantized, torch.zeros_like(w))
    torch.testing.assert_close(composed, expected, rtol=0, atol=0)

    errors = {
        name: {"layer": layerwise_output_error(w, w_new, x)}
        for name, w_new in [("prune", pruned), ("quant", quantized), ("composed", composed)]
    }
    result = orthogonality([errors["prune"], errors["quant"]], errors["composed"])
    assert result.excess["layer"] == pytest.approx(
        errors["composed"]["layer"] - errors["prune"]["layer"] - errors["quant"]["layer"]
    )
    # Delta(P -> Q) compares RTN's error inside the pipeline (on the pruned weights) with RTN's
    # error alone; the pruning error itself is not part of it.
    rtn_in_pipeline = {"layer": layerwise_output_error(pruned, composed, x)}
    delta = interference(rtn_in_pipeline, errors["quant"])
    assert delta == pytest.approx(rtn_in_pipeline["layer"] - errors["quant"]["layer"])
    assert delta < 0  # RTN has fewer weights to round after pruning
    # excess = Delta + the cross term 2 <(P(W) - W) X, (Q(P(W)) - P(W)) X> (Harma vs 003)
    cross = 2 * float((((pruned - w) @ x.T) * ((composed - pruned) @ x.T)).sum())
    assert result.excess_total == pytest.approx(delta + cross, rel=1e-4, abs=1e-4)

    # With whitened inputs (X = I) the error is ||D||_F^2 and the supports are disjoint, so the
    # composed error is prune's plus RTN's on the survivors: orthogonal, with a hand-computable Delta.
    eye = torch.eye(16)
    d_prune, d_quant = pruned - w, quantized - w
    e_prune = float(d_prune.pow(2).sum())
    e_quant = float(d_quant.pow(2).sum())
    e_composed = layerwise_output_error(w, composed, eye)
    assert e_composed == pytest.approx(e_prune + float(d_quant[mask].pow(2).sum()), rel=1e-5)
    white = orthogonality([{"layer": e_prune}, {"layer": e_quant}], {"layer": e_composed})
    assert white.orthogonal
    # X = I: RTN inside the pipeline errs only on the survivors, so Delta = -(RTN's error on the
    # pruned weights); disjoint supports make the cross term 0, so the excess is the same number.
    expected_delta = -float(d_quant[~mask].pow(2).sum())
    measured = interference({"layer": layerwise_output_error(pruned, composed, eye)}, {"layer": e_quant})
    assert measured == pytest.approx(expected_delta, rel=1e-5)
    assert white.excess_total == pytest.approx(expected_delta, rel=1e-4)
