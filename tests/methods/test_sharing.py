"""Basis Sharing: the whitened shared SVD, the share stage, its composition with other stages, export."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_llama, tiny_model

from crescendo.api import compress, summarize
from crescendo.errors import ConfigError, RecipeError
from crescendo.export import load, save_packed, verify
from crescendo.kernels.sharing import shared_basis, shared_rank
from crescendo.models.adapters import get_adapter, get_weight
from crescendo.models.sharing import FactoredLinear
from crescendo.recipe import parse_recipe
from crescendo.state import state_of
from crescendo.transforms import branches, input_transforms, output_transforms

Q0, Q1 = "model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"


def _logits(model, ids):
    with torch.no_grad():
        return model(ids, use_cache=False).logits


def test_shared_basis_is_the_whitened_truncated_svd():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(200, 8, generator=g, dtype=torch.float64) * torch.linspace(0.1, 3, 8, dtype=torch.float64)
    H = X.T @ X
    W = [torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)]
    basis, coefs = shared_basis(W, H, rank=8)  # full rank: exact
    assert all(torch.allclose(c @ basis, w, atol=1e-4) for c, w in zip(coefs, W))
    basis, coefs = shared_basis(W, H, rank=3)
    assert basis.shape == (3, 8) and coefs[0].shape == (5, 3)
    error = sum(float((X.float() @ (w - c @ basis).T).pow(2).sum()) for c, w in zip(coefs, W))
    S = torch.linalg.cholesky(H).T
    sigma = torch.linalg.svdvals(S @ torch.cat([w.double().T for w in W], dim=1))
    assert error == pytest.approx(float(sigma[3:].pow(2).sum()), rel=1e-3)  # Eckart-Young in the whitened norm
    U, s, Vh = torch.linalg.svd(torch.cat([w.T for w in W], dim=1), full_matrices=False)  # unwhitened SVD
    B, C = U[:, :3] * s[:3], Vh[:3]
    plain = sum(float((X.float() @ (w.T - B @ C[:, 5 * i:5 * i + 5])).pow(2).sum()) for i, w in enumerate(W))
    assert error < plain
    assert shared_rank(4096, 4096, 2, 0.2) == int(0.8 * 2 * 4096 * 4096 // (4096 + 2 * 4096))


def test_share_factors_every_linear_with_one_basis_per_group(calibration, eval_ids):
    model = tiny_model("llama")
    dense_logits = _logits(model, eval_ids)
    dense_params = sum(m.weight.numel() for m in get_adapter(model).all_block_linears(model).values())
    result = compress(model, "share:group=2,rank=16", calibration, progress=False)
    q0, q1 = model.get_submodule(Q0), model.get_submodule(Q1)
    assert isinstance(q0, FactoredLinear) and isinstance(q1, FactoredLinear)
    assert q0.owns_basis and not q1.owns_basis and q1.shared_basis is q0.basis
    names = list(get_adapter(model).all_block_linears(model))
    assert f"{Q0}.basis" in names and f"{Q1}.basis" not in names and f"{Q1}.coefficient" in names
    assert all(n.endswith((".basis", ".coefficient")) for n in names)
    assert len(state_of(model).sharing.groups) == 7 and result.stages[0].details["shared_linears"] == 14
    out = _logits(model, eval_ids)
    assert torch.isfinite(out).all() and not torch.allclose(out, dense_logits)
    factor_params = sum(m.weight.numel() for m in get_adapter(model).all_block_linears(model).values())
    summary = summarize(model)
    assert summary.params == factor_params
    assert summary.compression_ratio == pytest.approx(dense_params / factor_params)
    assert summary.size_reduction == pytest.approx(dense_params / factor_params)
    assert summary.bop_reduction < summary.size_reduction  # the shared basis is stored once, computed per block


def test_pruning_after_sharing_prunes_the_factors(calibration):
    model = tiny_model("llama")
    compress(model, "share:group=2,rank=16", calibration, progress=False)
    shared_ratio = summarize(model).compression_ratio
    compress(model, "magnitude:0.5 > rtn:w8", calibration, progress=False)
    records = state_of(model).records
    for name, module in get_adapter(model).all_block_linears(model).items():
        w = get_weight(module)
        assert torch.all(w[records[name].mask] == 0)
        assert torch.equal(records[name].grid.project_all(w, records[name].grid_params), w)
    summary = summarize(model)
    assert abs(summary.sparsity - 0.5) < 0.01
    assert summary.compression_ratio > 3.5 * shared_ratio  # 2x from pruning, about 2x from 8 bits


def test_sharing_after_pruning_needs_absorb(calibration):
    model = tiny_model("llama")
    with pytest.raises(ConfigError, match="absorb"):
        compress(model, "magnitude:0.5 > share:group=2,rank=16", calibration, progress=False)
    assert not state_of(model).compressed
    compress(model, "magnitude:0.5 > share:group=2,rank=16,absorb", calibration, progress=False)
    info = state_of(model).sharing
    assert len(info.absorbed) == 14 and state_of(model).records[Q0].mask is None
    assert summarize(model).sparsity == 0.0  # the factors are dense: the pruning is no longer stored


def test_sharing_keeps_transforms_around_the_factors(calibration):
    model = tiny_model("llama")
    compress(model, "rotate > act:a8 > share:group=2,rank=16 > rtn:w4a4kv4", calibration, progress=False)
    down = model.get_submodule("model.layers.1.mlp.down_proj")
    assert isinstance(down, FactoredLinear) and len(input_transforms(down)) == 2  # Hadamard, a8 quantizer
    k = "model.layers.1.self_attn.k_proj"
    assert [type(t).__name__ for t in output_transforms(model.get_submodule(f"{k}.coefficient"))] == ["KVQuantizer"]
    assert state_of(model).records[f"{k}.coefficient"].kv_bits == 4


def test_shared_model_exports_reloads_and_verifies(calibration, eval_ids, tmp_path):
    for i, recipe in enumerate(["share:group=2,rank=16 > sparsegpt:0.5 > gptq:w4",
                                "rotate > act:a8 > share:group=2,ratio=0.5 > rtn:w4a4kv4 > lora:r=2,steps=2",
                                "magnitude:0.3 > share:group=2,rank=8,absorb,include=mlp"]):
        model = tiny_model("llama")
        compress(model, recipe, calibration, progress=False)
        out = tmp_path / f"m{i}"
        save_packed(model, None, out, {"recipe": recipe})
        back, _, _ = load(out)
        assert torch.equal(_logits(back, eval_ids), _logits(model, eval_ids)), recipe
        assert state_of(back).sharing == state_of(model).sharing
        report = verify(out)
        assert report.ok, (recipe, report.failure)
        assert summarize(back) == summarize(model)


def test_training_stages_train_the_shared_basis_once(calibration):
    model = tiny_model("llama")
    compress(model, "share:group=2,rank=16 > rtn:w4", calibration, progress=False)
    basis = get_weight(model.get_submodule(f"{Q0}.basis"))
    compress(model, "finetune:steps=2,lr=0.01 > lora:r=2,steps=2", calibration, progress=False)
    assert not torch.equal(get_weight(model.get_submodule(f"{Q0}.basis")), basis)
    assert model.get_submodule(Q1).shared_basis is model.get_submodule(f"{Q0}.basis")
    assert len(branches(model.get_submodule(f"{Q0}.basis"))) == 1  # one adapter on the one shared basis


@pytest.mark.parametrize("recipe, message", [
    ("share:group=3,rank=16", "does not fit: the model has 2 decoder blocks"),
    ("share:group=2,rank=40", "does not compress"),
    ("share:group=2,ratio=0.999", "does not fit"),
    ("share:group=2,rank=16,include=layers\\.0\\.", "target all its blocks"),
    ("share:group=2,rank=16,include=lm_head", "decoder blocks' original linears"),
    ("share:group=2,rank=16 > share:group=2,rank=8", "shared once"),
    ("share:group=2,rank=16 > sleb:0.5", "sleb after share"),
    ("lora:steps=1 > share:group=2,rank=16", "merge them first"),
])
def test_share_placements_that_do_not_fit_are_refused(recipe, message, calibration):
    model = tiny_model("llama")
    with pytest.raises(ConfigError, match=message):
        compress(model, recipe, calibration, progress=False)
    assert not state_of(model).compressed


def test_share_needs_repeated_blocks(calibration):
    model = tiny_llama(num_hidden_layers=1)
    with pytest.raises(ConfigError, match="repeated decoder blocks"):
        compress(model, "share:group=1,rank=4", calibration, progress=False)


def test_share_text_round_trips_and_rejects_bad_settings():
    stage = parse_recipe("share:rank=64,group=4,absorb").stages[0]
    assert stage.text == "share:group=4,rank=64,absorb" and stage.kind == "share"
    assert parse_recipe("share:ratio=0.3").stages[0].text == "share:group=2,ratio=0.3"
    for bad in ("share:group=2", "share:rank=8,ratio=0.2", "share:rank=0", "share:group=0,rank=2", "share:ratio=1.5",
                "share:rank=8,fast"):
        with pytest.raises(RecipeError):
            parse_recipe(bad)


def test_cli_refuses_hf_format_for_shared_models(capsys, tmp_path):
    from crescendo.cli import main

    code = main(["compress", "--recipe", "share:group=2,rank=8", "--save", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--format packed" in err and len(err.splitlines()) == 1 and not (tmp_path / "o").exists()


@pytest.mark.parametrize("family", ["opt", "gpt2", "gpt_neox", "qwen2"])
def test_share_then_quantize_on_other_families(family, calibration, eval_ids, tmp_path):
    model = tiny_model(family)
    compress(model, "share:group=2,rank=8 > rtn:w8", calibration, progress=False)
    assert all(n.endswith((".basis", ".coefficient")) for n in get_adapter(model).all_block_linears(model))
    out = _logits(model, eval_ids)
    assert torch.isfinite(out).all()
    save_packed(model, None, tmp_path / "m", {"recipe": "share:group=2,rank=8 > rtn:w8"})
    assert torch.equal(_logits(load(tmp_path / "m")[0], eval_ids), out)
    assert verify(tmp_path / "m").ok
