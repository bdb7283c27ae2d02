"""The SQLite results store: round trip, resume, key stability, WAL, schema and crash safety."""

from __future__ import annotations

import hashlib
import json
import math
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from crescendo.errors import StoreError
from crescendo.store import SCHEMA_VERSION, ResultStore, Row, run_key

FIELDS = {
    "model": "smollm2-135m",
    "protocol": "wikitext2:8x128",
    "recipe": "wanda:0.5 > rtn:w4",
    "seed": 0,
    "version": "0.1.0",
}


def make_row(recipe: str = "wanda:0.5 > rtn:w4", kind: str = "order", **metrics: float) -> Row:
    return Row.create(
        FIELDS["model"], FIELDS["protocol"], recipe, 0, FIELDS["version"], kind,
        metrics=metrics or {"ppl": 31.25},
        timings={"compress_s": 1.5}, environment={"torch": "2.13"}, extra={"stages": ["wanda", "rtn"]},
    )


def test_round_trip(tmp_path: Path):
    row = make_row(ppl=math.inf, acc=np.float32(0.5))  # collapsed ppl and a numpy scalar survive
    with ResultStore(tmp_path / "runs.sqlite") as store:
        assert len(store) == 0 and store.get(row.key) is None
        store.put(row)
        got = store.get(row.key)
    assert got is not None
    assert got.metrics == {"ppl": math.inf, "acc": 0.5}
    assert (got.timings, got.environment, got.extra) == (row.timings, row.environment, row.extra)
    assert isinstance(got.metrics["acc"], float)
    assert got == replace(row, metrics={"ppl": math.inf, "acc": 0.5})  # every field, JSON ones included


def test_resume_semantics(tmp_path: Path):
    path = tmp_path / "runs.sqlite"
    single, order = make_row("wanda:0.5", kind="single"), make_row()
    with ResultStore(path) as store:
        assert not store.has(order.key)
        store.put(single)
        store.put(order)
        assert store.has(order.key) and order.key in store
        store.put(make_row(ppl=40.0))  # same key: replaced, not duplicated
        assert len(store) == 2
    with ResultStore(path) as reopened:  # a rerun sweep sees what the killed one finished
        assert len(reopened) == 2 and reopened.has(single.key)
        assert reopened.get(order.key).metrics == {"ppl": 40.0}
        assert [r.key for r in reopened.rows(kind="single")] == [single.key]
        assert len(reopened.rows(model=FIELDS["model"], protocol=FIELDS["protocol"])) == 2
        assert reopened.rows(recipe="wanda:0.5")[0].kind == "single"
        assert reopened.rows(model="other") == []
        with pytest.raises(TypeError):
            reopened.rows(colour="red")  # type: ignore[call-arg]


def test_run_key_is_stable_and_sensitive():
    key = run_key(**FIELDS)
    # Pinned: changing the canonical form would orphan every stored sweep.
    canonical = b'{"model":"smollm2-135m","protocol":"wikitext2:8x128","recipe":"wanda:0.5 > rtn:w4",' \
                b'"seed":0,"version":"0.1.0"}'
    assert key == hashlib.sha256(canonical).hexdigest()
    assert key == "63cb88f3bdc8a6874a24a60cb3c0dcef96b2584f8215691c56cc91754076a35a"
    assert run_key(**FIELDS) == key and len(key) == 64
    changed = {"model": "other", "protocol": "c4:8x128", "recipe": "rtn:w4 > wanda:0.5", "seed": 1,
               "version": "0.1.1"}
    keys = {key} | {run_key(**{**FIELDS, name: value}) for name, value in changed.items()}
    assert len(keys) == 6
    with pytest.raises(TypeError):
        run_key(**{**FIELDS, "seed": "0"})


def test_wal_mode_is_on(tmp_path: Path):
    path = tmp_path / "runs.sqlite"
    ResultStore(path).close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_schema_mismatch_raises(tmp_path: Path):
    path = tmp_path / "runs.sqlite"
    ResultStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="schema version") as info:
        ResultStore(path)
    assert "\n" not in str(info.value)


def test_bad_paths_raise(tmp_path: Path):
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database at all " * 200)
    with pytest.raises(StoreError):
        ResultStore(junk)
    with pytest.raises(StoreError, match="does not exist"):
        ResultStore(tmp_path / "missing" / "runs.sqlite")
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE something (x)")
    with pytest.raises(StoreError, match="not a crescendo"):
        ResultStore(other)


def test_bad_rows_and_closed_store(tmp_path: Path):
    store = ResultStore(tmp_path / "runs.sqlite")
    with pytest.raises(StoreError):
        store.put(make_row(ppl=object()))  # type: ignore[arg-type]
    with pytest.raises(StoreError):
        store.put(replace(make_row(), created="yesterday"))  # type: ignore[arg-type]
    assert len(store) == 0  # nothing half-written
    store.close()
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.has("x")


WRITER = """
import sys
from crescendo.store import ResultStore, Row
store = ResultStore(sys.argv[1])
prefix = sys.argv[2]
i = 0
while i < int(sys.argv[3]):
    payload = {f"m{j}": float(i * 1000 + j) for j in range(300)}
    store.put(Row.create("m", "p", f"{prefix}:{i}", 0, "v", "single", metrics=payload))
    if i == 0:
        print("started", flush=True)
    i += 1
print("done", flush=True)
"""


def _writer(path: Path, prefix: str, count: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(path), prefix, str(count)],
                            stdout=subprocess.PIPE, text=True)


def test_sigkill_mid_write_leaves_complete_rows(tmp_path: Path):
    path = tmp_path / "runs.sqlite"
    proc = _writer(path, "r", 10**9)
    try:
        assert proc.stdout.readline().strip() == "started"
        time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    with ResultStore(path) as store:
        rows = store.rows()
        assert len(rows) >= 1 and len(rows) == len(store)
        for row in rows:
            i = int(row.recipe.split(":")[1])
            assert row.metrics == {f"m{j}": float(i * 1000 + j) for j in range(300)}
        raw = store._fetch("SELECT metrics FROM runs")
        assert all(len(json.loads(metrics)) == 300 for (metrics,) in raw)
        assert store._fetch("PRAGMA integrity_check") == [("ok",)]
        store.put(make_row())  # and it is writable again
        assert store.has(make_row().key)


def test_concurrent_writers_lose_nothing(tmp_path: Path):
    path = tmp_path / "runs.sqlite"
    procs = [_writer(path, prefix, 40) for prefix in ("a", "b")]
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0 and out.split() == ["started", "done"]
    with ResultStore(path) as store:
        assert len(store) == 80
        assert len(store.rows(recipe="a:39")) == 1 and len(store.rows(recipe="b:0")) == 1
