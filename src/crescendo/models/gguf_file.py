"""A GGUF file's structure, checked before any third-party reader opens it.

gguf-py's `GGUFReader` (which transformers' GGUF loader uses) trusts the file: a header claiming 2^62
tensors or keys, a string longer than the file, or an undecodable key ends in `struct.error`,
`UnicodeDecodeError` (reported by transformers as "not a valid JSON file") or numpy errors, and
tensor sizes are believed before they are compared with anything. `check_gguf` walks the format's
grammar (github.com/ggml-org/ggml, docs/gguf.md) with every count and length bounded by the bytes
left in the file, every string UTF-8, every value type and tensor type known, every tensor's data
inside the file; anything else is a ModelError naming the file and the offset.

    file     := "GGUF" version:u32 (2 or 3) n_tensors:u64 n_kv:u64 kv[n_kv] tensor_info[n_tensors] pad data
    kv       := key:string type:u32 value(type)
    string   := len:u64 bytes[len] (UTF-8)
    array    := type:u32 count:u64 value(type)[count]
    tensor   := name:string n_dims:u32 dims:u64[n_dims] type:u32 offset:u64

Little-endian files are read; byte-swapped (big-endian) ones are recognised and refused.
"""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ModelError

# value types: id -> (struct format, byte size); 8 = string, 9 = array
_SCALARS = {0: ("B", 1), 1: ("b", 1), 2: ("H", 2), 3: ("h", 2), 4: ("I", 4), 5: ("i", 4), 6: ("f", 4), 7: ("?", 1),
            10: ("Q", 8), 11: ("q", 8), 12: ("d", 8)}
STRING, ARRAY = 8, 9
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_DEPTH = 4  # arrays of arrays: none in practice, bounded anyway
MAX_STRING = 1 << 20  # a key, a tensor name or a token; a chat template is tens of kilobytes


@dataclass
class GGUFSummary:
    """What a checked GGUF file holds: its metadata values (arrays summarised by their length), and
    per tensor its dims (innermost first, as GGUF lists them), type id and byte size."""

    version: int
    metadata: dict[str, object] = field(default_factory=dict)
    tensors: dict[str, tuple[tuple[int, ...], int, int]] = field(default_factory=dict)

    @property
    def elements(self) -> int:
        return sum(math.prod(dims) for dims, _, _ in self.tensors.values())


class _Cursor:
    def __init__(self, data, name: str) -> None:
        self.data, self.pos, self.name = data, 0, name

    def fail(self, why: str) -> ModelError:
        return ModelError(f"{self.name} is not a valid GGUF file: {why} (byte {self.pos})")

    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> bytes:
        if n > self.left():
            raise self.fail(f"needs {n} more bytes, {self.left()} are left")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, size: int):
        return struct.unpack("<" + fmt, self.take(size))[0]

    def string(self, what: str) -> str:
        n = self.unpack("Q", 8)
        if n > min(MAX_STRING, self.left()):
            raise self.fail(f"{what} of {n} bytes")
        raw = self.take(n)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not UTF-8") from None

    def value(self, kind: int, key: str, depth: int = 0):
        if kind in _SCALARS:
            fmt, size = _SCALARS[kind]
            return self.unpack(fmt, size)
        if kind == STRING:
            return self.string(f"the value of {key[:60]!r}")
        if kind == ARRAY and depth < MAX_DEPTH:
            inner, count = self.unpack("I", 4), self.unpack("Q", 8)
            smallest = _SCALARS[inner][1] if inner in _SCALARS else 8 if inner == STRING else 12
            if inner not in _SCALARS and inner not in (STRING, ARRAY):
                raise self.fail(f"array {key[:60]!r} of unknown type {inner}")
            if count * smallest > self.left():
                raise self.fail(f"array {key[:60]!r} claims {count} items, more than the file holds")
            if inner in _SCALARS:  # skipped in one step (token scores, types)
                self.take(count * smallest)
                return count
            for _ in range(count):
                self.value(inner, key, depth + 1)
            return count
        raise self.fail(f"value of {key[:60]!r} has unknown type {kind}")


def check_gguf(path: str | Path) -> GGUFSummary:
    """Walk a GGUF file's header (see the module docstring); ModelError naming the first problem."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    path = Path(path)
    try:
        with path.open("rb") as f:
            size = f.seek(0, 2)
            if size < 24:
                raise ModelError(f"{path.name} is not a valid GGUF file: {size} bytes, shorter than a GGUF header")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:  # slices of it are bytes
                return _walk(_Cursor(data, path.name), size, GGML_QUANT_SIZES, GGMLQuantizationType)
    except OSError as e:
        raise ModelError(f"{path.name} cannot be read: {e.strerror or e}") from None


def _walk(c: _Cursor, size: int, quant_sizes, quant_types) -> GGUFSummary:
    if c.take(4) != b"GGUF":
        raise c.fail("it does not start with GGUF")
    version = c.unpack("I", 4)
    if version not in (2, 3):
        swapped = version != 0 and version & 0xFFFF == 0
        raise c.fail("a big-endian GGUF file, which crescendo does not read" if swapped
                     else f"version {version}, expected 2 or 3")
    n_tensors, n_kv = c.unpack("Q", 8), c.unpack("Q", 8)
    if n_kv * 13 > c.left():  # a key of >= 1 byte, its length, its type, a 0-byte value at least
        raise c.fail(f"{n_kv} metadata keys claimed, more than the file holds")
    if n_tensors * 32 > c.left():  # name length, n_dims, one dim, type, offset at least
        raise c.fail(f"{n_tensors} tensors claimed, more than the file holds")
    out = GGUFSummary(version)
    for _ in range(n_kv):
        key = c.string("a metadata key")
        if key in out.metadata:
            raise c.fail(f"metadata key {key[:60]!r} appears twice")
        out.metadata[key] = c.value(c.unpack("I", 4), key)
    alignment = out.metadata.get("general.alignment", 32)
    if not isinstance(alignment, int) or isinstance(alignment, bool) or alignment < 1 or alignment & (alignment - 1):
        raise c.fail(f"general.alignment {alignment!r} is not a power of two")
    known = {int(t): t for t in quant_types if t in quant_sizes}
    infos, names = [], set()
    for _ in range(n_tensors):
        name = c.string("a tensor name")
        n_dims = c.unpack("I", 4)
        if not 1 <= n_dims <= MAX_DIMS:
            raise c.fail(f"tensor {name[:60]!r} has {n_dims} dimensions")
        dims = tuple(c.unpack("Q", 8) for _ in range(n_dims))
        kind, offset = c.unpack("I", 4), c.unpack("Q", 8)
        if kind not in known:
            raise c.fail(f"tensor {name[:60]!r} has unknown type {kind}")
        if name in names:
            raise c.fail(f"tensor {name[:60]!r} appears twice")
        names.add(name)
        infos.append((name, dims, kind, offset))
    start = -(-c.pos // alignment) * alignment
    for name, dims, kind, offset in infos:
        block, type_size = quant_sizes[known[kind]]
        elements = math.prod(dims)
        if any(d < 1 for d in dims) or dims[0] % block:
            raise c.fail(f"tensor {name[:60]!r} has dims {dims}, not whole blocks of {block}")
        nbytes = elements // block * type_size
        if offset % alignment or start + offset + nbytes > size:
            raise c.fail(f"tensor {name[:60]!r} claims bytes {offset}..{offset + nbytes} of the data, which end "
                         f"at {size - start}")
        out.tensors[name] = (dims, kind, nbytes)
    return out
