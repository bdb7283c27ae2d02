"""Safetensors files written one tensor at a time, so a model larger than memory can be saved.

safetensors' own `save_file` needs every tensor in memory at once (it sorts them and writes one
buffer); it has no incremental writer. The file format is small enough to write directly
(github.com/huggingface/safetensors, "Format"): 8 bytes of little-endian header length, a JSON
header naming each tensor's dtype, shape and [begin, end) byte offsets into the data that follows,
padded with spaces to a multiple of 8, then the tensors' bytes back to back, little-endian. What is
written here reads back with `safe_open` / `load_file` like any other safetensors file.

Tensors are stored in the order they are given. `SafetensorsStream` takes them one at a time (the
header cannot be written before the last shape is known, so the data goes to a temporary file
beside the target first and is copied after the header on `close`); `write_safetensors` takes a
dict and writes header and data in one pass. Both write the same bytes for the same tensors in the
same order, which is what makes an export of a block-wise model equal, byte for byte, to the export
of the same model held in memory. Write failures are OSErrors with their errno (a full disk is
ENOSPC), for the caller to report.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import BinaryIO

import torch

_NAMES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64", "int32": "I32",
          "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL", "uint16": "U16", "uint32": "U32",
          "uint64": "U64", "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2"}
DTYPES = {getattr(torch, name): code for name, code in _NAMES.items() if hasattr(torch, name)}


def _entry(tensor: torch.Tensor, begin: int) -> dict:
    if tensor.dtype not in DTYPES:
        raise TypeError(f"safetensors cannot store dtype {tensor.dtype}")
    return {"dtype": DTYPES[tensor.dtype], "shape": list(tensor.shape),
            "data_offsets": [begin, begin + tensor.numel() * tensor.element_size()]}


def _header(entries: dict[str, dict], metadata: dict[str, str] | None) -> bytes:
    document = ({"__metadata__": dict(metadata)} if metadata else {}) | entries
    text = json.dumps(document, separators=(",", ":")).encode("utf-8")
    text += b" " * (-(8 + len(text)) % 8)  # the data starts 8-byte aligned
    return len(text).to_bytes(8, "little") + text


def _write_tensor(f: BinaryIO, tensor: torch.Tensor) -> None:
    t = tensor.detach().to("cpu").contiguous()
    if t.numel():
        f.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))


def write_safetensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor],
                      metadata: dict[str, str] | None = None) -> None:
    """Write `tensors` (in their order) to the new file `path`."""
    entries, offset = {}, 0
    for name, t in tensors.items():
        entries[name] = _entry(t, offset)
        offset = entries[name]["data_offsets"][1]
    with open(path, "wb") as f:
        f.write(_header(entries, metadata))
        for t in tensors.values():
            _write_tensor(f, t)


class SafetensorsStream:
    """A safetensors file written one tensor at a time; finished by `close()` (or leaving a `with`
    block normally). On an error inside the block, or `abort()`, nothing is left behind."""

    def __init__(self, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
        self.path = Path(path)
        self.metadata = metadata
        self._data_path = self.path.with_name(self.path.name + ".data")
        self._data = open(self._data_path, "wb")  # noqa: SIM115 - closed by close() / abort()
        self._entries: dict[str, dict] = {}
        self._offset = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name in self._entries:
            raise ValueError(f"tensor {name} is already in {self.path.name}")
        entry = _entry(tensor, self._offset)
        _write_tensor(self._data, tensor)
        self._entries[name] = entry
        self._offset = entry["data_offsets"][1]

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def close(self) -> None:
        """Write the header and the data into `path`."""
        self._data.close()
        try:
            with open(self.path, "wb") as f, open(self._data_path, "rb") as data:
                f.write(_header(self._entries, self.metadata))
                shutil.copyfileobj(data, f, 16 << 20)
        finally:
            self._data_path.unlink(missing_ok=True)

    def abort(self) -> None:
        self._data.close()
        self._data_path.unlink(missing_ok=True)
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> SafetensorsStream:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()
