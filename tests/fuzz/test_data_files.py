"""Fuzzing the data files crescendo reads besides models: Fashion-MNIST idx.gz files generated from their
grammar (big-endian magic 0x0801 / 0x0803, uint32 dims, bytes; gzip-compressed, or damaged) and the
prefix cache's entry.json, mutated along its tree. Library: `read_idx` returns an array of the header's
shape or raises DataError, in bounded memory. CLI: `train-reference --data-dir` exits 2 with one line;
`cache list` and `cache clear` never fail on a damaged entry, and never remove what the cache did not write."""

from __future__ import annotations

import gzip
import itertools
import json
import shutil

import pytest
from conftest import cache_with_one_entry
from formats import idx_gz, peak_growth
from harness import PEAK_BYTES, address_space_limit, budget, fixed_seed, mutated_json, offline, run_cli  # noqa: F401
from hypothesis import given
from hypothesis import strategies as st

from crescendo.data.images import FASHION_MNIST_FILES, read_idx
from crescendo.errors import DataError

_count = itertools.count()
MAGICS = [0x801, 0x803, 0x802, 0x804, 0x0, 0x1D2B3C4D]
dims = st.one_of(st.lists(st.integers(0, 30), min_size=0, max_size=4),
                 st.lists(st.sampled_from([0, 1, 28, 60000, 2**31, 2**32 - 1]), min_size=1, max_size=3))


@st.composite
def idx_files(draw, directory):
    path = directory / f"i{next(_count)}.gz"
    magic, shape = draw(st.sampled_from(MAGICS)), draw(dims)
    need = 1
    for d in shape:
        need *= d
    size = draw(st.one_of(st.just(need), st.just(max(0, need - 1)), st.just(need + 1), st.integers(0, 64)))
    idx_gz(path, magic, shape, data=min(size, 1 << 24))
    raw = path.read_bytes()
    damage = draw(st.sampled_from(["none", "none", "truncate", "flip", "plain"]))
    if damage == "truncate":
        path.write_bytes(raw[: draw(st.integers(0, len(raw)))])
    elif damage == "flip" and len(raw) > 10:
        at = draw(st.integers(10, len(raw) - 1))
        path.write_bytes(raw[:at] + bytes([raw[at] ^ 0x55]) + raw[at + 1:])
    elif damage == "plain":  # not gzip at all
        path.write_bytes(gzip.decompress(raw) if len(raw) < 1 << 20 else raw[:100])
    return path, magic, shape


@budget(60)
@fixed_seed()
@given(data=st.data())
def test_idx_files_from_the_grammar(data, tmp_path):
    path, magic, shape = data.draw(idx_files(tmp_path))
    with peak_growth() as peak:
        try:
            array = read_idx(path)
        except DataError:
            array = None
    assert peak["bytes"] < PEAK_BYTES
    if array is not None:
        assert magic in (0x801, 0x803) and array.shape == tuple(shape)
    path.unlink()


@budget(10)
@fixed_seed()
@given(data=st.data())
def test_fashion_mnist_directories(data, tmp_path, capsys):
    directory = tmp_path / f"d{next(_count)}"
    directory.mkdir()
    for split in FASHION_MNIST_FILES.values():
        for name in split:
            path, _, _ = data.draw(idx_files(tmp_path))
            shutil.move(path, directory / name)
    run_cli(["train-reference", "--arch", "resnet-mini", "--data-dir", str(directory), "--epochs", "1"], capsys,
            [tmp_path], codes=(0, 2))  # 0 only if all four drawn files happen to be a valid set
    shutil.rmtree(directory)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return cache_with_one_entry(tmp_path_factory.mktemp("fuzz-cache"))


@budget(20)
@fixed_seed()
@given(data=st.data())
def test_cache_entries(data, cache_dir, tmp_path, capsys):
    directory = tmp_path / f"c{next(_count)}"
    shutil.copytree(cache_dir, directory)
    entry = next(directory.iterdir())
    document = data.draw(mutated_json(json.loads((entry / "entry.json").read_text())), label="entry")
    (entry / "entry.json").write_text(json.dumps(document))
    user = directory / ("0" * 32)  # a user's folder named like an entry
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    run_cli(["cache", "list", "--dir", str(directory), "--json"], capsys, [directory], codes=(0,))
    capsys.readouterr()
    from crescendo.cli import main

    assert main(["cache", "clear", "--dir", str(directory)]) == 0
    assert sorted(p.name for p in directory.iterdir()) == [user.name] and (user / "notes.txt").exists()
    shutil.rmtree(directory)
