"""Per-unit results in the results store, and the benches that produce them."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_bench

from crescendo.errors import StoreError
from crescendo.store import ResultStore, RunMetrics, record_run
from crescendo.units import Units


def _put(store, recipe="rtn:w4", units=None, ppl=30.0):
    return record_run(store, model="m", protocol="p", recipe=recipe, seed=0, kind="run",
                      metrics=RunMetrics.from_perplexity(ppl), units=units)


def test_units_are_stored_with_their_row(tmp_path: Path):
    losses = Units("window-loss", [3.1, 3.4, 3.3], total=64, index=[9, 2, 40])
    bits = Units("correct", np.arange(10001) % 3 == 0, total=10001)
    with ResultStore(tmp_path / "s.sqlite") as store:
        a = _put(store, "rtn:w4", losses)
        b = _put(store, "rtn:w8", bits)
        c = _put(store, "rtn:w6", None)
    with ResultStore(tmp_path / "s.sqlite", readonly=True) as store:
        got = {r.recipe: r for r in store.rows()}
        assert got["rtn:w4"].units.index.tolist() == [9, 2, 40]
        assert got["rtn:w4"].units.values.tolist() == [3.1, 3.4, 3.3]
        assert got["rtn:w8"].units.values.sum() == bits.values.sum() and got["rtn:w8"].units.full
        assert got["rtn:w6"].units is None  # no units: measured without them
        assert store.get(a.key).units.total == 64 and store.get(c.key).units is None
    raw = sqlite3.connect(tmp_path / "s.sqlite").execute("SELECT length(vals) FROM units WHERE key = ?",
                                                         (b.key,)).fetchone()[0]
    assert raw == math.ceil(10001 / 8)  # one bit per image


def test_a_replaced_row_does_not_keep_old_units(tmp_path: Path):
    with ResultStore(tmp_path / "s.sqlite") as store:
        row = _put(store, units=Units("window-loss", [1.0, 2.0], total=2))
        _put(store, units=None, ppl=31.0)
        assert store.get(row.key).units is None and store.get(row.key).metrics.perplexity == 31.0


def test_a_store_written_before_units_still_reads(tmp_path: Path):
    path = tmp_path / "old.sqlite"
    with ResultStore(path) as store:
        row = _put(store, units=Units("window-loss", [1.0, 2.0], total=2))
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE units")  # what an older crescendo wrote
    conn.commit()
    conn.close()
    with ResultStore(path, readonly=True) as store:  # read-only: no table is added
        assert store.get(row.key).units is None
    with ResultStore(path) as store:  # a writer adds the table and changes no row
        assert store.get(row.key).metrics.perplexity == 30.0 and store.get(row.key).units is None
        _put(store, "rtn:w8", Units("window-loss", [1.0, 2.0], total=2))
        assert len(store.rows()) == 2


def test_damaged_units_are_a_store_error(tmp_path: Path):
    path = tmp_path / "s.sqlite"
    with ResultStore(path) as store:
        row = _put(store, units=Units("window-loss", [1.0, 2.0], total=2))
    conn = sqlite3.connect(path)
    conn.execute("UPDATE units SET vals = ? WHERE key = ?", (b"\x00" * 5, row.key))
    conn.commit()
    conn.close()
    with ResultStore(path, readonly=True) as store, pytest.raises(StoreError, match="units are damaged"):
        store.get(row.key)


def test_bad_units_never_reach_the_store(tmp_path: Path):
    with ResultStore(tmp_path / "s.sqlite") as store, pytest.raises(StoreError, match="units must be Units"):
        _put(store, units=[1.0, 2.0])
    assert not (tmp_path / "s.sqlite").exists()


def test_the_language_bench_keeps_one_loss_per_window():
    bench = tiny_bench()
    found = bench.measure(bench.model)
    assert found.units.kind == "window-loss" and found.units.full and len(found.units) == 4
    assert -found.units.metric == pytest.approx(found.metrics.perplexity, rel=1e-12)
    part = bench.evaluation(bench.model, [3, 1])
    assert part.units.index.tolist() == [3, 1]
    assert part.units.values.tolist() == pytest.approx(found.units.values[[3, 1]].tolist(), rel=1e-6)
