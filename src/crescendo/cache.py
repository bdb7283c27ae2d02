"""A disk cache of compressed prefixes, so sweeps reuse the expensive part of what they computed.

A sweep compresses the model once per group of recipes sharing a prefix (`sparsegpt:0.3`, or
`rotate > sparsegpt:0.3`) and runs the rest on copies. The prefix model is cached here, keyed by
model, protocol, seed, prefix recipe and code version (package version and git commit), so a
second sweep that adds bit-widths, or another quantizer, starts from the stored prefix.

An entry is a directory written whole or not at all (`save_packed`: packed weights, grids, masks,
transforms, the compression state) plus `entry.json` naming its key fields and the SHA-256 of
every file. An entry is used only when its key fields equal the request and every file hashes to
what was written; anything else (a partial or corrupt entry, one written by another code version)
is reported and recomputed, never used.

Only what the cache wrote is ever removed: every entry (and its temporary, from its first moment)
holds a marker file, `.crescendo-cache-entry`, and a directory without it is left alone however it is
named (a user folder named by an MD5 digest looks like an entry). Entries written before the marker
existed are recognised by their `entry.json`, which must list every file the directory holds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import nn

from . import __version__
from .errors import ConfigError, CrescendoError
from .outputs import atomic_output_dir, pid_alive
from .store import code_commit

log = logging.getLogger(__name__)

ENTRY = "entry.json"
MARKER = ".crescendo-cache-entry"  # written first into every entry: what makes a directory the cache's own
MARKER_TEXT = "crescendo prefix cache entry\n"


def default_cache_dir() -> Path:
    """`$CRESCENDO_CACHE`, else `$XDG_CACHE_HOME/crescendo/prefixes`, else `~/.cache/crescendo/prefixes`."""
    if os.environ.get("CRESCENDO_CACHE"):
        return Path(os.environ["CRESCENDO_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "crescendo" / "prefixes"


@dataclass(frozen=True)
class PrefixKey:
    """What determines a compressed prefix."""

    model: str
    protocol: str
    seed: int
    prefix: str  # canonical recipe text of the prefix
    version: str = __version__
    commit: str | None = None  # the code's git commit; None outside a checkout

    @classmethod
    def from_dict(cls, data: Any) -> PrefixKey | None:
        """The key an entry.json records, or None when it is not one (wrong fields or types)."""
        fields = {"model": str, "protocol": str, "seed": int, "prefix": str, "version": str, "commit": (str, type(None))}
        if not isinstance(data, dict) or set(data) != set(fields):
            return None
        if any(not isinstance(data[k], t) or isinstance(data[k], bool) for k, t in fields.items()):
            return None
        return cls(**data)

    @property
    def digest(self) -> str:
        canonical = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class PrefixCache:
    """Compressed prefix models on disk (see the module docstring)."""

    def __init__(self, directory: str | os.PathLike) -> None:
        """Checks that `directory` is, or can become, a writable directory; it is created by the first
        `put` (listing or checking a cache never creates anything)."""
        self.directory = Path(directory)
        existing = self.directory
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise ConfigError(f"cache directory {self.directory} cannot be created: {existing} is not a directory")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise ConfigError(f"cache directory {self.directory} is not writable")

    def holds(self, model: nn.Module) -> bool:
        """Whether prefixes of `model` can go through this cache: a block-wise model's would be
        loaded back whole, so its prefixes stay in its own block files for the run (logged) instead."""
        from .blockwise.residency import is_blockwise

        if is_blockwise(model):
            log.info("prefix cache: not used for a block-wise model (its prefixes stay on disk for this run only)")
            return False
        return True

    def key(self, model: str, protocol: str, seed: int, prefix: str) -> PrefixKey:
        return PrefixKey(model, protocol, seed, prefix, __version__, code_commit())

    def _path(self, key: PrefixKey) -> Path:
        return self.directory / key.digest

    def get(self, key: PrefixKey) -> nn.Module | None:
        """The cached prefix model, or None (absent, or unusable: the reason is logged)."""
        path = self._path(key)
        if not path.exists():
            return None
        if not owned(path):
            log.warning("prefix cache: %s was not written by the cache; it is left alone and not used", path)
            return None
        problem = self._check(path, key)
        if problem:
            log.warning("prefix cache: entry %s for %r is %s; recomputing it", path.name, key.prefix, problem)
            shutil.rmtree(path, ignore_errors=True)
            return None
        from .export import load

        try:
            model, _, _ = load(path)
        except CrescendoError as e:
            log.warning("prefix cache: entry %s for %r cannot be loaded (%s); recomputing it", path.name, key.prefix, e)
            shutil.rmtree(path, ignore_errors=True)
            return None
        log.info("prefix cache: reusing %r from %s", key.prefix, path)
        return model

    def _check(self, path: Path, key: PrefixKey) -> str | None:
        try:
            entry = json.loads((path / ENTRY).read_text())
        except (OSError, ValueError):
            return "partial or corrupt (no readable entry.json)"
        if not isinstance(entry, dict) or entry.get("key") != asdict(key):
            return "for another model, protocol, seed, prefix or code version"
        files = entry.get("files")
        if not isinstance(files, dict) or not files:
            return "partial or corrupt (no file list)"
        for name, digest in files.items():
            f = path / name
            if Path(name).name != name or not f.is_file() or _sha256(f) != digest:
                return f"partial or corrupt ({name} is missing or changed)"
        return None

    def put(self, key: PrefixKey, model: nn.Module, metadata: dict[str, Any] | None = None) -> Path:
        """Store `model` (compressed by `key.prefix`) under `key`; replaces an existing entry."""
        from .export import save_packed

        path = self._path(key)
        if path.exists() or path.is_symlink():
            if not owned(path):
                raise ConfigError(f"cache directory {self.directory} holds {path.name}, which the cache did not write; "
                                  f"it is left alone (move it, or use another --cache directory)")
            shutil.rmtree(path)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"cache directory {self.directory} cannot be created: {e.strerror}") from None
        with atomic_output_dir(path) as tmp:
            (tmp / MARKER).write_text(MARKER_TEXT)  # first: even a killed write's temporary is recognisable
            inner = tmp / "model"
            save_packed(model, None, inner, {"recipe": key.prefix, **(metadata or {})})
            for f in inner.iterdir():
                f.rename(tmp / f.name)
            inner.rmdir()
            files = {f.name: _sha256(f) for f in sorted(tmp.iterdir())}
            (tmp / ENTRY).write_text(json.dumps({"key": asdict(key), "files": files}, indent=2))
        return path

    def entries(self) -> list[dict[str, Any]]:
        """Every entry: its key fields, size in bytes and whether it checks out."""
        out = []
        if not self.directory.is_dir():
            return out
        for path in sorted(p for p in self.directory.iterdir() if _is_entry(p) and owned(p)):
            try:
                key = PrefixKey.from_dict(json.loads((path / ENTRY).read_text()).get("key"))
            except (OSError, ValueError, AttributeError):  # unreadable, not JSON, not an object
                key = None
            size = sum(f.lstat().st_size for f in path.iterdir() if f.is_file() and not f.is_symlink())
            ok = key is not None and self._check(path, key) is None
            out.append({"entry": path.name, "key": asdict(key) if key else None, "bytes": size, "ok": ok})
        return out

    def clear(self) -> int:
        """Remove every entry (and temporaries of killed writes); returns how many directories were removed.
        Only what the cache wrote is removed (see `owned`): `--dir` pointed at a folder of other files,
        however they are named, leaves them alone."""
        removed = 0
        if not self.directory.is_dir():
            return removed
        for path in list(self.directory.iterdir()):
            temporary = path.name.startswith(".") and _DIGEST.fullmatch(path.name[1:].split(".tmp-")[0])
            if (_is_entry(path) and owned(path)) or (".tmp-" in path.name and temporary and _owned_temporary(path)):
                shutil.rmtree(path, ignore_errors=True)
                removed += 1
        return removed


_DIGEST = re.compile(r"[0-9a-f]{32}")


def _is_entry(path: Path) -> bool:
    """A directory named like an entry (a key digest); whether the cache wrote it is `owned`'s question."""
    return path.is_dir() and not path.is_symlink() and bool(_DIGEST.fullmatch(path.name))


def owned(path: Path) -> bool:
    """Whether the cache wrote directory `path`: it holds the marker file, or (an entry written before
    the marker existed) an entry.json whose file list names every file in it. Nothing else is removed."""
    if not path.is_dir() or path.is_symlink():
        return False
    marker = path / MARKER
    if marker.is_file() and not marker.is_symlink():
        try:
            return marker.read_text() == MARKER_TEXT
        except (OSError, ValueError):
            return False
    try:
        entry = json.loads((path / ENTRY).read_text())
        listed = set(entry["files"]) | {ENTRY}
        present = {p.name for p in path.iterdir()}
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return (isinstance(entry.get("key"), dict) and present == listed
            and all((path / n).is_file() and not (path / n).is_symlink() for n in present))


def _owned_temporary(path: Path) -> bool:
    """A temporary of a killed `put` (its process is gone): it holds the marker, or nothing at all (killed
    before writing it)."""
    pid = path.name.split(".tmp-", 1)[1].split("-", 1)[0]
    if not path.is_dir() or path.is_symlink() or not pid.isdigit() or pid_alive(int(pid)):
        return False
    try:
        return owned(path) or not any(path.iterdir())
    except OSError:
        return False
