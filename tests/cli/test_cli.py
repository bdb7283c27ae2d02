"""The command line on a tiny saved model: JSON keys, bad input, resumable sweeps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import TINY_PROTOCOL_ARGS

from crescendo.cli import main
from crescendo.store import ResultStore


def _run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_compress_json_has_the_documented_keys(saved_tiny, capsys, tmp_path):
    model_dir, protocol = saved_tiny
    code, out, _ = _run(capsys, "compress", "--model", str(model_dir), "--protocol", protocol, *TINY_PROTOCOL_ARGS,
                        "--recipe", "sparsegpt:0.5 > gptq:w4", "--json", "--quiet", "--save", str(tmp_path / "out"))
    assert code == 0
    result = json.loads(out)
    for key in ("protocol", "dense_perplexity", "perplexity", "sparsity", "avg_weight_bits", "compression_ratio", "stages"):
        assert key in result
    assert [s["method"] for s in result["stages"]] == ["sparsegpt", "gptq"]
    assert all(s["seconds"] >= 0 for s in result["stages"])
    assert abs(result["sparsity"] - 0.5) < 0.01 and result["perplexity"] > 1
    # the saved directory loads in plain transformers with the compressed weights
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    w = reloaded.model.layers[0].self_attn.q_proj.weight
    assert (w == 0).float().mean().item() >= 0.495  # pruned zeros survived (4-bit rounding adds more)
    code, out, _ = _run(capsys, "eval", "--model", str(tmp_path / "out"), "--protocol", protocol, *TINY_PROTOCOL_ARGS,
                        "--json", "--quiet")
    assert json.loads(out)["perplexity"] == pytest.approx(result["perplexity"], rel=1e-5)


@pytest.mark.parametrize("argv, message", [
    (["compress", "--recipe", "sparsegpt:1.5"], "ratio"),
    (["compress", "--recipe", "gptq:w9"], "bits"),
    (["compress", "--recipe", "wanda:4:4"], "N < M"),
    (["compress", "--recipe", "nosuch:0.5"], "unknown method"),
    (["compress", "--recipe", "sparsegpt:0.5 >> gptq:w4"], "malformed"),
    (["compress", "--recipe", "missing.yaml"], "not found"),
    (["compress", "--model", "/no/such/dir", "--recipe", "rtn:w4"], "no such file"),
    (["eval", "--protocol", "no-such-protocol"], "unknown protocol"),
    (["sweep", "--ratios", "0.2,1.2"], "[0, 1)"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    code, out, err = _run(capsys, *argv)
    assert code == 2
    assert message in err and err.count("\n") == 1 and out == ""


def test_corpus_too_short_and_existing_output(saved_tiny, capsys, tmp_path):
    model_dir, protocol = saved_tiny
    code, _, err = _run(capsys, "eval", "--model", str(model_dir), "--protocol", protocol, "--seqlen", "32",
                        "--eval-windows", "1000", "--quiet")
    assert code == 2 and "window" in err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    code, _, err = _run(capsys, "compress", "--model", str(model_dir), "--protocol", protocol, *TINY_PROTOCOL_ARGS,
                        "--recipe", "rtn:w4", "--save", str(tmp_path / "full"), "--quiet")
    assert code == 2 and "not empty" in err


def _sweep_argv(model_dir, protocol, store):
    return ["sweep", "--model", str(model_dir), "--protocol", protocol, *TINY_PROTOCOL_ARGS, "--prune", "magnitude",
            "--ratios", "0.2,0.5", "--quant", "rtn", "--bits", "4,8", "--store", str(store), "--quiet", "--lanes", "1",
            "--no-cache"]


def test_sweep_killed_midway_resumes_without_redoing(saved_tiny, tmp_path):
    model_dir, protocol = saved_tiny
    store_path = tmp_path / "runs.sqlite"
    argv = [sys.executable, "-c", "import sys; from crescendo.cli import main; sys.exit(main(sys.argv[1:]))",
            *_sweep_argv(model_dir, protocol, store_path)]
    env = {**os.environ, "CRESCENDO_SLOW_ROWS": "1"}  # no effect; rows are slow enough on their own
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.time() + 120
    while time.time() < deadline:
        if store_path.exists() and len(ResultStore(store_path)) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with ResultStore(store_path) as store:
        first = {r.key: r for r in store.rows()}
    assert 3 <= len(first) < 1 + 2 + 2 + 8, "the sweep must have been killed mid-way"
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    with ResultStore(store_path) as store:
        rows = {r.key: r for r in store.rows()}
    assert len(rows) == 1 + 2 + 2 + 8  # dense, 2 quant singles, 2 prune singles, 2 orders x 4 cells
    for key, row in first.items():  # finished rows were neither redone nor lost
        assert rows[key].created == row.created and rows[key].metrics == row.metrics
    assert f"{len(first)} already in" in done.stdout or f"{13 - len(first)} computed" in done.stdout


def test_same_seed_same_numbers(saved_tiny, tmp_path, capsys):
    model_dir, protocol = saved_tiny
    for name in ("a.sqlite", "b.sqlite"):
        assert main(_sweep_argv(model_dir, protocol, tmp_path / name) + ["--json"]) == 0
    capsys.readouterr()
    a = {r.recipe: r.metrics.perplexity for r in ResultStore(tmp_path / "a.sqlite").rows()}
    b = {r.recipe: r.metrics.perplexity for r in ResultStore(tmp_path / "b.sqlite").rows()}
    assert a == b and len(a) == 13


def test_packed_save_eval_and_verify_round_trip(saved_tiny, capsys, tmp_path):
    model_dir, protocol = saved_tiny
    out = tmp_path / "packed"
    code, text, _ = _run(capsys, "compress", "--model", str(model_dir), "--protocol", protocol, *TINY_PROTOCOL_ARGS,
                         "--recipe", "sparsegpt:2:4 > gptq:w4,g32", "--json", "--quiet", "--save", str(out),
                         "--format", "packed", "--no-dense")
    assert code == 0
    compressed_ppl = json.loads(text)["perplexity"]
    code, text, _ = _run(capsys, "eval", "--model", str(out), "--protocol", protocol, *TINY_PROTOCOL_ARGS, "--json", "--quiet")
    assert code == 0 and json.loads(text)["perplexity"] == compressed_ppl  # exactly the in-memory model
    code, text, _ = _run(capsys, "verify", str(out))
    assert code == 0 and text.startswith("OK")
    from safetensors.torch import load_file, save_file

    path = out / "crescendo-packed.safetensors"
    tensors = load_file(path)
    name = next(k for k in tensors if k.endswith(".bitmask"))
    tensors[name][0] = 0xFF  # keep all 8 weights of two 2:4 groups
    save_file(tensors, path)
    code, _, err = _run(capsys, "verify", str(out))
    assert code != 0 and name.rsplit(".", 1)[0] in err


def test_order_with_one_method_is_one_line_and_exit_2(capsys):
    code, out, err = _run(capsys, "order", "--methods", "sparsegpt:0.5")
    assert code == 2 and out == ""
    assert "at least two distinct methods" in err and err.count("\n") == 1


def test_order_records_into_a_new_store_and_prints_both_error_numbers(saved_tiny, capsys, tmp_path):
    model_dir, protocol = saved_tiny
    store_path = tmp_path / "new.sqlite"  # a new, empty store: falsy by len(), yet it must record
    code, out, err = _run(capsys, "order", "--model", str(model_dir), "--protocol", protocol, *TINY_PROTOCOL_ARGS,
                          "--methods", "magnitude:0.5", "rtn:w4", "--bits", "8,4", "--store", str(store_path),
                          "--layerwise-samples", "2", "--cer-anchor", "dense", "--cer-scale", "log", "--quiet")
    assert code == 0, err
    assert "CER: linear in log-perplexity, anchored at dense (C = 1)" in out
    assert "interference Δ(magnitude:0.5 → rtn:w4) (003 Def. 6: rtn:w4's error after" in out
    assert "excess over the sum of single errors (Harma)" in out
    with ResultStore(store_path) as store:
        rows = {r.recipe: r for r in store.rows()}
    assert {"dense", "rtn:w8", "rtn:w4", "magnitude:0.5", "magnitude:0.5 > rtn:w4",
            "rtn:w4 > magnitude:0.5"} <= set(rows)
    composed = rows["rtn:w4 > magnitude:0.5"]
    assert composed.metrics.interference is not None and composed.metrics.orthogonality_excess is not None
    code, out, _ = _run(capsys, "order", "--model", str(model_dir), "--protocol", protocol, *TINY_PROTOCOL_ARGS,
                        "--methods", "magnitude:0.5", "rtn:w4", "--bits", "8,4", "--no-layerwise", "--json",
                        "--quiet")
    result = json.loads(out)
    assert result["cer_method"] == "CER: linear in perplexity, not anchored"
    assert isinstance(result["curve_monotone"], bool) and "prediction_open" in result


def test_report_takes_the_cer_options(tmp_path, capsys):
    from crescendo.store import Row, RunMetrics

    rows = [("dense", "dense", 10.0, {}), ("rtn:w8", "single", 11.0, {"method": "quant", "bits": 8}),
            ("rtn:w4", "single", 14.0, {"method": "quant", "bits": 4}),
            ("sparsegpt:0.1", "single", 10.5, {"method": "prune", "ratio": 0.1})]
    for first, recipe in (("prune", "sparsegpt:0.1 > rtn:w4"), ("quant", "rtn:w4 > sparsegpt:0.1")):
        rows.append((recipe, "order", 15.0, {"ratio": 0.1, "bits": 4, "first": first}))
    with ResultStore(tmp_path / "s.sqlite") as store:
        for recipe, kind, ppl, extra in rows:
            tpl = {"prune": "sparsegpt:{r}", "quant": "rtn:w{b}"} if kind != "dense" else {}
            store.put(Row.create("m", "p", recipe, 0, "0.1.0", kind, metrics=RunMetrics.from_perplexity(ppl),
                                 extra=extra | tpl))
    code, out, err = _run(capsys, "report", "--store", str(tmp_path / "s.sqlite"), "--out", str(tmp_path / "r"),
                          "--cer-anchor", "dense")
    assert code == 0, err
    md = (tmp_path / "r" / "report.md").read_text()
    # sparsegpt:0.1 (10.5) between dense (10, C = 1) and 8 bits (11, C = 2): 1.50, not "<= 2.00"
    assert "CER: linear in perplexity, anchored at dense (C = 1)" in md and "| 1.50 |" in md
    with pytest.raises(SystemExit) as exit_:  # argparse refuses it: one line, exit 2
        main(["report", "--store", str(tmp_path / "s.sqlite"), "--out", str(tmp_path / "x"),
              "--cer-scale", "cubic"])
    assert exit_.value.code == 2 and capsys.readouterr().err.count("\n") == 1


def test_two_lanes_share_one_sweep(saved_tiny, tmp_path, capsys):
    model_dir, protocol = saved_tiny
    argv = _sweep_argv(model_dir, protocol, tmp_path / "lanes.sqlite")
    argv[argv.index("--lanes") + 1] = "2"
    assert main(argv + ["--json"]) == 0
    counts = json.loads(capsys.readouterr().out)
    rows = ResultStore(tmp_path / "lanes.sqlite").rows()
    assert len(rows) == len({r.recipe for r in rows}) == 13  # every row once
    assert counts["computed"] + counts["elsewhere"] == 13 and counts["elsewhere"] >= 0
    assert all(r.environment["threads"] == 1 for r in rows)  # single-threaded lanes
    assert main(_sweep_argv(model_dir, protocol, tmp_path / "one.sqlite") + ["--json"]) == 0
    one = {r.recipe: r.metrics.perplexity for r in ResultStore(tmp_path / "one.sqlite").rows()}
    assert {r.recipe: r.metrics.perplexity for r in rows} == pytest.approx(one, rel=1e-5)


def test_prefix_cache_is_reused_and_corrupt_entries_recomputed(saved_tiny, tmp_path, capsys, caplog):
    from crescendo.cache import PrefixCache

    model_dir, protocol = saved_tiny
    cache = tmp_path / "cache"
    base = ["sweep", "--model", str(model_dir), "--protocol", protocol, *TINY_PROTOCOL_ARGS, "--prune", "sparsegpt",
            "--ratios", "0.5", "--quant", "rtn", "--lanes", "1", "--cache", str(cache), "--quiet", "--json"]
    assert main(base + ["--bits", "4", "--store", str(tmp_path / "a.sqlite")]) == 0
    assert len(PrefixCache(cache).entries()) == 1 and PrefixCache(cache).entries()[0]["ok"]
    assert main(base + ["--bits", "4,8", "--store", str(tmp_path / "a.sqlite")]) == 0  # adds 8 bits
    rows = {r.recipe: r for r in ResultStore(tmp_path / "a.sqlite").rows()}
    assert rows["sparsegpt:0.5 > rtn:w8"].timings["prefix_from_cache"] is True
    assert rows["sparsegpt:0.5 > rtn:w4"].timings["prefix_from_cache"] is False
    fresh = ["sweep", "--model", str(model_dir), "--protocol", protocol, *TINY_PROTOCOL_ARGS, "--prune", "sparsegpt",
             "--ratios", "0.5", "--quant", "rtn", "--bits", "4,8", "--lanes", "1", "--no-cache", "--quiet", "--json",
             "--store", str(tmp_path / "b.sqlite")]
    assert main(fresh) == 0
    plain = {r.recipe: r.metrics.perplexity for r in ResultStore(tmp_path / "b.sqlite").rows()}
    assert rows["sparsegpt:0.5 > rtn:w8"].metrics.perplexity == plain["sparsegpt:0.5 > rtn:w8"]  # bit-exact reuse
    entry = next(p for p in cache.iterdir() if p.is_dir())
    weights = next(entry.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-7] + b"corrupt")
    assert not PrefixCache(cache).entries()[0]["ok"]
    caplog.set_level("WARNING", logger="crescendo.cache")
    assert main(base + ["--bits", "6", "--store", str(tmp_path / "c.sqlite")]) == 0
    assert "recomputing" in caplog.text
    again = {r.recipe: r for r in ResultStore(tmp_path / "c.sqlite").rows()}
    assert again["sparsegpt:0.5 > rtn:w6"].timings["prefix_from_cache"] is False
    assert PrefixCache(cache).entries()[0]["ok"]  # rewritten whole
    capsys.readouterr()
    code, out, _ = _run(capsys, "cache", "list", "--dir", str(cache), "--json")
    assert code == 0 and len(json.loads(out)["entries"]) == 1
    code, out, _ = _run(capsys, "cache", "clear", "--dir", str(cache))
    assert code == 0 and PrefixCache(cache).entries() == []


def test_fast_bfloat16_only_with_amx_or_cuda(tmp_path):
    from crescendo.workflow import fast_bfloat16

    avx2, amx = tmp_path / "avx2", tmp_path / "amx"
    avx2.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n")
    amx.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f amx_bf16 amx_tile\n")
    assert not fast_bfloat16("cpu", str(avx2))
    assert fast_bfloat16("cpu", str(amx))
    assert not fast_bfloat16("cpu", str(tmp_path / "missing"))
    assert fast_bfloat16("cuda", str(avx2))


@pytest.mark.parametrize("terminal", [False, True])
def test_progress_bars_only_on_a_terminal(terminal, saved_tiny, capsys, monkeypatch):
    """compress, order and sweep share the demo's rule: stderr that is not a terminal (a log file, CI)
    gets no tqdm bars even without --quiet."""
    model_dir, protocol = saved_tiny
    monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal)
    assert main(["compress", "--model", str(model_dir), "--protocol", protocol, *TINY_PROTOCOL_ARGS,
                 "--recipe", "sparsegpt:0.5 > gptq:w4", "--json"]) == 0
    err = capsys.readouterr().err
    assert ("gptq:w4" in err and "it/s" in err) == terminal, err[-500:]
