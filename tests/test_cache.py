"""The prefix cache removes only what it wrote, and reads damaged entries without failing (issue 27)."""

from __future__ import annotations

import json
import os

import pytest
from conftest import cache_with_one_entry, tiny_model

from crescendo.cache import PrefixCache
from crescendo.cli import main

MARKER, MARKER_TEXT = ".crescendo-cache-entry", "crescendo prefix cache entry\n"  # crescendo.cache's
DIGEST = "0123456789abcdef0123456789abcdef"  # 32 hex characters: also how MD5-named user folders look


def _tree(root):
    return sorted((str(p.relative_to(root)), p.read_bytes() if p.is_file() else None) for p in root.rglob("*"))


@pytest.fixture(scope="module")
def filled(tmp_path_factory):
    """A cache directory holding one real entry."""
    return cache_with_one_entry(tmp_path_factory.mktemp("cache"))


def test_clear_leaves_digest_named_folders_it_did_not_write(tmp_path, capsys):
    user = tmp_path / DIGEST  # e.g. a folder named by the MD5 of its contents
    user.mkdir()
    (user / "thesis.txt").write_text("years of work")
    temporary_like = tmp_path / f".{DIGEST}.tmp-999999999-abcd"  # named like a killed write's temporary
    temporary_like.mkdir()
    (temporary_like / "notes.txt").write_text("mine")
    before = _tree(tmp_path)
    assert main(["cache", "clear", "--dir", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["removed"] == 0
    assert _tree(tmp_path) == before
    assert main(["cache", "list", "--dir", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["entries"] == []  # not listed as a corrupt entry either


def test_clear_removes_its_own_entries_and_killed_temporaries(filled, tmp_path, capsys):
    import shutil

    directory = tmp_path / "c"
    shutil.copytree(filled, directory)
    (directory / f".{DIGEST}.tmp-999999999-abcd").mkdir()  # killed before it wrote anything
    marked = directory / f".{DIGEST}.tmp-999999999-efgh"  # killed half-way
    marked.mkdir()
    (marked / MARKER).write_text(MARKER_TEXT)
    live = directory / f".{DIGEST}.tmp-{os.getpid()}-ijkl"  # a running process's: left alone
    live.mkdir()
    assert main(["cache", "clear", "--dir", str(directory), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["removed"] == 3
    assert [p.name for p in directory.iterdir()] == [live.name]


def test_entries_of_earlier_versions_without_the_marker_are_still_recognised(filled, tmp_path):
    import shutil

    directory = tmp_path / "c"
    shutil.copytree(filled, directory)
    entry = next(directory.iterdir())
    (entry / MARKER).unlink()
    data = json.loads((entry / "entry.json").read_text())
    del data["files"][MARKER]
    (entry / "entry.json").write_text(json.dumps(data))
    assert len(PrefixCache(directory).entries()) == 1
    assert PrefixCache(directory).clear() == 1 and list(directory.iterdir()) == []


def test_put_refuses_to_replace_a_folder_it_did_not_write(tmp_path):
    from crescendo.errors import ConfigError

    cache = PrefixCache(tmp_path)
    key = cache.key("tiny", "proto", 0, "magnitude:0.5")
    (tmp_path / key.digest).mkdir()
    (tmp_path / key.digest / "mine.txt").write_text("x")
    assert cache.get(key) is None and (tmp_path / key.digest / "mine.txt").exists()
    with pytest.raises(ConfigError, match="did not write"):
        cache.put(key, tiny_model("llama"))
    assert (tmp_path / key.digest / "mine.txt").read_text() == "x"


@pytest.mark.parametrize("damage", [
    {"key": {"bogus": 1}, "files": {}},
    {"key": [1, 2], "files": {}},
    {"key": {"model": 5, "protocol": "p", "seed": 0, "prefix": "x", "version": "0", "commit": None}, "files": {}},
    {"key": {"model": "m", "protocol": "p", "seed": "0", "prefix": "x", "version": "0", "commit": None}, "files": {}},
    [1, 2, 3],
    "a string",
], ids=["unknown-field", "key-list", "model-number", "seed-string", "entry-list", "entry-string"])
def test_damaged_entries_are_listed_as_corrupt(filled, tmp_path, capsys, damage):
    import shutil

    directory = tmp_path / "c"
    shutil.copytree(filled, directory)
    entry = next(directory.iterdir())
    (entry / "entry.json").write_text(json.dumps(damage))
    assert main(["cache", "list", "--dir", str(directory)]) == 0
    out, err = capsys.readouterr()
    assert "CORRUPT" in out and err == ""
    assert main(["cache", "list", "--dir", str(directory), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["entries"][0]["ok"] is False
