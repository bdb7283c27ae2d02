"""Order predictors: what they measure, what they decide, what they refuse, and how they are scored."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_bench

from crescendo.chooser import PREDICTORS, absorbed_fraction, check_choice, decide
from crescendo.chooser.scoring import Cell, score, wilson_interval
from crescendo.errors import ConfigError, RecipeError
from crescendo.recipe import parse_stage
from crescendo.units import Units


def test_absorbed_fraction_is_counted_at_the_pruners_granularity():
    # RTN 2-bit asymmetric per row of [-1, 0, 1, 2]-like rows: scale 1, zero 1 -> exact zeros where |w| < 0.5
    w = torch.tensor([[0.1, 0.2, 1.0, 2.0, -1.0, 1.9, 0.05, 1.1]] * 2)  # 3 zeros per row after RTN w2
    q = parse_stage("rtn:w2")
    assert absorbed_fraction({"l": w}, parse_stage("magnitude:0.25"), q) == 1.0  # quota 4 of 16, 6 zeros
    assert absorbed_fraction({"l": w}, parse_stage("magnitude:0.5"), q) == 6 / 8
    assert absorbed_fraction({"l": w}, parse_stage("wanda:0.5"), q) == 6 / 8  # per row: 3 of a quota of 4
    assert absorbed_fraction({"l": w}, parse_stage("sparsegpt:0.5,bs=4"), q) == 6 / 8  # blocks of 4 columns: 2+1
    assert absorbed_fraction({"l": w}, parse_stage("magnitude:2:4"), q) == 6 / 8  # groups hold 2 and 1 zeros of 2
    assert absorbed_fraction({"l": w}, parse_stage("magnitude:0.25,zeros=pruned"), q) == 0.0


def test_zero_absorption_chooses_quantize_first_data_free():
    bench = tiny_bench()
    decision = decide("zeros", bench, ["magnitude:0.05", "rtn:w2"])
    assert decision.order == ["rtn:w2", "magnitude:0.05"]
    assert decision.cost.stage_applications == 0 and decision.cost.evaluations == 0
    assert decision.cost.weight_passes == 1 and decision.measured == {}
    high = decide("zeros", bench, ["magnitude:0.5", "rtn:w8"])
    assert high.abstained and "no zero absorption" in high.reason


def test_pih_measures_the_singles_and_puts_the_weaker_first():
    bench = tiny_bench()
    decision = decide("pih", bench, ["magnitude:0.7", "rtn:w8"])
    assert decision.cost.stage_applications == 2 and decision.cost.evaluations == 2
    singles = decision.evidence["singles"]
    assert decision.order == sorted(singles, key=lambda k: -singles[k])  # higher M (lower ppl) first
    assert decision.exhaustive.stage_applications == 4 and decision.exhaustive.evaluations == 5


def test_compensation_is_structural_and_abstains_when_it_does_not_apply():
    bench = tiny_bench()
    decision = decide("compensation", bench, ["gptq:w4", "magnitude:0.5"])
    assert decision.order == ["magnitude:0.5", "gptq:w4"] and decision.cost.seconds < 1.0
    assert decide("compensation", bench, ["sparsegpt:0.5", "gptq:w4"]).abstained


def test_a_replayed_undefined_calibration_error_abstains_as_the_live_predictor_does():
    """After a block remover the last-block error is undefined; a store keeps it as None. Replayed
    from known values (an evaluator without layer-wise errors), calib-error abstains with the reason
    it gives live, instead of refusing the study."""

    class WeightsOnly:
        metric_name = "-perplexity"

        def __init__(self):
            self.bench = tiny_bench()

        def fresh(self):
            return self.bench.fresh()

        def apply(self, model, stage):
            self.bench.apply(model, stage)

    methods = ["sleb:0.5,samples=1", "rtn:w4"]
    known = {"dense": -10.0, "sleb:0.5,samples=1": -20.0, "rtn:w4": -11.0,
             "sleb:0.5,samples=1 > rtn:w4": -21.0, "rtn:w4 > sleb:0.5,samples=1": -22.0}
    undefined = {"sleb:0.5,samples=1 > rtn:w4": None, "rtn:w4 > sleb:0.5,samples=1": None}
    decision = decide("calib-error", WeightsOnly(), methods, known=known, known_errors=undefined)
    assert decision.abstained and "undefined" in decision.reason
    with pytest.raises(ConfigError, match="layer-wise errors"):  # nothing known, nothing to measure with
        decide("calib-error", WeightsOnly(), methods, known=known)


def test_auto_goes_q_first_when_q_is_near_lossless():
    bench = tiny_bench()
    decision = decide("auto", bench, ["magnitude:0.5", "rtn:w8"])
    assert decision.order == ["rtn:w8", "magnitude:0.5"], decision.reason
    assert "near-lossless" in decision.reason
    assert decision.cost.evaluations == 2  # dense and Q alone: P alone was not needed


@pytest.mark.parametrize("predictor, methods, error, match", [
    ("nope", ["magnitude:0.5", "rtn:w4"], RecipeError, "unknown order predictor"),
    ("zeros", ["rtn:w4", "rtn:w8"], ConfigError, "judges a per-layer pruner"),
    ("zeros", ["magnitude:0.5", "rtn:w4", "mxfp8"], ConfigError, "judges two methods"),
    ("auto", ["magnitude:0.5"], ConfigError, "at least two distinct"),
    ("auto", ["magnitude:0.5", "magnitude:0.5"], ConfigError, "at least two distinct"),
    ("compensation", ["magnitude:0.5", "rtn:w4", "gptq:w4"], ConfigError, "judges two methods"),
])
def test_bad_choices_are_refused_before_anything_is_measured(predictor, methods, error, match):
    with pytest.raises(error, match=match):
        check_choice(predictor, methods)


def test_every_predictor_documents_its_rule_and_cost():
    for name in PREDICTORS:
        rule = PREDICTORS.get(name)
        assert rule.summary and rule.cost_model and rule.judges and rule.__doc__


def _cell(a: dict[int, float], b: dict[int, float], collapsed=()) -> Cell:
    return Cell("m", "p", ("P", "Q"), {("P", "Q"): a, ("Q", "P"): b}, set(collapsed), rule="spread")


def test_scoring_counts_hits_noise_abstentions_and_regret():
    cells = [
        _cell({0: -10.0, 1: -10.2}, {0: -12.0, 1: -12.5}),  # P first better by ~2.15, noise 0.3: decisive
        _cell({0: -10.0, 1: -10.4}, {0: -10.1, 1: -10.1}),  # A = -0.1 mean, noise 0.5: within noise
        _cell({0: -20.0, 1: -20.0}, {0: -15.0, 1: -15.1}),  # Q first better by ~4.95: decisive
        _cell({0: -900.0, 1: -800.0}, {0: -990.0, 1: -1000.0}, collapsed=[("P", "Q"), ("Q", "P")]),
    ]
    assert [c.decisive for c in cells] == [True, False, True, False]
    s = score("x", cells, {0: ("P", "Q"), 1: ("P", "Q"), 2: ("P", "Q"), 3: None}).to_dict()
    assert (s["decisive"], s["calls"], s["hits"], s["abstentions"]) == (2, 2, 1, 1)
    assert s["hit_or_within_noise"] == 3  # cell 0 hit, cell 1 noise, cell 3 collapsed abstention
    assert s["worst_regret"] == pytest.approx(4.95)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def _unit_cell(gap: float, seeds=(0, 1), spread: float = 0.0, data_free=False) -> Cell:
    """Two orders of 2000 test images: Q first wrong on `gap` more of them (accuracy points / 100)."""
    rng = np.random.default_rng(7)
    base = (rng.random(2000) < 0.9).astype(float)
    units, orders = {("P", "Q"): {}, ("Q", "P"): {}}, {("P", "Q"): {}, ("Q", "P"): {}}
    right = np.flatnonzero(base)
    for s in seeds:
        worse = base.copy()
        worse[right[: round((gap + spread * s) * 2000)]] = 0.0  # the same images on every seed: no seed spread
        units[("P", "Q")][s] = Units("correct", base, 2000)
        units[("Q", "P")][s] = Units("correct", worse, 2000)
        orders[("P", "Q")][s], orders[("Q", "P")][s] = 100 * base.mean(), 100 * worse.mean()
    return Cell("m", "p", ("P", "Q"), orders, units=units, data_free=data_free)


def test_the_interval_rule_needs_a_real_difference_and_units():
    big, tiny = _unit_cell(0.05), _unit_cell(0.0005, data_free=True)
    assert big.decisive is True and big.comparison.verdict == "first better"
    # a data-free cell 0.05 points apart: the old rule calls it decisive (no seed spread), the interval does not
    assert tiny.decisive_spread is True and tiny.decisive is False
    no_units = Cell("m", "p", ("P", "Q"), {("P", "Q"): {0: 90.0}, ("Q", "P"): {0: 80.0}})
    assert no_units.decisive is None and no_units.decisive_spread is True
    s = score("x", [big, tiny, no_units], {0: ("P", "Q"), 1: ("Q", "P"), 2: ("P", "Q")}).to_dict()
    assert (s["cells"], s["unjudged"], s["decisive"], s["hits"]) == (2, 1, 1, 1)
