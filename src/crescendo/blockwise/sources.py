"""Where a block-wise model's original weights stay: safetensors shards, or one GGUF file.

A source names its tensors (the model's own state-dict names), gives their shapes without reading
them, and reads a few of them on request into fresh float32 CPU tensors. Nothing is held between
reads. Safetensors shards: every header is checked once, when the source is made
(`models.file_checks.safetensors_layout`); a float tensor is then read with pread straight into its
float32 result (other dtypes through safetensors' `safe_open` with its pread backend). A shard that
is truncated or removed while a run reads it is an error naming the file (a memory map would die of
SIGBUS instead), and the bytes read do not stay mapped into the process, so its resident memory is
what the run holds. A GGUF file is read with gguf-py's reader, its tensors dequantized and
renamed by transformers' own GGUF tables, one tensor at a time; its pages are released after each
read, and its length is checked before each one (a file cut short between two blocks is an error;
gguf-py maps the file, so one cut short in the middle of a read still ends the process with SIGBUS).
"""

from __future__ import annotations

import json
import mmap
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import torch

from ..errors import ModelError, StorageError, one_line

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


class WeightSource(Protocol):
    """Read access to a checkpoint's tensors by state-dict name."""

    description: str  # for messages: the directory or file

    def names(self) -> set[str]: ...

    def shape(self, name: str) -> tuple[int, ...]: ...

    def read(self, names: Iterable[str]) -> dict[str, torch.Tensor]: ...


class SafetensorsSource:
    """A directory of safetensors weights: `model.safetensors`, or shards listed by
    `model.safetensors.index.json`. Every shard's header is checked against the file when the source
    is made, so a missing or truncated shard is refused before any work."""

    def __init__(self, directory: str | Path) -> None:
        from ..models.file_checks import safetensors_layout

        self.directory = Path(directory)
        self.description = str(self.directory)
        self._where: dict[str, Path] = {}
        self._layout: dict[str, tuple[str, tuple[int, ...], int, int]] = {}  # dtype, shape, byte range
        for shard in self._shards():
            for name, entry in safetensors_layout(shard).items():
                self._where[name] = shard
                self._layout[name] = entry

    def _shards(self) -> list[Path]:
        index = self.directory / INDEX
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
                shards = sorted({str(v) for v in weight_map.values()})
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
                raise ModelError(f"{index} is not a readable safetensors index ({one_line(e)})") from None
            paths = [self.directory / s for s in shards]
            for p in paths:
                if Path(p.name) != Path(str(p.relative_to(self.directory))) or not p.is_file():
                    raise ModelError(f"shard {p.name} listed in {index.name} is missing from {self.directory}")
            return paths
        single = self.directory / SINGLE
        found = [single] if single.is_file() else sorted(self.directory.glob("*.safetensors"))
        if not found:
            raise ModelError(f"{self.directory}: no .safetensors weights")
        return found

    def names(self) -> set[str]:
        return set(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._layout[name][1]

    def read(self, names: Iterable[str]) -> dict[str, torch.Tensor]:
        """The tensors `names`, as float32 (or their own integer dtype) CPU tensors the caller owns.
        A shard that changed since the source was made raises StorageError."""
        from safetensors import SafetensorError

        by_shard: dict[Path, list[str]] = {}
        for name in names:
            by_shard.setdefault(self._where[name], []).append(name)
        out: dict[str, torch.Tensor] = {}
        for shard, wanted in by_shard.items():
            try:
                for name in wanted:
                    dtype, shape, begin, _ = self._layout[name]
                    out[name] = (_read_float(shard, name, _DTYPES[dtype], shape, begin) if dtype in _DTYPES
                                 else _read_other(shard, name))
            except (OSError, SafetensorError) as e:
                raise StorageError(f"cannot read {wanted[0]} from {shard} (was it changed or removed during the "
                                   f"run?): {one_line(e)}") from None
        return out


CHUNK = 16 << 20  # bytes read at a time from a tensor that is not float32
_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


def _read_float(shard: Path, name: str, dtype: torch.dtype, shape: tuple[int, ...], begin: int) -> torch.Tensor:
    """Tensor `name` (stored as `dtype` from byte `begin` of `shard`) as a float32 tensor, read from
    the file straight into the result (float32) or a slice at a time (other floats), so a large
    tensor (a 400 MB embedding) is never held twice."""
    out = torch.empty(shape, dtype=torch.float32)
    flat = out.view(-1)
    size = dtype.itemsize
    with open(shard, "rb", buffering=0) as raw:
        if dtype == torch.float32:
            view = memoryview(flat.numpy()).cast("B")
            done = 0
            while done < len(view):
                got = os.preadv(raw.fileno(), [view[done:]], begin + done)
                if got <= 0:
                    raise StorageError(f"{shard} ended inside tensor {name} (was it changed during the run?)")
                done += got
        else:
            step = max(1, CHUNK // size)
            for first in range(0, flat.numel(), step):
                count = min(step, flat.numel() - first)
                data = os.pread(raw.fileno(), count * size, begin + first * size)
                if len(data) != count * size:
                    raise StorageError(f"{shard} ended inside tensor {name} (was it changed during the run?)")
                flat[first:first + count] = torch.frombuffer(bytearray(data), dtype=dtype).float()
    return out


def _read_other(shard: Path, name: str) -> torch.Tensor:
    """A tensor of another dtype (integers, float8), through safetensors itself."""
    from safetensors import safe_open

    with safe_open(str(shard), framework="pt", backend="pread") as f:
        return _owned(f.get_tensor(name))


def _owned(t: torch.Tensor) -> torch.Tensor:
    """A float32 copy in memory torch allocated itself (aligned like every other tensor, so the
    matrix kernels take the same paths as for a model loaded whole)."""
    if t.is_floating_point():
        return t.to(torch.float32, copy=True)
    return t.clone()


class GGUFSource:
    """One .gguf file: tensors dequantized to float32 and renamed to the model's state-dict names by
    transformers' GGUF tables (the same conversion `from_pretrained(gguf_file=...)` applies)."""

    def __init__(self, path: str | Path, skeleton: torch.nn.Module) -> None:
        from gguf import GGUFReader
        from transformers.modeling_gguf_pytorch_utils import (
            TENSOR_PROCESSORS,
            get_gguf_hf_weights_map,
            load_gguf_checkpoint,
            read_field,
        )

        self.path = Path(path)
        self.description = str(self.path)
        self._length = self.path.stat().st_size
        try:
            self._reader = GGUFReader(str(self.path))
            parsed = load_gguf_checkpoint(str(self.path), return_tensors=False)
        except (OSError, ValueError, KeyError, IndexError) as e:
            raise ModelError(f"cannot read GGUF file {self.path}: {one_line(e)}") from None
        architecture = read_field(self._reader, "general.architecture")[0]
        self._processor = TENSOR_PROCESSORS.get(architecture, TENSOR_PROCESSORS.get("default"))
        if self._processor is None:
            from transformers.modeling_gguf_pytorch_utils import TensorProcessor

            self._processor = TensorProcessor
        self._processor = self._processor(config=parsed.get("config", {}))
        mapping = get_gguf_hf_weights_map(skeleton, self._processor)
        self._tensors = {}
        for tensor in self._reader.tensors:
            if tensor.name in mapping:
                self._tensors[mapping[tensor.name]] = tensor

    def names(self) -> set[str]:
        return set(self._tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(int(d) for d in reversed(self._tensors[name].shape.tolist()))

    def read(self, names: Iterable[str]) -> dict[str, torch.Tensor]:
        import numpy as np
        from gguf import dequantize

        try:
            length = os.stat(self.path).st_size
        except OSError as e:
            raise StorageError(f"cannot read {self.path} (was it removed during the run?): {e.strerror}") from None
        if length != self._length:
            raise StorageError(f"{self.path} changed during the run ({self._length} bytes when loaded, now {length})")
        out = {}
        for name in names:
            tensor = self._tensors[name]
            weights = dequantize(tensor.data, tensor.tensor_type)
            weights = self._processor.process(weights=weights, name=tensor.name, tensor_key_mapping={},
                                              parsed_parameters={}).weights
            out[name] = torch.from_numpy(np.array(weights, dtype=np.float32, copy=True)).reshape(self.shape(name))
        mapped = getattr(self._reader.data, "_mmap", None)
        if mapped is not None and hasattr(mapped, "madvise"):
            mapped.madvise(mmap.MADV_DONTNEED)  # the pages read stay in the page cache, not in this process
        return out
