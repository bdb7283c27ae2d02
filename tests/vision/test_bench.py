"""The vision workbench: M = accuracy through compress, order studies and resumable sweeps."""

from __future__ import annotations

import pytest
import torch

from crescendo.analysis.order import run_order_study
from crescendo.data.vision_protocols import get_vision_protocol
from crescendo.models.vision import ResNetMiniConfig, ViTMiniConfig, build_vision_model
from crescendo.models.vision_io import save_vision_model
from crescendo.store import ResultStore
from crescendo.sweep import grid_tasks, run_sweep
from crescendo.vision.bench import VisionWorkbench
from crescendo.workflow import BenchFactory

RESNET = ResNetMiniConfig(image_size=8, widths=(8, 16), depths=(1, 1), strides=(1, 2))
VIT = ViTMiniConfig(image_size=8, patch_size=2, dim=16, depth=1, heads=2, mlp_dim=32)


def saved(tmp_path, config, name):
    torch.manual_seed(0)
    return save_vision_model(build_vision_model(config), tmp_path / name, {"dataset": "digits"})


@pytest.fixture(scope="module")
def digits():
    return get_vision_protocol("digits-v1").prepare()


def test_measure_and_compress_leave_the_dense_model_alone(tmp_path, digits):
    directory = saved(tmp_path, RESNET, "r")
    bench = VisionWorkbench(VisionWorkbench.load(directory, "digits-v1").model, "r", digits.protocol, digits,
                            progress=False)
    before = {k: v.clone() for k, v in bench.model.state_dict().items()}
    found = bench.measure(bench.model)
    metrics = found.metrics
    assert metrics.metric_name == "accuracy" and metrics.metric == metrics.accuracy == bench.dense().accuracy
    assert bench.dense().total == 360
    # one correctness bit per test image, averaging to the accuracy
    assert found.units.kind == "correct" and found.units.full and found.units.metric == metrics.accuracy
    model, result = bench.compress("foldbn > sparsegpt:0.5 > rtn:w4")
    assert result.summary.sparsity == pytest.approx(0.5) and result.summary.batchnorm == "folded"
    assert all(torch.equal(before[k], v) for k, v in bench.model.state_dict().items())
    compressed = bench.measure(model, layerwise=True).metrics
    assert compressed.per_block_error is not None and len(compressed.per_block_error) == 2
    assert compressed.sparsity == pytest.approx(0.5) and compressed.bop_reduction == pytest.approx(4.0)


def test_order_study_on_a_vit_uses_accuracy(tmp_path, digits):
    bench = VisionWorkbench(VisionWorkbench.load(saved(tmp_path, VIT, "v"), "digits-v1").model, "v",
                            digits.protocol, digits, progress=False, layerwise_samples=1)
    study = run_order_study(bench, ["wanda:0.5", "rtn:w3"], bits=(8, 3))
    assert study.metric_name == "accuracy" and study.dense == bench.dense().accuracy
    assert len(study.orders) == 2 and set(study.singles) == {"wanda:0.5", "rtn:w3"}
    forward = study.advantage["rtn:w3 > wanda:0.5 || wanda:0.5 > rtn:w3"]
    metrics = {" > ".join(o["order"]): o["metric"] for o in study.orders}
    assert forward == pytest.approx(metrics["rtn:w3 > wanda:0.5"] - metrics["wanda:0.5 > rtn:w3"])
    assert set(study.orthogonality) == set(metrics)  # per-linear errors exist for every order


def test_a_vision_sweep_is_resumable(tmp_path):
    directory = saved(tmp_path, RESNET, "r")
    tasks = grid_tasks("filter:{r},by=act", [0.25], "rtn:w{b}", [4], prefix="foldbn")
    factory = BenchFactory(str(directory), get_vision_protocol("digits-v1"), device="cpu")
    with ResultStore(tmp_path / "s.sqlite") as store:
        first = run_sweep(factory, "r", "digits-v1", tasks, store)
        again = run_sweep(factory, "r", "digits-v1", tasks, store)
        rows = store.rows()
    assert (first["computed"], again["skipped"], again["computed"]) == (len(tasks), len(tasks), 0)
    assert {r.metrics.metric_name for r in rows} == {"accuracy"} and all(r.metrics.perplexity is None for r in rows)
    assert {r.recipe for r in rows} >= {"dense", "foldbn > filter:0.25,by=act > rtn:w4",
                                        "foldbn > rtn:w4 > filter:0.25,by=act"}
