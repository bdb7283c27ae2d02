"""The interleaved mode: every stage block by block in one pass, against the default stagewise mode."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_PROTOCOL_ARGS, tiny_model

from crescendo.api import compress
from crescendo.engine import interleaved, sequential
from crescendo.engine.capture import BlockInputs
from crescendo.errors import ConfigError, CrescendoError
from crescendo.models.adapters import get_adapter, get_weight
from crescendo.state import state_of


def _weights(model):
    return {n: get_weight(m) for n, m in get_adapter(model).all_block_linears(model).items()}


def _compressed(recipe, calibration, mode):
    model = tiny_model("llama")
    result = compress(model, recipe, calibration, progress=False, mode=mode, calibration_batch_size=2)
    return model, result


def test_data_free_recipes_are_identical_in_both_modes(calibration):
    a, _ = _compressed("magnitude:0.5 > rtn:w4a8", calibration, "stagewise")
    b, result = _compressed("magnitude:0.5 > rtn:w4a8", calibration, "interleaved")
    assert result.mode == "interleaved" and [s.method for s in result.stages] == ["magnitude", "rtn"]
    wa, wb = _weights(a), _weights(b)
    assert all(torch.equal(wa[n], wb[n]) for n in wa)
    assert all(state_of(b).records[n].act_grid is not None for n in wb)


def test_calibrated_stages_differ_only_where_earlier_blocks_fed_them(calibration):
    a, _ = _compressed("sparsegpt:0.5 > gptq:w4", calibration, "stagewise")
    b, _ = _compressed("sparsegpt:0.5 > gptq:w4", calibration, "interleaved")
    wa, wb = _weights(a), _weights(b)
    block0 = [n for n in wa if ".layers.0." in n]
    block1 = [n for n in wa if ".layers.1." in n]
    # block 0 calibrates on the embeddings in both modes: the same weights
    assert all(torch.equal(wa[n], wb[n]) for n in block0)
    # block 1: interleaved, SparseGPT calibrates on block 0 already quantized by GPTQ
    assert any(not torch.equal(wa[n], wb[n]) for n in block1)
    for n, w in wb.items():  # the invariants hold in the interleaved mode too
        rec = state_of(b).records[n]
        assert torch.all(w[rec.mask] == 0) and torch.equal(rec.grid.project_all(w, rec.grid_params), w)
        assert abs(rec.sparsity - 0.5) < 0.02


def test_one_weight_stage_is_the_same_in_both_modes(calibration):
    a, _ = _compressed("gptq:w4", calibration, "stagewise")
    b, _ = _compressed("gptq:w4", calibration, "interleaved")
    wa, wb = _weights(a), _weights(b)
    assert all(torch.equal(wa[n], wb[n]) for n in wa)
    # with activation quantizers, interleaved calibrates block 1 on block 0's quantized activations
    a, _ = _compressed("gptq:w4a4", calibration, "stagewise")
    b, _ = _compressed("gptq:w4a4", calibration, "interleaved")
    wa, wb = _weights(a), _weights(b)
    assert all(torch.equal(wa[n], wb[n]) for n in wa if ".layers.0." in n)
    assert any(not torch.equal(wa[n], wb[n]) for n in wa if ".layers.1." in n)


def test_interleaved_runs_fewer_blocks(calibration, monkeypatch):
    counts = {}
    for mode in ("stagewise", "interleaved"):
        calls = {"blocks": 0, "captures": 0}

        def counting(real, _calls=calls):
            def run(inputs, block):
                _calls["blocks"] += 1
                return real(inputs, block)
            return run

        def counting_capture(*args, _real=sequential.capture_first_block_inputs, _calls=calls, **kwargs):
            _calls["captures"] += 1
            return _real(*args, **kwargs)

        for method in ("run", "advance_"):  # statistics passes, and propagation to the next block
            monkeypatch.setattr(BlockInputs, method, counting(getattr(BlockInputs, method)))
        for module in (sequential, interleaved):
            monkeypatch.setattr(module, "capture_first_block_inputs", counting_capture)
        _compressed("sparsegpt:0.5 > gptq:w4", calibration, mode)
        counts[mode] = dict(calls)
        monkeypatch.undo()
    # 2 blocks, 2 calibrated stages: stagewise 2 x (2 statistics + 1 propagation); interleaved 2 x 2 + 1
    assert counts == {"stagewise": {"blocks": 6, "captures": 2}, "interleaved": {"blocks": 5, "captures": 1}}


def test_rotation_leads_and_whole_model_stages_are_refused(calibration):
    model, result = _compressed("rotate > sparsegpt:0.5 > rtn:w4", calibration, "interleaved")
    assert state_of(model).rotation is not None and [s.method for s in result.stages] == ["rotate", "sparsegpt", "rtn"]
    for recipe in ("rtn:w4 > lora:steps=1", "sleb:0.5 > rtn:w4", "rtn:w4 > finetune:steps=1",
                   "share:group=2,rank=8 > rtn:w4", "rtn:w4 > rotate"):
        model = tiny_model("llama")
        with pytest.raises(CrescendoError):
            compress(model, recipe, calibration, progress=False, mode="interleaved")
        assert not state_of(model).compressed
    with pytest.raises(ConfigError, match="whole-model"):
        compress(tiny_model("llama"), "rtn:w4 > finetune:steps=1", calibration, progress=False, mode="interleaved")
    with pytest.raises(ConfigError, match="decoder-block linears only"):
        compress(tiny_model("llama"), "rtn:w8,include=lm_head", calibration, progress=False, mode="interleaved")
    with pytest.raises(ConfigError, match="unknown compression mode"):
        compress(tiny_model("llama"), "rtn:w8", calibration, progress=False, mode="blockwise")


def test_cli_names_the_mode(saved_tiny, capsys):
    from crescendo.cli import main

    model_dir, protocol = saved_tiny
    code = main(["compress", "--model", str(model_dir), "--protocol", protocol, *TINY_PROTOCOL_ARGS, "--recipe",
                 "sparsegpt:0.5 > rtn:w4", "--mode", "interleaved", "--json", "--quiet", "--no-dense"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["mode"] == "interleaved" and out["protocol"].endswith("+interleaved")
    code = main(["compress", "--model", str(model_dir), "--protocol", protocol, "--recipe", "rtn:w4 > lora",
                 "--mode", "interleaved"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "whole-model" in err and len(err.splitlines()) == 1
