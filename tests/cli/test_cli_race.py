"""Intervals, verdicts and racing on the command line (tiny saved model)."""

from __future__ import annotations

import json

import pytest
from conftest import TINY_PROTOCOL_ARGS

from crescendo.cli import main
from crescendo.store import ResultStore

RACE_ARGS = ["--seqlen", "32", "--eval-windows", "12", "--nsamples", "4"]  # 12 windows: rounds of 2


def _run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_demo_shows_the_interval_and_the_verdict(saved_tiny, capsys):
    model_dir, protocol = saved_tiny
    code, out, _ = _run(capsys, "demo", "--model", str(model_dir), "--protocol", protocol, *TINY_PROTOCOL_ARGS,
                        "--quiet", "--json")
    assert code == 0
    result = json.loads(out)
    c = result["comparison"]
    assert c["first"] == "wanda:0.5 > rtn:w4" and c["verdict"] in ("first better", "second better",
                                                                     "equivalent", "undetermined")
    assert result["plan"] == "quick" and set(result["timings"]) >= {"evaluate the dense model", "evaluate both orders"}
    assert c["interval"][0] <= result["order_advantage_prune_first"] <= c["interval"][1]
    assert [r["units"] for r in result["rows"]] == [4, 4, 4] and result["race"] is None
    code, out, _ = _run(capsys, "demo", "--model", str(model_dir), "--protocol", protocol, *RACE_ARGS, "--quiet",
                        "--race", "--race-round", "2", "--json")
    raced = json.loads(out)
    assert code == 0 and raced["race"]["total_units"] == 12
    assert [r["units"] for r in raced["rows"][1:]] == list(raced["race"]["units_used"].values())


def test_demo_shows_no_progress_when_stderr_is_not_a_terminal(saved_tiny, capsys):
    """Without --quiet, but with stderr captured (not a terminal): no progress line and no engine bar."""
    model_dir, protocol = saved_tiny
    code, out, err = _run(capsys, "demo", "--model", str(model_dir), "--protocol", protocol, *TINY_PROTOCOL_ARGS)
    assert code == 0 and "order advantage" in out
    assert "it/s" not in err and "crescendo demo [" not in err and "wanda:0.5:" not in err, err[-500:]


def test_order_with_a_store_keeps_units_and_race_rows_are_labelled(saved_tiny, capsys, tmp_path):
    model_dir, protocol = saved_tiny
    store = tmp_path / "o.sqlite"
    code, out, _ = _run(capsys, "order", "--model", str(model_dir), "--protocol", protocol, *RACE_ARGS, "--quiet",
                        "--methods", "magnitude:0.5", "rtn:w4", "--bits", "8,4", "--no-layerwise", "--store", str(store),
                        "--race", "--race-round", "2", "--json")
    assert code == 0
    out = json.loads(out)
    assert set(out["races"]) == {"singles", "orders"} and out["advantage_comparison"]
    with ResultStore(store, readonly=True) as s:
        rows = s.rows()
    raced = {r.recipe for r in rows if r.protocol.endswith("+race[r2]")}
    assert raced == {"magnitude:0.5", "rtn:w4", "magnitude:0.5 > rtn:w4", "rtn:w4 > magnitude:0.5"}
    assert all(r.units is not None for r in rows)
    dense = next(r for r in rows if r.recipe == "dense")
    assert dense.units.full and len(dense.units) == 12


@pytest.mark.parametrize("extra, message", [
    (["--race", "--race-confidence", "1.5"], "confidence"),
    (["--race", "--race-confidence", "0.3"], "confidence"),
    (["--margin", "-0.1"], "margin"),
    (["--margin", "nan"], "margin"),
    (["--race-round", "4"], "only apply with --race"),
    (["--race", "--race-round", "64"], "at least one round"),
])
def test_bad_racing_input_is_one_line_and_exit_2(saved_tiny, capsys, tmp_path, extra, message):
    model_dir, protocol = saved_tiny
    store = tmp_path / "x.sqlite"
    code, out, err = _run(capsys, "order", "--model", str(model_dir), "--protocol", protocol, *RACE_ARGS, "--quiet",
                          "--methods", "magnitude:0.5", "rtn:w4", "--bits", "8,4", "--store", str(store), *extra)
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not store.exists()


def test_race_does_not_apply_to_every_predictor(saved_tiny, capsys):
    model_dir, protocol = saved_tiny
    code, _, err = _run(capsys, "order", "--model", str(model_dir), "--protocol", protocol, *RACE_ARGS, "--quiet",
                        "--methods", "magnitude:0.5", "rtn:w4", "--choose", "--predictor", "zeros", "--race")
    assert code == 2 and "does not apply" in err
    code, out, _ = _run(capsys, "order", "--model", str(model_dir), "--protocol", protocol, *RACE_ARGS, "--quiet",
                        "--methods", "magnitude:0.5", "rtn:w4", "--choose", "--predictor", "race", "--json")
    decision = json.loads(out)
    assert code == 0 and decision["order"] is not None and decision["cost"]["partial_evaluations"] > 0
    assert decision["cost"]["evaluations"] == 0 and sum(decision["evidence"]["units_used"].values()) >= 4


def test_compare_two_stored_rows(saved_tiny, capsys, tmp_path):
    model_dir, protocol = saved_tiny
    store = tmp_path / "o.sqlite"
    assert main(["order", "--model", str(model_dir), "--protocol", protocol, *RACE_ARGS, "--quiet", "--methods",
                 "magnitude:0.5", "rtn:w4", "--bits", "8,4", "--no-layerwise", "--store", str(store), "--json"]) == 0
    capsys.readouterr()
    code, out, _ = _run(capsys, "compare", "magnitude:0.5 > rtn:w4", "rtn:w4 > magnitude:0.5", "--store", str(store),
                        "--json")
    c = json.loads(out)
    assert code == 0 and c["n_units"] == 12 and c["verdict"] in ("first better", "second better", "equivalent",
                                                                   "undetermined")
    code, _, err = _run(capsys, "compare", "rtn:w6", "dense", "--store", str(store))
    assert code == 2 and "no row of 'rtn:w6'" in err and err.count("\n") == 1
    code, _, err = _run(capsys, "compare", "rtn:w4", "dense", "--store", str(store), "--confidence", "2")
    assert code == 2 and "confidence" in err


def test_sweep_prints_every_cell_with_its_interval_and_races(saved_tiny, capsys, tmp_path):
    model_dir, protocol = saved_tiny
    argv = ["sweep", "--model", str(model_dir), "--protocol", protocol, *RACE_ARGS, "--prune", "magnitude",
            "--ratios", "0.5", "--quant", "rtn", "--bits", "4", "--quiet", "--lanes", "1", "--no-cache"]
    code, out, _ = _run(capsys, *argv, "--store", str(tmp_path / "full.sqlite"), "--json")
    (cell,) = json.loads(out)["cells"]
    assert code == 0 and cell["interval"][0] <= cell["advantage"] <= cell["interval"][1]
    code, out, _ = _run(capsys, *argv, "--store", str(tmp_path / "raced.sqlite"), "--race", "--race-round", "2")
    assert code == 0 and "A(Q->P) =" in out and "p=0.5 B=4" in out
    with ResultStore(tmp_path / "raced.sqlite", readonly=True) as s:
        assert all(r.protocol.endswith("+race[r2]") for r in s.rows() if r.kind != "dense")
    code, _, err = _run(capsys, *argv[:-3], "--lanes", "2", "--store", str(tmp_path / "x.sqlite"), "--race")
    assert code == 2 and "one lane" in err and not (tmp_path / "x.sqlite").exists()


def test_the_demo_gives_the_figures_order_gives(saved_tiny, capsys):
    """Same recipes, same protocol: the demo's dense and order perplexities are `crescendo order`'s."""
    model_dir, protocol = saved_tiny
    common = ["--model", str(model_dir), "--protocol", protocol, *TINY_PROTOCOL_ARGS, "--quiet", "--json"]
    assert main(["demo", *common]) == 0
    demo = json.loads(capsys.readouterr().out)
    assert demo["same_as"].startswith("crescendo order --model") and "--methods wanda:0.5 rtn:w4" in demo["same_as"]
    assert main(["order", *common, "--methods", "wanda:0.5", "rtn:w4", "--bits", "8,4", "--no-layerwise"]) == 0
    order = json.loads(capsys.readouterr().out)
    by_recipe = {" > ".join(o["order"]): o["perplexity"] for o in order["orders"]}
    rows = {r["recipe"]: r["perplexity"] for r in demo["rows"]}
    assert rows["dense"] == pytest.approx(order["dense"], rel=1e-6)
    for recipe in ("wanda:0.5 > rtn:w4", "rtn:w4 > wanda:0.5"):
        assert rows[recipe] == pytest.approx(by_recipe[recipe], rel=1e-6)


def test_demo_progress_lines_have_an_estimate_of_the_time_left(tmp_path):
    import io

    from conftest import tiny_bench

    from crescendo.demo import QUICK, run_demo

    stream = io.StringIO()
    stream.isatty = lambda: True  # a terminal: progress shows
    run_demo(lambda: tiny_bench(), QUICK, progress=True, stream=stream)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 7 and all("s left)" in line for line in lines)
    assert lines[0].startswith("crescendo demo [1/7] load the model") and "[7/7] evaluate both orders" in lines[-1]
    quiet = io.StringIO()  # not a terminal: nothing
    run_demo(lambda: tiny_bench(), QUICK, progress=True, stream=quiet)
    assert quiet.getvalue() == ""
