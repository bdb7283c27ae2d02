"""`crescendo compress --format gguf|compressed-tensors` and `crescendo verify` on a tiny model with a BPE tokenizer."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_PROTOCOL_ARGS, tiny_llama

from crescendo.cli import main


def _run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def _compress(capsys, bpe_tiny, recipe, *extra):
    model_dir, protocol = bpe_tiny
    return _run(capsys, "compress", "--model", str(model_dir), "--protocol", protocol, *TINY_PROTOCOL_ARGS,
                "--recipe", recipe, "--json", "--quiet", "--no-dense", *extra)


def test_gguf_from_the_cli_reloads_with_its_tokenizer_and_verifies(bpe_tiny, capsys, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "m.gguf"
    code, stdout, _ = _compress(capsys, bpe_tiny, "magnitude:2:4 > gptq:w4,g32,sym,fmt=q4_0", "--format", "gguf",
                                "--save", str(out), "--gguf-other", "f32")
    assert code == 0
    result = json.loads(stdout)
    assert result["format"] == "gguf" and result["gguf"]["types"]["q4_0"] == 14
    assert result["gguf"]["changed_by_cast"] == {} and result["gguf"]["tokenizer"] == "byte-level BPE (gpt2)"
    original = AutoTokenizer.from_pretrained(bpe_tiny[0])
    reloaded = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=out.name)
    sample = "the state of the union is strong"
    assert reloaded(sample)["input_ids"] == original(sample)["input_ids"]
    AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=out.name, dtype=torch.float32)
    code, stdout, _ = _run(capsys, "verify", str(out))
    assert code == 0 and stdout.startswith("OK") and "format gguf" in stdout


def test_compressed_tensors_from_the_cli_loads_and_verifies(bpe_tiny, capsys, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "ct"
    code, stdout, _ = _compress(capsys, bpe_tiny, "wanda:0.5 > rtn:w8a8,sym,fmt=ct", "--format", "compressed-tensors",
                                "--save", str(out))
    assert code == 0 and json.loads(stdout)["format"] == "compressed-tensors"
    assert (out / "tokenizer.json").exists()
    AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    code, stdout, _ = _run(capsys, "verify", str(out), "--json")
    report = json.loads(stdout)
    assert code == 0 and report["ok"] and report["summary"]["schemes"] == ["int-quantized"]


@pytest.mark.parametrize("recipe, argv, message", [
    ("rtn:w4,g128", ["--format", "gguf", "--save", "OUT/m.gguf"], "nearest recipe that fits is 'rtn:w4,g32,fmt=q4_1'"),
    ("rtn:w8a8", ["--format", "compressed-tensors", "--save", "OUT/ct"], "'rtn:w8a8,fmt=ct'"),
    ("rtn:w4,g32,sym,fmt=q4_0", ["--format", "gguf"], "--format gguf needs --save"),
    ("rtn:w4,g32,sym,fmt=q4_0", ["--format", "gguf", "--save", "OUT/m.bin"], "ending in .gguf"),
    ("rtn:w4,g32,sym,fmt=q4_0", ["--format", "gguf", "--save", "OUT/exists.gguf"], "exists"),
    ("rtn:w4,sym", ["--format", "compressed-tensors", "--save", "OUT/full"], "not empty"),
])
def test_bad_export_requests_are_one_line_exit_2_nothing_written(recipe, argv, message, bpe_tiny, capsys, tmp_path):
    (tmp_path / "exists.gguf").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    before = sorted(p.name for p in tmp_path.iterdir())
    argv = [a.replace("OUT", str(tmp_path)) for a in argv]
    code, _, err = _compress(capsys, bpe_tiny, recipe, *argv)
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_tokenizer_gguf_cannot_describe_is_refused_before_compressing(saved_tiny, capsys, tmp_path):
    model_dir, protocol = saved_tiny  # a word-level tokenizer
    code, _, err = _run(capsys, "compress", "--model", str(model_dir), "--protocol", protocol, *TINY_PROTOCOL_ARGS,
                        "--recipe", "rtn:w8,g32,sym,fmt=q8_0", "--quiet", "--format", "gguf",
                        "--save", str(tmp_path / "m.gguf"))
    assert code == 2 and "WordLevel tokenizer" in err and not list(tmp_path.iterdir())


@pytest.mark.parametrize("fmt", ["gguf", "compressed-tensors"])
@pytest.mark.parametrize("recipe, nearest", [
    ("share:ratio=0.2 > rtn:w4", "rtn:w4"),
    ("rtn:w4 > lora:r=2,steps=1", "lora:r=2,steps=1,merge"),
])
def test_runtime_formats_refuse_factored_and_unmerged_stages(fmt, recipe, nearest):
    from crescendo.errors import ConfigError
    from crescendo.export.fit import check_recipe_fits
    from crescendo.recipe import parse_recipe

    with pytest.raises(ConfigError, match="nearest recipe") as info:
        check_recipe_fits(parse_recipe(recipe), fmt)
    assert nearest.split(":")[0] in str(info.value).split("nearest recipe")[1]


@pytest.mark.parametrize("fmt, recipe, hint", [
    ("compressed-tensors", "rtn:w4,g128,sym", "rtn:w4,g64,sym"),  # hidden 64: groups of 128 do not split it
    ("gguf", "rtn:w4,g32,sym,fmt=q4_0", "cannot hold"),  # hidden 48: not a multiple of llama.cpp's 32
])
def test_group_width_that_does_not_split_a_layer_is_refused_before_compressing(fmt, recipe, hint, tmp_path):
    from crescendo.errors import ConfigError
    from crescendo.export.fit import check_model_fits
    from crescendo.recipe import parse_recipe
    from crescendo.state import state_of

    torch.manual_seed(0)
    model = tiny_llama(hidden_size=48, intermediate_size=96) if fmt == "gguf" else tiny_llama()
    with pytest.raises(ConfigError, match="not a multiple of its groups") as info:
        check_model_fits(model, parse_recipe(recipe), fmt)
    assert hint in str(info.value)
    assert not state_of(model).records  # nothing was compressed
    check_model_fits(tiny_llama(), parse_recipe("rtn:w4,g64,sym"), "compressed-tensors")  # fits: no error
