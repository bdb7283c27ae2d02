"""Fuzzing the rows of a results store, which reports read back: a stored row's JSON columns mutated
along their tree and its scalar columns given other types, then `report` (exit 0 or 2: one line, no
traceback, the store file untouched, no -wal or -shm left beside it)."""

from __future__ import annotations

import itertools
import json
import shutil
import sqlite3

import pytest
from harness import address_space_limit, budget, fixed_seed, json_values, mutated_json, offline, run_cli  # noqa: F401
from hypothesis import given
from hypothesis import strategies as st

from crescendo.store import ResultStore, RunMetrics, record_run

_count = itertools.count()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A store with the rows of one sweep cell pair (dense, singles, both orders at two bit-widths)."""
    path = tmp_path_factory.mktemp("fuzz-store") / "s.sqlite"
    recipes = {"dense": ("dense", 10.0), "magnitude:0.5": ("single", 12.0), "rtn:w4": ("single", 11.0),
               "rtn:w8": ("single", 10.1), "magnitude:0.5 > rtn:w4": ("order", 14.0),
               "rtn:w4 > magnitude:0.5": ("order", 15.0), "magnitude:0.5 > rtn:w8": ("order", 12.5),
               "rtn:w8 > magnitude:0.5": ("order", 12.7)}
    with ResultStore(path) as s:
        for recipe, (kind, ppl) in recipes.items():
            record_run(s, model="m", protocol="p", recipe=recipe, seed=0, kind=kind,
                       metrics=RunMetrics.from_perplexity(ppl, {"sparsity": 0.5 if "magnitude" in recipe else 0.0}),
                       extra={"prune": "magnitude:{r}", "quant": "rtn:w{b}", "ratio": 0.5})
    return path


@budget(15)
@fixed_seed()
@given(data=st.data(), column=st.sampled_from(["metrics", "extra", "timings", "environment", "seed", "kind",
                                               "recipe", "created"]))
def test_stored_rows(data, column, store, tmp_path, capsys):
    folder = tmp_path / f"s{next(_count)}"
    folder.mkdir()
    path = folder / "s.sqlite"
    shutil.copy(store, path)
    conn = sqlite3.connect(path)
    key, value = conn.execute(f"SELECT key, {column} FROM runs ORDER BY key LIMIT 1 OFFSET "
                              f"{data.draw(st.integers(0, 7))}").fetchone()
    if isinstance(value, str) and value.startswith("{"):
        new = json.dumps(data.draw(mutated_json(json.loads(value))))
    else:
        new = data.draw(st.one_of(json_values.map(json.dumps), st.just(None), st.integers(), st.text(max_size=8)))
    try:
        conn.execute(f"UPDATE runs SET {column} = ? WHERE key = ?", (new, key))
        conn.commit()
    except (sqlite3.IntegrityError, OverflowError):  # NOT NULL, or an integer beyond 64 bits: SQLite refuses it
        pass
    conn.close()
    out = tmp_path / f"r{next(_count)}"
    run_cli(["report", "--store", str(path), "--out", str(out)], capsys, [folder], codes=(0, 2))
    shutil.rmtree(folder)
    shutil.rmtree(out, ignore_errors=True)
