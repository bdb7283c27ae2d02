"""The sequential engine on tiny models of every supported family."""

from __future__ import annotations

import pytest
import torch
from conftest import FAMILIES, tiny_llama, tiny_model

from crescendo.api import compress, summarize
from crescendo.errors import ConfigError, ModelError, RecipeError
from crescendo.models.adapters import get_adapter, get_weight
from crescendo.state import state_of


def _logits(model, ids):
    with torch.no_grad():
        return model(ids, use_cache=False).logits


@pytest.mark.parametrize("family", FAMILIES)
def test_sparsegpt_then_gptq_on_every_family(family, calibration, eval_ids):
    model = tiny_model(family)
    dense = _logits(model, eval_ids)
    result = compress(model, "sparsegpt:0.5 > gptq:w4", calibration, progress=False)
    adapter = get_adapter(model)
    linears = adapter.all_block_linears(model)
    assert len(linears) >= 4
    records = state_of(model).records
    for name, module in linears.items():
        w = get_weight(module)
        rec = records[name]
        assert rec.mask is not None and abs(rec.mask.float().mean().item() - 0.5) < 0.02
        assert torch.all(w[rec.mask] == 0), f"{name}: pruned weights moved off zero after GPTQ"
        on_grid = rec.grid.project_all(w, rec.grid_params)
        assert torch.equal(on_grid, w), f"{name}: weights not on the recorded 4-bit grid"
    assert abs(result.summary.sparsity - 0.5) < 0.02
    assert 4.0 < result.summary.avg_weight_bits < 5.0
    out = _logits(model, eval_ids)
    assert torch.isfinite(out).all() and not torch.allclose(out, dense)
    assert [s.method for s in result.stages] == ["sparsegpt", "gptq"]


def test_quantize_then_sparsegpt_keeps_quantizer_grid(calibration):
    model = tiny_model("llama")
    compress(model, "rtn:w4,g32 > sparsegpt:0.5", calibration, progress=False)
    for name, rec in state_of(model).records.items():
        w = get_weight(dict(model.named_modules())[name])
        assert torch.equal(rec.grid.project_all(w, rec.grid_params), w)
        assert torch.all(w[rec.mask] == 0)


def test_nm_sparsity_pattern_holds(calibration):
    for method in ("magnitude", "wanda", "sparsegpt"):
        model = tiny_model("llama")
        compress(model, f"{method}:2:4", calibration, progress=False)
        for name, rec in state_of(model).records.items():
            groups = rec.mask.reshape(rec.mask.shape[0], -1, 4).sum(-1)
            assert torch.all(groups == 2), f"{method} broke 2:4 in {name}"


def test_multistage_pruning_adds_up(calibration):
    model = tiny_model("llama")
    result = compress(model, "sparsegpt:0.15 > rtn:w8 > sparsegpt:0.15", calibration, progress=False)
    assert abs(result.summary.sparsity - 0.30) < 0.01


def test_calibrated_stage_sees_earlier_stage(calibration):
    """f2 ∘ f1: SparseGPT after heavy quantization must differ from SparseGPT alone (different inputs)."""
    a, b = tiny_model("llama"), tiny_model("llama")
    compress(a, "sparsegpt:0.5", calibration, progress=False)
    compress(b, "act:a3 > sparsegpt:0.5", calibration, progress=False)
    masks_a = [r.mask for r in state_of(a).records.values()]
    masks_b = [r.mask for r in state_of(b).records.values()]
    assert any(not torch.equal(x, y) for x, y in zip(masks_a, masks_b))


def test_activation_quantization_changes_outputs_and_keeps_state_dict(calibration, eval_ids):
    model = tiny_model("llama")
    keys = list(model.state_dict())
    dense = _logits(model, eval_ids)
    compress(model, "act:a4", None, progress=False)
    assert list(model.state_dict()) == keys
    assert not torch.allclose(_logits(model, eval_ids), dense)


def test_gptq_beats_rtn_on_layer_error(calibration, eval_ids):
    dense = tiny_model("llama")
    ref = _logits(dense, eval_ids)
    errs = {}
    for method in ("rtn", "gptq"):
        m = tiny_model("llama")
        compress(m, f"{method}:w3", calibration, progress=False)
        errs[method] = (_logits(m, eval_ids) - ref).pow(2).mean().item()
    assert errs["gptq"] < errs["rtn"]


def test_bad_targets_fail_before_any_change(calibration):
    model = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match="matches no"):
        compress(model, "rtn:w4 > magnitude:0.5,include=nothing_here", calibration, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ConfigError, match="calibration"):
        compress(model, "gptq:w4", None, progress=False)


def test_dense_summary_and_unknown_architecture():
    model = tiny_model("llama")
    s = summarize(model)
    assert s.sparsity == 0 and s.avg_weight_bits == 16 and s.compression_ratio == 1
    with pytest.raises(ModelError):
        get_adapter(torch.nn.Linear(2, 2))


def test_formats_and_kv_quantization_as_stages(calibration, eval_ids):
    from crescendo.grids.elements import element_values

    model = tiny_model("llama")
    dense = _logits(model, eval_ids)
    compress(model, "magnitude:0.5 > mxfp4 > rtn:a8kv4", calibration, progress=False)
    values = element_values("e2m1")
    for name, rec in state_of(model).records.items():
        w = get_weight(dict(model.named_modules())[name])
        assert torch.all(w[rec.mask] == 0)
        assert torch.equal(rec.grid.project_all(w, rec.grid_params), w)
        exp = rec.grid_params["exponent"].repeat_interleave(32, dim=1)  # (out, in)
        scaled = (w / torch.pow(2.0, exp)).abs()
        assert torch.isin(scaled, values).all(), f"{name}: an element is off the E2M1 value set"
        assert (rec.kv_bits == 4) == name.endswith(("k_proj", "v_proj"))
    assert not torch.allclose(_logits(model, eval_ids), dense)


def test_kv_quantization_rejected_for_fused_qkv():
    model = tiny_model("gpt2")
    with pytest.raises(ConfigError, match="gpt2 fuses them"):
        compress(model, "rtn:w8kv8", None, progress=False)


def test_layerwise_error_is_zero_for_identical_and_grows_with_depth(calibration):
    import copy

    from crescendo.eval.layerwise import layerwise_error

    dense = tiny_model("llama")
    same = layerwise_error(dense, copy.deepcopy(dense), calibration)
    assert same.total == 0 and all(e == 0 for e in same.per_block)
    comp = copy.deepcopy(dense)
    compress(comp, "magnitude:0.5", None, progress=False)
    err = layerwise_error(dense, comp, calibration)
    assert len(err.per_block) == 2 and all(e > 0 for e in err.per_linear.values())
    assert set(err.per_linear) == set(get_adapter(dense).all_block_linears(dense))


def test_rotate_then_gptq_w4a4(calibration, eval_ids):
    dense = tiny_model("llama")
    ref = _logits(dense, eval_ids)
    rotated = tiny_model("llama")
    compress(rotated, "rotate", None, progress=False)
    assert torch.allclose(_logits(rotated, eval_ids), ref, atol=1e-4)
    plain, rot = tiny_model("llama"), tiny_model("llama")
    compress(plain, "gptq:w4a4", calibration, progress=False)
    compress(rot, "rotate > gptq:w4a4", calibration, progress=False)
    assert torch.isfinite(_logits(rot, eval_ids)).all()
    with pytest.raises(RecipeError, match="first stage"):
        compress(tiny_model("llama"), "rtn:w4 > rotate", None, progress=False)


def test_sleb_removes_whole_blocks_and_keeps_records(calibration, eval_ids):
    model = tiny_model("llama")
    model.config.num_hidden_layers = 2
    result = compress(model, "rtn:w8 > sleb:0.5", calibration, progress=False)
    assert len(model.model.layers) == 1 and model.config.num_hidden_layers == 1
    removed = state_of(model).removed
    assert removed.original_layers == 2 and len(removed.removed) == 1 and removed.params > 0
    assert set(state_of(model).records) == set(get_adapter(model).all_block_linears(model))
    assert 0.4 < result.summary.sparsity < 0.6  # one of two blocks' weights removed
    assert torch.isfinite(_logits(model, eval_ids)).all()


def test_sleb_picks_the_least_harmful_block(calibration):
    from crescendo.engine.block_removal import select_blocks_greedy

    model = tiny_llama(num_hidden_layers=3)
    with torch.no_grad():  # make block 1 an identity (its residual branches output zero)
        model.model.layers[1].self_attn.o_proj.weight.zero_()
        model.model.layers[1].mlp.down_proj.weight.zero_()
    assert select_blocks_greedy(model, get_adapter(model), calibration, 1, progress=False) == [1]


def test_bop_and_size_reduction_reported(calibration):
    model = tiny_model("llama")
    s = compress(model, "magnitude:2:4 > rtn:w8a8", None, progress=False).summary
    # 2:4 halves MACs, W8A8 divides bits by 2 * 2: 16*16 / (8*8) * 2 = 8
    assert s.bop_reduction == pytest.approx(8.0)
    assert 1.0 < s.size_reduction < 4.0  # 8-bit weights, half kept, plus scales and 2:4 metadata
    dense = summarize(tiny_model("llama"))
    assert dense.bop_reduction == 1.0 and dense.size_reduction == 1.0


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_zeros_pruned_prunes_on_top_of_quantizer_zeros(method, calibration):
    """After low-bit RTN many weights are exactly zero; by default a small ratio only re-selects them,
    with zeros=pruned the ratio is pruned on top of them."""
    plain, onto = tiny_model("llama"), tiny_model("llama")
    compress(plain, f"rtn:w2 > {method}:0.1", calibration, progress=False)
    result = compress(onto, f"rtn:w2 > {method}:0.1,zeros=pruned", calibration, progress=False)
    zeros_after_rtn = summarize(_rtn_only("rtn:w2", calibration)).zero_fraction
    assert zeros_after_rtn > 0.15  # the premise: 2-bit RTN rounds many weights to zero
    assert abs(summarize(plain).zero_fraction - zeros_after_rtn) < 0.02  # default: nothing new pruned
    assert abs(result.summary.sparsity - (zeros_after_rtn + 0.1)) < 0.02
    for name, rec in state_of(onto).records.items():
        w = get_weight(dict(onto.named_modules())[name])
        assert torch.all(w[rec.mask] == 0)
        assert torch.equal(rec.grid.project_all(w, rec.grid_params), w)  # still on the 2-bit grid
    assert str(result.recipe) == f"rtn:w2 > {method}:0.1,zeros=pruned"


def _rtn_only(recipe, calibration):
    model = tiny_model("llama")
    compress(model, recipe, calibration, progress=False)
    return model


def test_zeros_pruned_rejects_nm():
    with pytest.raises(RecipeError, match="N:M"):
        compress(tiny_model("llama"), "magnitude:2:4,zeros=pruned", None, progress=False)
    with pytest.raises(RecipeError, match="zeros"):
        compress(tiny_model("llama"), "magnitude:0.1,zeros=maybe", None, progress=False)


def test_linears_fed_one_input_share_one_hessian_and_one_factorization(calibration, monkeypatch):
    import crescendo.engine.stats as stats_module
    from crescendo.engine.stats import InputStatistics

    model = tiny_model("llama")
    block_linears = get_adapter(model).block_linears(model, 0)
    with InputStatistics(block_linears, "hessian") as stats:
        for ids in calibration:
            model(ids)
    leaders = {name.rsplit(".", 1)[-1]: stats.leader(name).rsplit(".", 1)[-1] for name in block_linears}
    assert leaders == {"q_proj": "q_proj", "k_proj": "q_proj", "v_proj": "q_proj", "o_proj": "o_proj",
                       "gate_proj": "gate_proj", "up_proj": "gate_proj", "down_proj": "down_proj"}
    assert stats.accumulations == 4 * len(calibration)  # not 7 per call
    names = list(block_linears)
    assert stats.result(names[0]) is stats.result(names[1]) is stats.result(names[2])

    calls = []
    real = stats_module.prepare_hessian_
    monkeypatch.setattr(stats_module, "prepare_hessian_", lambda *a, **k: calls.append(1) or real(*a, **k))
    result = compress(tiny_model("llama"), "gptq:w4", calibration, progress=False)
    assert len(calls) == 4 * 2  # one factorization per distinct input, per block
    assert result.stages[0].statistics == 8


def test_dead_inputs_are_counted_and_their_weights_kept(calibration):
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 5] = 0  # input channel 5 of q/k/v and gate/up is zero everywhere
        model.model.layers[0].self_attn.q_proj.weight[:, 5] = 0.37
    result = compress(model, "sparsegpt:0.25", calibration, progress=False)
    assert result.stages[0].dead_inputs >= 1  # layer 0's attention input (the residual channel stays 0)
    q = model.model.layers[0].self_attn.q_proj.weight[:, 5]
    mask = state_of(model).records["model.layers.0.self_attn.q_proj"].mask[:, 5]
    assert torch.all(q[~mask] == 0.37)  # not zeroed as the reference code does; pruning may still pick them


def test_batched_calibration_equals_one_window_at_a_time(calibration):
    from crescendo.engine.capture import capture_first_block_inputs, run_block

    model = tiny_model("llama")
    blocks = get_adapter(model).blocks(model)
    one = capture_first_block_inputs(model, blocks[0], calibration, 1)
    four = capture_first_block_inputs(model, blocks[0], calibration, 4)
    assert len(one) == 4 and len(four) == 1 and four.ids[0].shape == (4, 32)
    for block in blocks:  # every block's outputs, up to float reassociation
        out_one, out_four = run_block(block, one), run_block(block, four)
        a, b = torch.cat(out_one), out_four[0]
        assert (a - b).abs().max() <= 1e-5 * a.abs().max()
        one, four = one.with_hidden(out_one), four.with_hidden(out_four)
    single, batched = tiny_model("llama"), tiny_model("llama")
    compress(single, "sparsegpt:0.5 > gptq:w4", calibration, progress=False, calibration_batch_size=1)
    compress(batched, "sparsegpt:0.5 > gptq:w4", calibration, progress=False, calibration_batch_size=4)
    for name, rec in state_of(single).records.items():
        other = state_of(batched).records[name]
        assert (rec.mask == other.mask).float().mean() > 0.99
        w1, w4 = get_weight(single.get_submodule(name)), get_weight(batched.get_submodule(name))
        codes1, codes4 = rec.grid.encode_all(w1, rec.grid_params), other.grid.encode_all(w4, other.grid_params)
        assert (codes1 == codes4).float().mean() > 0.95  # the same codes but for rounding-boundary flips
        torch.testing.assert_close(rec.grid_params["scale"], other.grid_params["scale"], rtol=1e-4, atol=0)


@pytest.mark.parametrize("size", [0, 5, -1])
def test_calibration_batch_size_out_of_range(size, calibration):
    with pytest.raises(ConfigError, match="calibration batch size"):
        compress(tiny_model("llama"), "sparsegpt:0.5", calibration, progress=False, calibration_batch_size=size)
