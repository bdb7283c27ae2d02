"""CER variants, curve monotonicity and the bound-aware Progressive-Intensity call, by hand."""

from __future__ import annotations

import math

import pytest

from crescendo.analysis.cer import (
    CER,
    CERSettings,
    NonMonotoneCurve,
    compare_intensity,
    compression_equivalent_ratio,
    monotone_envelope,
    pih_first,
    predicted_order,
    reference_curve,
)
from crescendo.errors import ConfigError

# ------------------------------------------------------------------ bound-aware comparisons


@pytest.mark.parametrize("a, b, expected", [
    (CER(2.0, "upper"), CER(2.0), -1),  # a beat the quantizer at C = 2: strictly weaker than C = 2
    (CER(2.0, "lower"), CER(2.0), 1),  # a was worse than C = 2: strictly stronger
    (CER(2.0), CER(2.0), 0),  # an exact tie: equal intensity
    (CER(1.5, "upper"), CER(2.0), -1),
    (CER(2.5, "upper"), CER(2.0), None),  # <= 2.5 may lie either side of 2.0
    (CER(1.5, "lower"), CER(2.0), None),
    (CER(2.0, "upper"), CER(2.0, "lower"), -1),
    (CER(2.0, "upper"), CER(2.0, "upper"), None),  # both beat every point: no information
    (CER(5.33, "lower"), CER(5.33, "lower"), None),
    (CER(3.0), CER(2.0, "upper"), 1),
])
def test_compare_intensity_is_bound_aware(a, b, expected):
    assert compare_intensity(a, b) == expected
    assert compare_intensity(b, a) == (None if expected is None else -expected)


def test_pih_call_decides_on_a_bound_touching_c_q():
    # The audit's cell: SparseGPT 0.1 beats W8A8 (C*_P <= 2.00) against C_Q = 2.00 (8 bits):
    # P is not stronger, so the weaker-first rule says P first.
    assert pih_first(CER(2.0, "upper"), 2.0) == "prune"
    assert pih_first(CER(2.0, "upper"), 16 / 6) == "prune"
    assert pih_first(CER(16 / 3, "lower"), 16 / 3) == "quant"  # worse than 3 bits, C_Q = 5.33
    assert pih_first(CER(2.0, "upper"), 1.5) is None  # C*_P <= 2 may exceed C_Q = 1.5
    assert pih_first(CER(2.5), 2.0) == "quant" and pih_first(CER(2.5), 4.0) == "prune"
    assert pih_first(CER(4.0), 4.0) is None  # an exact tie names neither order
    assert pih_first(None, 4.0) is None


def test_predicted_order_reports_open_pairs():
    order, open_pairs = predicted_order({"p": CER(2.0, "upper"), "q": CER(2.0)})
    assert order == ["p", "q"] and open_pairs == []
    order, open_pairs = predicted_order({"a": CER(2.0, "upper"), "b": CER(2.0, "upper"), "q": CER(3.0)})
    assert order == ["a", "b", "q"] and open_pairs == [("a", "b")]
    _, open_pairs = predicted_order({"a": CER(2.5, "upper"), "q": CER(2.0)})
    assert open_pairs == [("q", "a")]  # sorted by value, but the bound leaves them open


# ------------------------------------------------------------------ variants of the curve

CURVE = [(2.0, -12.0), (4.0, -20.0)]  # M = -perplexity: 12 at 8 bits, 20 at 4 bits


def test_log_scale_interpolates_log_perplexity():
    curve = [(2.0, -10.0), (4.0, -40.0)]
    # log 20 = log 10 + t (log 40 - log 10): t = log 2 / log 4 = 1/2 -> C = 3
    log = compression_equivalent_ratio(-20.0, curve, scale="log")
    assert log.bound == "exact" and log.value == pytest.approx(3.0)
    # linear: (20 - 10) / (40 - 10) = 1/3 -> C = 2 + 2/3
    assert compression_equivalent_ratio(-20.0, curve).value == pytest.approx(2 + 2 / 3)
    with pytest.raises(ValueError, match="perplexity"):
        compression_equivalent_ratio(0.5, [(2.0, 0.9), (4.0, 0.4)], scale="log")  # an accuracy


def test_dense_anchor_turns_a_bound_into_a_value():
    unanchored = reference_curve(CURVE)
    assert unanchored.cer(-11.0) == CER(2.0, "upper")  # better than 8 bits: only a bound
    anchored = reference_curve(CURVE, CERSettings(anchor="dense"), dense=-10.0)
    # between (1, ppl 10) and (2, ppl 12): 1 + (11 - 10) / (12 - 10) = 1.5
    assert anchored.cer(-11.0) == CER(1.5)
    assert anchored.cer(-16.0) == CER(3.0)  # the measured segment is unchanged
    logged = reference_curve(CURVE, CERSettings(anchor="dense", scale="log"), dense=-10.0)
    expected = 1 + math.log(11 / 10) / math.log(12 / 10)
    assert logged.cer(-11.0).value == pytest.approx(expected)
    assert anchored.cer(-9.0) == CER(1.0, "upper")  # better than dense
    with pytest.raises(ConfigError, match="dense"):
        reference_curve(CURVE, CERSettings(anchor="dense"))


def test_settings_name_the_variant():
    assert CERSettings().label == "CER: linear in perplexity, not anchored"
    assert CERSettings(anchor="dense", scale="log").label == \
        "CER: linear in log-perplexity, anchored at dense (C = 1)"
    assert CERSettings(envelope=True).label.endswith("monotone envelope if the curve is not monotone")
    with pytest.raises(ConfigError):
        CERSettings(anchor="int8")
    with pytest.raises(ConfigError):
        CERSettings(scale="sqrt")


# ------------------------------------------------------------------ non-monotone curves

WIGGLE = [(2.0, 70.0), (3.0, 60.0), (4.0, 68.0), (5.0, 50.0)]  # rises from C = 3 to C = 4


def test_non_monotone_curve_is_never_used_silently():
    with pytest.raises(NonMonotoneCurve, match="3.00 to 4.00"):
        compression_equivalent_ratio(65.0, WIGGLE)
    curve = reference_curve(WIGGLE)
    assert not curve.monotone and curve.violations == ((3.0, 4.0),)
    assert curve.cer(65.0) is None and "not monotone" in curve.problem
    assert "--cer-envelope" in curve.problem


def test_envelope_on_request_is_the_running_minimum():
    assert monotone_envelope(WIGGLE) == [(2.0, 70.0), (3.0, 60.0), (4.0, 60.0), (5.0, 50.0)]
    # C = 4 measured 68, better than C = 3: the envelope takes the running minimum, 60 there;
    # 55 then lies between 60 (C = 4) and 50 (C = 5): 4 + (55 - 60) / (50 - 60) = 4.5
    assert compression_equivalent_ratio(55.0, WIGGLE, envelope=True) == CER(4.5)
    assert compression_equivalent_ratio(65.0, WIGGLE, envelope=True) == CER(2.5)
    curve = reference_curve(WIGGLE, CERSettings(envelope=True))
    assert curve.cer(55.0) == CER(4.5) and not curve.monotone  # still flagged
    assert "monotone envelope" in curve.problem


def test_a_dense_anchor_can_make_a_curve_non_monotone():
    # weight-only RTN at 8 bits measured 22.666 against the dense 22.672: better than dense
    curve = reference_curve([(2.0, -22.666), (8 / 3, -23.348)], CERSettings(anchor="dense"),
                            dense=-22.672)
    assert curve.violations == ((1.0, 2.0),) and curve.cer(-22.75) is None
    flat = reference_curve([(2.0, -22.666), (8 / 3, -23.348)],
                           CERSettings(anchor="dense", envelope=True), dense=-22.672)
    # envelope: 8 bits raised to the dense 22.672; 22.75 lies in [2, 2.67]
    expected = 2.0 + (22.75 - 22.672) / (23.348 - 22.672) * (8 / 3 - 2.0)
    assert flat.cer(-22.75).value == pytest.approx(expected)


def test_flat_segments_and_collapsed_tails_are_monotone():
    assert reference_curve([(2.0, -6.0), (4.0, -6.0), (5.0, -math.inf)]).monotone
    assert not reference_curve([(2.0, -math.inf), (4.0, -6.0)]).monotone
