"""The packed export's manifest (crescendo_export.json), checked field by field before anything reads it.

`save_packed` writes it; `load` and `verify` read it back from a directory that may have been edited
by hand or crafted. Every field is checked for its type and range here, once, so that the readers
can index it without guarding each access: a wrong type is a one-line ModelError naming the field,
never a TypeError from deep inside a loader. What the values mean (shapes against tensors, grids
against codes, the state against the model) is checked by the readers themselves.
"""

from __future__ import annotations

from typing import Any

from ..errors import ModelError
from .layout import DTYPES

MAX_ITEMS = 1 << 20  # names in a list or map: far above any model's module count
MAX_TEXT = 10_000


def _fail(where: str, what: str) -> ModelError:
    return ModelError(f"{where} is malformed: {what}")


def _is_int(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _dtype(value: Any) -> bool:
    return isinstance(value, str) and value in DTYPES  # a list or dict is not even hashable


def _text(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= MAX_TEXT


def _names(value: Any, where: str, field: str) -> list[str]:
    if not isinstance(value, list) or len(value) > MAX_ITEMS or not all(_text(v) for v in value):
        raise _fail(where, f"{field} must be a list of names")
    return value


def _mapping(value: Any, where: str, field: str, values=dict) -> dict:
    if (not isinstance(value, dict) or len(value) > MAX_ITEMS or not all(_text(k) for k in value)
            or not all(isinstance(v, values) for v in value.values())):
        raise _fail(where, f"{field} must map names to {'objects' if values is dict else 'names'}")
    return value


def _linear(name: str, entry: dict, where: str) -> None:
    if not isinstance(entry.get("masked"), bool):
        raise _fail(where, f"linears[{name[:60]!r}].masked must be true or false")
    if not _dtype(entry.get("dtype")):
        raise _fail(where, f"linears[{name[:60]!r}].dtype must be one of {', '.join(DTYPES)}")
    if not (entry.get("grid") is None or isinstance(entry["grid"], dict)):
        raise _fail(where, f"linears[{name[:60]!r}].grid must be an object or null")
    if "kept" in entry and not _is_int(entry["kept"], 0, 2**62):
        raise _fail(where, f"linears[{name[:60]!r}].kept must be a count")
    if "bits" in entry and not _is_int(entry["bits"], 1, 64):
        raise _fail(where, f"linears[{name[:60]!r}].bits must be an integer in 1..64")
    if "transposed" in entry and not isinstance(entry["transposed"], bool):
        raise _fail(where, f"linears[{name[:60]!r}].transposed must be true or false")


def _record(name: str, record: dict, where: str) -> None:
    field = f"records[{name[:60]!r}]"
    if "packed" in record and not isinstance(record["packed"], bool):
        raise _fail(where, f"{field}.packed must be true or false")
    if not (record.get("nm") is None or _text(record["nm"])):
        raise _fail(where, f"{field}.nm must be a pattern like 2:4, or null")
    if not (record.get("act_grid") is None or isinstance(record["act_grid"], dict)):
        raise _fail(where, f"{field}.act_grid must be an object or null")
    if not (record.get("kv_bits") is None or _is_int(record["kv_bits"], 1, 16)):
        raise _fail(where, f"{field}.kv_bits must be an integer in 1..16, or null")
    _names(record.get("history", []), where, f"{field}.history")


def _transforms(name: str, spec: dict, where: str) -> None:
    if set(spec) - {"input", "output"}:
        raise _fail(where, f"transforms[{name[:60]!r}] may only have input and output")
    for side in ("input", "output"):
        steps = spec.get(side, [])
        if not isinstance(steps, list) or len(steps) > 64 or not all(isinstance(t, dict) for t in steps):
            raise _fail(where, f"transforms[{name[:60]!r}].{side} must be a list of objects")


def check_manifest(manifest: dict, where: str) -> dict:
    """`manifest` itself when every field has its type and range (see the module docstring); ModelError
    naming the first field that does not. Fields older manifests lack keep their defaults."""
    if not _is_int(manifest.get("version", 1), 1, 1):
        raise _fail(where, f"version {str(manifest.get('version'))[:20]} is not one this crescendo reads (1)")
    if not _dtype(manifest.get("dtype")):
        raise _fail(where, f"dtype must be one of {', '.join(DTYPES)}")
    if not (manifest.get("recipe") is None or _text(manifest["recipe"])):
        raise _fail(where, "recipe must be a recipe string or null")
    for name, entry in _mapping(manifest.get("linears"), where, "linears").items():
        _linear(name, entry, where)
    for name, record in _mapping(manifest.get("records", {}), where, "records").items():
        _record(name, record, where)
    if not (manifest.get("state") is None or isinstance(manifest["state"], dict)):
        raise _fail(where, "state must be an object or null")
    _names(manifest.get("plain", []), where, "plain")
    _mapping(manifest.get("aliases", {}), where, "aliases", values=str)
    for name, spec in _mapping(manifest.get("transforms", {}), where, "transforms").items():
        _transforms(name, spec, where)
    buffers = _mapping(manifest.get("buffer_dtypes", {}), where, "buffer_dtypes", values=str)
    if not all(_dtype(d) for d in buffers.values()):
        raise _fail(where, f"buffer_dtypes must name dtypes among {', '.join(DTYPES)}")
    for field in ("all_linears", "block_linears", "kv_projections"):
        _names(manifest.get(field, []), where, field)
    if not isinstance(manifest.get("sparsity", {}), dict):
        raise _fail(where, "sparsity must be an object")
    return manifest
