"""Raced sweeps: rows under the raced protocol id, growing single prefixes, replayable verdicts, resume."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from conftest import VOCAB, tiny_bench

from crescendo.analysis.sequential import RaceSettings, race, unit_order
from crescendo.data import ProtocolData
from crescendo.errors import ConfigError
from crescendo.store import ResultStore
from crescendo.sweep import grid_tasks
from crescendo.sweep_race import run_raced_sweep
from crescendo.units import UnitsError


def _bench(windows: int = 32):
    bench = tiny_bench()
    g = torch.Generator().manual_seed(11)
    data = bench.data
    bench.data = ProtocolData(replace(data.protocol, n_eval_windows=windows), data.test_ids,
                              torch.randint(0, VOCAB, (windows, 32), generator=g), data.calibration)
    return bench


def test_a_raced_sweep_stores_raced_rows_that_replay(tmp_path):
    bench = _bench()
    tasks = grid_tasks("magnitude", [0.3, 0.6], "rtn", [8, 3])
    settings = RaceSettings(round_size=4)
    with ResultStore(tmp_path / "s.sqlite") as store:
        counts = run_raced_sweep(bench, "tiny", "tiny", tasks, store, seed=0, race_settings=settings)
        rows = {(r.protocol, r.recipe): r for r in store.rows()}
    assert counts["computed"] == len(tasks)  # each recipe counted once, though singles are rewritten
    assert ("tiny", "dense") in rows and rows[("tiny", "dense")].units.full
    raced = {recipe: r for (protocol, recipe), r in rows.items() if protocol == "tiny+race[r4]"}
    assert set(raced) == {t.recipe for t in tasks if t.kind != "dense"}
    order = unit_order(32, 0)
    for row in raced.values():  # every raced row holds a prefix of the one seeded order
        assert row.units.index.tolist() == order[: len(row.units)].tolist()
    # replaying a cell's race from its stored rows gives the stored verdict
    pq, qp = raced["magnitude:0.3 > rtn:w3"], raced["rtn:w3 > magnitude:0.3"]
    values = {"a": pq.units.values, "b": qp.units.values}
    position = {int(u): i for i, u in enumerate(order)}
    result = race(lambda n, ids: values[n][[position[int(i)] for i in ids]], ["a", "b"], 32,
                  kind="window-loss", round_size=4)
    assert result.stop == pq.extra["race"]["stop"]
    assert result.units_used("a") == pq.extra["race"]["units_used"][pq.recipe]
    # singles raced in several cells keep the longest prefix any of their races needed
    p03 = raced["magnitude:0.3"]
    assert len(p03.units) == max(r.extra["race"]["units_used"].get("magnitude:0.3", 0)
                                 for r in raced.values() if r.kind == "single")


def test_a_rerun_skips_finished_cells(tmp_path):
    tasks = grid_tasks("magnitude", [0.3], "rtn", [8])
    with ResultStore(tmp_path / "s.sqlite") as store:
        run_raced_sweep(_bench(), "tiny", "tiny", tasks, store, seed=0, race_settings=RaceSettings(round_size=4))
        again = run_raced_sweep(_bench(), "tiny", "tiny", tasks, store, seed=0, race_settings=RaceSettings(round_size=4))
    assert again["computed"] == 0 and again["skipped"] == 3  # dense and the cell's two orders


def test_raced_sweeps_refuse_what_they_cannot_race(tmp_path):
    with ResultStore(tmp_path / "s.sqlite") as store:
        with pytest.raises(ConfigError, match="multi-stage"):
            run_raced_sweep(_bench(), "tiny", "tiny", grid_tasks("magnitude", [0.3], "rtn", [4], multistage_total=0.3,
                                                                   multistage_step=0.1),
                            store, seed=0, race_settings=RaceSettings())
        with pytest.raises(UnitsError, match="at least one round"):
            run_raced_sweep(_bench(8), "tiny", "tiny", grid_tasks("magnitude", [0.3], "rtn", [4]), store, seed=0,
                            race_settings=RaceSettings(round_size=16))
    assert not (tmp_path / "s.sqlite").exists()  # refused before anything was written
