"""Tokenizer metadata of a GGUF export (`tokenizer.ggml.*`), as llama.cpp and transformers read it.

Two sources, in this order: the `tokenizer.*` keys of the GGUF file the model was loaded from (copied
verbatim: the embedded SmolLM2 model and any model loaded from a .gguf file), or a Hugging Face fast
tokenizer whose model is byte-level BPE (GPT-2 style, `tokenizer.ggml.model = "gpt2"`), written the
way llama.cpp's `convert_hf_to_gguf.py` writes one. Other tokenizers (SentencePiece unigram, WordPiece,
word level) are refused: writing them in a GGUF vocabulary type would change how text is tokenized.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError


def copy_tokenizer_fields(writer: Any, source: str | Path) -> None:
    """Copy every `tokenizer.*` key of the GGUF file `source` into `writer`, value and type as they are."""
    from gguf import GGUFReader, GGUFValueType

    reader = GGUFReader(str(source))
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        main = field.types[0]
        if main == GGUFValueType.ARRAY:
            writer.add_key_value(key, list(field.contents()), main, sub_type=field.types[-1])
        else:
            writer.add_key_value(key, field.contents(), main)


def check_tokenizer(tokenizer: Any) -> None:
    """ConfigError unless `tokenizer` is None or a fast byte-level BPE tokenizer (checked before writing)."""
    if tokenizer is None:
        return
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ConfigError(f"cannot write tokenizer {type(tokenizer).__name__} into a GGUF file: it has no fast "
                          f"(tokenizers) backend")
    described = json.loads(backend.to_str())
    model, pre = described.get("model") or {}, json.dumps(described.get("pre_tokenizer"))
    if model.get("type") != "BPE" or "ByteLevel" not in pre:
        raise ConfigError(f"cannot write a {model.get('type')} tokenizer into a GGUF file: only byte-level BPE "
                          f"(GPT-2 style) tokenizers map onto a GGUF vocabulary without changing tokenization")


def add_tokenizer_fields(writer: Any, tokenizer: Any, n_vocab: int) -> None:
    """Write a byte-level BPE tokenizer as a `gpt2` GGUF vocabulary of `n_vocab` tokens (padded with
    unused tokens, as llama.cpp's converter does, when the embedding has more rows than the vocabulary)."""
    from gguf import TokenType

    check_tokenizer(tokenizer)
    described = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab: dict[str, int] = dict(described["model"]["vocab"])
    added = {t["content"]: t for t in described.get("added_tokens", [])}
    for content, t in added.items():
        vocab[content] = t["id"]
    if max(vocab.values(), default=-1) >= n_vocab:
        raise ConfigError(f"the tokenizer has ids up to {max(vocab.values())}, the model's embedding only {n_vocab} rows")
    by_id = {i: tok for tok, i in vocab.items()}
    tokens, types = [], []
    for i in range(n_vocab):
        tok = by_id.get(i)
        if tok is None:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
        else:
            tokens.append(tok)
            info = added.get(tok)
            types.append(TokenType.NORMAL if info is None else
                         TokenType.CONTROL if info.get("special") else TokenType.USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in described["model"].get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([int(t) for t in types])
    if merges:
        writer.add_token_merges(merges)
    for attr, add in (("bos_token_id", writer.add_bos_token_id), ("eos_token_id", writer.add_eos_token_id),
                      ("unk_token_id", writer.add_unk_token_id), ("pad_token_id", writer.add_pad_token_id)):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            add(int(value))
    writer.add_add_bos_token(bool(getattr(tokenizer, "add_bos_token", False)))
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and template:
        writer.add_chat_template(template)
