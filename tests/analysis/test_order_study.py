"""The order study on a tiny model: prefix sharing, JSON shape, prediction vs measurement."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_bench

from crescendo.analysis.order import run_order_study, study_to_dict
from crescendo.analysis.sequential import RaceSettings
from crescendo.analysis.uncertainty import Margin
from crescendo.units import Evaluation, Units
from crescendo.workflow import Workbench


class CountingBench(Workbench):
    """A Workbench on a tiny model that counts stage applications."""

    applied: list[str]

    def apply(self, model, stage):
        self.applied.append(stage.text)
        super().apply(model, stage)


@pytest.fixture
def bench():
    b = tiny_bench(CountingBench, layerwise_samples=2)
    b.applied = []
    return b


def test_three_method_study_shares_prefixes(bench):
    methods = ["magnitude:0.3", "rtn:w4", "wanda:0.2"]
    study = run_order_study(bench, methods, bits=(8, 4), layerwise=False)
    curve_stages = 2
    # distinct prefixes of 3 methods: 3 + 6 + 6 = 15, not 3 * 3! = 18
    assert study.stage_applications == 15
    assert len(bench.applied) == 15 + curve_stages
    assert study.naive_stage_applications == 18
    assert len(study.orders) == 6 and len(study.singles) == 3
    # the measured best order is the best metric among the orders
    assert max(o["metric"] for o in study.orders) == dict(
        (tuple(o["order"]), o["metric"]) for o in study.orders)[tuple(study.best_order)]
    # a random tiny model measures 4-bit RTN a hair better than 8-bit: the curve is flagged and,
    # without the envelope, no CER (and no prediction) is made from it
    assert "not monotone" in study.curve_warning and study.predicted_order == []
    assert study.agrees is None


def test_two_method_study_json_and_error_analysis(bench):
    study = run_order_study(bench, ["magnitude:0.5", "rtn:w3"], bits=(8, 6, 4, 3), layerwise=True)
    out = study_to_dict(study)
    for key in ("dense", "singles", "orders", "cer", "advantage", "best_order", "predicted_order", "orthogonal"):
        assert key in out
    assert out["dense"] > 1 and all("perplexity" in o for o in out["orders"])
    (pair, a), = out["advantage"].items()
    ppl = {" > ".join(o["order"]): o["perplexity"] for o in out["orders"]}
    left, right = pair.split(" || ")
    assert a == pytest.approx(ppl[right] - ppl[left])  # A = M(left) - M(right), M = -ppl
    assert isinstance(out["orthogonal"], bool)
    assert set(study.orthogonality) == set(ppl)
    # the identical-copy layer errors of single methods are positive and the composed ones too
    assert all(v["total"] > 0 for v in study.layer_errors.values())


def test_study_rejects_duplicates_and_single_method(bench):
    with pytest.raises(ValueError):
        run_order_study(bench, ["rtn:w4"], bits=(8,))
    with pytest.raises(ValueError):
        run_order_study(bench, ["rtn:w4", "rtn:w4"], bits=(8,))


def test_memo_shares_dense_and_singles_between_studies(bench):
    evaluated = []
    original = bench.evaluation
    bench.evaluation = lambda model, units=None: evaluated.append(1) or original(model, units)
    memo = {}
    first = run_order_study(bench, ["magnitude:0.5", "rtn:w4"], bits=(8,), layerwise=True, memo=memo)
    assert len(evaluated) == 1 + 1 + 2 + 2  # dense, curve, two singles, two orders
    second = run_order_study(bench, ["magnitude:0.5", "rtn:w8"], bits=(8,), layerwise=True, memo=memo)
    assert len(evaluated) == 6 + 1 + 2  # only rtn:w8 alone and the two new orders
    assert second.dense == first.dense and second.singles["magnitude:0.5"] == first.singles["magnitude:0.5"]
    assert second.singles["rtn:w8"] == second.curve[0][2]  # the same recipe: one memo entry
    assert set(second.orthogonality) == {"magnitude:0.5 > rtn:w8", "rtn:w8 > magnitude:0.5"}


# ------------------------------------------------------------------ hand-computed error analysis


class LinearBench:
    """One 1 x 4 linear with X = I, so every error is ||W' - W||_F^2 and can be done by hand.

    W = [4, 1, -2.2, 0.5]. magnitude:0.5 zeroes the two smallest |w|; rtn:wB rounds symmetrically
    per row, step max|w| / (2^(B-1) - 1). M = -(1 + total error).
    """

    metric_name = "-perplexity"
    W = torch.tensor([[4.0, 1.0, -2.2, 0.5]])

    def fresh(self):
        layer = torch.nn.Linear(4, 1, bias=False)
        layer.weight.data = self.W.clone()
        return layer

    def apply(self, model, stage):
        w = model.weight.data
        method, arg = stage.text.split(":", 1)
        if method == "magnitude":
            k = int(w.numel() * float(arg))
            if k:
                threshold = w.abs().flatten().kthvalue(k).values
                w[w.abs() <= threshold] = 0.0
        else:
            qmax = 2 ** (int(arg.lstrip("w")) - 1) - 1
            scale = w.abs().amax(dim=1, keepdim=True) / qmax
            model.weight.data = torch.round(w / scale) * scale

    def _errors(self, reference, model):
        e = float((model.weight.data - reference).pow(2).sum())
        return {"per_linear": {"layer": e}, "per_block": [e], "total": e}

    def evaluation(self, model, units=None):
        return Evaluation(-(1.0 + self._errors(self.W, model)["total"]))  # no per-unit results

    def layer_errors(self, model):
        return self._errors(self.W, model)

    def stage_errors(self, reference, model):
        return self._errors(reference.weight.data, model)


def test_interference_and_excess_are_separate_hand_computed_numbers():
    study = run_order_study(LinearBench(), ["magnitude:0.5", "rtn:w3"], bits=(8, 3))
    # P(W) = [4, 0, -2.2, 0]: e_P = 1 + 0.25 = 5/4.  Q(W) = [4, 4/3, -8/3, 0] (step 4/3):
    # e_Q = 1/9 + (7/15)^2 + 1/4.  Both orders end at [4, 0, -8/3, 0]: composed error
    # 1 + (7/15)^2 + 1/4, so the excess over e_P + e_Q is -1/9 - 1/4 = -13/36 for both.
    e_p, e_q = 5 / 4, 1 / 9 + (7 / 15) ** 2 + 1 / 4
    p_first, q_first = "magnitude:0.5 > rtn:w3", "rtn:w3 > magnitude:0.5"
    for key in (p_first, q_first):
        v = study.orthogonality[key]
        assert v["composed_error"] == pytest.approx(1 + (7 / 15) ** 2 + 1 / 4)
        assert v["sum_single_errors"] == pytest.approx(e_p + e_q)
        assert v["excess"] == pytest.approx(-13 / 36) and v["orthogonal"]
    # Definition 6: the last stage's error inside the pipeline minus its error alone.
    # P first: RTN rounds [4, 0, -2.2, 0] with error (7/15)^2: Delta = (7/15)^2 - e_Q = -13/36.
    assert study.interference[p_first] == pytest.approx(-13 / 36)
    # Q first: pruning [4, 4/3, -8/3, 0] removes 4/3 (the 0 is already zero): 16/9 - 5/4 = 19/36,
    # not the composed error minus e_P (49/225 + 1/4 - 1/4 ...), which would count RTN's own error.
    assert study.interference[q_first] == pytest.approx(19 / 36)
    out = study_to_dict(study)
    assert out["orthogonality"][q_first]["excess"] == pytest.approx(-13 / 36)
    assert out["interference"][q_first] == pytest.approx(19 / 36)


def test_prediction_is_bound_aware():
    # magnitude at 0.01 or 0.02 prunes nothing of 4 weights: both beat every quantizer point, so
    # both CERs are "<= 2.00" and the hypothesis cannot order them.
    study = run_order_study(LinearBench(), ["magnitude:0.01", "magnitude:0.02"], bits=(8, 3),
                            layerwise=False)
    assert all(c.bound == "upper" for c in study.cer.values())
    assert study.prediction_open == [("magnitude:0.01", "magnitude:0.02")]
    assert study.agrees is None and study_to_dict(study)["prediction_agrees"] is None
    # a bound touching the other CER decides: <= 2.00 against rtn:w8's exact 2.00
    study = run_order_study(LinearBench(), ["rtn:w8", "magnitude:0.01"], bits=(8, 3), layerwise=False)
    assert study.predicted_order == ["magnitude:0.01", "rtn:w8"] and study.prediction_open == []


def test_cer_settings_and_a_non_monotone_curve_are_reported():
    from crescendo.analysis.cer import CERSettings

    bench = LinearBench()
    study = run_order_study(bench, ["magnitude:0.5", "rtn:w3"], bits=(8, 3), layerwise=False,
                            cer_settings=CERSettings(anchor="dense", scale="log"))
    out = study_to_dict(study)
    assert out["cer_method"] == "CER: linear in log-perplexity, anchored at dense (C = 1)"
    assert out["curve_monotone"] is True and out["curve_warning"] is None
    # rtn:w3 alone is a curve point: its CER is its own ratio, 16/3
    assert out["cer"]["rtn:w3"] == pytest.approx(16 / 3)

    class Wiggle(LinearBench):  # "8 bits" zeroes every weight: worse than 3 bits, C rises, M rises
        def apply(self, model, stage):
            if stage.text == "rtn:w8":
                model.weight.data.zero_()
            else:
                super().apply(model, stage)

    study = run_order_study(Wiggle(), ["magnitude:0.5", "rtn:w3"], bits=(8, 3), layerwise=False)
    out = study_to_dict(study)
    assert out["curve_monotone"] is False and "not monotone" in out["curve_warning"]
    assert out["cer"] == {"magnitude:0.5": None, "rtn:w3": None}
    assert out["predicted_order"] == [] and out["prediction_agrees"] is None
    study = run_order_study(Wiggle(), ["magnitude:0.5", "rtn:w3"], bits=(8, 3), layerwise=False,
                            cer_settings=CERSettings(envelope=True))
    # envelope: 8 bits keeps M = -(1 + 16 + 1 + 4.84 + 0.25) = -23.09 and 3 bits takes that
    # running minimum too; rtn:w3 alone (M = -(1 + 0.58)) beats the flat curve: CER <= 2.00
    out = study_to_dict(study)
    assert out["curve_monotone"] is False and "monotone envelope" in out["curve_warning"]
    assert out["cer"]["rtn:w3"] == "<= 2.00"


def test_every_advantage_and_gap_has_an_interval_and_a_verdict(bench):
    study = run_order_study(bench, ["magnitude:0.5", "rtn:w3"], bits=(8, 3), layerwise=False)
    out = study_to_dict(study)
    (pair, a), = out["advantage"].items()
    c = out["advantage_comparison"][pair]
    assert c["difference"] == pytest.approx(a, rel=1e-9) and c["interval"][0] <= a <= c["interval"][1]
    assert c["verdict"] in ("first better", "second better", "equivalent", "undetermined")
    assert c["n_units"] == 4 and c["total_units"] == 4  # the tiny bench's four windows, paired
    assert set(out["gap_comparison"]) == set(out["gap"])
    best = out["best_order_verdict"]
    assert " > ".join(out["best_order"]) == best["first"] and best["difference"] >= 0
    assert all(u == {"used": 4, "total": 4} for u in out["units"].values())


class UnitBench(LinearBench):
    """LinearBench with 64 evaluation windows: window i's loss is base_i + 0.1 (1 + jitter_i) x the total
    weight error, so a worse model is worse on every window, by a little more or less."""

    unit_kind, n_units = "window-loss", 64
    margin = Margin(0.005, relative=True)
    rng = np.random.default_rng(0)
    base, jitter = rng.normal(3.0, 0.3, 64), rng.normal(0, 0.1, 64)

    def evaluation(self, model, units=None):
        ids = np.arange(64) if units is None else np.asarray(units)
        error = self._errors(self.W, model)["total"]
        found = Units("window-loss", self.base[ids] + 0.1 * error * (1 + self.jitter[ids]), 64,
                      None if units is None else ids)
        return Evaluation(found.metric, found)


def test_a_raced_study_stores_partial_units_and_says_so():
    rows = []
    study = run_order_study(UnitBench(), ["magnitude:0.5", "rtn:w3"], bits=(8, 3), layerwise=False,
                            race=RaceSettings(round_size=4), on_result=lambda k, r, f: rows.append((k, r, f)))
    assert set(study.races) == {"singles", "orders"}
    singles = study.races["singles"]
    assert singles.winner == "rtn:w3" and singles.units_used("magnitude:0.5") < 64
    stored = {r: f for k, r, f in rows if k == "single"}
    assert len(stored["magnitude:0.5"].units) == singles.units_used("magnitude:0.5")
    assert stored["magnitude:0.5"].units.index.tolist() == singles.ids("magnitude:0.5").tolist()
    c = study.gap_comparisons["rtn:w3 | magnitude:0.5"]
    assert c.verdict == "first better" and "raced" in c.notes[0]
    assert {k for k, *_ in rows} == {"dense", "curve", "single", "order"}
    full = {k: len(f.units) for k, r, f in rows if k in ("dense", "curve")}
    assert set(full.values()) == {64}  # the dense model and the curve are never raced


def test_an_unraced_study_of_the_same_bench_agrees_with_the_race():
    full = run_order_study(UnitBench(), ["magnitude:0.5", "rtn:w3"], bits=(8, 3), layerwise=False)
    raced = run_order_study(UnitBench(), ["magnitude:0.5", "rtn:w3"], bits=(8, 3), layerwise=False,
                            race=RaceSettings(round_size=4))
    assert full.gap_comparisons["rtn:w3 | magnitude:0.5"].verdict == "first better"
    assert raced.gap_comparisons["rtn:w3 | magnitude:0.5"].verdict == "first better"
    assert raced.best_comparison.verdict == full.best_comparison.verdict, (raced.best_comparison, full.best_comparison)
