"""Fuzzing what crescendo writes and reads back: the packed manifest (crescendo_export.json), the run
metadata and compression state (crescendo.json) and config.json, each mutated along its own tree
(delete a field, give it another JSON type, enlarge a number or a shape) and read by `verify` (exit 0
or 1) and `eval` (exit 0 or 2)."""

from __future__ import annotations

import itertools
import json
import shutil

import pytest
from conftest import TINY_PROTOCOL_ARGS
from harness import address_space_limit, budget, fixed_seed, mutated_json, offline, run_cli  # noqa: F401
from hypothesis import given
from hypothesis import strategies as st

from crescendo.cli import main

_count = itertools.count()


@pytest.fixture(scope="module")
def saved(saved_tiny, tmp_path_factory):
    """Saves of the tiny model whose read-back files the targets mutate: packed exports (plain, shared,
    block-removed) and hf saves (rotated, block-removed)."""
    model_dir, protocol = saved_tiny
    root = tmp_path_factory.mktemp("fuzz-saved")
    base = ["compress", "--model", str(model_dir), "--protocol", protocol, *TINY_PROTOCOL_ARGS, "--quiet", "--no-dense",
            "--json"]
    saves = {"packed": ("magnitude:0.5 > rtn:w4,g32", "packed"), "packed-shared": ("share:group=2,rank=8", "packed"),
             "packed-sleb": ("sleb:0.5 > rtn:w8", "packed"), "hf-rotated": ("rotate > rtn:w4", "hf"),
             "hf-sleb": ("sleb:0.5", "hf")}
    for name, (recipe, fmt) in saves.items():
        assert main(base + ["--recipe", recipe, "--format", fmt, "--save", str(root / name)]) == 0, name
    return {"root": root, "protocol": protocol, "model": model_dir}


def _copy(saved, name, tmp_path):
    target = tmp_path / f"{name}-{next(_count)}"
    shutil.copytree(saved["root"] / name, target)
    return target


def _eval(saved, directory, capsys, roots):
    return run_cli(["eval", "--model", str(directory), "--protocol", saved["protocol"], "--seqlen", "8",
                    "--eval-windows", "1", "--quiet"], capsys, roots, codes=(0, 2))


def _load(directory, name):
    return json.loads((directory / name).read_text())


@budget(12)
@fixed_seed()
@given(data=st.data(), which=st.sampled_from(["packed", "packed-shared", "packed-sleb"]))
def test_packed_manifest(data, which, saved, tmp_path, capsys):
    directory = _copy(saved, which, tmp_path)
    manifest = data.draw(mutated_json(_load(directory, "crescendo_export.json")), label="manifest")
    (directory / "crescendo_export.json").write_text(json.dumps(manifest))
    roots = [directory, saved["root"]]
    run_cli(["verify", str(directory)], capsys, roots, codes=(0, 1))
    _eval(saved, directory, capsys, roots)
    shutil.rmtree(directory)


@budget(10)
@fixed_seed()
@given(data=st.data(), which=st.sampled_from(["hf-rotated", "hf-sleb", "packed-shared", "packed-sleb"]))
def test_saved_compression_state(data, which, saved, tmp_path, capsys):
    """The `state` record (rotation, removed blocks, sharing) of crescendo.json (hf) or the manifest (packed)."""
    directory = _copy(saved, which, tmp_path)
    name = "crescendo.json" if which.startswith("hf") else "crescendo_export.json"
    document = _load(directory, name)
    document["state"] = data.draw(mutated_json(document["state"], max_changes=2), label="state")
    (directory / name).write_text(json.dumps(document))
    _eval(saved, directory, capsys, [directory, saved["root"]])
    shutil.rmtree(directory)


@budget(10)
@fixed_seed()
@given(data=st.data(), which=st.sampled_from(["packed", "hf-rotated"]), name=st.sampled_from(["config.json",
                                                                                             "crescendo.json"]))
def test_config_and_metadata(data, which, name, saved, tmp_path, capsys):
    directory = _copy(saved, which, tmp_path)
    document = data.draw(mutated_json(_load(directory, name)), label=name)
    (directory / name).write_text(json.dumps(document))
    roots = [directory, saved["root"]]
    if which == "packed":
        run_cli(["verify", str(directory)], capsys, roots, codes=(0, 1))
    _eval(saved, directory, capsys, roots)
    shutil.rmtree(directory)
