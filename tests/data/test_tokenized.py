"""Eval windowing and calibration sampling on a character-level fake tokenizer."""

from __future__ import annotations

import random

import pytest
import torch

from crescendo.data import (
    clear_cache,
    custom_protocol,
    cut_windows,
    prepare,
    sample_document_windows,
    sample_windows,
)
from crescendo.errors import DataError


class CharTokenizer:
    """One token per character (code point); `name_or_path` enables prepare's cache."""

    def __init__(self, name_or_path: str = "") -> None:
        self.name_or_path = name_or_path
        self.calls = 0

    def __call__(self, text: str) -> dict[str, list[int]]:
        self.calls += 1
        return {"input_ids": [ord(c) for c in text]}


def _reference_gptq_indices(n_tokens: int, n_samples: int, seqlen: int, seed: int) -> list[int]:
    """GPTQ's trainloader, literally: global seeding, randint per sample."""
    state = random.getstate()
    try:
        random.seed(seed)
        return [random.randint(0, n_tokens - seqlen - 1) for _ in range(n_samples)]
    finally:
        random.setstate(state)


def test_local_random_instance_equals_global_seeding():
    expected = _reference_gptq_indices(10_000, 50, 64, seed=3)
    rng = random.Random(3)
    assert [rng.randint(0, 10_000 - 64 - 1) for _ in range(50)] == expected


@pytest.mark.parametrize("seed", [0, 1, 1234])
def test_calibration_windows_start_at_gptq_indices(seed):
    ids = torch.arange(5_000).view(1, -1)  # the token id equals its position: windows reveal i
    windows = sample_windows(ids, 32, 100, seed)
    expected = _reference_gptq_indices(5_000, 32, 100, seed)
    assert [int(w[0, 0]) for w in windows] == expected
    for w, i in zip(windows, expected):
        assert w.shape == (1, 100) and torch.equal(w[0], torch.arange(i, i + 100))


def test_calibration_needs_seqlen_plus_one_tokens():
    assert len(sample_windows(torch.arange(11).view(1, -1), 3, 10, 0)) == 3  # randint(0, 0)
    with pytest.raises(DataError, match="3 calibration windows of 10 tokens requested, but it has only 10"):
        sample_windows(torch.arange(10).view(1, -1), 3, 10, 0)


def test_eval_windows_are_consecutive_and_truncated():
    ids = torch.arange(1_000).view(1, -1)
    windows = cut_windows(ids, 100, 4)
    assert windows.shape == (4, 100) and torch.equal(windows.reshape(-1), torch.arange(400))
    assert cut_windows(ids, 300, None).shape == (3, 300)  # the partial tail is dropped
    with pytest.raises(DataError, match="11 windows of 100 tokens requested, but its 1000 tokens hold only"):
        cut_windows(ids, 100, 11)
    with pytest.raises(DataError, match="hold only 0"):
        cut_windows(ids, 2_000, None)


class DocTokenizer:
    """Text "d:n" -> n ids d * 1000 + position: a window reveals its document and start."""

    def __call__(self, text: str) -> dict[str, list[int]]:
        d, n = map(int, text.split(":"))
        return {"input_ids": [d * 1000 + k for k in range(n)]}


def test_document_sampling_follows_the_c4_loop():
    lengths = (5, 40, 12, 3, 25, 60, 10)  # 10 == seqlen: too short under `>`
    documents = [f"{d}:{n}" for d, n in enumerate(lengths)]
    seqlen, n_samples, seed = 10, 12, 0
    windows = sample_document_windows(documents, DocTokenizer(), n_samples, seqlen, seed)
    state = random.getstate()
    random.seed(seed)  # SparseGPT's get_c4 loop, literally (with `>`, see the sampler's docstring)
    expected = []
    for _ in range(n_samples):
        while True:
            d = random.randint(0, len(documents) - 1)
            if lengths[d] > seqlen:
                break
        i = random.randint(0, lengths[d] - seqlen - 1)
        expected.append([d * 1000 + k for k in range(i, i + seqlen)])
    random.setstate(state)
    assert [w.shape for w in windows] == [(1, seqlen)] * n_samples
    assert [w[0].tolist() for w in windows] == expected


def test_document_windows_come_from_one_document():
    documents = ["".join(chr(65 + d) for _ in range(30)) for d in range(5)]
    for window in sample_document_windows(documents, CharTokenizer(), 8, 10, 0):
        assert len(set(window.view(-1).tolist())) == 1


def test_documents_all_too_short_raise_instead_of_looping():
    with pytest.raises(DataError, match="none of the 3 documents is longer than 10 tokens"):
        sample_document_windows(["a" * 10, "b" * 3, "c"], CharTokenizer(), 2, 10, 0)


def test_prepare_on_a_text_corpus(tmp_path):
    test_text, calib_text = "t" * 1_050, "".join(chr(32 + i % 90) for i in range(3_000))
    (tmp_path / "test.txt").write_text(test_text)
    (tmp_path / "calibration.txt").write_text(calib_text)
    protocol = custom_protocol(f"text:{tmp_path}", 100, None, 5, seed=7)
    data = prepare(protocol, CharTokenizer())
    assert data.test_ids.shape == (1, 1_050) and data.eval_windows.shape == (10, 100)
    assert data.n_eval_windows == 10 and data.protocol is protocol
    calib_ids = torch.tensor([ord(c) for c in calib_text])
    for w, i in zip(data.calibration, _reference_gptq_indices(3_000, 5, 100, 7)):
        assert torch.equal(w[0], calib_ids[i : i + 100])


def test_prepare_errors_name_protocol_and_counts(tmp_path):
    (tmp_path / "t.txt").write_text("a" * 250)
    (tmp_path / "c.txt").write_text("b" * 50)
    corpus = f"text:{tmp_path / 't.txt'},{tmp_path / 'c.txt'}"
    with pytest.raises(DataError, match=r"protocol 'short', test split: 3 windows of 100 tokens requested, "
                                        r"but its 250 tokens hold only 2"):
        prepare(custom_protocol(corpus, 100, 3, 0, name="short"), CharTokenizer())
    with pytest.raises(DataError, match=r"protocol 'short', calibration split: 4 calibration windows of 100 "
                                        r"tokens requested, but it has only 50 tokens"):
        prepare(custom_protocol(corpus, 100, 2, 4, name="short"), CharTokenizer())


def test_prepare_eval_only_skips_calibration_and_caches(tmp_path):
    (tmp_path / "t.txt").write_text("a" * 200)
    (tmp_path / "c.txt").write_text("b" * 10)  # too short, but never tokenized when n_calibration = 0
    protocol = custom_protocol(f"text:{tmp_path / 't.txt'},{tmp_path / 'c.txt'}", 100, None, 0)
    clear_cache()
    tokenizer = CharTokenizer("fake/char")
    first = prepare(protocol, tokenizer)
    assert first.calibration == [] and tokenizer.calls == 1
    assert prepare(protocol, tokenizer) is first and tokenizer.calls == 1
    assert prepare(protocol, tokenizer, cache=False) is not first
    clear_cache()
