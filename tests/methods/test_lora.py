"""LoRA stages: frozen base weights, adapters that see the base's transforms, merge, export, no peft."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from conftest import VOCAB, tiny_model

from crescendo.api import compress, summarize
from crescendo.errors import ConfigError
from crescendo.export import load, save_packed, verify
from crescendo.models.adapters import get_adapter, get_weight
from crescendo.models.lora import LoRABranch, peft_lora
from crescendo.state import state_of
from crescendo.transforms import branches, input_transforms, output_transforms

DOWN = "model.layers.0.mlp.down_proj"
K = "model.layers.1.self_attn.k_proj"


def _weights(model):
    return {n: get_weight(m) for n, m in get_adapter(model).all_block_linears(model).items()}


def _logits(model, ids):
    with torch.no_grad():
        return model(ids, use_cache=False).logits


def _calibration_loss(model, calibration):
    with torch.no_grad():
        return sum(float(model(ids, labels=ids, use_cache=False).loss) for ids in calibration) / len(calibration)


def _through(transforms, x):
    for t in transforms:
        x = t(x)
    return x


def test_adapter_sees_the_base_input_transforms_in_training_and_after(calibration):
    model = tiny_model("llama")
    compress(model, "rotate > rtn:w4a4kv4", calibration, progress=False)
    x = torch.randn(2, 5, 128)
    for name, n_in in ((DOWN, 128), (K, 64)):
        base = model.get_submodule(name)
        ins, outs = input_transforms(base), output_transforms(base)
        assert ins and (name != DOWN or len(ins) == 2)  # online Hadamard, then the activation quantizer
        x = torch.randn(2, 5, n_in)
        with peft_lora(model, {name: base}, rank=2, alpha=4.0, seed=0) as wrappers:
            wrapper = wrappers[name]
            assert wrapper is not base and wrapper.base_layer is base and not input_transforms(base)
            torch.nn.init.normal_(wrapper.lora_B["default"].weight)  # a non-zero adapter
            A, B = wrapper.lora_A["default"].weight.detach(), wrapper.lora_B["default"].weight.detach()
            with torch.no_grad():
                seen = _through(ins, x)
                expected = _through(outs, torch.nn.functional.linear(seen, base.weight) + seen @ A.T @ B.T * 2.0)
                raw = _through(outs, torch.nn.functional.linear(seen, base.weight) + x @ A.T @ B.T * 2.0)
                assert torch.allclose(wrapper(x), expected, atol=1e-5)
                assert not torch.allclose(expected, raw, atol=1e-3)  # the raw input would give another output
                during = wrapper(x)
            branch = LoRABranch(A.clone(), B.clone(), 2.0)
        assert model.get_submodule(name) is base and input_transforms(base) == ins and output_transforms(base) == outs
        from crescendo.transforms import add_branch_

        add_branch_(base, branch)
        with torch.no_grad():
            assert torch.equal(base(x), during)  # the branch computes exactly what peft's wrapper did


def test_lora_keeps_base_weights_masks_and_grids(calibration, eval_ids):
    model = tiny_model("llama")
    compress(model, "sparsegpt:0.5 > rtn:w4", calibration, progress=False)
    before, logits, loss = _weights(model), _logits(model, eval_ids), _calibration_loss(model, calibration)
    result = compress(model, "lora:r=4,steps=8,lr=0.01", calibration, progress=False)
    assert _calibration_loss(model, calibration) < loss
    assert all(torch.equal(before[n], w) for n, w in _weights(model).items())
    assert not torch.allclose(_logits(model, eval_ids), logits)
    state = state_of(model)
    assert state.lora.rank == 4 and len(state.lora.targets) == len(before)
    assert all(len(branches(model.get_submodule(n))) == 1 for n in before)
    assert all(p.requires_grad for p in model.parameters())  # flags restored after training
    assert "peft_config" not in model.__dict__
    details = result.stages[0].details
    assert details["adapters"] == len(before) and details["adapter_params"] == sum(
        4 * sum(model.get_submodule(n).weight.shape) for n in before)
    # the adapters are stored beside the weights: they lower the compression ratio
    with_adapters = summarize(model)
    for n in before:
        model.get_submodule(n).branches = torch.nn.ModuleList()
    assert with_adapters.compression_ratio < summarize(model).compression_ratio
    assert with_adapters.size_reduction < summarize(model).size_reduction


def test_lora_is_deterministic_for_a_seed(calibration, eval_ids):
    outs = []
    for seed in (0, 0, 1):
        model = tiny_model("llama")
        compress(model, f"rtn:w4 > lora:r=2,steps=2,lr=0.01,seed={seed}", calibration, progress=False)
        outs.append(_logits(model, eval_ids))
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])


def test_merge_puts_every_weight_back_on_its_grid_and_mask(calibration, tmp_path):
    model = tiny_model("llama")
    compress(model, "sparsegpt:0.5 > rtn:w4 > lora:r=4,steps=4,lr=0.05,merge", calibration, progress=False)
    records = state_of(model).records
    for name, w in _weights(model).items():
        rec = records[name]
        assert torch.all(w[rec.mask] == 0) and torch.equal(rec.grid.project_all(w, rec.grid_params), w)
        assert not branches(model.get_submodule(name))
    assert state_of(model).lora is None
    recipe = "sparsegpt:0.5 > rtn:w4 > lora:r=4,steps=4,lr=0.05,merge"
    save_packed(model, None, tmp_path / "m", {"recipe": recipe})
    report = verify(tmp_path / "m")
    assert report.ok, report.failure
    assert not (tmp_path / "m" / "adapter_config.json").exists()


def test_merge_changes_weights(calibration):
    model = tiny_model("llama")
    compress(model, "magnitude:0.5", calibration, progress=False)
    before = _weights(model)
    compress(model, "lora:r=4,steps=3,lr=0.05,merge", calibration, progress=False)
    after = _weights(model)
    mask = state_of(model).records[DOWN].mask
    assert torch.all(after[DOWN][mask] == 0) and not torch.equal(after[DOWN], before[DOWN])


def test_unmerged_adapters_export_and_reload_exactly(calibration, eval_ids, tmp_path):
    model = tiny_model("llama")
    recipe = "rotate > sparsegpt:0.5 > rtn:w4a4 > lora:r=2,steps=2,lr=0.01"
    compress(model, recipe, calibration, progress=False)
    save_packed(model, None, tmp_path / "m", {"recipe": recipe})
    config = json.loads((tmp_path / "m" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 2 and config["lora_alpha"] == 32
    back, _, _ = load(tmp_path / "m")
    assert state_of(back).lora.targets == state_of(model).lora.targets
    assert torch.equal(_logits(back, eval_ids), _logits(model, eval_ids))
    report = verify(tmp_path / "m")
    assert report.ok, report.failure


def test_peft_reads_the_adapter_files(calibration, eval_ids, tmp_path):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    from crescendo.workflow import save_hf

    model = tiny_model("llama")
    compress(model, "lora:r=2,steps=2,lr=0.01", calibration, progress=False)
    tok = type("Tok", (), {"save_pretrained": lambda self, d: None})()
    save_hf(model, tok, tmp_path / "hf", {"recipe": "lora:r=2,steps=2,lr=0.01"})
    # peft's own reader, on the untouched base model (LoRA leaves the base weights as they were)
    with_peft = peft.PeftModel.from_pretrained(tiny_model("llama"), tmp_path / "hf").eval()
    assert torch.allclose(_logits(with_peft, eval_ids), _logits(model, eval_ids), atol=1e-5)
    # transformers applies adapter files it finds beside the weights
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert torch.allclose(_logits(plain, eval_ids), _logits(model, eval_ids), atol=1e-5)


def test_hf_directory_reloads_its_adapters_as_branches(calibration, eval_ids, tmp_path, monkeypatch):
    from crescendo.workflow import load_any, save_hf

    model = tiny_model("llama")
    compress(model, "rotate > lora:r=2,steps=2,lr=0.01", calibration, progress=False)
    tok = type("Tok", (), {"save_pretrained": lambda self, d: None})()
    save_hf(model, tok, tmp_path / "hf", {"recipe": "rotate > lora:r=2,steps=2,lr=0.01"})
    monkeypatch.setattr("crescendo.models.loading._from_pretrained",
                        lambda resolved, dtype, local_only: (__import__("transformers").AutoModelForCausalLM
                                                             .from_pretrained(resolved.location), None))
    for peft_installed in (True, False):
        if not peft_installed:  # then transformers does not apply them: crescendo reads the files itself
            monkeypatch.setattr("transformers.integrations.peft.is_peft_available", lambda: False)
        back = load_any(str(tmp_path / "hf"))[0].eval()
        assert all(len(branches(back.get_submodule(n))) == 1 for n in state_of(model).lora.targets)
        assert "peft_config" not in back.__dict__
        assert torch.allclose(_logits(back, eval_ids), _logits(model, eval_ids), atol=1e-5)


def test_bad_lora_placements_are_refused(calibration):
    model = tiny_model("llama")
    with pytest.raises(ConfigError, match="merge the earlier"):
        compress(model, "lora:steps=1 > lora:steps=1", calibration, progress=False)
    with pytest.raises(ConfigError, match="does not fit"):
        compress(model, "lora:r=100,steps=1", calibration, progress=False)
    assert not state_of(model).compressed  # refused before anything changed


def test_lora_without_peft_is_one_line_exit_2_naming_the_extra(monkeypatch, saved_tiny, tmp_path, capsys):
    from crescendo.cli import main

    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` now raises ImportError
    model_dir, protocol = saved_tiny
    out = tmp_path / "out"
    code = main(["compress", "--model", str(model_dir), "--protocol", protocol, "--recipe", "rtn:w4 > lora",
                 "--save", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "crescendo[lora]" in err
    assert not out.exists()
    with pytest.raises(ConfigError, match=r"crescendo\[lora\]"):
        compress(tiny_model("llama"), "lora", [torch.randint(0, VOCAB, (1, 8))], progress=False)


@pytest.mark.parametrize("family", ["opt", "gpt2"])
def test_lora_on_other_families_keeps_base_weights_and_merges(family, calibration, eval_ids):
    model = tiny_model(family)
    compress(model, "rtn:w8", calibration, progress=False)
    before, logits = _weights(model), _logits(model, eval_ids)
    compress(model, "lora:r=2,steps=2,lr=0.01", calibration, progress=False)
    assert all(torch.equal(before[n], w) for n, w in _weights(model).items())
    adapted = _logits(model, eval_ids)
    assert not torch.allclose(adapted, logits)
    model = tiny_model(family)
    compress(model, "rtn:w8 > lora:r=2,steps=2,lr=0.01,merge", calibration, progress=False)
    for name, w in _weights(model).items():
        rec = state_of(model).records[name]
        assert torch.equal(rec.grid.project_all(w, rec.grid_params), w)


def test_verify_checks_the_adapter_files(calibration, tmp_path):
    model = tiny_model("llama")
    compress(model, "rtn:w4 > lora:r=2,steps=1", calibration, progress=False)
    save_packed(model, None, tmp_path / "m", {"recipe": "rtn:w4 > lora:r=2,steps=1"})
    assert verify(tmp_path / "m").ok
    (tmp_path / "m" / "adapter_model.safetensors").unlink()
    report = verify(tmp_path / "m")
    assert not report.ok and report.failure.startswith("the model has LoRA adapters but")
