"""The results store: every run is one row of a SQLite file (WAL mode), keyed by what determines it.

key = sha256 of (model identity, protocol, recipe, seed, package version); value = typed metrics
(`RunMetrics`), timings, environment (versions, device, thread count, code commit) and extras as
JSON, and the evaluation's per-unit results (`crescendo.units.Units`: one loss per window, one
correctness bit per test image) in a table beside the rows, so that any two rows compare pairwise. This module owns the row schema and its one writer, `record_run`, which sweeps, order studies
and searches all call. Sweeps resume by skipping keys the store `has`, and share work with
concurrent sweeps by `claim`ing a row before computing it. Each write is one short transaction, so
several processes may write one after another (a busy timeout makes them wait their turn) and a
process killed mid-write leaves every committed row whole: atomicity and recovery are SQLite's.

Opening checks before it writes: a file that is not a crescendo store, or one of another schema
version, is refused without being touched (`check_store` does the same without opening for writing).

The file must live on a local disk: WAL needs shared memory, which network file systems lack.

>>> import tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "runs.sqlite")
>>> with ResultStore(path) as store:
...     row = record_run(store, model="tiny", protocol="p", recipe="wanda:0.5 > rtn:w4", seed=0, kind="order",
...                      metrics=RunMetrics.from_perplexity(31.2))
...     store.get(row.key).metrics.perplexity
31.2
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import socket
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

from . import __version__
from .errors import StoreError
from .outputs import missing_folder, pid_alive
from .units import Units, UnitsError

SCHEMA_VERSION = 1  # bump on any change to the `runs` columns; old files then refuse to open
BUSY_TIMEOUT_S = 60.0  # how long a writer waits for another process's transaction to finish


def _is_busy(err: sqlite3.OperationalError) -> bool:
    text = str(err).lower()
    return "locked" in text or "busy" in text
CLAIM_TIMEOUT_S = 6 * 3600.0  # a claim by a process on another host older than this is taken over

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    protocol TEXT NOT NULL,
    recipe TEXT NOT NULL,
    seed INTEGER NOT NULL,
    version TEXT NOT NULL,
    kind TEXT NOT NULL,
    metrics TEXT NOT NULL,
    timings TEXT NOT NULL,
    environment TEXT NOT NULL,
    extra TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_model ON runs (model, protocol, kind);
"""
# Claims are transient (a row being computed): a store written before they existed gets the table
# the first time a writer opens it, which changes no row.
_CLAIMS = "CREATE TABLE IF NOT EXISTS claims (key TEXT PRIMARY KEY, owner TEXT NOT NULL, host TEXT NOT NULL, " \
          "pid INTEGER NOT NULL, claimed REAL NOT NULL)"
# Per-unit results (crescendo.units), one entry per row that has them, written in the row's transaction.
# Like claims, the table is added to an older store the first time a writer opens it; a row without an
# entry was measured before units were kept. `ids` is NULL when the units are the protocol's first n.
_UNITS = "CREATE TABLE IF NOT EXISTS units (key TEXT PRIMARY KEY, kind TEXT NOT NULL, total INTEGER NOT NULL, " \
         "n INTEGER NOT NULL, ids BLOB, vals BLOB NOT NULL)"
_PUT_UNITS = "INSERT OR REPLACE INTO units (key, kind, total, n, ids, vals) VALUES (?, ?, ?, ?, ?, ?)"
_COLUMNS = ("key", "model", "protocol", "recipe", "seed", "version", "kind",
            "metrics", "timings", "environment", "extra", "created")
_JSON_COLUMNS = ("metrics", "timings", "environment", "extra")
_TEXT_COLUMNS = ("key", "model", "protocol", "recipe", "version", "kind")
_INSERT = (
    f"INSERT OR REPLACE INTO runs ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
)
KINDS = ("dense", "single", "order", "multistage", "curve", "search", "run", "choose")


def run_key(model: str, protocol: str, recipe: str, seed: int, version: str) -> str:
    """sha256 hex of the canonical JSON of the five fields that determine a run's result.

    Canonical: sorted keys, no whitespace, UTF-8; so the key is stable across Python versions and
    platforms, and a stored sweep stays resumable as long as these five values are unchanged.
    """
    fields = {"model": model, "protocol": protocol, "recipe": recipe, "seed": seed, "version": version}
    for name, value in fields.items():
        wanted = int if name == "seed" else str
        if not isinstance(value, wanted) or isinstance(value, bool):
            raise TypeError(f"run_key: {name} must be {wanted.__name__}, got {type(value).__name__}")
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class RunMetrics:
    """What one measured run produced: the schema of every row's `metrics`.

    `metric` is M of 003 (higher is better): -perplexity for language models, top-1 accuracy (%) for
    classifiers; `metric_name` says which. The compression summary fields are those of
    `crescendo.api.CompressionSummary`; error-analysis fields are filled by order studies only.
    """

    metric: float
    metric_name: str = "-perplexity"
    perplexity: float | None = None
    accuracy: float | None = None
    # compression summary
    sparsity: float | None = None
    avg_weight_bits: float | None = None
    compression_ratio: float | None = None
    params: int | None = None
    bop_reduction: float | None = None
    size_reduction: float | None = None
    zero_fraction: float | None = None
    # layer-wise error analysis
    per_block_error: tuple[float, ...] | None = None  # relative output error by depth (calibration windows)
    interference: float | None = None  # Definition 6 of 003
    orthogonality_excess: float | None = None  # Harma et al.: composed error minus the sum of the singles
    composed_error: float | None = None
    sum_single_errors: float | None = None

    @classmethod
    def from_perplexity(cls, perplexity: float, summary: Mapping[str, Any] | None = None, **more: Any) -> RunMetrics:
        """Metrics of a language-model run (M = -perplexity), plus a compression summary dict."""
        return cls.from_dict({**(summary or {}), **more, "perplexity": float(perplexity),
                              "metric": -float(perplexity), "metric_name": "-perplexity"})

    @classmethod
    def from_accuracy(cls, accuracy: float, summary: Mapping[str, Any] | None = None, **more: Any) -> RunMetrics:
        """Metrics of a classifier run (M = top-1 accuracy in %), plus a compression summary dict."""
        return cls.from_dict({**(summary or {}), **more, "accuracy": float(accuracy), "metric": float(accuracy),
                              "metric_name": "accuracy"})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunMetrics:
        """From stored JSON. Rows written before `metric` existed hold only a perplexity: M = -ppl.
        Unknown keys raise StoreError (a row is never half understood)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise StoreError(f"row metrics have unknown fields {sorted(unknown)}")
        values = dict(data)
        if "metric" not in values:
            if values.get("perplexity") is None:
                raise StoreError("row metrics hold neither a metric nor a perplexity")
            values["metric"] = -float(values["perplexity"])
        if values.get("per_block_error") is not None:
            values["per_block_error"] = tuple(float(v) for v in values["per_block_error"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Stored JSON: the fields that are set."""
        out = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        if "per_block_error" in out:
            out["per_block_error"] = list(out["per_block_error"])
        return out


@dataclass
class Row:
    """One stored run. `kind` says what it measured: "dense", "single", "order", "curve", "search", ..."""

    key: str
    model: str
    protocol: str
    recipe: str
    seed: int
    version: str
    kind: str
    metrics: RunMetrics
    timings: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    created: float = 0.0  # unix time the row was made
    units: Units | None = None  # per-unit results; None for rows measured before they were kept

    @classmethod
    def create(
        cls,
        model: str,
        protocol: str,
        recipe: str,
        seed: int,
        version: str,
        kind: str,
        metrics: RunMetrics,
        timings: Mapping[str, Any] | None = None,
        environment: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
        units: Units | None = None,
    ) -> Row:
        """A row whose key is `run_key` of its fields and whose creation time is now."""
        if kind not in KINDS:
            raise StoreError(f"unknown row kind {kind!r} (one of {', '.join(KINDS)})")
        if not isinstance(metrics, RunMetrics):
            raise StoreError(f"row metrics must be RunMetrics, got {type(metrics).__name__}")
        if units is not None and not isinstance(units, Units):
            raise StoreError(f"row units must be Units, got {type(units).__name__}")
        return cls(
            key=run_key(model, protocol, recipe, seed, version),
            model=model, protocol=protocol, recipe=recipe, seed=seed, version=version, kind=kind,
            metrics=metrics, timings=dict(timings or {}),
            environment=dict(environment or {}), extra=dict(extra or {}),
            created=time.time(), units=units,
        )


def environment(device: str | None = None) -> dict[str, Any]:
    """What a row's figures may depend on besides its key: versions, device, threads, code commit.

    Results are bit-reproducible only for the same device type and thread count (CPU reductions
    split differently across threads), which is why both are recorded.
    """
    import platform

    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "device": device or ("cuda" if torch.cuda.is_available() else "cpu"),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "threads": torch.get_num_threads(),
        "commit": code_commit(),
    }


@functools.lru_cache(maxsize=1)
def code_commit() -> str | None:
    """The git commit of the crescendo source tree in use, or None outside a git checkout.

    Read once per process (opening a results store reads it): the code a process runs is the code it
    loaded, so a commit made while a long sweep runs must not relabel that sweep's later rows."""
    return tree_version(Path(__file__).resolve().parent.parent)  # src/


def tree_version(directory: Path, paths: tuple[str, ...] = (".",)) -> str | None:
    """`<short commit>` of the checkout holding `directory`, or `<commit>+dirty.<digest>` when files
    under `paths` (relative to `directory`; default: all of it) differ from that commit: the digest (of
    the diff and of untracked files) tells two different uncommitted states apart, so neither rows nor
    cached prefixes confuse them."""
    import subprocess

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(directory), *args], capture_output=True, timeout=10, check=False)

    try:
        head = git("rev-parse", "--short", "HEAD")
        status = git("status", "--porcelain", "--", *paths)
        if head.returncode != 0 or not head.stdout.strip():
            return None
        commit = head.stdout.decode().strip()
        if not status.stdout.strip():
            return commit
        digest = hashlib.sha256(git("diff", "HEAD", "--binary", "--", *paths).stdout)
        untracked = git("ls-files", "--others", "--exclude-standard", "-z", "--", *paths).stdout.split(b"\0")
        for name in sorted(n for n in untracked if n):
            digest.update(name)
            try:
                digest.update((directory / name.decode()).read_bytes())
            except OSError:
                pass
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}+dirty.{digest.hexdigest()[:8]}"


def record_run(store: ResultStore | None, *, model: str, protocol: str, recipe: str, seed: int, kind: str,
               metrics: RunMetrics, timings: Mapping[str, Any] | None = None, extra: Mapping[str, Any] | None = None,
               device: str | None = None, version: str = __version__, units: Units | None = None) -> Row:
    """The one writer of result rows: builds the typed row (key, environment, per-unit results) and
    stores it (if a store is given; releasing this process's claim on it). Returns the row."""
    row = Row.create(model, protocol, recipe, seed, version, kind, metrics, timings=timings,
                     environment=environment(device), extra=extra, units=units)
    if store is not None:
        store.put(row)
    return row


def _json_default(value: Any) -> Any:
    # numpy / torch scalars reach metrics often; store them as plain numbers.
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _encode(row: Row) -> tuple[Any, ...]:
    values: list[Any] = []
    for column in _COLUMNS:
        value = getattr(row, column)
        if column == "metrics":
            if not isinstance(value, RunMetrics):
                raise StoreError(f"row {row.key[:12]}: metrics must be RunMetrics, got {type(value).__name__}")
            value = value.to_dict()
        if column in _JSON_COLUMNS:
            if not isinstance(value, Mapping):
                raise StoreError(
                    f"row {row.key[:12]}: {column} must be a dict, got {type(value).__name__}"
                )
            try:
                # allow_nan: a collapsed model's perplexity is inf and must round-trip as such.
                value = json.dumps(dict(value), sort_keys=True, allow_nan=True, default=_json_default)
            except (TypeError, ValueError) as err:
                message = f"row {row.key[:12]}: {column} is not JSON-serializable: {err}"
                raise StoreError(message) from err
        elif column in _TEXT_COLUMNS and not isinstance(value, str):
            raise StoreError(f"row {row.key!r}: {column} must be a str, got {type(value).__name__}")
        values.append(value)
    if not isinstance(row.seed, int) or isinstance(row.seed, bool):
        raise StoreError(f"row {row.key[:12]}: seed must be an int, got {row.seed!r}")
    created_ok = isinstance(row.created, (int, float)) and not isinstance(row.created, bool)
    if not created_ok or not math.isfinite(row.created):
        raise StoreError(f"row {row.key[:12]}: created must be a finite time, got {row.created!r}")
    return tuple(values)


def _encode_units(units: Units) -> tuple[Any, ...]:
    kind, total, ids, vals = units.encode()
    return kind, total, len(units), ids, vals


def _decode(values: tuple[Any, ...]) -> Row:
    """A stored row, every column checked for its type (a store file may have been edited or crafted):
    StoreError naming the row and the column otherwise, never a TypeError in a report. Units, when the
    row has them, follow the row's columns."""
    data = dict(zip(_COLUMNS, values[: len(_COLUMNS)]))
    where = f"stored row {str(data.get('key'))[:16]!r}"
    for column in _JSON_COLUMNS:
        try:
            data[column] = json.loads(data[column])
        except (TypeError, ValueError):
            raise StoreError(f"{where}: {column} is not JSON") from None
        if not isinstance(data[column], dict):
            raise StoreError(f"{where}: {column} must be a JSON object")
    for column in _TEXT_COLUMNS:
        if column in data and not isinstance(data[column], str):
            raise StoreError(f"{where}: {column} must be text")
    if not isinstance(data.get("seed"), int) or not isinstance(data.get("created"), (int, float)):
        raise StoreError(f"{where}: seed and created must be numbers")
    _check_metric_types(data["metrics"], where)
    data["metrics"] = RunMetrics.from_dict(data["metrics"])
    unit_fields = values[len(_COLUMNS):]
    if unit_fields and unit_fields[0] is not None:
        kind, total, n, ids, vals = unit_fields
        try:
            data["units"] = Units.decode(kind, total, ids, vals, n=n)
        except UnitsError as err:
            raise StoreError(f"{where}: stored units are damaged ({err})") from err
    return Row(**data)


def _check_metric_types(metrics: dict[str, Any], where: str) -> None:
    """Each stored metric of the type its RunMetrics field declares (read from the annotations, so that
    fields added to RunMetrics are checked too)."""
    number = (int, float)
    for f in dataclasses.fields(RunMetrics):
        if f.name not in metrics or metrics[f.name] is None:
            continue
        value, kind = metrics[f.name], str(f.type)
        if "tuple" in kind:
            ok = isinstance(value, list) and all(isinstance(v, number) and not isinstance(v, bool) for v in value)
        elif "float" in kind:
            ok = isinstance(value, number) and not isinstance(value, bool)
        elif "int" in kind:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif "str" in kind:
            ok = isinstance(value, str)
        else:
            ok = True
        if not ok:
            raise StoreError(f"{where}: metric {f.name} must be {kind}, got {str(value)[:40]!r}")


def check_store(path: str | PathLike[str]) -> None:
    """Refuse, without creating or changing anything, a path that cannot become a results store:
    a missing folder, a file that is not a crescendo store, or one of another schema version.
    A path that does not exist yet is fine (it will be created by the first writer)."""
    path = Path(path)
    problem = missing_folder(path)
    if problem:
        raise StoreError(f"cannot open results store {path}: {problem}")
    if path.is_dir():
        raise StoreError(f"results store {path} is a directory")
    if not path.exists():
        return
    conn = _probe(path)
    try:
        _check_schema(conn, path)
    except sqlite3.Error as err:
        raise StoreError(f"{path} is not a crescendo results store ({err})") from err
    finally:
        conn.close()


def _probe(path: Path) -> sqlite3.Connection:
    """A read-only connection that creates nothing beside the file: without a -wal file every committed
    row is in the main file, which is then read as immutable (a plain read of a WAL database leaves
    -wal and -shm files behind, even when it only finds a reason to refuse the store)."""
    immutable = "&immutable=1" if not Path(f"{path}-wal").exists() else ""
    try:
        return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro{immutable}", uri=True, timeout=BUSY_TIMEOUT_S)
    except sqlite3.Error as err:
        raise StoreError(f"cannot open results store {path}: {err}") from err


def stored_row_count(path: str | PathLike[str]) -> int:
    """How many rows the store at `path` holds, read without creating or changing any file."""
    path = Path(path)
    check_store(path)
    if not path.exists():
        return 0
    conn = _probe(path)
    try:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        return int(conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]) if "runs" in tables else 0
    except sqlite3.Error as err:
        raise StoreError(f"cannot read results store {path}: {err}") from err
    finally:
        conn.close()


def _check_schema(conn: sqlite3.Connection, path: Path) -> bool:
    """True for a crescendo store of this schema version, False for an empty database; StoreError else."""
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables:
        return False
    if "meta" not in tables or "runs" not in tables:
        raise StoreError(f"{path} is an SQLite file but not a crescendo results store")
    found = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if found is None or found[0] != str(SCHEMA_VERSION):
        version = None if found is None else found[0]
        raise StoreError(f"results store {path} has schema version {version}, this crescendo reads {SCHEMA_VERSION}")
    return True


class ResultStore:
    """A SQLite results store. A new store's file is created by its first write (a row or a claim),
    so a run refused after opening it leaves no file behind.

    Raises StoreError when the parent folder is missing, the file is not SQLite (or not a crescendo
    store), or it was written with another schema version; in each case the file is left untouched.
    `readonly=True` opens an existing store for reading only (reports).
    """

    def __init__(self, path: str | PathLike[str], *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        if readonly and not self.path.is_file():
            raise StoreError(f"results store {self.path} does not exist")
        check_store(self.path)  # before anything is created or switched to WAL
        self._conn: sqlite3.Connection | None = None
        self._immutable = False  # a read-only connection that assumes no writer (see `_connect`)
        self._closed = False
        self._on_disk = False
        self._has_units: bool | None = None
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{time.time():.6f}"
        if not readonly:
            code_commit()  # fixed now, before the rows this process will write (reports never write)
        if not self.path.exists():
            self._conn = self._empty()  # reads see an empty store; the first write creates the file
            return
        self._connect()

    @staticmethod
    def _empty() -> sqlite3.Connection:
        conn = sqlite3.connect(":memory:", isolation_level=None)
        conn.executescript(_SCHEMA + ";" + _CLAIMS + ";" + _UNITS)
        return conn

    def _connect(self) -> None:
        readonly = self.readonly
        try:
            if readonly:
                # immutable while no -wal exists (no writer): a plain read-only open of a WAL database
                # leaves -wal and -shm files beside it; `_fetch` rereads plainly if a writer appears
                self._immutable = not Path(f"{self.path}-wal").exists()
                conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro"
                                       + ("&immutable=1" if self._immutable else ""), uri=True,
                                       timeout=BUSY_TIMEOUT_S, isolation_level=None)
            else:
                # isolation_level=None: no implicit transactions; each write opens and commits its own.
                conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except sqlite3.Error as err:
            raise StoreError(f"cannot open results store {self.path}: {err}") from err
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                if not readonly:
                    self._init_schema(conn)
                break
            except StoreError:
                conn.close()
                raise
            except sqlite3.OperationalError as err:
                # Switching a new file to WAL takes an exclusive lock and SQLite does not always run the
                # busy handler for it: two processes creating one store can see "locked" at once.
                if _is_busy(err) and time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                conn.close()
                raise StoreError(f"cannot open results store {self.path}: {err}") from err
            except sqlite3.Error as err:
                conn.close()
                raise StoreError(f"cannot open results store {self.path}: {err}") from err
        self._conn = conn
        self._on_disk = True

    def _init_schema(self, conn: sqlite3.Connection) -> None:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"results store {self.path} cannot use WAL mode (journal mode is {mode})")
        # IMMEDIATE: two processes creating the same new store serialise instead of racing.
        conn.execute("BEGIN IMMEDIATE")
        try:
            if not _check_schema(conn, self.path):
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
                )
            conn.execute(_CLAIMS)
            conn.execute(_UNITS)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _fetch(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            found = self._db.execute(query, params).fetchall()
            if self._immutable and Path(f"{self.path}-wal").exists():  # a writer opened it meanwhile
                self._conn.close()
                self._conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True,
                                             timeout=BUSY_TIMEOUT_S, isolation_level=None)
                self._immutable = False
                found = self._conn.execute(query, params).fetchall()
            return found
        except sqlite3.Error as err:
            raise StoreError(f"cannot read results store {self.path}: {err}") from err

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None or self._closed:
            raise StoreError(f"results store {self.path} is closed")
        return self._conn

    def _select(self) -> str:
        """SELECT of every row column, plus its units where this store has a units table (a read-only
        open of a store no writer of this version has opened yet has none)."""
        columns = ", ".join(f"runs.{c}" for c in _COLUMNS)
        if self._has_units is None:
            found = self._fetch("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'units'")
            self._has_units = bool(found)
        if not self._has_units:
            return f"SELECT {columns} FROM runs"
        return (f"SELECT {columns}, units.kind, units.total, units.n, units.ids, units.vals FROM runs "
                "LEFT JOIN units ON units.key = runs.key")

    def get(self, key: str) -> Row | None:
        """The row stored under `key`, or None."""
        found = self._fetch(f"{self._select()} WHERE runs.key = ?", (key,))
        return _decode(found[0]) if found else None

    def has(self, key: str) -> bool:
        """Whether a run with this key is stored (what a resumed sweep skips)."""
        return bool(self._fetch("SELECT 1 FROM runs WHERE key = ?", (key,)))

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.has(key)

    def _write(self, statements: list[tuple[str, tuple[Any, ...]]], what: str) -> list[Any]:
        """Run statements in one IMMEDIATE transaction; returns each statement's rowcount."""
        if self.readonly:
            raise StoreError(f"results store {self.path} is open read-only")
        if not self._on_disk and not self._closed:
            check_store(self.path)  # the path may have changed since opening
            self._conn.close()
            self._connect()
            self._has_units = None
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                counts = [db.execute(q, p).rowcount for q, p in statements]
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except sqlite3.Error as err:
            raise StoreError(f"cannot {what} results store {self.path}: {err}") from err
        return counts

    def put(self, row: Row) -> None:
        """Insert or replace one row with its units, in its own transaction: it is stored whole or not
        at all (a replaced row never keeps the units of the row it replaces). Any claim on its key is
        released in the same transaction."""
        values = _encode(row)  # serialise before the transaction, so a bad row never opens one
        if row.units is not None and not isinstance(row.units, Units):
            raise StoreError(f"row {row.key[:12]}: units must be Units, got {type(row.units).__name__}")
        units = ((_PUT_UNITS, (row.key, *_encode_units(row.units))) if row.units is not None
                 else ("DELETE FROM units WHERE key = ?", (row.key,)))
        self._write([(_INSERT, values), units, ("DELETE FROM claims WHERE key = ?", (row.key,))], "write to")
        self._has_units = True

    def mark_superseded(self, key: str, reason: str) -> Row:
        """Mark a stored row superseded (a defect voided it): it stays, with `reason` in its extras, and
        reports leave it out. Returns the marked row; StoreError when no row has that key."""
        row = self.get(key)
        if row is None:
            raise StoreError(f"results store {self.path} has no row {key[:12]}")
        if not isinstance(reason, str) or not reason.strip():
            raise StoreError("a superseded row needs a reason")
        row.extra = {**row.extra, "superseded": reason}
        self.put(row)
        return row

    def claim(self, key: str) -> bool:
        """Claim `key` for this process before computing it; False when the row exists or a live
        claim by another process holds it. A claim whose owner died (same host, dead pid) or that
        is older than CLAIM_TIMEOUT_S is taken over."""
        return bool(self.claim_many([key]))

    def claim_many(self, keys: list[str]) -> list[str]:
        """Claim several rows at once (one transaction, so concurrent sweeps never split a group of
        rows between them); returns the keys this process now holds."""
        if self.readonly:
            raise StoreError(f"results store {self.path} is open read-only")
        if not self._on_disk and not self._closed:
            self._write([], "create")
        db, now = self._db, time.time()
        host, pid = socket.gethostname(), os.getpid()
        held: list[str] = []
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                for key in keys:
                    if db.execute("SELECT 1 FROM runs WHERE key = ?", (key,)).fetchone():
                        continue
                    found = db.execute("SELECT owner, host, pid, claimed FROM claims WHERE key = ?", (key,)).fetchone()
                    if found and found[0] != self.owner:
                        _, c_host, c_pid, claimed = found
                        dead = (c_host == host and not pid_alive(int(c_pid))) or now - float(claimed) > CLAIM_TIMEOUT_S
                        if not dead:
                            continue
                    db.execute("INSERT OR REPLACE INTO claims (key, owner, host, pid, claimed) VALUES (?, ?, ?, ?, ?)",
                               (key, self.owner, host, pid, now))
                    held.append(key)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except sqlite3.Error as err:
            raise StoreError(f"cannot claim in results store {self.path}: {err}") from err
        return held

    def release(self, key: str) -> None:
        """Give up this process's claim on `key` (a failed or skipped computation)."""
        self._write([("DELETE FROM claims WHERE key = ? AND owner = ?", (key, self.owner))], "release in")

    def rows(
        self,
        *,
        model: str | None = None,
        protocol: str | None = None,
        kind: str | None = None,
        recipe: str | None = None,
        seed: int | None = None,
        version: str | None = None,
    ) -> list[Row]:
        """Rows matching every given field (None: any), oldest first, then by key."""
        filters = {"model": model, "protocol": protocol, "kind": kind, "recipe": recipe,
                   "seed": seed, "version": version}
        given = {column: value for column, value in filters.items() if value is not None}
        where = " AND ".join(f"runs.{column} = ?" for column in given) or "1"
        query = f"{self._select()} WHERE {where} ORDER BY runs.created, runs.key"
        return [_decode(values) for values in self._fetch(query, tuple(given.values()))]

    def __len__(self) -> int:
        return int(self._fetch("SELECT COUNT(*) FROM runs")[0][0])

    def __bool__(self) -> bool:
        return True  # an open store is truthy even when empty (`if store:` must not mean "has rows")

    def close(self) -> None:
        """Close the connection; calling it again does nothing."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._closed = True

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._conn is None or self._closed else "open"
        return f"ResultStore({str(self.path)!r}, {state})"
