"""The scratch files of block-wise models: every group of weights a run has rewritten, one file each.

A group (a decoder block, or the tensors outside the blocks) is written as one safetensors file
when a stage has compressed it: its float32 weights plus the tensors of its linears' compression
records (pruning masks, grid parameters). Files are never overwritten: a rewritten group gets a
new file, and a file is deleted when no model refers to it any more. So a copy of a block-wise
model (a prefix a sweep or an order study shares) costs nothing until one of the two rewrites a
block, and both keep their own blocks on disk, never in memory.

The directory is a fresh one inside `parent` (default: the system's temporary directory), removed
with everything in it when the last model using it is gone, or when the process exits. A write
that fails (a full disk) or a file that cannot be read back raises StorageError; nothing half
written is left under the final name.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import shutil
import tempfile
import threading
import weakref
from pathlib import Path

import torch

from ..errors import ConfigError, StorageError, one_line
from .writer import write_safetensors

log = logging.getLogger(__name__)

NO_SPACE = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def no_space(e: OSError) -> bool:
    """Whether an OSError says the disk (or a file size limit, or a quota) is full."""
    return e.errno in NO_SPACE


class BlockFiles:
    """A scratch directory of group files with reference counts (see the module docstring)."""

    def __init__(self, parent: str | os.PathLike | None = None) -> None:
        base = Path(parent) if parent is not None else Path(tempfile.gettempdir())
        if not base.is_dir():
            raise ConfigError(f"offload directory {base} does not exist")
        try:
            self.directory = Path(tempfile.mkdtemp(prefix="crescendo-blocks-", dir=base))
        except OSError as e:
            raise ConfigError(f"cannot write block files in {base}: {e.strerror}") from None
        self._counts: dict[Path, int] = {}
        self._serial = itertools.count()
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(self.directory), True)

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.directory).free

    def write(self, group: str, tensors: dict[str, torch.Tensor]) -> Path:
        """Write `tensors` as a new file of `group`; returns its path (held once by the caller)."""
        path = self.directory / f"{group}-{next(self._serial):06d}.safetensors"
        tmp = path.with_suffix(".tmp")
        cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        try:
            write_safetensors(tmp, cpu, {"format": "pt"})
            os.replace(tmp, path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            size = sum(t.numel() * t.element_size() for t in cpu.values())
            if no_space(e):
                raise StorageError(f"no space left in {self.directory} for {group} ({size / 1e6:.0f} MB of block "
                                   f"weights): free some, or give --offload-dir a larger disk") from None
            raise StorageError(f"cannot write {group} to {self.directory}: {e.strerror or one_line(e)}") from None
        with self._lock:
            self._counts[path] = 1
        return path

    def read(self, path: Path) -> dict[str, torch.Tensor]:
        """Every tensor of a group file, as CPU tensors the caller owns."""
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt", backend="pread") as f:
                return {k: f.get_tensor(k).clone() for k in f.keys()}
        except (OSError, SafetensorError) as e:
            raise StorageError(f"cannot read block file {path} (removed or damaged during the run?): "
                               f"{one_line(e)}") from None

    def hold(self, path: Path) -> None:
        """One more model refers to `path` (a copy of a block-wise model)."""
        with self._lock:
            self._counts[path] += 1

    def release(self, path: Path) -> None:
        """One model fewer refers to `path`; the file is deleted with the last one."""
        with self._lock:
            self._counts[path] -= 1
            last = self._counts[path] == 0
            if last:
                del self._counts[path]
        if last:
            path.unlink(missing_ok=True)

    def close(self) -> None:
        """Remove the directory and every file in it (also done when the last model is gone)."""
        self._finalizer()
