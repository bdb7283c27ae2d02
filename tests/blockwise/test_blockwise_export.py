"""Exports of block-wise runs: the same bytes as the in-memory run's, and nothing left when a write fails."""

from __future__ import annotations

import errno
import filecmp
import json

import pytest
import torch
from conftest import VOCAB, save_tiny
from safetensors.torch import load_file

from crescendo.api import compress
from crescendo.blockwise import load_blockwise
from crescendo.blockwise.writer import SafetensorsStream
from crescendo.errors import StorageError
from crescendo.eval.perplexity import perplexity
from crescendo.export import load as load_packed
from crescendo.export import save_compressed_tensors, save_gguf, save_packed, verify
from crescendo.models.loading import load_model
from crescendo.workflow import load_any, save_hf


@pytest.fixture(scope="module")
def windows():
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, VOCAB, (1, 32), generator=g) for _ in range(4)], torch.randint(0, VOCAB, (3, 32),
                                                                                             generator=g)


def _compressed_pair(directory, recipe, calibration):
    full, tokenizer, _ = load_model(str(directory))
    blockwise, _, _ = load_blockwise(str(directory))
    for model in (full, blockwise):
        compress(model, recipe, calibration, progress=False, calibration_batch_size=2)
    return full, blockwise, tokenizer


def _same_directories(a, b):
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        assert filecmp.cmp(a / name, b / name, shallow=False), name


@pytest.mark.parametrize("tied", [False, True])
def test_packed_and_compressed_tensors_are_byte_identical(tied, windows, tmp_path):
    calibration, eval_ids = windows
    save_tiny(tmp_path / "m", shard="40KB", tie_word_embeddings=tied)
    recipe = "sparsegpt:0.5 > gptq:w4,g32"
    full, blockwise, _ = _compressed_pair(tmp_path / "m", recipe, calibration)
    for name, save in (("packed", save_packed), ("ct", save_compressed_tensors)):
        save(full, None, tmp_path / f"{name}-memory", {"recipe": recipe})
        save(blockwise, None, tmp_path / f"{name}-blockwise", {"recipe": recipe})
        _same_directories(tmp_path / f"{name}-memory", tmp_path / f"{name}-blockwise")
        assert verify(tmp_path / f"{name}-blockwise").ok
    reloaded, _, _ = load_packed(tmp_path / "packed-blockwise")
    assert perplexity(reloaded, eval_ids, progress=False).window_losses == \
        perplexity(full, eval_ids, progress=False).window_losses


def test_gguf_is_byte_identical(windows, tmp_path):
    calibration, _ = windows
    save_tiny(tmp_path / "m", tie_word_embeddings=True)
    recipe = "sparsegpt:0.5 > gptq:w4,g32,sym,fmt=q4_0"
    full, blockwise, _ = _compressed_pair(tmp_path / "m", recipe, calibration)
    for other in ("f32", "f16"):
        a = save_gguf(full, None, tmp_path / f"memory-{other}.gguf", {"recipe": recipe}, other=other)
        b = save_gguf(blockwise, None, tmp_path / f"blockwise-{other}.gguf", {"recipe": recipe}, other=other)
        assert a.types == b.types and a.changed == b.changed
        assert filecmp.cmp(a.path, b.path, shallow=False)
        assert verify(b.path).ok


@pytest.mark.parametrize("family", ["llama", "gpt_neox"])
def test_hf_export_holds_the_same_tensors_and_reloads_both_ways(family, windows, tmp_path):
    calibration, eval_ids = windows
    save_tiny(tmp_path / "m", family)
    full, blockwise, tokenizer = _compressed_pair(tmp_path / "m", "sparsegpt:0.5 > gptq:w4,g16", calibration)
    save_hf(full, tokenizer, tmp_path / "memory", {"recipe": "x"})
    save_hf(blockwise, tokenizer, tmp_path / "blockwise", {"recipe": "x"})
    memory = load_file(tmp_path / "memory" / "model.safetensors")
    shards = sorted((tmp_path / "blockwise").glob("model-*.safetensors"))
    index = json.loads((tmp_path / "blockwise" / "model.safetensors.index.json").read_text())
    blocks, tied = full.config.num_hidden_layers, full.config.tie_word_embeddings
    # one shard per block, the embedding, the small rest (final norm) and an untied head: never two big ones in one
    assert len(shards) == blocks + 2 + (not tied) and sorted(set(index["weight_map"].values())) == [s.name for s in shards]
    written = {k: v for s in shards for k, v in load_file(s).items()}
    assert written.keys() == memory.keys() and all(torch.equal(written[k], memory[k]) for k in memory)
    expected = perplexity(full, eval_ids, progress=False).window_losses
    in_memory, _, _ = load_any(str(tmp_path / "blockwise"))
    again, _, _ = load_blockwise(str(tmp_path / "blockwise"))
    assert perplexity(in_memory, eval_ids, progress=False).window_losses == expected
    assert perplexity(again, eval_ids, progress=False).window_losses == expected


def test_a_disk_that_fills_while_exporting_leaves_nothing(windows, saved_tiny, tmp_path, monkeypatch):
    calibration, _ = windows
    _, blockwise, _ = _compressed_pair(saved_tiny[0], "sparsegpt:0.5 > gptq:w4,g32", calibration)
    added = []
    real = SafetensorsStream.add

    def add(self, name, tensor):
        added.append(name)
        if len(added) > 10:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, name, tensor)

    monkeypatch.setattr(SafetensorsStream, "add", add)
    for name, save in (("packed", save_packed), ("ct", save_compressed_tensors)):
        added.clear()
        with pytest.raises(StorageError, match=f"cannot write .*{name}: No space left on device; nothing was left"):
            save(blockwise, None, tmp_path / name, {"recipe": "x"})
    assert list(tmp_path.iterdir()) == []
