"""Sparsity-aware fine-tuning: masks and grids kept exactly, other weights free, deterministic."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model

from crescendo.api import compress
from crescendo.errors import RecipeError
from crescendo.grids import UniformGrid
from crescendo.methods.quantization import ActivationQuantizer
from crescendo.models.adapters import get_adapter, get_weight
from crescendo.recipe import parse_recipe
from crescendo.state import state_of


def _weights(model):
    return {n: get_weight(m) for n, m in get_adapter(model).all_block_linears(model).items()}


def test_finetune_keeps_every_mask_and_grid_and_moves_weights(calibration):
    model = tiny_model("llama")
    compress(model, "sparsegpt:0.5 > rtn:w4,g32", calibration, progress=False)
    before = _weights(model)
    with torch.no_grad():
        loss = sum(float(model(ids, labels=ids).loss) for ids in calibration)
    result = compress(model, "finetune:steps=6,lr=0.01", calibration, progress=False)
    with torch.no_grad():
        assert sum(float(model(ids, labels=ids).loss) for ids in calibration) < loss
    after = _weights(model)
    records = state_of(model).records
    moved = 0
    for name, w in after.items():
        rec = records[name]
        assert torch.all(w[rec.mask] == 0), f"{name}: a pruned weight moved off zero"
        assert torch.equal(rec.grid.project_all(w, rec.grid_params), w), f"{name}: a weight left its grid"
        moved += int((w != before[name]).sum())
        assert rec.history[-1] == "finetune:steps=6,lr=0.01"
    assert moved > 100, "fine-tuning changed (almost) no quantized weight"
    details = result.stages[0].details
    assert details["trained_linears"] == len(after) and details["first_loss"] > 0
    unpruned = sum(int((~records[n].mask).sum()) for n in after)
    assert details["changed_fraction"] == pytest.approx(moved / unpruned)


def test_finetune_reports_when_no_quantized_weight_moved(calibration):
    """A tiny lr from on-grid masters moves nothing: the stage must say so rather than look trained."""
    model = tiny_model("llama")
    compress(model, "rtn:w4", calibration, progress=False)
    result = compress(model, "finetune:steps=2,lr=1e-7", calibration, progress=False)
    assert result.stages[0].details["changed_fraction"] == 0.0


def test_finetune_moves_uncompressed_weights_freely(calibration):
    model = tiny_model("llama")
    compress(model, "magnitude:0.5,include=mlp", calibration, progress=False)
    before = _weights(model)
    compress(model, "finetune:steps=3,lr=0.001", calibration, progress=False)
    after = _weights(model)
    q = "model.layers.0.self_attn.q_proj"
    assert state_of(model).records[q].mask is None
    assert (after[q] != before[q]).float().mean() > 0.9  # unpruned, unquantized: every weight may move
    up = "model.layers.0.mlp.up_proj"
    mask = state_of(model).records[up].mask
    assert torch.all(after[up][mask] == 0) and (after[up][~mask] != before[up][~mask]).float().mean() > 0.9


def test_finetune_is_deterministic_for_a_seed(calibration):
    runs = []
    for seed in (0, 0, 1):
        model = tiny_model("llama")
        compress(model, f"rtn:w4 > finetune:steps=3,lr=0.01,seed={seed}", calibration, progress=False)
        runs.append(_weights(model))
    assert all(torch.equal(runs[0][n], runs[1][n]) for n in runs[0])
    assert any(not torch.equal(runs[0][n], runs[2][n]) for n in runs[0])


def test_activation_quantizer_is_straight_through():
    quantizer = ActivationQuantizer(UniformGrid(4, symmetric=True))
    x = torch.randn(3, 16, requires_grad=True)
    y = quantizer(x)
    assert torch.equal(y, UniformGrid(4, symmetric=True).quantize(x.detach()))  # forward: exact
    (y * torch.arange(16.0)).sum().backward()
    assert torch.equal(x.grad, torch.arange(16.0).expand(3, 16))  # backward: identity


def test_finetune_with_activation_quantizers_trains_and_keeps_grids(calibration):
    model = tiny_model("llama")
    compress(model, "rtn:w4a4 > finetune:steps=2,lr=0.01", calibration, progress=False)
    for name, w in _weights(model).items():
        rec = state_of(model).records[name]
        assert torch.equal(rec.grid.project_all(w, rec.grid_params), w)


def test_finetune_text_round_trips_and_rejects_bad_settings():
    stage = parse_recipe("finetune:lr=1e-4,steps=50,seed=3").stages[0]
    assert stage.text == "finetune:steps=50,lr=0.0001,seed=3" and stage.kind == "adapt"
    assert parse_recipe(stage.text).stages[0].config == stage.config
    assert parse_recipe("finetune").stages[0].text == "finetune"
    for bad in ("finetune:steps=0", "finetune:lr=2", "finetune:batch=0", "finetune:epochs=2", "finetune:0.5"):
        with pytest.raises(RecipeError):
            parse_recipe(bad)
