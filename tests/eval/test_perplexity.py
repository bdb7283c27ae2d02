"""Perplexity against Hugging Face's own loss, batching invariance, and a hand-computable case."""

from __future__ import annotations

import math
import types

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from crescendo.data import ProtocolData, get_protocol
from crescendo.errors import ConfigError, DataError
from crescendo.eval import causal_lm_window_losses, perplexity

VOCAB = 64


@pytest.fixture(scope="module")
def tiny_llama():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def windows():
    return torch.randint(0, VOCAB, (5, 24), generator=torch.Generator().manual_seed(1))


def test_matches_hugging_face_loss_with_labels(tiny_llama, windows):
    with torch.no_grad():
        hf_losses = [tiny_llama(w[None], labels=w[None]).loss.item() for w in windows]
    result = perplexity(tiny_llama, windows, progress=False)
    assert result.window_losses == pytest.approx(hf_losses, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(sum(hf_losses) / len(hf_losses)), rel=1e-5)
    assert result.mean_loss == pytest.approx(math.log(result.perplexity))
    assert (result.n_windows, result.tokens, result.dtype) == (5, 5 * 24, "float32")
    assert result.seconds > 0 and result.tokens_per_second > 0


@pytest.mark.parametrize("batch_size", [2, 3, 8])
def test_batching_does_not_change_the_result(tiny_llama, windows, batch_size):
    single = perplexity(tiny_llama, windows, progress=False)
    batched = perplexity(tiny_llama, windows, batch_size=batch_size, progress=False)
    assert batched.window_losses == pytest.approx(single.window_losses, rel=1e-5)


def test_accepts_lists_of_windows_and_protocol_data(tiny_llama, windows):
    expected = perplexity(tiny_llama, windows, progress=False).perplexity
    as_list = [w.view(1, -1) for w in windows]
    assert perplexity(tiny_llama, as_list, progress=False).perplexity == pytest.approx(expected, rel=1e-6)
    data = ProtocolData(get_protocol("sotu-v1-quick"), windows.reshape(1, -1), windows, [])
    from_data = perplexity(tiny_llama, data, batch_size=2, progress=False)
    assert from_data.perplexity == pytest.approx(expected, rel=1e-5)


def test_unequal_windows_are_scored_each_by_its_own_mean(tiny_llama, windows):
    ragged = [windows[0], windows[1, :10], windows[2, :10]]
    with torch.no_grad():
        hf = [tiny_llama(w[None], labels=w[None]).loss.item() for w in ragged]
    result = perplexity(tiny_llama, ragged, batch_size=3, progress=False)
    assert result.window_losses == pytest.approx(hf, rel=1e-5) and result.tokens == 44


class UniformLM(nn.Module):
    """Logits all equal: every token has probability 1/V, so perplexity is exactly V."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the model a device and a dtype

    def forward(self, input_ids, use_cache=False):
        logits = self.anchor.expand(*input_ids.shape, self.vocab)
        return types.SimpleNamespace(logits=logits)


def test_uniform_logits_give_vocab_size():
    ids = torch.randint(0, 50, (3, 16))
    result = perplexity(UniformLM(50), ids, progress=False)
    assert result.perplexity == pytest.approx(50.0, rel=1e-6)


def test_loss_is_computed_in_float32():
    logits = torch.randn(2, 8, 11).to(torch.bfloat16)
    ids = torch.randint(0, 11, (2, 8))
    losses = causal_lm_window_losses(logits, ids)
    expected = torch.stack([
        nn.functional.cross_entropy(logits[b, :-1].float(), ids[b, 1:]) for b in range(2)])
    assert losses.dtype == torch.float32 and torch.allclose(losses, expected)


def test_dtype_expectation_and_bad_inputs(tiny_llama, windows):
    with pytest.raises(ConfigError, match="runs in float32, not bfloat16"):
        perplexity(tiny_llama, windows, dtype="bfloat16", progress=False)
    assert perplexity(tiny_llama, windows[:1], dtype=torch.float32, progress=False).n_windows == 1
    with pytest.raises(DataError):
        perplexity(tiny_llama, [], progress=False)
    with pytest.raises(DataError):
        perplexity(tiny_llama, windows[:, :1], progress=False)
    with pytest.raises(ConfigError):
        perplexity(tiny_llama, windows, batch_size=0, progress=False)


def test_restores_training_mode(tiny_llama, windows):
    tiny_llama.train()
    perplexity(tiny_llama, windows[:1], progress=False)
    assert tiny_llama.training
    tiny_llama.eval()
