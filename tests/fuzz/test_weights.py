"""Fuzzing weights files: safetensors headers generated from the format's grammar (8-byte length, a JSON
object of {name: {dtype, shape, data_offsets}}, data) over the tensor names a model directory or a
packed export really uses, and the real files damaged byte-wise (truncated, flipped, lengths enlarged).
Read by `eval` (exit 0 or 2) and, for exports, `verify` (exit 0 or 1)."""

from __future__ import annotations

import itertools
import json
import math
import shutil

import pytest
from conftest import TINY_PROTOCOL_ARGS
from formats import safetensors_bytes
from harness import (  # noqa: F401
    address_space_limit,
    budget,
    damaged_bytes,
    fixed_seed,
    mutated_json,
    offline,
    run_cli,
)
from hypothesis import given
from hypothesis import strategies as st

from crescendo.cli import main
from crescendo.models.file_checks import safetensors_header

_count = itertools.count()
DTYPES = ["F32", "F16", "BF16", "U8", "I8", "I32", "I64", "BOOL", "F64", "X9"]
SIZE = {"F32": 4, "F16": 2, "BF16": 2, "U8": 1, "I8": 1, "I32": 4, "I64": 8, "BOOL": 1, "F64": 8, "X9": 1}


@pytest.fixture(scope="module")
def dirs(saved_tiny, tmp_path_factory):
    model_dir, protocol = saved_tiny
    root = tmp_path_factory.mktemp("fuzz-weights")
    shutil.copytree(model_dir, root / "model")
    assert main(["compress", "--model", str(model_dir), "--protocol", protocol, *TINY_PROTOCOL_ARGS, "--quiet",
                 "--no-dense", "--json", "--recipe", "magnitude:0.5 > rtn:w4,g32", "--format", "packed", "--save",
                 str(root / "packed")]) == 0
    names = {"model": "model.safetensors", "packed": "crescendo-packed.safetensors"}
    headers = {k: safetensors_header(root / k / f) for k, f in names.items()}
    return {"root": root, "protocol": protocol, "files": names, "headers": headers}


@st.composite
def generated_file(draw, header: dict):
    """A safetensors file from the grammar: the real tensor names (some dropped, some added), each with a
    drawn dtype and shape (the real one most often), byte ranges laid end to end or drawn, data sized to
    fit or not, and a header length that is right or not."""
    entries, offset = {}, 0
    for name, (dtype, shape) in header.items():
        if draw(st.integers(0, 9)) == 0:
            continue  # a tensor missing
        if draw(st.booleans()):
            dtype = draw(st.sampled_from(DTYPES))
            shape = draw(st.one_of(st.just(list(shape)), st.lists(st.integers(0, 70), max_size=3),
                                   st.just([64, 4096]), st.just([2**31, 2**31])))
        size = math.prod(shape) * SIZE[dtype]
        offsets = [offset, offset + size] if draw(st.integers(0, 4)) else draw(
            st.lists(st.integers(-1, 2**40), min_size=0, max_size=3))
        entries[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": offsets}
        offset += min(size, 1 << 22)
    if draw(st.booleans()):
        entries[draw(st.text(max_size=12))] = draw(st.one_of(st.just({"dtype": "F32", "shape": [4],
                                                                      "data_offsets": [0, 16]}), st.integers()))
    if draw(st.booleans()):
        entries["__metadata__"] = draw(st.one_of(st.just({"format": "pt"}), st.just({"a": 1}), st.just([])))
    raw = json.dumps(entries).encode()
    data = b"\0" * min(offset, 1 << 22) if draw(st.integers(0, 3)) else draw(st.binary(max_size=64))
    length = draw(st.one_of(st.just(len(raw)), st.just(len(raw) + 1), st.just(2**62), st.integers(0, len(raw) + 16)))
    return safetensors_bytes(raw, data, length)


def _roots(dirs, directory):
    return [directory, dirs["root"]]


def _read(dirs, which, directory, capsys):
    roots = _roots(dirs, directory)
    if which == "packed":
        run_cli(["verify", str(directory)], capsys, roots, codes=(0, 1))
    run_cli(["eval", "--model", str(directory), "--protocol", dirs["protocol"], "--seqlen", "8", "--eval-windows", "1",
             "--quiet"], capsys, roots, codes=(0, 2))


@budget(12)
@fixed_seed()
@given(data=st.data(), which=st.sampled_from(["model", "packed"]))
def test_safetensors_from_the_grammar(data, which, dirs, tmp_path, capsys):
    directory = tmp_path / f"{which}-{next(_count)}"
    shutil.copytree(dirs["root"] / which, directory)
    (directory / dirs["files"][which]).write_bytes(data.draw(generated_file(dirs["headers"][which]), label="file"))
    _read(dirs, which, directory, capsys)
    shutil.rmtree(directory)


@budget(12)
@fixed_seed()
@given(data=st.data(), which=st.sampled_from(["model", "packed"]), where=st.sampled_from(["header", "anywhere"]))
def test_safetensors_damaged(data, which, where, dirs, tmp_path, capsys):
    directory = tmp_path / f"{which}-{next(_count)}"
    shutil.copytree(dirs["root"] / which, directory)
    path = directory / dirs["files"][which]
    raw = path.read_bytes()
    if where == "header":  # the JSON header, mutated along its tree, the length and data kept
        length = int.from_bytes(raw[:8], "little")
        header = data.draw(mutated_json(json.loads(raw[8:8 + length])), label="header")
        path.write_bytes(safetensors_bytes(header, raw[8 + length:]))
    else:
        path.write_bytes(data.draw(damaged_bytes(raw), label="file"))
    _read(dirs, which, directory, capsys)
    shutil.rmtree(directory)


@budget(10)
@fixed_seed()
@given(data=st.data())
def test_model_config(data, dirs, tmp_path, capsys):
    """config.json of a model directory, mutated along its tree (sizes enlarged, types changed, fields removed)."""
    directory = tmp_path / f"model-{next(_count)}"
    shutil.copytree(dirs["root"] / "model", directory)
    config = data.draw(mutated_json(json.loads((directory / "config.json").read_text())), label="config")
    (directory / "config.json").write_text(json.dumps(config))
    _read(dirs, "model", directory, capsys)
    shutil.rmtree(directory)
