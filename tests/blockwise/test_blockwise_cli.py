"""`--max-memory` on the command line: the same figures as in memory, and bad input in one line."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys

import pytest
from conftest import TINY_PROTOCOL_ARGS

from crescendo.cli import main
from crescendo.store import ResultStore

MEASURED = ("dense_perplexity", "perplexity", "sparsity", "avg_weight_bits", "compression_ratio", "bop_reduction",
            "size_reduction")


def _run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def _args(model_dir, protocol, *more):
    return ["--model", str(model_dir), "--protocol", protocol, *TINY_PROTOCOL_ARGS, "--quiet", *more]


def test_compress_and_eval_give_the_in_memory_figures(sharded_tiny, capsys, tmp_path):
    model_dir, protocol = sharded_tiny
    found = {}
    for mode, more in (("memory", ()), ("blockwise", ("--max-memory", "2GB", "--offload-dir", str(tmp_path)))):
        code, out, err = _run(capsys, "compress", *_args(model_dir, protocol, "--recipe", "sparsegpt:0.5 > gptq:w4",
                                                          "--calib-batch-size", "2", "--json", *more))
        assert code == 0, err
        found[mode] = json.loads(out)
        code, out, _ = _run(capsys, "eval", *_args(model_dir, protocol, "--json", *more))
        found[mode]["eval"] = json.loads(out)["perplexity"]
    assert found["blockwise"]["max_memory"] == 2_000_000_000
    assert {k: found["memory"][k] for k in (*MEASURED, "eval")} == {k: found["blockwise"][k] for k in (*MEASURED, "eval")}
    assert list(tmp_path.iterdir()) == []  # the offload folder's scratch files are gone with the run


def test_order_and_sweep_give_the_in_memory_figures(saved_tiny, capsys, tmp_path):
    model_dir, protocol = saved_tiny
    orders, rows = {}, {}
    for mode, more in (("memory", ()), ("blockwise", ("--max-memory", "2GB"))):
        code, out, err = _run(capsys, "order", *_args(model_dir, protocol, "--methods", "sparsegpt:0.5", "gptq:w4",
                                                       "--bits", "8,4", "--calib-batch-size", "2", "--json", *more))
        assert code == 0, err
        result = json.loads(out)
        orders[mode] = {k: result[k] for k in ("singles", "orders", "reference") if k in result}
        store = tmp_path / f"{mode}.sqlite"
        code, _, err = _run(capsys, "sweep", *_args(model_dir, protocol, "--ratios", "0.5", "--bits", "4",
                                                     "--quant", "gptq", "--store", str(store), "--no-cache",
                                                     "--calib-batch-size", "2", "--lanes", "1", "--json", *more))
        assert code == 0, err
        rows[mode] = {r.recipe: r.metrics.perplexity for r in ResultStore(store).rows()}
    assert orders["memory"] == orders["blockwise"] and orders["memory"]
    assert rows["memory"] == rows["blockwise"] and len(rows["memory"]) == 5


@pytest.mark.parametrize("argv, message", [
    (["--max-memory", "1MB"], r"--max-memory 1 MB is too small: one decoder block with the evaluation windows .* "
                              r"needs [0-9.]+ [MG]B \("),
    (["--max-memory", "lots"], "is not a size"),
    (["--offload-dir", "/tmp"], "needs --max-memory"),
    (["--max-memory", "2GB", "--eval-weights", "bfloat16"], "evaluates its float32 blocks"),
    (["--max-memory", "2GB", "--offload-dir", "/no/such/folder"], "does not exist"),
])
def test_bad_budgets_are_one_line_and_exit_2(saved_tiny, capsys, argv, message):
    import re

    code, out, err = _run(capsys, "eval", *_args(*saved_tiny, *argv))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and re.search(message, err), err


def test_calibration_that_cannot_fit_is_refused_before_the_dense_evaluation(saved_tiny, capsys, monkeypatch):
    from crescendo.blockwise import memory

    evaluated = []
    monkeypatch.setattr("crescendo.workflow.Workbench.dense", lambda self: evaluated.append(1))
    real = memory.memory_need

    def need(*args, **kwargs):  # statistics far beyond the budget; evaluation fits
        return real(*args, **kwargs).__class__(**{**real(*args, **kwargs).__dict__, "statistics": 10**12})

    monkeypatch.setattr("crescendo.blockwise.residency.memory_need", need)
    code, _, err = _run(capsys, "compress", *_args(*saved_tiny, "--recipe", "sparsegpt:0.5", "--max-memory", "4GB"))
    assert code == 2 and "with the calibration (" in err and err.count("\n") == 1 and evaluated == []
    code, _, err = _run(capsys, "compress", *_args(*saved_tiny, "--recipe", "rtn:w4", "--max-memory", "4GB",
                                                   "--no-dense"))
    assert code == 0, err  # a data-free recipe needs no calibration activations


def test_whole_model_stages_and_packed_inputs_are_refused(saved_tiny, capsys, tmp_path):
    code, _, err = _run(capsys, "compress", *_args(*saved_tiny, "--recipe", "rotate > rtn:w4", "--max-memory", "2GB"))
    assert code == 2 and "whole model at once" in err
    code, _, _ = _run(capsys, "compress", *_args(*saved_tiny, "--recipe", "rtn:w4", "--save", str(tmp_path / "p"),
                                                 "--format", "packed", "--no-dense"))
    assert code == 0
    code, _, err = _run(capsys, "eval", *_args(tmp_path / "p", saved_tiny[1], "--max-memory", "2GB"))
    assert code == 2 and "packed export, which is loaded whole" in err


def test_a_shard_truncated_during_the_run_is_one_line_exit_1_and_no_output(sharded_tiny, capsys, tmp_path,
                                                                          monkeypatch):
    from crescendo.blockwise.residency import Residency

    shutil.copytree(sharded_tiny[0], tmp_path / "m")
    shard = sorted((tmp_path / "m").glob("model-*.safetensors"))[-1]
    real = Residency._install
    calls = []

    def install(self, model, key, tensors, event):
        calls.append(key)
        if len(calls) == 2:  # the run has started: embeddings and block 0 read, the last shard cut short
            os.truncate(shard, 100)
        return real(self, model, key, tensors, event)

    monkeypatch.setattr(Residency, "_install", install)
    out = tmp_path / "out"
    code, stdout, err = _run(capsys, "compress", *_args(tmp_path / "m", sharded_tiny[1], "--recipe", "sparsegpt:0.5",
                                                         "--max-memory", "2GB", "--save", str(out), "--no-dense"))
    assert code == 1 and stdout == ""
    assert err.count("\n") == 1 and shard.name in err and "during the run" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no output, no temporary


def _limit_file_size(limit: int):
    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # Python ignores SIGXFSZ: writes fail with EFBIG
    return apply


def test_a_disk_that_fills_during_the_run_is_one_line_exit_1(saved_tiny, tmp_path):
    """A real refusal from the system: every file this process writes is capped below one block's file."""
    model_dir, protocol = saved_tiny
    argv = [sys.executable, "-m", "crescendo.cli", "compress", *_args(model_dir, protocol, "--recipe", "sparsegpt:0.5",
                                                                       "--max-memory", "2GB", "--offload-dir",
                                                                       str(tmp_path), "--no-dense", "--save",
                                                                       str(tmp_path / "out"))]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, preexec_fn=_limit_file_size(60_000))
    assert done.returncode == 1, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "no space left in" in lines[0] and "--offload-dir" in lines[0], done.stderr
    assert list(tmp_path.iterdir()) == []  # scratch files and folder gone, no output
