"""WikiText-2 and C4 loaders: local copies in the hub's layouts, and fast failure without the hub."""

from __future__ import annotations

import gzip
import json
import time
import types

import pytest

from crescendo.data import get_protocol, hub, load_corpus, prepare
from crescendo.errors import DataError

WIKI_TEST = " = Valkyria Chronicles III = \n \n Senjō no Valkyria 3 .\n = = Gameplay = = \n"
WIKI_TRAIN = " = Robert Boulter = \n \n Robert Boulter is an English actor .\n"


def _rows(raw: str) -> list[str]:
    """What the hub's wikitext builder yields for a raw file: lines kept, blank lines as ""."""
    return [line if line.strip() else "" for line in raw.splitlines(keepends=True)]


def _expected_wikitext():
    return "\n\n".join(_rows(WIKI_TEST)), " ".join(_rows(WIKI_TRAIN))


def test_wikitext2_from_raw_archive_files(tmp_path):
    folder = tmp_path / "wikitext-2-raw"
    folder.mkdir()
    (folder / "wiki.test.raw").write_text(WIKI_TEST, encoding="utf-8")
    (folder / "wiki.train.raw").write_text(WIKI_TRAIN, encoding="utf-8")
    corpus = load_corpus(f"wikitext2:{tmp_path}")
    assert (corpus.test_text, corpus.calibration_text) == _expected_wikitext()
    assert corpus.name == f"wikitext2:{tmp_path}"


def test_wikitext2_from_hub_parquet_layout(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    for config, test_rows in (("wikitext-2-raw-v1", _rows(WIKI_TEST)), ("wikitext-103-raw-v1", ["decoy"])):
        (tmp_path / config).mkdir()
        pq.write_table(pa.table({"text": test_rows}), tmp_path / config / "test-00000-of-00001.parquet")
        train_file = tmp_path / config / "train-00000-of-00001.parquet"
        pq.write_table(pa.table({"text": _rows(WIKI_TRAIN)}), train_file)
    corpus = load_corpus(f"wikitext2:{tmp_path}")
    assert (corpus.test_text, corpus.calibration_text) == _expected_wikitext()
    for path in (tmp_path / "wikitext-2-raw-v1").iterdir():
        path.unlink()
    with pytest.raises(DataError, match="wikitext-103-raw-v1, not wikitext-2-raw-v1"):
        load_corpus(f"wikitext2:{tmp_path}")


def test_wikitext2_from_datasets_cache_arrow_files(tmp_path):
    pa = pytest.importorskip("pyarrow")
    for split, raw in (("test", WIKI_TEST), ("train", WIKI_TRAIN)):
        table = pa.table({"text": _rows(raw)})
        with pa.OSFile(str(tmp_path / f"wikitext-{split}.arrow"), "wb") as sink:
            with pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table)
    corpus = load_corpus(f"wikitext2:{tmp_path}")
    assert (corpus.test_text, corpus.calibration_text) == _expected_wikitext()


def test_wikitext2_from_save_to_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    pa = pytest.importorskip("pyarrow")
    from datasets.table import InMemoryTable

    def dataset(rows, fingerprint):
        # an explicit fingerprint skips datasets' hashing, which some dill/pyarrow pairs cannot pickle
        return datasets.Dataset(InMemoryTable(pa.table({"text": rows})), fingerprint=fingerprint)

    saved = datasets.DatasetDict({"test": dataset(_rows(WIKI_TEST), "wikitext-test"),
                                  "train": dataset(_rows(WIKI_TRAIN), "wikitext-train")})
    saved.save_to_disk(str(tmp_path / "wikitext2"))
    corpus = load_corpus(f"wikitext2:{tmp_path / 'wikitext2'}")
    assert (corpus.test_text, corpus.calibration_text) == _expected_wikitext()


def test_wikitext2_local_errors(tmp_path):
    with pytest.raises(DataError, match="no such directory"):
        load_corpus(f"wikitext2:{tmp_path / 'absent'}")
    with pytest.raises(DataError, match=r"no test split in .*wiki\.test\.raw"):
        load_corpus(f"wikitext2:{tmp_path}")


def _write_c4(folder, n_validation: int, train_lengths) -> tuple[list[str], list[str]]:
    (folder / "en").mkdir(parents=True)
    validation = [f"validation document {i}." for i in range(n_validation)]
    train = [chr(65 + d) * n for d, n in enumerate(train_lengths)]  # one letter per document
    for name, docs in (("c4-validation.00000-of-00008.json.gz", validation),
                       ("c4-train.00000-of-01024.json.gz", train)):
        with gzip.open(folder / "en" / name, "wt", encoding="utf-8") as handle:
            for doc in docs:
                handle.write(json.dumps({"text": doc, "timestamp": "2019-04-25", "url": "https://x"}) + "\n")
    return validation, train


def test_c4_from_json_gz_shards(tmp_path):
    validation, train = _write_c4(tmp_path, 1_105, [50, 5, 80])
    corpus = load_corpus(f"c4:{tmp_path}")
    assert corpus.test_text == " ".join(validation[:1_100])  # the reference's valdata[:1100]
    assert list(corpus.calibration_documents) == train and corpus.calibration_text is None


def test_c4_protocol_end_to_end_on_a_local_copy(tmp_path, caplog):
    _, train = _write_c4(tmp_path, 30, [50, 5, 80, 10, 33])
    protocol = get_protocol(f"c4:{tmp_path}")
    small = type(protocol)(protocol.name, protocol.corpus, 16, 8, 4)

    def char_tokenizer(text):
        return {"input_ids": [ord(c) for c in text]}

    data = prepare(small, char_tokenizer)
    assert data.eval_windows.shape == (8, 16) and len(data.calibration) == 4
    assert "fewer than the reference's 1100" in caplog.text
    for window in data.calibration:  # inside one document, and only documents longer than seqlen
        letters = set(window.view(-1).tolist())
        assert len(letters) == 1 and len(train[letters.pop() - 65]) > 16


def test_c4_from_save_to_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    pa = pytest.importorskip("pyarrow")
    from datasets.table import InMemoryTable

    splits = {"validation": [f"v{i}" for i in range(3)], "train": ["a" * 30, "b" * 40]}
    datasets.DatasetDict({
        name: datasets.Dataset(InMemoryTable(pa.table({"text": rows})), fingerprint=f"c4-{name}")
        for name, rows in splits.items()
    }).save_to_disk(str(tmp_path / "c4"))
    corpus = load_corpus(f"c4:{tmp_path / 'c4'}")
    assert corpus.test_text == "v0 v1 v2"
    documents = corpus.calibration_documents
    assert len(documents) == 2 and documents[1] == "b" * 40


def test_c4_local_missing_shard(tmp_path):
    with pytest.raises(DataError, match="c4-validation.00000-of-00008.json.gz"):
        load_corpus(f"c4:{tmp_path}")


def _fake_datasets(calls):
    def load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        raise ConnectionError("offline and not cached")

    return types.SimpleNamespace(load_dataset=load_dataset)


@pytest.mark.parametrize("spec, repo", [("wikitext2", "Salesforce/wikitext"), ("c4", "allenai/c4")])
def test_hub_corpus_fails_fast_without_network(spec, repo, monkeypatch):
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    calls: list = []
    monkeypatch.setattr(hub, "_require", lambda module, what, hint: _fake_datasets(calls))
    start = time.monotonic()
    with pytest.raises(DataError) as info:
        load_corpus(spec)  # the real network: none here, so the one probe fails at once
    assert time.monotonic() - start < 15
    message = str(info.value)
    assert "\n" not in message and repo in message and f"--corpus {spec}:/path/to/dir" in message


def test_hub_corpus_in_offline_mode_uses_the_cache_only(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(hub, "probe_hub", lambda *a, **k: pytest.fail("no probe in offline mode"))
    calls: list = []
    monkeypatch.setattr(hub, "_require", lambda module, what, hint: _fake_datasets(calls))
    expected = r"cannot load dataset Salesforce/wikitext split 'test'.*wikitext2:/path"
    with pytest.raises(DataError, match=expected):
        load_corpus("wikitext2")
    assert calls[0][0] == ("Salesforce/wikitext", "wikitext-2-raw-v1")


def test_missing_datasets_package_gives_install_hint(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_datasets(name, *args, **kwargs):
        if name == "datasets":
            raise ImportError("No module named 'datasets'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(DataError, match=r"optional 'datasets' package: pip install 'crescendo\[datasets\]'"):
        load_corpus("c4")
