"""Memory budgets: sizes, refusals before anything large is allocated, and an estimate that bounds the peak."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import VOCAB, _word_tokenizer

from crescendo.api import compress
from crescendo.blockwise import load_blockwise, parse_memory, residency_of
from crescendo.blockwise.memory import MemoryNeed, format_bytes, plan_pass
from crescendo.blockwise.sources import SafetensorsSource
from crescendo.errors import ConfigError


@pytest.mark.parametrize("text, value", [("1.5GB", 1_500_000_000), ("800MiB", 800 * 2**20), ("2g", 2 * 10**9),
                                         ("1500000", 1_500_000), (" 64 kib ", 65536), (".5TB", 5 * 10**11)])
def test_sizes(text, value):
    assert parse_memory(text) == value


@pytest.mark.parametrize("text", ["", "GB", "1.5XB", "-1GB", "0", "1e9", "one gig"])
def test_bad_sizes_are_one_line_errors(text):
    with pytest.raises(ConfigError, match="--max-memory"):
        parse_memory(text)


def test_format_bytes():
    assert [format_bytes(n) for n in (1_430_000_000, 176_000_000, 12_000, 7)] == ["1.43 GB", "176 MB", "12 kB", "7 B"]


def _need(**kw):
    parts = dict(process=400, outside=300, block=100, window=2, window_work=10, logits=20, statistics=50, runtime=0)
    parts.update(kw)
    return MemoryNeed(**parts)


def test_the_plan_takes_the_largest_batch_that_fits_and_prefetches_when_a_second_block_fits():
    need = _need(block=250)
    # block phase: 400 + 250 + 8*2 + b*10 + 50 = 716 + 10b (+ 250 prefetching); outside: 400 + 300 + 16 + b*20
    plan = plan_pass(need, 800, windows=8, calibrated=True)
    assert plan.batch_size == 4 and not plan.prefetch and plan.peak == 796
    assert plan_pass(_need(), 800, windows=8, calibrated=True).prefetch  # a block of 100 fits twice
    roomy = plan_pass(need, 2000, windows=8, calibrated=True)
    assert roomy.batch_size == 8 and roomy.prefetch
    assert plan_pass(need, None, windows=8, calibrated=True, requested=3).batch_size == 3


def test_a_budget_below_one_window_names_what_it_needs():
    with pytest.raises(ConfigError) as refused:
        plan_pass(_need(), 700, windows=8, calibrated=True)
    message = str(refused.value)
    assert "\n" not in message and "--max-memory 700 B is too small" in message and "needs 736 B" in message
    assert "embeddings and head 300 B" in message and "what the process holds already 400 B" in message


def test_refused_before_any_weight_is_read(saved_tiny, monkeypatch):
    reads = []
    real = SafetensorsSource.read
    monkeypatch.setattr(SafetensorsSource, "read", lambda self, names: reads.append(list(names)) or real(self, names))
    model, _, _ = load_blockwise(str(saved_tiny[0]), max_memory=parse_memory("1MB"))
    g = torch.Generator().manual_seed(1)
    calibration = [torch.randint(0, VOCAB, (1, 32), generator=g) for _ in range(4)]
    with pytest.raises(ConfigError, match=r"too small: one decoder block with the calibration \(4 windows, one window "
                                          r"per block call\) needs [0-9.]+ [kMG]?B"):
        compress(model, "sparsegpt:0.5", calibration, progress=False)
    assert reads == []  # nothing but headers was read
    assert not residency_of(model).current


def test_the_estimate_bounds_the_peak_of_a_run(tmp_path):
    """A model whose weights dominate the process: block-wise compression and evaluation stay below
    the plan's estimated peak (ru_maxrss of a fresh process)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=1000, hidden_size=512, intermediate_size=1536, num_hidden_layers=3,
                         num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=256)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "m")
    _word_tokenizer(999).save_pretrained(tmp_path / "m")
    script = Path(__file__).with_name("peak_probe.py")
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "m")], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["peak"] <= found["estimate"], found
    assert found["estimate"] < 2 * found["peak"], found  # an upper bound, not a wild one
    assert re.fullmatch(r"[0-9.]+ [kMG]?B", format_bytes(found["estimate"]))
