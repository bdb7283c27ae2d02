"""The order study on a tiny model: prefix sharing, JSON shape, prediction vs measurement."""

from __future__ import annotations

import pytest

from crescendo.analysis.order import run_order_study, study_to_dict
from crescendo.workflow import Workbench
from conftest import tiny_bench


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
    assert sorted(study.predicted_order) == sorted(methods)


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
    original = bench.metric
    bench.metric = lambda model: evaluated.append(1) or original(model)
    memo = {}
    first = run_order_study(bench, ["magnitude:0.5", "rtn:w4"], bits=(8,), layerwise=True, memo=memo)
    assert len(evaluated) == 1 + 1 + 2 + 2  # dense, curve, two singles, two orders
    second = run_order_study(bench, ["magnitude:0.5", "rtn:w8"], bits=(8,), layerwise=True, memo=memo)
    assert len(evaluated) == 6 + 1 + 2  # only rtn:w8 alone and the two new orders
    assert second.dense == first.dense and second.singles["magnitude:0.5"] == first.singles["magnitude:0.5"]
    assert second.singles["rtn:w8"] == second.curve[0][2]  # the same recipe: one memo entry
    assert set(second.orthogonality) == {"magnitude:0.5 > rtn:w8", "rtn:w8 > magnitude:0.5"}
