"""The incremental safetensors writer: files safetensors reads back, the same bytes both ways, nothing left on failure."""

from __future__ import annotations

import errno

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from crescendo.blockwise.writer import SafetensorsStream, write_safetensors


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {"b.weight": torch.randn(3, 5, generator=g), "a.mask": torch.rand(4, 4, generator=g) > 0.5,
            "codes": torch.randint(0, 255, (7,), dtype=torch.uint8, generator=g),
            "half": torch.randn(2, 3, generator=g).to(torch.bfloat16), "empty": torch.zeros(0, 4),
            "scalar": torch.tensor(2.5, dtype=torch.float64), "ids": torch.arange(3, dtype=torch.int64)}


def test_both_writers_write_the_same_readable_file(tmp_path):
    tensors = _tensors()
    write_safetensors(tmp_path / "one.safetensors", tensors, {"format": "pt"})
    with SafetensorsStream(tmp_path / "two.safetensors", {"format": "pt"}) as stream:
        for name, t in tensors.items():
            stream.add(name, t)
    assert (tmp_path / "one.safetensors").read_bytes() == (tmp_path / "two.safetensors").read_bytes()
    back = load_file(tmp_path / "two.safetensors")
    assert back.keys() == tensors.keys() and all(torch.equal(back[k], v) for k, v in tensors.items())
    with safe_open(str(tmp_path / "two.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"} and list(f.keys()) == sorted(tensors)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.safetensors", "two.safetensors"]  # no .data left


def test_a_failure_inside_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with SafetensorsStream(tmp_path / "x.safetensors") as stream:
            stream.add("a", torch.ones(3))
            raise RuntimeError("the export failed half way")
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_is_an_oserror_with_its_errno(tmp_path, monkeypatch):
    stream = SafetensorsStream(tmp_path / "x.safetensors")
    real = stream._data

    class Full:
        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            real.close()

    stream._data = Full()
    with pytest.raises(OSError) as failed:
        stream.add("a", torch.ones(3))
    assert failed.value.errno == errno.ENOSPC
    stream.abort()
    assert list(tmp_path.iterdir()) == []


def test_repeated_names_are_refused(tmp_path):
    with SafetensorsStream(tmp_path / "x.safetensors") as stream:
        stream.add("a", torch.ones(1))
        with pytest.raises(ValueError, match="already"):
            stream.add("a", torch.ones(1))
