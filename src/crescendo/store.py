"""The results store: every run is one row of a SQLite file (WAL mode), keyed by what determines it.

key = sha256 of (model identity, protocol, recipe, seed, package version); value = metrics, timings,
environment and free-form extras as JSON. Sweeps resume by skipping keys the store `has`. Each `put`
is one short transaction, so several processes may write one after another (a busy timeout makes
them wait their turn) and a process killed mid-write leaves every committed row whole: atomicity and
recovery are SQLite's, and this module never holds a transaction open across a run.

The file must live on a local disk: WAL needs shared memory, which network file systems lack.

>>> with ResultStore("runs.sqlite") as store:  # doctest: +SKIP
...     row = Row.create("smollm2-135m", "wikitext2:128x2048", "wanda:0.5 > rtn:w4", 0, "0.1.0",
...                      kind="order", metrics={"ppl": 31.2})
...     if not store.has(row.key):
...         store.put(row)
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

from .errors import StoreError

SCHEMA_VERSION = 1  # bump on any change to the `runs` columns; old files then refuse to open
BUSY_TIMEOUT_S = 60.0  # how long a writer waits for another process's transaction to finish

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
_COLUMNS = ("key", "model", "protocol", "recipe", "seed", "version", "kind",
            "metrics", "timings", "environment", "extra", "created")
_JSON_COLUMNS = ("metrics", "timings", "environment", "extra")
_TEXT_COLUMNS = ("key", "model", "protocol", "recipe", "version", "kind")
_INSERT = (
    f"INSERT OR REPLACE INTO runs ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
)


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


@dataclass
class Row:
    """One stored run. `kind` says what it measured: "dense", "single", "order", "curve", "search"."""

    key: str
    model: str
    protocol: str
    recipe: str
    seed: int
    version: str
    kind: str
    metrics: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    created: float = 0.0  # unix time the row was made

    @classmethod
    def create(
        cls,
        model: str,
        protocol: str,
        recipe: str,
        seed: int,
        version: str,
        kind: str,
        metrics: Mapping[str, Any] | None = None,
        timings: Mapping[str, Any] | None = None,
        environment: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Row:
        """A row whose key is `run_key` of its fields and whose creation time is now."""
        return cls(
            key=run_key(model, protocol, recipe, seed, version),
            model=model, protocol=protocol, recipe=recipe, seed=seed, version=version, kind=kind,
            metrics=dict(metrics or {}), timings=dict(timings or {}),
            environment=dict(environment or {}), extra=dict(extra or {}),
            created=time.time(),
        )


def _json_default(value: Any) -> Any:
    # numpy / torch scalars reach metrics often; store them as plain numbers.
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _encode(row: Row) -> tuple[Any, ...]:
    values: list[Any] = []
    for column in _COLUMNS:
        value = getattr(row, column)
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


def _decode(values: tuple[Any, ...]) -> Row:
    data = dict(zip(_COLUMNS, values))
    for column in _JSON_COLUMNS:
        data[column] = json.loads(data[column])
    return Row(**data)


class ResultStore:
    """A SQLite results store; opening creates the file and schema if needed.

    Raises StoreError when the parent folder is missing, the file is not SQLite (or not a crescendo
    store), or it was written with another schema version.
    """

    def __init__(self, path: str | PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise StoreError(
                f"cannot open results store {self.path}: folder {self.path.parent} does not exist"
            )
        self._conn: sqlite3.Connection | None = None
        try:
            # isolation_level=None: no implicit transactions; `put` opens and commits its own.
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except sqlite3.Error as err:
            raise StoreError(f"cannot open results store {self.path}: {err}") from err
        try:
            self._init_schema(conn)
        except StoreError:
            conn.close()
            raise
        except sqlite3.Error as err:
            conn.close()
            raise StoreError(f"cannot open results store {self.path}: {err}") from err
        self._conn = conn

    def _init_schema(self, conn: sqlite3.Connection) -> None:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]  # raises if not a database
        if str(mode).lower() != "wal":
            raise StoreError(f"results store {self.path} cannot use WAL mode (journal mode is {mode})")
        # IMMEDIATE: two processes creating the same new store serialise instead of racing.
        conn.execute("BEGIN IMMEDIATE")
        try:
            found_tables = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            tables = {name for (name,) in found_tables}
            if not tables:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
                )
            elif "meta" not in tables or "runs" not in tables:
                raise StoreError(f"{self.path} is an SQLite file but not a crescendo results store")
            found = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if found is None or found[0] != str(SCHEMA_VERSION):
                version = None if found is None else found[0]
                raise StoreError(
                    f"results store {self.path} has schema version {version}, "
                    f"this crescendo reads {SCHEMA_VERSION}"
                )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _fetch(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._db.execute(query, params).fetchall()
        except sqlite3.Error as err:
            raise StoreError(f"cannot read results store {self.path}: {err}") from err

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"results store {self.path} is closed")
        return self._conn

    def get(self, key: str) -> Row | None:
        """The row stored under `key`, or None."""
        found = self._fetch(f"SELECT {', '.join(_COLUMNS)} FROM runs WHERE key = ?", (key,))
        return _decode(found[0]) if found else None

    def has(self, key: str) -> bool:
        """Whether a run with this key is stored (what a resumed sweep skips)."""
        return bool(self._fetch("SELECT 1 FROM runs WHERE key = ?", (key,)))

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.has(key)

    def put(self, row: Row) -> None:
        """Insert or replace one row, in its own transaction: it is stored whole or not at all."""
        values = _encode(row)  # serialise before the transaction, so a bad row never opens one
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(_INSERT, values)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except sqlite3.Error as err:
            raise StoreError(f"cannot write to results store {self.path}: {err}") from err

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
        where = " AND ".join(f"{column} = ?" for column in given) or "1"
        query = f"SELECT {', '.join(_COLUMNS)} FROM runs WHERE {where} ORDER BY created, key"
        return [_decode(values) for values in self._fetch(query, tuple(given.values()))]

    def __len__(self) -> int:
        return int(self._fetch("SELECT COUNT(*) FROM runs")[0][0])

    def close(self) -> None:
        """Close the connection; calling it again does nothing."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._conn is None else "open"
        return f"ResultStore({str(self.path)!r}, {state})"
