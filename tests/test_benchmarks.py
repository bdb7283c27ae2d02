"""The result-producing benchmark scripts run end to end on a tiny saved model (smoke tests: the real
figures come from running them on the embedded model, see docs/results/)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import TINY_PROTOCOL_ARGS

from crescendo.store import ResultStore

ROOT = Path(__file__).resolve().parents[1]


def _script(name, model_dir, protocol, *args):
    argv = [sys.executable, str(ROOT / "benchmarks" / name), "--model", str(model_dir), "--protocol", protocol,
            *TINY_PROTOCOL_ARGS, *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_budgets_script(saved_tiny, tmp_path):
    model_dir, protocol = saved_tiny
    out = tmp_path / "budgets"
    _script("budgets.py", model_dir, protocol, "--out", str(out), "--uniform-bits", "8", "4",
            "--proxy-samples", "2", "--generations", "1", "--population", "2", "--target-bops", "4")
    compound = json.loads((out / "compound.json").read_text())
    uniform = [r for r in compound["rows"] if r["setting"].startswith("uniform")]
    mixed = [r for r in compound["rows"] if r["setting"].startswith("mixed")]
    assert len(uniform) == len(mixed) == 2
    for u, m in zip(uniform, mixed):  # the mixed allocation meets the uniform setting's BOP budget
        assert m["summary"]["bop_reduction"] >= u["summary"]["bop_reduction"] * (1 - 1e-6)
    allocation = json.loads((out / "allocation.json").read_text())
    assert allocation["rtn"]["advantage"] == 0.0  # RTN stages on disjoint layers commute
    search = json.loads((out / "search.json").read_text())
    assert set(search) >= {"uniform-sum", "uniform"}
    assert len(ResultStore(out / "search.sqlite")) == sum(search[s]["evaluated"] for s in ("uniform-sum", "uniform"))
    assert (out / "search_pareto.png").stat().st_size > 0 and "| uniform-sum |" in (out / "search.md").read_text()


def test_rotation_pruning_reuses_the_store(saved_tiny, tmp_path):
    model_dir, protocol = saved_tiny
    store = tmp_path / "t.sqlite"
    args = ("--methods", "magnitude", "--ratios", "0.5", "--out", str(tmp_path / "t4.md"), "--store", str(store))
    _script("rotation_pruning.py", model_dir, protocol, *args)
    first = {r.recipe: r.created for r in ResultStore(store).rows()}
    assert set(first) == {"dense", "magnitude:0.5", "rotate > magnitude:0.5"}
    _script("rotation_pruning.py", model_dir, protocol, *args)
    assert {r.recipe: r.created for r in ResultStore(store).rows()} == first  # nothing recomputed
    assert "| 0.5 |" in (tmp_path / "t4.md").read_text()


def test_rotation_pruning_per_method_ratios(saved_tiny, tmp_path):
    model_dir, protocol = saved_tiny
    out = tmp_path / "t4.md"
    _script("rotation_pruning.py", model_dir, protocol, "--methods", "magnitude", "magnitude:{r},zeros=pruned@0.25",
            "--ratios", "0.25", "0.5", "--out", str(out))
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert sorted((r["method"], r["ratio"]) for r in rows) == [
        ("magnitude", 0.25), ("magnitude", 0.5), ("magnitude:{r},zeros=pruned", 0.25)]
    table = out.read_text().splitlines()
    (half,) = [line for line in table if line.startswith("| 0.5 |")]
    assert half.endswith("|  |  |  |")  # the second method does not measure 0.5: empty cells


def test_rotation_pruning_rejects_a_bad_method_before_loading(tmp_path):
    out = tmp_path / "t4.md"
    for method, message in (("sparsegpt@abc", "bad ratio list 'abc'"), ("sparsegpt@1.5", "must be in [0, 1)")):
        argv = [sys.executable, str(ROOT / "benchmarks" / "rotation_pruning.py"), "--model", str(tmp_path / "none"),
                "--methods", method, "--out", str(out)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and message in done.stderr.splitlines()[-1]  # not the missing model
    assert not out.exists()


def test_budgets_rejects_zero_hawq_probes_before_loading(tmp_path):
    argv = [sys.executable, str(ROOT / "benchmarks" / "budgets.py"), "--model", str(tmp_path / "none"),
            "--out", str(tmp_path / "out"), "--sensitivity", "hawq", "--hawq-probes", "0"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--hawq-probes must be >= 1, got 0" in done.stderr.splitlines()[-1]
    assert not (tmp_path / "out").exists()


def test_quant_zeros_script(saved_tiny, tmp_path):
    model_dir, protocol = saved_tiny
    out = tmp_path / "qz.md"
    _script("quant_zeros.py", model_dir, protocol, "--prune", "magnitude", "--bits", "2", "--ratios", "0.1",
            "--out", str(out))
    (cell,) = json.loads(out.with_suffix(".json").read_text())["rows"]
    alone, default, onto = (cell[k]["zero_fraction"] for k in ("quant_alone", "q_then_p", "q_then_p_zeros_pruned"))
    assert alone > 0.1 and abs(default - alone) < 0.01 and abs(onto - (alone + 0.1)) < 0.01
    assert "zeros=pruned" in cell["q_then_p_zeros_pruned"]["recipe"]


def test_budgets_compound_with_hawq(saved_tiny, tmp_path):
    model_dir, protocol = saved_tiny
    out = tmp_path / "budgets"
    _script("budgets.py", model_dir, protocol, "--out", str(out), "--parts", "compound", "--uniform-bits", "4",
            "--sensitivity", "hawq", "--hawq-samples", "1", "--hawq-probes", "2")
    compound = json.loads((out / "compound_hawq.json").read_text())
    assert compound["sensitivity"] == "hawq" and len(compound["rows"]) == 3
    assert "HAWQ-V2" in (out / "compound_hawq.md").read_text() and not (out / "compound.json").exists()


def test_sweep_cell_script(saved_tiny, tmp_path):
    model_dir, protocol = saved_tiny
    out = tmp_path / "cell.txt"
    printed = _script("sweep_cell.py", model_dir, protocol, "--pruner", "magnitude:0.5", "--out", str(out))
    text = out.read_text()
    for label in ("magnitude:0.5 ", "rtn:w4 ", "magnitude:0.5 > rtn:w4", "rtn:w4 > magnitude:0.5"):
        assert label in text
    assert "full  cell magnitude:0.5 x rtn:w4:" in printed and "raced cell magnitude:0.5 x rtn:w4:" in printed
    assert "evaluation, full / raced:" in text and "load average before" in text


def test_quality_script_reuses_the_first_stage_and_names_the_commit(saved_tiny, tmp_path):
    model_dir, protocol = saved_tiny
    out = tmp_path / "q.json"
    _script("quality.py", model_dir, protocol, "--rows", "magnitude:0.5", "rtn:w4", "magnitude:0.5 > rtn:w4",
            "--json", str(out))
    data = json.loads(out.read_text())
    assert data["commit"] and data["threads"] >= 1
    rows = {r["recipe"]: r for r in data["rows"]}
    composed = rows["magnitude:0.5 > rtn:w4"]
    assert composed["sparsity"] == rows["magnitude:0.5"]["sparsity"] > 0.4  # the prefix's mask is in the summary
    assert composed["avg_weight_bits"] < 5 and composed["compress_seconds"] >= rows["magnitude:0.5"]["compress_seconds"]


def test_beyond_finetune_script_writes_both_orders_and_its_commit(saved_tiny, tmp_path):
    model_dir, protocol = saved_tiny
    _script("beyond.py", model_dir, protocol, "finetune", "--steps", "2", "--lr", "1e-3", "--out", str(tmp_path))
    data = json.loads((tmp_path / "finetune.json").read_text())
    assert data["commit"] and data["protocol"]
    rows = data["rows"]
    composed = rows["sparsegpt:0.5 > rtn:w4 > finetune:steps=2,lr=0.001"]
    assert [s["stage"] for s in composed["stages"]] == ["sparsegpt:0.5", "rtn:w4", "finetune:steps=2,lr=0.001"]
    assert data["advantage_before"] == rows["rtn:w4 > sparsegpt:0.5"]["perplexity"] - rows["sparsegpt:0.5 > rtn:w4"][
        "perplexity"]
    assert "A(P -> Q)" in (tmp_path / "finetune.md").read_text()


def test_beyond_share_measures_both_orders_and_renders_again_from_its_json(saved_tiny, tmp_path):
    model_dir, protocol = saved_tiny
    opts = ["share", "--ratios", "0.2", "--share", "0.3"]
    _script("beyond.py", model_dir, protocol, *opts, "--out", str(tmp_path / "run"))
    data = json.loads((tmp_path / "run" / "share.json").read_text())
    assert data["commit"] == data["rendered_by"]
    S, P = "share:group=2,ratio=0.3", "magnitude:0.2"
    assert set(data["rows"]) == {P, S, f"{S} > {P}", f"{P} > {S},absorb"}
    assert set(data["reference"]) == {f"rtn:w{b}" for b in range(3, 9)}
    (a,) = data["advantages"]
    assert a["advantage_prune_first"] == data["rows"][f"{S} > {P}"]["perplexity"] - data["rows"][f"{P} > {S},absorb"][
        "perplexity"]
    assert "not anchored" in (tmp_path / "run" / "share.md").read_text()  # 003's CER reading by default
    # the same rows read with other CER options: nothing measured, the same perplexities, the new reading named
    argv = [sys.executable, str(ROOT / "benchmarks" / "beyond.py"), *opts, "--cer-anchor", "dense", "--cer-envelope",
            "--render", str(tmp_path / "run" / "share.json"), "--out", str(tmp_path / "again"), "--model", "nowhere"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    again = json.loads((tmp_path / "again" / "share.json").read_text())
    assert again["rows"] == data["rows"] and again["commit"] == data["commit"]
    assert "anchored at dense" in (tmp_path / "again" / "share.md").read_text()
    # rows the options ask for but the run did not measure: one line, exit 2, nothing written
    argv[argv.index("0.2")] = "0.4"
    argv[argv.index("--out") + 1] = str(tmp_path / "missing")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "no row for 'magnitude:0.4'" in done.stderr.splitlines()[-1]
    assert not (tmp_path / "missing").exists()


def test_reassociation_rejects_a_bad_recipe_or_batch_list_before_loading():
    for args, message in ((["--recipe", "sparsegpt:1.5"], "must be in [0, 1)"),
                          (["--batches", "0", "32"], "at least two batch sizes >= 1")):
        argv = [sys.executable, str(ROOT / "benchmarks" / "reassociation.py"), *args]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and message in done.stderr.splitlines()[-1]
        assert "Loading" not in done.stderr  # refused before the model was read


def test_quality_and_beyond_reject_a_bad_recipe_before_loading(tmp_path):
    # the model path does not exist: reaching the load would fail with another message
    for script, args, message in (("quality.py", ["--rows", "sparsegpt:1.5"], "must be in [0, 1)"),
                                  ("beyond.py", ["share", "--share", "1.2"], "share ratio must be in [0, 1)"),
                                  ("beyond.py", ["finetune", "--steps", "0"], "steps must be >= 1"),
                                  ("beyond.py", ["lora", "--bits", "1"], "weight bits must be in 2..8")):
        argv = [sys.executable, str(ROOT / "benchmarks" / script), "--model", str(tmp_path / "none"), *args,
                "--out" if script == "beyond.py" else "--json", str(tmp_path / "out")]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and message in done.stderr.splitlines()[-1], (script, done.stderr[-500:])
        assert not (tmp_path / "out").exists()
