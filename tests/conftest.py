"""Tiny randomly initialised models, one per supported architecture family."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    OPTConfig,
    OPTForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

VOCAB = 96


def tiny_llama(**kw):
    cfg = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    cfg.update(kw)
    return LlamaForCausalLM(LlamaConfig(**cfg))


def cache_with_one_entry(directory):
    """`directory` as a prefix cache holding one real entry (a tiny LLaMA under a fixed key)."""
    from crescendo.cache import PrefixCache

    cache = PrefixCache(directory)
    cache.put(cache.key("tiny", "proto", 0, "magnitude:0.5"), tiny_model("llama"))
    return directory


def tiny_model(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if family == "llama":
        model = tiny_llama()
    elif family == "mistral":
        model = MistralForCausalLM(MistralConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                                                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    elif family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    elif family == "opt":
        model = OPTForCausalLM(OPTConfig(vocab_size=VOCAB, hidden_size=64, ffn_dim=128, num_hidden_layers=2,
                                         num_attention_heads=4, max_position_embeddings=128, word_embed_proj_dim=64))
    elif family == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=128))
    elif family == "gpt_neox":
        model = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                                                 num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=128))
    else:
        raise ValueError(family)
    return model.eval()


FAMILIES = ["llama", "mistral", "qwen2", "opt", "gpt2", "gpt_neox"]


@pytest.fixture
def calibration():
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, VOCAB, (1, 32), generator=g) for _ in range(4)]


@pytest.fixture
def eval_ids():
    g = torch.Generator().manual_seed(2)
    return torch.randint(0, VOCAB, (2, 32), generator=g)


def _word_tokenizer(n_words: int):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, **{f"w{i}": i + 1 for i in range(n_words)}}
    backend = Tokenizer(WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")


@pytest.fixture(scope="session")
def saved_tiny(tmp_path_factory):
    """A tiny LLaMA saved with a word-level tokenizer, plus a text corpus: (model_dir, protocol_spec)."""
    root = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    model = tiny_llama()
    model.save_pretrained(root / "model")
    _word_tokenizer(VOCAB - 1).save_pretrained(root / "model")
    g = torch.Generator().manual_seed(5)
    words = lambda n: " ".join(f"w{int(i)}" for i in torch.randint(0, 40, (n,), generator=g))
    (root / "test.txt").write_text(words(400))
    (root / "calib.txt").write_text(words(2000))
    return root / "model", f"text:{root / 'test.txt'},{root / 'calib.txt'}"


TINY_PROTOCOL_ARGS = ["--seqlen", "32", "--eval-windows", "4", "--nsamples", "4"]


def tiny_bench(cls=None, **kwargs):
    """A Workbench on a tiny LLaMA with random token windows (no tokenizer, no corpus on disk)."""
    from crescendo.data import Protocol, ProtocolData
    from crescendo.models.loading import ModelInfo
    from crescendo.workflow import Workbench

    g = torch.Generator().manual_seed(3)
    proto = Protocol("tiny", "text:unused", seqlen=32, n_eval_windows=4, n_calibration=4)
    data = ProtocolData(proto, torch.randint(0, VOCAB, (1, 128), generator=g),
                        torch.randint(0, VOCAB, (4, 32), generator=g),
                        [torch.randint(0, VOCAB, (1, 32), generator=g) for _ in range(4)])
    cls = cls or Workbench
    return cls(tiny_model("llama"), None, ModelInfo("tiny-llama", "local", None), proto, data,
               progress=False, **kwargs)


@pytest.fixture(scope="session")
def bpe_tiny(tmp_path_factory):
    """A tiny LLaMA saved with a byte-level BPE tokenizer (GPT-2 style, so GGUF can hold it) and a small corpus:
    (model_dir, protocol_spec)."""
    import numpy as np
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("bpe")
    g = np.random.default_rng(0)
    words = ["the", "state", "of", "union", "is", "strong", "we", "will", "build", "people", "nation", "work"]
    text = lambda n: " ".join(g.choice(words, n))
    backend = ByteLevelBPETokenizer()
    backend.train_from_iterator([text(200) for _ in range(20)], vocab_size=300, min_frequency=1,
                                special_tokens=["<|endoftext|>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend._tokenizer, eos_token="<|endoftext|>",
                                  bos_token="<|endoftext|>", unk_token="<|endoftext|>")
    torch.manual_seed(0)
    model = tiny_llama(vocab_size=len(tok))
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    (root / "test.txt").write_text(text(600))
    (root / "calib.txt").write_text(text(3000))
    return root / "model", f"text:{root / 'test.txt'},{root / 'calib.txt'}"


def save_tiny(directory, family: str = "llama", shard: str | None = None, **config):
    """A tiny model of `family` saved with a word-level tokenizer (sharded when `shard` is a size such
    as "40KB": several safetensors files and their index); returns the model as saved."""
    model = tiny_llama(**config).eval() if family == "llama" and config else tiny_model(family)
    model.save_pretrained(directory, **({"max_shard_size": shard} if shard else {}))
    _word_tokenizer(VOCAB - 1).save_pretrained(directory)
    return model


@pytest.fixture(scope="session")
def sharded_tiny(tmp_path_factory):
    """A tiny LLaMA in several safetensors shards with its index, plus a corpus: (model_dir, protocol_spec)."""
    root = tmp_path_factory.mktemp("sharded")
    torch.manual_seed(0)
    save_tiny(root / "model", shard="40KB", num_hidden_layers=3)
    g = torch.Generator().manual_seed(5)
    words = lambda n: " ".join(f"w{int(i)}" for i in torch.randint(0, 40, (n,), generator=g))
    (root / "test.txt").write_text(words(400))
    (root / "calib.txt").write_text(words(2000))
    return root / "model", f"text:{root / 'test.txt'},{root / 'calib.txt'}"
