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
