"""Block-wise on a GPU: the block being worked on is on the device, the next one is read and copied
on a side stream, and the result is the in-memory GPU run's (skipped without CUDA; never required)."""

from __future__ import annotations

import pytest
import torch
from conftest import VOCAB, save_tiny
from test_blockwise_model import assert_same_weights

from crescendo.api import compress
from crescendo.blockwise import load_blockwise, residency_of
from crescendo.eval.perplexity import perplexity
from crescendo.models.loading import load_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def test_blockwise_on_cuda_prefetches_and_matches_the_in_memory_gpu_run(tmp_path):
    save_tiny(tmp_path, shard="40KB", num_hidden_layers=3)
    g = torch.Generator().manual_seed(1)
    calibration = [torch.randint(0, VOCAB, (1, 32), generator=g).cuda() for _ in range(4)]
    eval_ids = torch.randint(0, VOCAB, (3, 32), generator=g).cuda()
    full = load_model(str(tmp_path), device="cuda")[0]
    blockwise = load_blockwise(str(tmp_path), device="cuda")[0]
    for model in (full, blockwise):
        compress(model, "sparsegpt:0.5 > gptq:w4,g16", calibration, progress=False, calibration_batch_size=2)
    residency = residency_of(blockwise)
    assert residency.prefetch and residency.device.type == "cuda"
    assert all(p.device.type == "meta" for p in blockwise.parameters())  # nothing stays on the GPU between passes
    assert_same_weights(full, blockwise)
    assert perplexity(blockwise, eval_ids, progress=False).window_losses == \
        perplexity(full, eval_ids, progress=False).window_losses
