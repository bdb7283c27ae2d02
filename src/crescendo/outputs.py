"""Output files and directories that are written whole or not at all, checked before any work.

A directory is written into a hidden temporary sibling (`.NAME.tmp-PID-XXXX`) and renamed into
place at the end; any failure or interruption removes the temporary (the CLI turns SIGTERM into an
interruption). A temporary left by a process that was killed outright (SIGKILL) is removed by the
next write to the same target. What is published gets the modes of ordinary new files (0666 and
0777 less the umask): some writers (safetensors, mkstemp) create private 0600 files, which a serving
account could not read. A write the system refuses (a full disk, a file size limit) is a
one-line StorageError naming the output, after the temporary is gone.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import ConfigError, StorageError, one_line


def _probe_writable(folder: Path, what: Path) -> None:
    """Create and remove a temporary directory in `folder`: the only reliable test (permissions,
    read-only or virtual file systems such as /proc and /sys all answer differently)."""
    try:
        probe = tempfile.mkdtemp(prefix=".crescendo-probe-", dir=folder)
        os.rmdir(probe)
    except OSError as e:
        raise ConfigError(f"cannot write {what}: folder {folder} is not writable ({e.strerror})") from None


def missing_folder(path: Path) -> str | None:
    """Why the folder `path` should be in cannot hold it, or None: it does not exist, or it (or a folder
    above it) is a file."""
    folder = path.parent
    if folder.is_dir():
        return None
    above = folder
    while not above.exists() and above != above.parent:
        above = above.parent
    if above.exists() and not above.is_dir():
        return f"{above} is a file, not a directory"
    return f"folder {folder} does not exist"


def check_output_dir(path: str | os.PathLike) -> Path:
    """The target must not exist yet or be an empty directory, and its parent must be a writable
    directory. Checked before any work, so a refusal never comes after a long computation."""
    out = Path(path)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"output directory {out} exists and is not empty")
    problem = missing_folder(out)
    if problem:
        raise ConfigError(f"cannot write {out}: {problem}")
    _probe_writable(out.parent, out)
    return out


def check_output_file(path: str | os.PathLike, suffix: str | None = None) -> Path:
    """A file the run will write: its folder must exist and be writable, the path must not be a
    directory, and (with `suffix`) it must end with it. Checked before any work is done."""
    out = Path(path)
    if suffix is not None and out.suffix.lower() != suffix:
        raise ConfigError(f"{out} must end with {suffix}")
    if out.is_dir():
        raise ConfigError(f"{out} is a directory")
    problem = missing_folder(out)
    if problem:
        raise ConfigError(f"cannot write {out}: {problem}")
    _probe_writable(out.parent, out)
    return out


def _umask() -> int:
    try:  # Linux says it without changing it
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("Umask:"))
        return int(line.split()[1], 8)
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def publish_modes(path: Path) -> None:
    """Give `path` (a file, or a directory and everything in it) the modes of ordinary new files."""
    mask = _umask()
    if not path.is_dir():
        os.chmod(path, 0o666 & ~mask)
        return
    os.chmod(path, 0o777 & ~mask)
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames:
            os.chmod(os.path.join(dirpath, name), 0o777 & ~mask)
        for name in filenames:
            full = os.path.join(dirpath, name)
            if not os.path.islink(full):
                os.chmod(full, 0o666 & ~mask)


def without_timings(data: Any) -> Any:
    """`data` less every key that holds a duration (`seconds`, `*_seconds`, `tokens_per_second`): an
    exported artefact must not depend on how long its run took, so that two identical runs give
    byte-identical files (the timings are in the command's output and in the results store)."""
    if isinstance(data, dict):
        return {k: without_timings(v) for k, v in data.items()
                if not (isinstance(k, str) and (k == "seconds" or k.endswith(("_seconds", "_per_second"))))}
    if isinstance(data, (list, tuple)):
        return [without_timings(v) for v in data]
    return data


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs on this host (a process we may not signal counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(out: Path) -> None:
    """Remove temporaries of `out` left by processes that no longer run."""
    for tmp in out.parent.glob(f".{out.name}.tmp-*"):
        pid_text = tmp.name[len(f".{out.name}.tmp-"):].split("-", 1)[0]
        if pid_text.isdigit() and not pid_alive(int(pid_text)):
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)


def write_failure(error: BaseException) -> str | None:
    """What went wrong, when `error` is the system refusing a write (an OSError, or safetensors'
    report of one); None for anything else."""
    if isinstance(error, OSError):
        return error.strerror or one_line(error)
    if type(error).__name__ == "SafetensorError" and "os error" in str(error).lower():
        return one_line(error)
    return None


@contextmanager
def atomic_output_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of `path` to write into; on success it is renamed to `path`, on
    any failure (or interruption) it is removed, so a half-written output never appears."""
    out = check_output_dir(path)
    remove_stale_temporaries(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    try:
        yield tmp
        publish_modes(tmp)  # mkdtemp makes it private, safetensors writes 0600 files
        if out.exists():
            out.rmdir()  # checked empty above; a rename cannot replace a directory on every OS
        os.replace(tmp, out)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        problem = write_failure(e)
        if problem is not None:
            raise StorageError(f"cannot write {out}: {problem}; nothing was left there") from None
        raise


@contextmanager
def atomic_output_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of the file `path`; renamed to `path` on success, removed on any
    failure or interruption. `path` must not exist."""
    out = Path(path)
    if out.exists():
        raise ConfigError(f"output file {out} exists")
    check_output_file(out)
    remove_stale_temporaries(out)
    fd, name = tempfile.mkstemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        publish_modes(tmp)  # mkstemp makes it private
        if out.exists():
            raise ConfigError(f"output file {out} appeared while writing")
        os.replace(tmp, out)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        problem = write_failure(e)
        if problem is not None:
            raise StorageError(f"cannot write {out}: {problem}; nothing was left there") from None
        raise
