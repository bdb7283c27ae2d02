"""GGUF and compressed-tensors exports reloaded by the runtimes' own readers: identical weights and perplexity."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tiny_bench, tiny_llama

from crescendo.api import compress
from crescendo.errors import ConfigError
from crescendo.eval.perplexity import perplexity
from crescendo.export import save_compressed_tensors, save_gguf, verify
from crescendo.export.gguf import rotary_permutation
from crescendo.models.adapters import get_adapter
from crescendo.state import state_of


def _reload_gguf(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()


def _reload_ct(path, dequantize: bool = False):
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    # MX weights decompress to bfloat16 on the lazy path, which a float32 model cannot multiply;
    # dequantize=True decompresses them at load time into the model's dtype
    extra = {"quantization_config": CompressedTensorsConfig(dequantize=True)} if dequantize else {}
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, **extra).eval()


def _assert_same_linears(model, reloaded):
    """Every compressed linear's weight equal as float32 values, and bit for bit up to the sign of zero."""
    mine, theirs = dict(model.named_modules()), dict(reloaded.named_modules())
    names = [n for n, r in state_of(model).records.items() if r.grid is not None]
    assert names
    for name in names:
        a, b = mine[name].weight.detach(), theirs[name].weight.detach()
        assert torch.equal(a, b), name
        assert torch.equal((a + 0.0).view(torch.int32), (b + 0.0).view(torch.int32)), name


def _ppl(model, bench):
    return perplexity(model, bench.data.eval_windows, progress=False).perplexity


GGUF_RECIPES = ["rtn:w8,g32,sym,fmt=q8_0", "magnitude:2:4 > gptq:w4,g32,sym,fmt=q4_0", "gptq:w4,g32,fmt=q4_1",
                "wanda:0.5 > rtn:w4,g32,sym,fmt=q4_0"]


@pytest.mark.parametrize("recipe", GGUF_RECIPES)
def test_gguf_reloads_in_transformers_with_identical_weights_and_perplexity(recipe, tmp_path):
    bench = tiny_bench()
    model, outcome = bench.run(recipe)
    path = save_gguf(model, None, tmp_path / "m.gguf", {"recipe": recipe}, other="f32").path
    reloaded = _reload_gguf(path)
    _assert_same_linears(model, reloaded)
    assert _ppl(reloaded, bench) == outcome.perplexity
    report = verify(path)
    assert report.ok, report.failure


def test_gguf_tied_gqa_model_and_f16_cast_is_reported(calibration, eval_ids, tmp_path):
    torch.manual_seed(0)
    model = tiny_llama(tie_word_embeddings=True, num_key_value_heads=1).eval()
    compress(model, "rtn:w4,g32,sym,fmt=q4_0", calibration, progress=False)
    report = save_gguf(model, None, tmp_path / "m.gguf", {"recipe": "rtn:w4,g32,sym,fmt=q4_0"})
    assert report.changed and set(report.changed) == {"model.embed_tokens.weight"}  # tied head stored once
    reloaded = _reload_gguf(report.path)
    assert reloaded.config.tie_word_embeddings
    _assert_same_linears(model, reloaded)
    embed = model.model.embed_tokens.weight.detach()
    assert torch.equal(reloaded.model.embed_tokens.weight, embed.half().float())  # exactly F16's rounding
    assert report.types == {"q4_0": 14, "f16": 1, "f32": 5}


@pytest.mark.parametrize("kind", ["q8_0", "q4_0", "q4_1"])
def test_rtn_with_fmt_writes_the_bytes_llama_cpps_quantizer_writes(kind, calibration, tmp_path):
    from gguf import GGMLQuantizationType, GGUFReader, quantize

    recipe = {"q8_0": "rtn:w8,g32,sym,fmt=q8_0", "q4_0": "rtn:w4,g32,sym,fmt=q4_0", "q4_1": "rtn:w4,g32,fmt=q4_1"}[kind]
    model = tiny_llama().eval()
    dense = {n: m.weight.detach().clone() for n, m in get_adapter(model).all_block_linears(model).items()}
    compress(model, recipe, calibration, progress=False)
    path = save_gguf(model, None, tmp_path / "m.gguf", {"recipe": recipe}).path
    stored = {t.name: np.asarray(t.data) for t in GGUFReader(str(path)).tensors}
    for name, w in dense.items():
        layer, proj = name.split(".")[2], name.split(".")[-1]
        gguf_name = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
                     "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}[proj]
        if proj in ("q_proj", "k_proj"):  # llama.cpp's converter permutes these rows before quantizing
            w = w[rotary_permutation(w.shape[0], 4 if proj == "q_proj" else 2)]
        expected = quantize(w.numpy(), GGMLQuantizationType[kind.upper()])
        assert np.array_equal(stored[f"blk.{layer}.{gguf_name}.weight"], expected), name


CT_RECIPES = ["sparsegpt:0.5 > gptq:w4,g32,sym", "magnitude:0.5 > rtn:w4", "rtn:w8,sym", "gptq:w8a8,sym,fmt=ct",
              "wanda:2:4 > rtn:w8a8,fmt=ct", "gptq:w4,g32,sym,fmt=q4_0", "int4b", "magnitude:0.5 > mxfp4", "mxfp6",
              "mxfp8"]


@pytest.mark.parametrize("recipe", CT_RECIPES)
def test_compressed_tensors_reloads_in_transformers_with_identical_weights_and_perplexity(recipe, tmp_path):
    bench = tiny_bench()
    model, outcome = bench.run(recipe)
    out = save_compressed_tensors(model, None, tmp_path / "ct", {"recipe": recipe})
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["quantization_status"] == "compressed"
    reloaded = _reload_ct(out, dequantize="mx" in recipe)
    assert _ppl(reloaded, bench) == outcome.perplexity  # the first forward decompresses the weights
    _assert_same_linears(model, reloaded)
    report = verify(out)
    assert report.ok, report.failure


def test_compressed_tensors_formats_pack_symmetric_codes(tmp_path, calibration):
    from safetensors.torch import load_file

    model = tiny_llama().eval()
    compress(model, "rtn:w4,g32,sym", calibration, progress=False)
    out = save_compressed_tensors(model, None, tmp_path / "ct", {"recipe": "rtn:w4,g32,sym"})
    tensors = load_file(str(out / "model.safetensors"))
    packed = tensors["model.layers.0.mlp.up_proj.weight_packed"]
    assert packed.dtype == torch.int32 and tuple(packed.shape) == (128, 64 * 4 // 32)  # 8 codes per int32
    assert tensors["model.layers.0.mlp.up_proj.weight_scale"].dtype == torch.float32
    assert "model.layers.0.mlp.up_proj.weight" not in tensors


def test_ct_activation_grid_is_compressed_tensors_own_quantizer():
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize
    from compressed_tensors.quantization.utils.helpers import calculate_qparams

    from crescendo.grids.uniform import CTActivationGrid

    x = torch.randn(16, 64, generator=torch.Generator().manual_seed(0)) * torch.logspace(-2, 2, 16)[:, None]
    x[3] = 0
    args = QuantizationArgs(num_bits=8, type="int", symmetric=True, strategy="token", dynamic=True)
    scale, zp = calculate_qparams(x.amin(dim=1, keepdim=True), x.amax(dim=1, keepdim=True), args)
    theirs = fake_quantize(x, scale, zp, args)
    assert torch.equal(CTActivationGrid(8).quantize(x), theirs)
    from crescendo.grids import UniformGrid

    assert not torch.equal(UniformGrid(8, symmetric=True).quantize(x), theirs)  # amax / 127 is another grid


@pytest.mark.parametrize("recipe, fmt, nearest", [
    ("sparsegpt:0.5 > gptq:w4,g128", "gguf", "sparsegpt:0.5 > gptq:w4,g32,sym,fmt=q4_0"),
    ("rtn:w4,g32", "gguf", "rtn:w4,g32,fmt=q4_1"),
    ("magnitude:0.5 > rtn:w8a8", "gguf", "magnitude:0.5 > rtn:w8,g32,sym,fmt=q8_0"),
    ("hbfp8:include=down_proj", "gguf", "rtn:w8,g32,sym,fmt=q8_0,include=down_proj"),
    ("rtn:w8a8", "compressed-tensors", "rtn:w8a8,fmt=ct"),
    ("magnitude:2:4 > hbfp4", "compressed-tensors", "magnitude:2:4 > rtn:w4,g64,sym"),
    ("mxfp8:w,a", "compressed-tensors", "rtn:w8,g32,sym"),
    ("rotate > gptq:w4a4kv4", "compressed-tensors", "gptq:w4a4,fmt=ct"),
])
def test_recipes_that_do_not_fit_are_refused_with_the_nearest_that_fits(recipe, fmt, nearest):
    from crescendo.export.fit import check_recipe_fits
    from crescendo.recipe import parse_recipe

    with pytest.raises(ConfigError, match=f"nearest recipe that fits is '{nearest}'"):
        check_recipe_fits(parse_recipe(recipe), fmt)
    check_recipe_fits(parse_recipe(nearest), fmt)  # and the nearest one does fit


def test_models_the_formats_cannot_describe_are_refused_leaving_nothing(calibration, tmp_path):
    from conftest import tiny_model

    from crescendo.models.rotation import rotate_llama_

    gpt2 = tiny_model("gpt2")
    compress(gpt2, "rtn:w8,g32,sym,fmt=q8_0", calibration, progress=False)
    with pytest.raises(ConfigError, match="LLaMA-architecture"):
        save_gguf(gpt2, None, tmp_path / "g.gguf", {})
    rotated = tiny_model("llama")
    rotate_llama_(rotated, seed=0)
    compress(rotated, "rtn:w4,g32,sym", calibration, progress=False)
    with pytest.raises(ConfigError, match="online Hadamard"):
        save_compressed_tensors(rotated, None, tmp_path / "r", {})
    mx = tiny_model("llama")
    compress(mx, "mxfp8_e5m2", calibration, progress=False)
    with pytest.raises(ConfigError, match="not stored exactly"):
        save_compressed_tensors(mx, None, tmp_path / "m", {})
    (tmp_path / "exists.gguf").write_text("x")
    with pytest.raises(ConfigError, match="exists"):
        save_gguf(tiny_llama(), None, tmp_path / "exists.gguf", {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists.gguf"]


def test_verify_catches_tampered_gguf_files(calibration, tmp_path):
    from gguf import GGUFReader

    torch.manual_seed(0)
    model = tiny_llama().eval()
    compress(model, "rtn:w8,g32,sym,fmt=q8_0", calibration, progress=False)
    path = save_gguf(model, None, tmp_path / "m.gguf", {"recipe": "rtn:w8,g32,sym,fmt=q8_0"}).path
    assert verify(path).ok
    tensor = next(t for t in GGUFReader(str(path)).tensors if t.name == "blk.1.ffn_up.weight")
    data = bytearray(path.read_bytes())
    data[tensor.data_offset + 34 + 2 + 5] = 0x80  # row 0, block 1, element 5: int8 -128
    path.write_bytes(bytes(data))
    failure = verify(path).failure
    assert "blk.1.ffn_up.weight row 0, column 37: code -128 is off the Q8_0 grid" in failure, failure
    path.write_bytes(bytes(data[: len(data) // 2]))
    assert "is not a valid GGUF file" in verify(path).failure  # truncated: refused by the walk of its header

    lying = save_gguf(model, None, tmp_path / "l.gguf", {"recipe": "rtn:w4,g32,sym,fmt=q4_0"}).path
    assert "the recipe puts its weights on Q4_0" in verify(lying).failure
    dense_zeros = save_gguf(model, None, tmp_path / "p.gguf", {"recipe": "magnitude:0.5 > rtn:w8,g32,sym,fmt=q8_0"}).path
    assert "the recipe prunes 0.5000" in verify(dense_zeros).failure


def test_verify_catches_tampered_compressed_tensors_files(calibration, tmp_path):
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    model = tiny_llama().eval()
    compress(model, "magnitude:2:4 > rtn:w4,g32", calibration, progress=False)  # asymmetric: int8 codes
    out = save_compressed_tensors(model, None, tmp_path / "ct", {"recipe": "magnitude:2:4 > rtn:w4,g32"})
    assert verify(out).ok
    tensors = load_file(str(out / "model.safetensors"))
    key = "model.layers.0.mlp.up_proj.weight"
    original = tensors[key][3, 9].clone()
    tensors[key][3, 9] = 50  # outside the 4-bit range [-8, 7]
    save_file(tensors, str(out / "model.safetensors"))
    failure = verify(out).failure
    assert f"tensor {key} index {3 * 64 + 9}: 50 is outside the 4-bit range [-8, 7]" in failure, failure
    tensors[key][3, 9] = original
    tensors[key][5, :4] = 1  # a group of four with no zero: breaks 2:4 (zero point 0 keeps 1 nonzero)
    tensors["model.layers.0.mlp.up_proj.weight_zero_point"][5, 0] = 0
    save_file(tensors, str(out / "model.safetensors"))
    failure = verify(out).failure
    assert "row 5, columns 0..3: 0 of 4 weights are zero, the recipe's 2:4 needs 2" in failure, failure


@pytest.mark.real_model
@pytest.mark.timeout(2400)  # loads the embedded model three times (about 4 minutes on an idle 2-core machine)
def test_embedded_model_round_trips_through_both_runtimes(tmp_path):
    """SmolLM2-135M: GGUF (other tensors Q8_0, which its embedding already is) and compressed-tensors
    reload with bit-identical compressed linears and the perplexity crescendo measured (2 windows)."""
    from crescendo.workflow import Workbench, resolve_protocol

    bench = Workbench.load("smollm2-135m", resolve_protocol("sotu-v1-quick", None, 2, 4), progress=False)
    model, outcome = bench.run("rtn:w4,g32,sym,fmt=q4_0")
    report = save_gguf(model, bench.tokenizer, tmp_path / "smol.gguf", {"recipe": "rtn:w4,g32,sym,fmt=q4_0"},
                       other="q8_0", source_gguf=bench.info.path)
    assert report.exact and report.types == {"q8_0": 1, "f32": 61, "q4_0": 210}  # Q8_0 embedding kept exactly
    assert verify(report.path).ok
    reloaded = _reload_gguf(report.path)
    _assert_same_linears(model, reloaded)
    assert _ppl(reloaded, bench) == outcome.perplexity
    del reloaded
    out = save_compressed_tensors(model, bench.tokenizer, tmp_path / "ct", {"recipe": "rtn:w4,g32,sym,fmt=q4_0"})
    assert verify(out).ok
    reloaded = _reload_ct(out)
    assert _ppl(reloaded, bench) == outcome.perplexity
    _assert_same_linears(model, reloaded)
