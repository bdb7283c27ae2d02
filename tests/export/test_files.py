"""What the exporters write, as files: ordinary modes, and byte-identical output for identical runs (issue 27)."""

from __future__ import annotations

import os
import stat

import pytest
from conftest import TINY_PROTOCOL_ARGS

from crescendo.cli import main

# every format, with a recipe it holds; GGUF needs the BPE-tokenized model
FORMATS = {
    "hf": ("magnitude:0.5 > rtn:w4,g32", "out"),
    "packed": ("magnitude:0.5 > rtn:w4,g32", "out"),
    "compressed-tensors": ("magnitude:0.5 > rtn:w4,g32", "out"),
    "gguf": ("magnitude:0.5 > rtn:w4,g32,sym,fmt=q4_0", "out.gguf"),
}


def _compress(model, fmt: str, target, capsys) -> None:
    model_dir, protocol = model
    recipe, _ = FORMATS[fmt]
    code = main(["compress", "--model", str(model_dir), "--protocol", protocol, *TINY_PROTOCOL_ARGS, "--quiet",
                 "--no-dense", "--json", "--recipe", recipe, "--format", fmt, "--save", str(target)])
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()


def _files(target) -> dict[str, bytes]:
    if target.is_file():
        return {target.name: target.read_bytes()}
    return {str(p.relative_to(target)): p.read_bytes() for p in sorted(target.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_two_identical_runs_write_byte_identical_files(fmt, bpe_tiny, tmp_path, capsys):
    _, name = FORMATS[fmt]
    a, b = tmp_path / "a" / name, tmp_path / "b" / name
    for target in (a, b):
        target.parent.mkdir()
        _compress(bpe_tiny, fmt, target, capsys)
    first, second = _files(a), _files(b)
    assert first.keys() == second.keys()
    assert [n for n in first if first[n] != second[n]] == []  # crescendo.json and GGUF metadata hold no timings


@pytest.mark.parametrize("umask", [0o022, 0o027])
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_exported_files_get_ordinary_modes(fmt, umask, bpe_tiny, tmp_path, capsys):
    """Weights were written 0600 (safetensors, mkstemp) while every other file was 0644."""
    _, name = FORMATS[fmt]
    target = tmp_path / name
    previous = os.umask(umask)
    try:
        _compress(bpe_tiny, fmt, target, capsys)
    finally:
        os.umask(previous)
    paths = [target] + (sorted(target.rglob("*")) if target.is_dir() else [])
    modes = {str(p.relative_to(tmp_path)): stat.S_IMODE(p.stat().st_mode) for p in paths}
    want = {k: (0o777 if (tmp_path / k).is_dir() else 0o666) & ~umask for k in modes}
    assert modes == want
