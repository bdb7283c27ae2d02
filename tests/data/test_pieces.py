"""A long text tokenized in pieces gives exactly the ids of one call on the whole text."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crescendo.data import pieces
from crescendo.data.pieces import encode_in_pieces, seams

WORDS = ["the", "state", "of", "union", "is", "strong", "we", "will", "build", "people", "nation", "work",
         "America's", "1,000", "jobs.", "(applause)", "--", "don't"]


def _text(n_words: int, seed: int = 0) -> str:
    g = np.random.default_rng(seed)
    out = []
    for w in g.choice(WORDS, n_words):
        out.append(w)
        out.append(str(g.choice([" ", " ", " ", "  ", "\n", "\n\n", ", ", ". "])))
    return "".join(out)


def _whole(tokenizer, text: str) -> torch.Tensor:
    return torch.as_tensor(tokenizer(text)["input_ids"], dtype=torch.long).reshape(1, -1)


@pytest.fixture(scope="module")
def byte_bpe():
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    backend = ByteLevelBPETokenizer()
    backend.train_from_iterator([_text(300, s) for s in range(10)], vocab_size=400, min_frequency=1,
                                special_tokens=["<s>"])
    return PreTrainedTokenizerFast(tokenizer_object=backend._tokenizer, bos_token="<s>", eos_token="<s>")


@pytest.fixture(scope="module")
def metaspace_bpe():
    """SentencePiece-style (LLaMA 2, Gemma): spaces become '▁', a '▁' is prepended, a BOS is added."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    backend.train_from_iterator([_text(300, s) for s in range(10)],
                                trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<bos>"]))
    bos = backend.token_to_id("<bos>")
    backend.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>", unk_token="<unk>")


@pytest.mark.parametrize("kind", ["byte_bpe", "metaspace_bpe"])
def test_pieces_give_the_ids_of_one_call(kind, request):
    tokenizer = request.getfixturevalue(kind)
    text = _text(20_000, seed=7)
    cuts = seams(tokenizer, text, piece=5_000)
    assert cuts is not None and len(cuts) >= 10  # the pieced path is the one taken
    assert torch.equal(encode_in_pieces(tokenizer, text, piece=5_000), _whole(tokenizer, text))


def test_specials_are_added_once_around_the_whole(metaspace_bpe):
    text = _text(5_000, seed=3)
    ids = encode_in_pieces(metaspace_bpe, text, piece=2_000)
    bos = metaspace_bpe.convert_tokens_to_ids("<bos>")
    assert ids[0, 0] == bos and int((ids == bos).sum()) == 1


def test_the_seam_check_rejects_a_cut_that_changes_the_ids(byte_bpe, monkeypatch):
    text = _text(4_000, seed=5)
    inside = text.index(" state ", 2_000) + 3  # "st|ate": two tokens where the whole text has one
    assert not pieces._is_seam(byte_bpe, text, inside)
    assert pieces._is_seam(byte_bpe, text, inside + 3)  # the space after the word
    whole = _whole(byte_bpe, text)
    monkeypatch.setattr(pieces, "_seam_after", lambda tokenizer, text, target: text.index(" state ", target) + 3)
    assert not torch.equal(encode_in_pieces(byte_bpe, text, piece=3_000), whole)  # what an unchecked cut does


def test_no_seam_falls_back_to_one_call(byte_bpe, monkeypatch):
    text = _text(3_000, seed=1)
    calls = []

    def counting(piece, add_special_tokens=True):
        calls.append(len(piece))
        return byte_bpe(piece, add_special_tokens=add_special_tokens)

    monkeypatch.setattr(pieces, "_is_seam", lambda tokenizer, text, p: False)
    assert torch.equal(encode_in_pieces(counting, text, piece=1_000), _whole(byte_bpe, text))
    assert max(calls) == len(text)


@pytest.mark.real_model
def test_embedded_tokenizer_on_sotu_in_pieces():
    from crescendo.data import load_corpus
    from crescendo.models.loading import load_tokenizer, resolve_model_spec

    tokenizer = load_tokenizer(resolve_model_spec("smollm2-135m"))
    text = load_corpus("sotu").calibration_text[:400_000]
    assert torch.equal(encode_in_pieces(tokenizer, text, piece=50_000), _whole(tokenizer, text))
