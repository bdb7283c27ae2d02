"""QuaRot rotation: Hadamard kernels are orthogonal, rotated tiny models compute the same logits."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    OPTConfig,
    OPTForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from crescendo.errors import ConfigError, ModelError
from crescendo.kernels.hadamard import apply_hadamard, hadamard_matrix, random_hadamard_matrix
from crescendo.models.rotation import OnlineHadamard, RotationInfo, rotate_llama_
from crescendo.state import state_of
from crescendo.transforms import input_transforms

# intermediate 96 = 32 * 3 exercises the Kronecker (Sylvester x Paley-12) construction
SHAPE = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)


def _randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights everywhere, norm scales away from 1, so that folding and biases matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1.0 + 0.3 * noise if "norm" in name else 0.15 * noise)
    return model.eval()


def _build(family: str) -> torch.nn.Module:
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**SHAPE, tie_word_embeddings=False))
    elif family == "llama_bias":
        config = LlamaConfig(**SHAPE, tie_word_embeddings=False, attention_bias=True, mlp_bias=True)
        model = LlamaForCausalLM(config)
    elif family == "llama_tied":
        model = LlamaForCausalLM(LlamaConfig(**SHAPE, tie_word_embeddings=True))
    elif family == "mistral":
        model = MistralForCausalLM(MistralConfig(**SHAPE, tie_word_embeddings=False))
    elif family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**SHAPE, tie_word_embeddings=False))
    else:
        raise ValueError(family)
    return _randomize_(model)


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


IDS = torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("n", [1, 2, 12, 64, 96, 576, 1536, 9, 100])
def test_hadamard_matrix_is_orthogonal(n):
    H = hadamard_matrix(n)
    assert H.dtype == torch.float64 and H.shape == (n, n)
    torch.testing.assert_close(H @ H.T, torch.eye(n, dtype=torch.float64), atol=1e-12, rtol=0)


@pytest.mark.parametrize("n", [12, 64, 96, 576, 1536])
def test_hadamard_matrix_is_a_true_hadamard_for_model_widths(n):
    # entries of equal magnitude spread every coordinate evenly (the point of the rotation)
    H = hadamard_matrix(n)
    torch.testing.assert_close(H.abs(), torch.full_like(H, n**-0.5), atol=1e-15, rtol=0)


def test_hadamard_matrix_small_cases_and_errors():
    expected = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64) / 2**0.5
    torch.testing.assert_close(hadamard_matrix(2), expected)
    assert hadamard_matrix(4, dtype=torch.float32).dtype == torch.float32
    for bad in (0, -4):
        with pytest.raises(ConfigError):
            hadamard_matrix(bad)


def test_random_hadamard_is_seeded_and_orthogonal():
    Q0, Q0b, Q1 = random_hadamard_matrix(96, 0), random_hadamard_matrix(96, 0), random_hadamard_matrix(96, 1)
    torch.testing.assert_close(Q0 @ Q0.T, torch.eye(96, dtype=torch.float64), atol=1e-12, rtol=0)
    assert torch.equal(Q0, Q0b) and not torch.equal(Q0, Q1)
    # random signs act on rows: Q = diag(s) H
    signs = (Q0 / hadamard_matrix(96))[:, 0]
    torch.testing.assert_close(Q0, signs[:, None] * hadamard_matrix(96))


def test_apply_hadamard_keeps_dtype():
    H = hadamard_matrix(64)
    x = torch.randn(3, 5, 64, generator=torch.Generator().manual_seed(0))
    y = apply_hadamard(x.bfloat16(), H)
    assert y.dtype == torch.bfloat16 and y.shape == x.shape
    torch.testing.assert_close(apply_hadamard(x, H), (x.double() @ H).float())
    torch.testing.assert_close(apply_hadamard(x, H * 8.0, scale=1 / 8.0), apply_hadamard(x, H))


@pytest.mark.parametrize("family", ["llama", "llama_bias", "llama_tied", "mistral", "qwen2"])
def test_rotation_preserves_logits(family):
    model = _build(family)
    before = _logits(model, IDS)
    keys = list(model.state_dict().keys())
    info = rotate_llama_(model, seed=5)
    after = _logits(model, IDS)
    assert (after - before).abs().max() / before.abs().max() < 1e-5
    assert list(model.state_dict().keys()) == keys  # online Hadamard buffers are non-persistent
    assert info == RotationInfo(64, 96, 5, family == "llama_tied", True)
    # the weights really changed: the norms are folded, the embedding rotated
    assert torch.all(model.model.layers[0].input_layernorm.weight == 1)
    assert torch.all(model.model.norm.weight == 1)


def test_online_hadamard_on_every_down_proj():
    model = _build("llama")
    rotate_llama_(model)
    for layer in model.model.layers:
        transforms = input_transforms(layer.mlp.down_proj)
        assert len(transforms) == 1 and isinstance(transforms[0], OnlineHadamard)
        assert transforms[0].n == 96
        assert input_transforms(layer.self_attn.o_proj) == []


def test_rotation_without_value_hadamard_and_other_seed():
    model = _build("qwen2")
    before = _logits(model, IDS)
    info = rotate_llama_(model, seed=123, value_hadamard=False)
    assert not info.value_hadamard and state_of(model).rotation == info
    assert (_logits(model, IDS) - before).abs().max() / before.abs().max() < 1e-5


def test_tied_head_is_untied_with_warning(caplog):
    model = _build("llama_tied")
    assert model.lm_head.weight is model.model.embed_tokens.weight
    with caplog.at_level(logging.WARNING, logger="crescendo.models.rotation"):
        info = rotate_llama_(model)
    assert info.untied and model.config.tie_word_embeddings is False
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    assert "tie_word_embeddings" in caplog.text
    model.tie_weights()  # a later re-tie by transformers must not undo the untying
    assert model.lm_head.weight is not model.model.embed_tokens.weight


def test_tied_head_with_unit_final_norm_stays_tied():
    model = _build("llama_tied")
    with torch.no_grad():
        model.model.norm.weight.fill_(1.0)
    before = _logits(model, IDS)
    info = rotate_llama_(model)
    assert not info.untied and model.config.tie_word_embeddings is True
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert (_logits(model, IDS) - before).abs().max() / before.abs().max() < 1e-5


def test_state_records_rotation_and_saves(tmp_path):
    from conftest import _word_tokenizer

    from crescendo.workflow import load_any, save_hf

    model = _build("llama_tied")
    before = _logits(model, IDS)
    rotate_llama_(model, seed=7)
    save_hf(model, _word_tokenizer(8), tmp_path / "out", {"recipe": "rotate:seed=7"})
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["tie_word_embeddings"] is False and not any(k.startswith("crescendo") for k in saved)
    assert json.loads((tmp_path / "out" / "crescendo.json").read_text())["state"]["rotation"]["seed"] == 7
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "out")  # transformers alone: no online Hadamard
    assert set(plain.state_dict()) == set(model.state_dict())
    assert plain.lm_head.weight is not plain.model.embed_tokens.weight
    reloaded, _, _ = load_any(str(tmp_path / "out"))
    assert state_of(reloaded).rotation == state_of(model).rotation
    assert isinstance(input_transforms(reloaded.model.layers[0].mlp.down_proj)[0], OnlineHadamard)
    assert (_logits(reloaded, IDS) - before).abs().max() / before.abs().max() < 1e-5


def test_rotating_twice_is_refused():
    model = _build("mistral")
    rotate_llama_(model)
    with pytest.raises(ModelError, match="already rotated"):
        rotate_llama_(model)


def test_unsupported_architecture_raises_model_error():
    opt = OPTForCausalLM(OPTConfig(vocab_size=128, hidden_size=64, ffn_dim=96, num_hidden_layers=2,
                                   num_attention_heads=4, max_position_embeddings=64, word_embed_proj_dim=64))
    with pytest.raises(ModelError, match="OPTForCausalLM"):
        rotate_llama_(opt)
