"""Packed export: exact round trips, size on disk, and tampered files caught by verify."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from conftest import VOCAB, tiny_llama, tiny_model
from safetensors.torch import load_file, save_file

from crescendo.api import compress
from crescendo.errors import ConfigError, ModelError, VerifyError
from crescendo.export import VerifyReport, load, save_packed, verify
from crescendo.export.packing import pack_bits, unpack_bits
from crescendo.export.save import WEIGHTS
from crescendo.state import state_of

ROUND_TRIPS = [
    ("llama", "sparsegpt:0.5 > gptq:w4,g32"),
    ("gpt2", "wanda:2:4 > rtn:w8a8"),
    ("llama", "magnitude:0.5 > mxfp4"),
    ("llama", "hbfp8 > magnitude:2:4"),
    ("llama", "gptq:w3,sym"),
    ("llama", "rtn:w4a4kv4"),
    ("llama", "magnitude:2:4 > gptq:w4,g32,sym,fmt=q4_0"),
    ("llama", "rtn:w4,g32,fmt=q4_1"),
    ("llama", "rtn:w8a8,sym,fmt=ct"),
]


def _logits(model, ids):
    with torch.no_grad():
        return model(ids, use_cache=False).logits


def _compressed(family_or_model, recipe, calibration):
    model = tiny_model(family_or_model) if isinstance(family_or_model, str) else family_or_model
    compress(model, recipe, calibration, progress=False)
    return model


def _save(model, tmp_path, recipe, name="out") -> Path:
    return save_packed(model, None, tmp_path / name, {"recipe": recipe, "protocol": "test", "metrics": {"ppl": 1.0}})


def _assert_records_equal(a, b):
    assert set(a) == set(b)
    for name, ra in a.items():
        rb = b[name]
        for field in ("grid", "act_grid", "kv_bits", "history"):
            assert getattr(ra, field) == getattr(rb, field), (name, field)
        assert (ra.mask is None) == (rb.mask is None) and (ra.mask is None or torch.equal(ra.mask, rb.mask)), name
        assert (ra.grid_params is None) == (rb.grid_params is None), name
        for k, v in (ra.grid_params or {}).items():
            assert torch.equal(v.float(), rb.grid_params[k]), (name, k)


@pytest.mark.parametrize("family,recipe", ROUND_TRIPS)
def test_round_trip_is_bit_identical(family, recipe, calibration, eval_ids, tmp_path):
    model = _compressed(family, recipe, calibration)
    out = _save(model, tmp_path, recipe)
    loaded, tokenizer, meta = load(out)
    assert torch.equal(_logits(model, eval_ids), _logits(loaded, eval_ids))
    _assert_records_equal(state_of(model).records, state_of(loaded).records)
    assert tokenizer is None and meta["recipe"] == recipe and meta["metrics"] == {"ppl": 1.0}
    report = verify(out)
    assert report.ok, report.failure
    if family == "gpt2":  # Conv1D (transposed) weights, lm_head tied to wte
        assert loaded.lm_head.weight is loaded.transformer.wte.weight
        assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()


def test_tied_embeddings_bf16_tokenizer_and_rotation_survive(calibration, eval_ids, tmp_path):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    from crescendo.models.rotation import rotate_llama_

    torch.manual_seed(0)
    model = tiny_llama(tie_word_embeddings=True).eval()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    _compressed(model, "wanda:0.5 > rtn:w4a8,g32", calibration)
    vocab = {f"t{i}": i for i in range(VOCAB - 1)} | {"[UNK]": VOCAB - 1}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="[UNK]")), unk_token="[UNK]")
    out = save_packed(model, tok, tmp_path / "tied", {"recipe": "wanda:0.5 > rtn:w4a8,g32"})
    loaded, tokenizer, _ = load(out)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    assert torch.equal(_logits(model, eval_ids), _logits(loaded, eval_ids))
    assert tokenizer("t1 t2")["input_ids"] == tok("t1 t2")["input_ids"]

    half = tiny_model("llama").to(torch.bfloat16)
    _compressed(half, "magnitude:0.5 > gptq:w4,g32", calibration)
    loaded = load(_save(half, tmp_path, "magnitude:0.5 > gptq:w4,g32", "half"))[0]
    assert loaded.dtype == torch.bfloat16 and torch.equal(_logits(half, eval_ids), _logits(loaded, eval_ids))

    rotated = tiny_model("llama")
    rotate_llama_(rotated, seed=0)
    _compressed(rotated, "rtn:w4a4", calibration)
    loaded = load(_save(rotated, tmp_path, "rtn:w4a4", "rot"))[0]
    assert torch.equal(_logits(rotated, eval_ids), _logits(loaded, eval_ids))


def test_size_on_disk_reflects_compression(calibration, tmp_path):
    model = _compressed("llama", "sparsegpt:0.5 > gptq:w4", calibration)
    out = _save(model, tmp_path, "sparsegpt:0.5 > gptq:w4")
    tensors = load_file(str(out / WEIGHTS))
    names = list(state_of(model).records)
    packed = sum(t.numel() * t.element_size() for k, t in tensors.items() if k.rsplit(".weight.", 1)[0] in names)
    modules = dict(model.named_modules())
    fp16 = 2 * sum(modules[n].weight.numel() for n in names)
    assert packed < 0.25 * fp16, (packed, fp16)
    assert not any(k.endswith(".weight") and k.rsplit(".weight", 1)[0] in names for k in tensors)


def test_packed_config_declares_no_quantization_method(calibration, tmp_path):
    """The packed layout is crescendo's own: config.json must not claim a method whose reader cannot load it."""
    recipe = "sparsegpt:0.5 > gptq:w4,g32 > hbfp8:include=down_proj"
    out = _save(_compressed("llama", recipe, calibration), tmp_path, recipe)
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    manifest = json.loads((out / "crescendo_export.json").read_text())
    assert manifest["sparsity"]["structure"] == "unstructured" and manifest["sparsity"]["global_sparsity"] == 0.5
    assert manifest["linears"]["model.layers.0.mlp.down_proj"]["grid"] == {"type": "hbfp", "bits": 8, "block_size": 64}


def _rewrite(out: Path, change) -> None:
    tensors = load_file(str(out / WEIGHTS))
    change(tensors)
    save_file(tensors, str(out / WEIGHTS), metadata={"format": "pt"})


def _fails(out: Path, *fragments: str) -> str:
    report = verify(out)
    assert isinstance(report, VerifyReport) and not report.ok
    for fragment in fragments:
        assert fragment in report.failure, report.failure
    with pytest.raises(VerifyError):
        report.raise_if_failed()
    return report.failure


def test_code_moved_off_grid_is_caught(calibration, tmp_path):
    out = _save(_compressed("llama", "hbfp8", calibration), tmp_path, "hbfp8")
    key = "model.layers.1.mlp.up_proj.weight"
    _rewrite(out, lambda t: t[f"{key}.codes"].__setitem__(70, 0))  # code 0 = -128: outside ±127
    _fails(out, f"tensor {key} index 70 (row 1, column 6)", "off its recorded grid")


def test_broken_two_four_group_is_caught(calibration, tmp_path):
    model = _compressed("llama", "magnitude:2:4 > rtn:w4", calibration)
    out = _save(model, tmp_path, "magnitude:2:4 > rtn:w4")
    key = "model.layers.0.self_attn.o_proj.weight"
    mask = state_of(model).records["model.layers.0.self_attn.o_proj"].mask.reshape(-1)
    flat = int(mask[64 * 3:].nonzero()[0]) + 64 * 3  # a pruned weight in row 3
    byte, bit = divmod(flat, 8)

    def flip(t):
        t[f"{key}.bitmask"][byte] ^= 1 << bit  # pruned -> kept: its group now has one zero

    _rewrite(out, flip)
    _fails(out, f"tensor {key}.bitmask index {flat - flat % 4} (row 3,", "1 of 4 weights pruned")


def test_truncated_file_and_tensor_are_caught(calibration, tmp_path):
    model = _compressed("llama", "magnitude:0.5 > rtn:w4", calibration)
    out = _save(model, tmp_path, "magnitude:0.5 > rtn:w4")
    key = "model.layers.0.mlp.gate_proj.weight.codes"
    _rewrite(out, lambda t: t.__setitem__(key, t[key][:-1].clone()))
    _fails(out, f"tensor {key} is torch.uint8")
    data = (out / WEIGHTS).read_bytes()
    (out / WEIGHTS).write_bytes(data[: len(data) - 100])
    _fails(out, f"file {WEIGHTS} cannot be read")
    with pytest.raises(ModelError, match=WEIGHTS):
        load(out)


def test_nan_recipe_and_ratio_disagreements_are_caught(calibration, tmp_path):
    model = _compressed("llama", "magnitude:0.3 > rtn:w8", calibration)
    out = _save(model, tmp_path, "magnitude:0.3 > rtn:w8")
    assert verify(out).ok
    manifest_path = out / "crescendo_export.json"
    manifest = json.loads(manifest_path.read_text())
    for recipe, fragment in [("magnitude:0.5 > rtn:w8", "the recipe states 0.5000"),
                             ("magnitude:0.3 > rtn:w4", "the recipe puts its weights on UniformGrid(bits=4"),
                             ("rtn:w8", "the recipe does not prune it")]:
        manifest_path.write_text(json.dumps({**manifest, "recipe": recipe}))
        (out / "crescendo.json").write_text(json.dumps({"recipe": recipe}))
        _fails(out, fragment)
    manifest_path.write_text(json.dumps(manifest))
    (out / "crescendo.json").write_text(json.dumps({"recipe": "magnitude:0.3 > rtn:w8"}))
    key = "model.layers.1.self_attn.q_proj.weight.scale"
    _rewrite(out, lambda t: t[key].__setitem__((5, 0), float("nan")))
    _fails(out, f"tensor {key} index 5", "not finite")


def test_save_refuses_bad_targets_and_off_grid_weights_leaving_nothing(calibration, tmp_path):
    model = _compressed("llama", "rtn:w4", calibration)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        _save(model, tmp_path, "rtn:w4", "full")
    weight = model.model.layers[0].mlp.up_proj.weight
    original = weight.detach().clone()
    with torch.no_grad():
        weight[2, 5] += 1e-3
    with pytest.raises(VerifyError, match=r"model.layers.0.mlp.up_proj.weight index 133"):
        _save(model, tmp_path, "rtn:w4", "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]
    with torch.no_grad():
        weight.copy_(original)
    (tmp_path / "empty").mkdir()
    assert verify(_save(model, tmp_path, "rtn:w4", "empty")).ok  # an existing empty directory is fine


def test_loading_reads_json_and_safetensors_only(calibration, tmp_path):
    out = _save(_compressed("llama", "rtn:w4", calibration), tmp_path, "rtn:w4")
    marker = tmp_path / "executed"
    (out / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    config = json.loads((out / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "evil.Evil", "AutoConfig": "evil.Config"}
    (out / "config.json").write_text(json.dumps(config))
    load(out)
    assert not marker.exists()
    source = "".join(p.read_text() for p in Path(load.__code__.co_filename).parent.glob("*.py"))
    assert not re.search(r"torch\.load|import pickle|pickle\.load|trust_remote_code=True|(?<![.\w])exec\(|(?<![.\w])eval\(", source)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 7, 8, 12, 16])
def test_bit_packing_round_trips(bits):
    g = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 2**bits, (1001,), generator=g)
    packed = pack_bits(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == (1001 * bits + 7) // 8
    assert torch.equal(unpack_bits(packed, bits, 1001), codes)
    assert pack_bits(torch.tensor([1, 2, 3, 0]), 2).tolist() == [0b00_11_10_01]
