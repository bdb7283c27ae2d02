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
from crescendo.store import SCHEMA_VERSION, ResultStore, Row, RunMetrics, check_store, record_run, run_key

FIELDS = {
    "model": "smollm2-135m",
    "protocol": "wikitext2:8x128",
    "recipe": "wanda:0.5 > rtn:w4",
    "seed": 0,
    "version": "0.1.0",
}


def make_row(recipe: str = "wanda:0.5 > rtn:w4", kind: str = "order", ppl: float = 31.25, **more) -> Row:
    return Row.create(
        FIELDS["model"], FIELDS["protocol"], recipe, 0, FIELDS["version"], kind,
        metrics=RunMetrics.from_perplexity(ppl, **more),
        timings={"compress_s": 1.5}, environment={"torch": "2.13"}, extra={"stages": ["wanda", "rtn"]},
    )


def test_round_trip(tmp_path: Path):
    row = make_row(ppl=math.inf, sparsity=np.float32(0.5), per_block_error=[0.1, 0.2])  # inf and numpy survive
    with ResultStore(tmp_path / "runs.sqlite") as store:
        assert len(store) == 0 and store.get(row.key) is None
        store.put(row)
        got = store.get(row.key)
    assert got is not None
    assert got.metrics.perplexity == math.inf and got.metrics.metric == -math.inf
    assert got.metrics.sparsity == 0.5 and got.metrics.per_block_error == (0.1, 0.2)
    assert (got.timings, got.environment, got.extra) == (row.timings, row.environment, row.extra)
    assert got == replace(row, metrics=replace(row.metrics, sparsity=0.5))  # every field, JSON ones included


def test_metrics_schema_is_typed():
    assert RunMetrics.from_dict({"perplexity": 20.0}).metric == -20.0  # rows from before `metric` existed
    assert RunMetrics.from_accuracy(91.5).metric == 91.5
    with pytest.raises(StoreError, match="unknown fields"):
        RunMetrics.from_dict({"perplexity": 2.0, "ppl": 2.0})
    with pytest.raises(StoreError, match="neither"):
        RunMetrics.from_dict({"sparsity": 0.5})
    with pytest.raises(StoreError, match="RunMetrics"):
        Row.create("m", "p", "r", 0, "v", "single", metrics={"perplexity": 2.0})  # type: ignore[arg-type]
    with pytest.raises(StoreError, match="kind"):
        Row.create("m", "p", "r", 0, "v", "bogus", metrics=RunMetrics.from_perplexity(2.0))


def test_record_run_writes_environment(tmp_path: Path):
    with ResultStore(tmp_path / "runs.sqlite") as store:
        row = record_run(store, model="m", protocol="p", recipe="rtn:w4", seed=0, kind="single",
                         metrics=RunMetrics.from_perplexity(9.0), device="cpu")
        env = store.get(row.key).environment
    assert env["device"] == "cpu" and env["threads"] >= 1 and "torch" in env and "commit" in env


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
        assert reopened.get(order.key).metrics.perplexity == 40.0
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
    with ResultStore(path) as store:
        store.put(make_row())
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_schema_mismatch_raises(tmp_path: Path):
    path = tmp_path / "runs.sqlite"
    with ResultStore(path) as store:
        store.put(make_row())
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
        store.put(replace(make_row(), metrics=replace(make_row().metrics, sparsity=object())))  # type: ignore[arg-type]
    with pytest.raises(StoreError):
        store.put(replace(make_row(), created="yesterday"))  # type: ignore[arg-type]
    assert len(store) == 0  # nothing half-written
    store.close()
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.has("x")


WRITER = """
import sys
from crescendo.store import ResultStore, Row, RunMetrics
store = ResultStore(sys.argv[1])
prefix = sys.argv[2]
i = 0
while i < int(sys.argv[3]):
    payload = RunMetrics.from_perplexity(float(i), per_block_error=[float(i * 1000 + j) for j in range(300)])
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
            assert row.metrics.per_block_error == tuple(float(i * 1000 + j) for j in range(300))
        raw = store._fetch("SELECT metrics FROM runs")
        assert all(len(json.loads(metrics)["per_block_error"]) == 300 for (metrics,) in raw)
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


def test_refusals_touch_nothing(tmp_path: Path):
    foreign = tmp_path / "foreign.sqlite"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE something (x)")
    before = foreign.read_bytes()
    for opener in (lambda: ResultStore(foreign), lambda: check_store(foreign)):
        with pytest.raises(StoreError, match="not a crescendo"):
            opener()
    assert foreign.read_bytes() == before and not Path(str(foreign) + "-wal").exists()  # not switched to WAL
    old = tmp_path / "old.sqlite"
    with ResultStore(old) as store:
        store.put(make_row())
    with sqlite3.connect(old) as conn:
        conn.execute("UPDATE meta SET value = '0' WHERE key = 'schema_version'")
    before = old.read_bytes()
    with pytest.raises(StoreError, match="schema version 0"):
        ResultStore(old)
    assert old.read_bytes() == before


def test_new_store_file_appears_with_its_first_write(tmp_path: Path):
    path = tmp_path / "new.sqlite"
    store = ResultStore(path)
    assert len(store) == 0 and not store.has("k") and store.rows() == [] and bool(store)
    assert not path.exists()  # a refused run that opened it leaves nothing behind
    store.put(make_row())
    assert path.exists() and len(store) == 1
    store.close()
    with ResultStore(path, readonly=True) as reader:
        assert len(reader) == 1
        with pytest.raises(StoreError, match="read-only"):
            reader.put(make_row("rtn:w8"))
    with pytest.raises(StoreError, match="does not exist"):
        ResultStore(tmp_path / "absent.sqlite", readonly=True)


def test_claims_share_work_between_processes(tmp_path: Path):
    path = tmp_path / "runs.sqlite"
    a, b = ResultStore(path), ResultStore(path)
    assert a.claim("k1") and a.claim("k1")  # idempotent for its owner
    assert not b.claim("k1")  # a live claim by another owner
    assert b.claim("k2")
    row = make_row()
    a.put(row)  # writing the row releases any claim on it; a stored row cannot be claimed
    assert not b.claim(row.key)
    a.release("k1")
    assert b.claim("k1")


CLAIMER = """
import sys
from crescendo.store import ResultStore
store = ResultStore(sys.argv[1])
print(store.claim("orphan"), flush=True)
"""


def test_claim_of_a_dead_process_is_taken_over(tmp_path: Path):
    path = tmp_path / "runs.sqlite"
    ResultStore(path).put(make_row())  # create the file
    done = subprocess.run([sys.executable, "-c", CLAIMER, str(path)], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "True"
    assert ResultStore(path).claim("orphan")  # its owner exited without releasing it


def test_code_commit_is_read_once_per_process(monkeypatch, tmp_path):
    """Rows name the code the process loaded: a commit made while a sweep runs must not relabel the
    sweep's later rows, so the commit is read once (at the latest when a store is opened)."""
    import subprocess

    from crescendo.store import code_commit

    code_commit.cache_clear()
    ResultStore(tmp_path / "runs.sqlite").close()
    first = code_commit()

    def checkout_changed(argv, **kwargs):  # a clean checkout at another commit
        return subprocess.CompletedProcess(argv, 0, stdout=b"0000000\n" if "rev-parse" in argv else b"", stderr=b"")

    monkeypatch.setattr(subprocess, "run", checkout_changed)
    assert code_commit() == first
    code_commit.cache_clear()
    assert code_commit() == "0000000"  # what a fresh process would read
    code_commit.cache_clear()


def test_readonly_store_does_not_ask_git(monkeypatch, tmp_path):
    """A report opens stores read-only and writes no row: it needs no commit, so it runs no git."""
    import subprocess

    from crescendo.store import code_commit

    path = tmp_path / "runs.sqlite"
    ResultStore(path).put(make_row())
    code_commit.cache_clear()
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda argv, **kw: calls.append(argv))
    store = ResultStore(path, readonly=True)
    assert len(store.rows()) == 1
    store.close()
    assert calls == []
    code_commit.cache_clear()


def test_tree_version_tells_uncommitted_states_apart(tmp_path):
    """A dirty tree is named by its commit plus a digest of what differs, so two different sets of
    uncommitted edits never share a version (rows and cached prefixes are keyed by it)."""
    from crescendo.store import tree_version

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git("add", "a.py")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "c")
    clean = tree_version(tmp_path)
    assert clean and "+dirty" not in clean
    (tmp_path / "a.py").write_text("x = 2\n")
    first = tree_version(tmp_path)
    (tmp_path / "a.py").write_text("x = 3\n")
    second = tree_version(tmp_path)
    assert first.startswith(clean + "+dirty.") and second.startswith(clean + "+dirty.") and first != second
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "new.py").write_text("y = 1\n")  # an untracked file counts too
    third = tree_version(tmp_path)
    assert third.startswith(clean + "+dirty.") and third not in (first, second)
    (tmp_path / "new.py").write_text("y = 2\n")
    assert tree_version(tmp_path) != third


def test_tree_version_looks_only_at_the_paths_it_is_given(tmp_path):
    """benchmarks/beyond.py names src/ and benchmarks/: an edit elsewhere (docs, results) is not code."""
    from crescendo.store import tree_version

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    for d in ("src", "docs"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "a.txt").write_text("1\n")
    git("add", ".")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "c")
    clean = tree_version(tmp_path, ("src",))
    (tmp_path / "docs" / "a.txt").write_text("2\n")
    assert tree_version(tmp_path, ("src",)) == clean
    assert "+dirty." in tree_version(tmp_path)
    (tmp_path / "src" / "b.txt").write_text("new\n")
    assert tree_version(tmp_path, ("src",)).startswith(clean + "+dirty.")
