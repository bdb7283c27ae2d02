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
    assert c["first"] == "sparsegpt:0.5 > gptq:w4" and c["verdict"] in ("first better", "second better",
                                                                          "equivalent", "undetermined")
    assert c["interval"][0] <= result["order_advantage_prune_first"] <= c["interval"][1]
    assert [r["units"] for r in result["rows"]] == [4, 4, 4] and result["race"] is None
    code, out, _ = _run(capsys, "demo", "--model", str(model_dir), "--protocol", protocol, *RACE_ARGS, "--quiet",
                        "--race", "--race-round", "2", "--json")
    raced = json.loads(out)
    assert code == 0 and raced["race"]["total_units"] == 12
    assert [r["units"] for r in raced["rows"][1:]] == list(raced["race"]["units_used"].values())


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
