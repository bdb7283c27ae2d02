"""Block-wise models compute what the same model in memory computes, weight for weight and loss for loss."""

from __future__ import annotations

import copy
import os

import pytest
import torch
from conftest import FAMILIES, VOCAB, save_tiny

from crescendo.api import compress, summarize
from crescendo.blockwise import NotResident, load_blockwise, residency_of, resident_block
from crescendo.blockwise.sources import SafetensorsSource
from crescendo.errors import ConfigError, ModelError, StorageError
from crescendo.eval.layerwise import layerwise_error
from crescendo.eval.perplexity import perplexity
from crescendo.models.adapters import get_adapter
from crescendo.models.loading import load_model
from crescendo.state import state_of


@pytest.fixture(scope="module")
def windows():
    g = torch.Generator().manual_seed(1)
    calibration = [torch.randint(0, VOCAB, (1, 32), generator=g) for _ in range(4)]
    return calibration, torch.randint(0, VOCAB, (3, 32), generator=g)


def _both(directory):
    full, _, _ = load_model(str(directory))
    blockwise, _, _ = load_blockwise(str(directory))
    return full, blockwise


def assert_same_weights(full, blockwise):
    """Every block-layer weight and record tensor of the two models is equal, bit for bit."""
    adapter = get_adapter(full)
    for i in range(len(adapter.blocks(full))):
        with resident_block(blockwise, i):
            mine, theirs = adapter.block_linears(blockwise, i), adapter.block_linears(full, i)
            for name, module in theirs.items():
                assert torch.equal(module.weight, mine[name].weight), name
                a, b = state_of(full).records.get(name), state_of(blockwise).records.get(name)
                assert (a is None) == (b is None), name
                if a is not None:
                    assert (a.mask is None) == (b.mask is None) and (a.mask is None or torch.equal(a.mask, b.mask))
                    assert a.grid == b.grid and (a.grid_params or {}).keys() == (b.grid_params or {}).keys()
                    assert all(torch.equal(v, b.grid_params[k]) for k, v in (a.grid_params or {}).items())


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_evaluates_and_compresses_identically(family, windows, tmp_path):
    calibration, eval_ids = windows
    save_tiny(tmp_path, family, shard="40KB")
    full, blockwise = _both(tmp_path)
    assert all(p.device.type == "meta" for p in blockwise.parameters())  # nothing read yet
    assert perplexity(blockwise, eval_ids, progress=False) .window_losses == \
        perplexity(full, eval_ids, progress=False).window_losses
    for model in (full, blockwise):
        compress(model, "sparsegpt:0.5 > gptq:w4,g16", calibration, progress=False, calibration_batch_size=2)
    assert_same_weights(full, blockwise)
    assert summarize(full) == summarize(blockwise)
    assert perplexity(blockwise, eval_ids, progress=False, batch_size=2).window_losses == \
        perplexity(full, eval_ids, progress=False, batch_size=2).window_losses


@pytest.mark.parametrize("recipe", ["wanda:0.5 > rtn:w4,g16", "magnitude:2:4 > gptq:w4,g32,actorder",
                                    "gptq:w4,g16 > sparsegpt:0.5", "rtn:w8a8kv8", "mxfp4 > magnitude:0.5",
                                    "rtn:w4,g16,include=lm_head"])
@pytest.mark.parametrize("mode", ["stagewise", "interleaved"])
def test_recipes_and_modes_give_identical_weights(recipe, mode, windows, saved_tiny):
    calibration, eval_ids = windows
    if mode == "interleaved" and "lm_head" in recipe:
        pytest.skip("interleaved mode compresses block layers only")
    full, blockwise = _both(saved_tiny[0])
    for model in (full, blockwise):
        compress(model, recipe, calibration, progress=False, calibration_batch_size=2, mode=mode)
    assert_same_weights(full, blockwise)
    assert perplexity(blockwise, eval_ids, progress=False).perplexity == perplexity(full, eval_ids, progress=False).perplexity


def test_a_tied_head_stays_one_tensor(windows, tmp_path):
    calibration, eval_ids = windows
    save_tiny(tmp_path, tie_word_embeddings=True)
    full, blockwise = _both(tmp_path)
    assert blockwise.lm_head.weight is blockwise.model.embed_tokens.weight
    for model in (full, blockwise):
        compress(model, "sparsegpt:0.5", calibration, progress=False, calibration_batch_size=4)
    assert perplexity(blockwise, eval_ids, progress=False).window_losses == \
        perplexity(full, eval_ids, progress=False).window_losses


def test_an_untied_embedding_and_head_are_never_loaded_together(windows, saved_tiny, monkeypatch):
    """A large vocabulary's two matrices: the capture needs the embedding, the logits the head."""
    calibration, eval_ids = windows
    full, blockwise = _both(saved_tiny[0])
    assert not full.config.tie_word_embeddings
    residency = residency_of(blockwise)
    assert residency.group_of("lm_head") == "head" and residency.group_of("model.embed_tokens.weight") == "embed"
    together = []
    real = type(residency)._install

    def install(self, model, key, tensors, event):
        together.append(set(self._loaded) | {key})
        return real(self, model, key, tensors, event)

    monkeypatch.setattr(type(residency), "_install", install)
    for model in (full, blockwise):
        compress(model, "sparsegpt:0.5 > rtn:w4,include=lm_head", calibration, progress=False, calibration_batch_size=2)
    assert perplexity(blockwise, eval_ids, progress=False).window_losses == \
        perplexity(full, eval_ids, progress=False).window_losses
    assert {"embed"} <= set().union(*together) and {"head"} <= set().union(*together)
    assert not any({"embed", "head"} <= loaded for loaded in together)
    assert_same_weights(full, blockwise)


def test_prefetching_reads_ahead_and_changes_nothing(windows, sharded_tiny, monkeypatch):
    calibration, eval_ids = windows
    full, blockwise = _both(sharded_tiny[0])
    residency = residency_of(blockwise)
    taken = []
    real = type(residency)._take

    def take(self, key):
        taken.append((key, self._pending is not None and self._pending[0] == key))
        return real(self, key)

    monkeypatch.setattr(type(residency), "_take", take)
    for model in (full, blockwise):
        compress(model, "sparsegpt:0.5 > gptq:w4", calibration, progress=False, calibration_batch_size=2)
    assert residency.prefetch  # no budget: the next block is read while this one works
    assert ("block-1", True) in taken and ("block-2", True) in taken and ("block-0", False) in taken
    assert_same_weights(full, blockwise)


def test_copies_share_block_files_until_one_is_rewritten(windows, saved_tiny):
    calibration, eval_ids = windows
    _, base = _both(saved_tiny[0])
    compress(base, "sparsegpt:0.5", calibration, progress=False, calibration_batch_size=4)
    files = residency_of(base).files
    before = sorted(p.name for p in files.directory.iterdir())
    prefix = copy.deepcopy(base)  # what a sweep or an order study keeps of a shared prefix
    assert sorted(p.name for p in files.directory.iterdir()) == before  # nothing copied
    compress(prefix, "gptq:w4", calibration, progress=False, calibration_batch_size=4)
    assert len(list(files.directory.iterdir())) == 2 * len(before)  # the copy's own blocks beside the base's
    assert perplexity(base, eval_ids, progress=False).perplexity != perplexity(prefix, eval_ids, progress=False).perplexity
    del prefix
    import gc

    gc.collect()
    assert sorted(p.name for p in files.directory.iterdir()) == before  # the copy's files went with it
    directory = files.directory
    del base, files
    gc.collect()
    assert not directory.exists()  # the scratch folder goes with the last model


def test_record_tensors_of_unloaded_blocks_say_so(windows, saved_tiny):
    calibration, _ = windows
    _, blockwise = _both(saved_tiny[0])
    compress(blockwise, "sparsegpt:0.5 > gptq:w4,g16", calibration, progress=False, calibration_batch_size=4)
    record = state_of(blockwise).records["model.layers.1.mlp.down_proj"]
    assert isinstance(record.mask, NotResident) and isinstance(record.grid_params, NotResident)
    with pytest.raises(ModelError, match="not loaded"):
        record.mask.sum()
    with resident_block(blockwise, 1):
        assert record.mask.dtype == torch.bool and float(record.mask.float().mean()) == 0.5


def test_layerwise_errors_match(windows, saved_tiny):
    calibration, _ = windows
    full, blockwise = _both(saved_tiny[0])
    dense_full, dense_blockwise = copy.deepcopy(full), copy.deepcopy(blockwise)
    for model in (full, blockwise):
        compress(model, "sparsegpt:0.5", calibration, progress=False, calibration_batch_size=2)
    a = layerwise_error(dense_full, full, calibration, batch_size=2).to_dict()
    b = layerwise_error(dense_blockwise, blockwise, calibration, batch_size=2).to_dict()
    assert a == b


def test_whole_model_stages_are_refused_before_anything_changes(windows, saved_tiny):
    calibration, _ = windows
    _, blockwise = _both(saved_tiny[0])
    for recipe in ("rotate > gptq:w4", "rtn:w4 > sleb:0.5", "share:group=2,rank=8", "rtn:w4 > lora:steps=1"):
        with pytest.raises(ConfigError, match="whole model"):
            compress(blockwise, recipe, calibration, progress=False)
    assert not state_of(blockwise).records and not residency_of(blockwise).current


def test_missing_and_truncated_shards_are_refused_when_loading(sharded_tiny, tmp_path):
    import shutil

    for damage in ("missing", "truncated"):
        copy_dir = tmp_path / damage
        shutil.copytree(sharded_tiny[0], copy_dir)
        shard = sorted(copy_dir.glob("model-*.safetensors"))[1]
        if damage == "missing":
            shard.unlink()
        else:
            os.truncate(shard, shard.stat().st_size - 100)
        with pytest.raises(ModelError, match=shard.name):
            load_blockwise(str(copy_dir))


def test_a_shard_truncated_during_the_run_stops_it_with_its_name(windows, sharded_tiny, tmp_path):
    import shutil

    calibration, eval_ids = windows
    shutil.copytree(sharded_tiny[0], tmp_path / "m")
    _, blockwise = _both(tmp_path / "m")
    source: SafetensorsSource = residency_of(blockwise).source
    last = source._where["model.layers.2.mlp.down_proj.weight"]
    compress(blockwise, "rtn:w4,include=model.layers.0.", calibration, progress=False)
    os.truncate(last, 200)  # block 2 still lives in the checkpoint
    with pytest.raises(StorageError, match=last.name):
        perplexity(blockwise, eval_ids, progress=False)


def test_a_saved_state_that_does_not_fit_is_refused_as_in_memory(tmp_path):
    """A crescendo.json whose block removal does not match the blocks on disk: both loaders refuse it."""
    import json

    from crescendo.workflow import load_any, load_saved_blockwise

    save_tiny(tmp_path)
    state = {"removed_blocks": {"original_layers": 9, "removed": [3], "params": 0, "linears": []}, "rotation": None}
    (tmp_path / "crescendo.json").write_text(json.dumps({"state": state}))
    for load in (load_any, load_saved_blockwise):
        with pytest.raises(ModelError, match="block removal leaves 8 of 9 blocks"):
            load(str(tmp_path))
