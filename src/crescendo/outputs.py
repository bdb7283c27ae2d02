"""Output directories that are written whole or not at all."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import ConfigError


def check_output_dir(path: str | os.PathLike) -> Path:
    """The target must not exist yet or be an empty directory, and its parent must exist."""
    out = Path(path)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"output directory {out} exists and is not empty")
    if not out.parent.exists():
        raise ConfigError(f"parent directory of {out} does not exist")
    return out


def check_output_file(path: str | os.PathLike, suffix: str | None = None) -> Path:
    """A file the run will write: its folder must exist and be writable, the path must not be a
    directory, and (with `suffix`) it must end with it. Checked before any work is done."""
    out = Path(path)
    if suffix is not None and out.suffix.lower() != suffix:
        raise ConfigError(f"{out} must end with {suffix}")
    if out.is_dir():
        raise ConfigError(f"{out} is a directory")
    if not out.parent.is_dir():
        raise ConfigError(f"folder {out.parent} of {out} does not exist")
    if not os.access(out.parent, os.W_OK):
        raise ConfigError(f"folder {out.parent} of {out} is not writable")
    return out


@contextmanager
def atomic_output_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of `path` to write into; on success it is renamed to `path`, on
    any failure (or interruption) it is removed, so a half-written output never appears."""
    out = check_output_dir(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary directory
        if out.exists():
            out.rmdir()  # checked empty above; a rename cannot replace a directory on every OS
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
