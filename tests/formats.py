"""Writers of the binary formats crescendo reads, from their grammars, for hostile-input and fuzz tests:
GGUF (docs/gguf.md of ggml), safetensors (8-byte header length, JSON header, data) and idx.gz (LeCun's
MNIST format). They write whatever they are told, valid or not; and `peak_growth` measures memory."""

from __future__ import annotations

import gzip
import json
import re
import struct
from contextlib import contextmanager
from pathlib import Path

# GGUF value types
U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
_FMT = {U8: "B", I8: "b", U16: "H", I16: "h", U32: "I", I32: "i", F32: "f", BOOL: "?", U64: "Q", I64: "q", F64: "d"}


def gguf_string(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def gguf_value(kind: int, value) -> bytes:
    if kind == STRING:
        return gguf_string(value)
    if kind == ARRAY:
        inner, items = value
        return struct.pack("<IQ", inner, len(items)) + b"".join(gguf_value(inner, v) for v in items)
    return struct.pack("<" + _FMT[kind], value)


def gguf_bytes(kv: list[tuple], tensors: list[tuple], *, version: int = 3, n_kv: int | None = None,
               n_tensors: int | None = None, data: bytes | None = None, alignment: int = 32) -> bytes:
    """A GGUF file: kv = [(key, type, value)], tensors = [(name, dims innermost first, ggml type, offset)];
    `data` follows the header at the alignment (default: zeros covering every F32 tensor)."""
    head = b"GGUF" + struct.pack("<IQQ", version, len(tensors) if n_tensors is None else n_tensors,
                                 len(kv) if n_kv is None else n_kv)
    head += b"".join(gguf_string(k) + struct.pack("<I", t) + gguf_value(t, v) for k, t, v in kv)
    for name, dims, kind, offset in tensors:
        head += gguf_string(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        head += struct.pack("<IQ", kind, offset)
    head += b"\0" * (-len(head) % alignment)
    if data is None:  # zeros for every tensor as if F32, up to 1 MiB (a crafted size is not honoured)
        end = max((o + 4 * _prod(d) for _, d, _, o in tensors), default=0)
        data = b"\0" * min(end, 1 << 20)
    return head + data


def _prod(dims) -> int:
    out = 1
    for d in dims:
        out *= d
    return out


def tiny_gguf_llama() -> bytes:
    """A structurally valid GGUF file of a one-block, 32-wide LLaMA with F32 tensors (no vocabulary)."""
    h, ff, vocab = 32, 64, 16
    kv = [("general.architecture", STRING, "llama"), ("llama.block_count", U32, 1),
          ("llama.context_length", U32, 64), ("llama.embedding_length", U32, h),
          ("llama.feed_forward_length", U32, ff), ("llama.attention.head_count", U32, 2),
          ("llama.attention.head_count_kv", U32, 2), ("llama.attention.layer_norm_rms_epsilon", F32, 1e-6),
          ("llama.vocab_size", U32, vocab)]
    shapes = [("token_embd.weight", (h, vocab)), ("output_norm.weight", (h,)), ("blk.0.attn_norm.weight", (h,)),
              ("blk.0.ffn_norm.weight", (h,)), ("blk.0.attn_q.weight", (h, h)), ("blk.0.attn_k.weight", (h, h)),
              ("blk.0.attn_v.weight", (h, h)), ("blk.0.attn_output.weight", (h, h)),
              ("blk.0.ffn_gate.weight", (h, ff)), ("blk.0.ffn_up.weight", (h, ff)), ("blk.0.ffn_down.weight", (ff, h))]
    tensors, offset = [], 0
    for name, dims in shapes:
        tensors.append((name, dims, 0, offset))
        offset += -(-4 * _prod(dims) // 32) * 32
    return gguf_bytes(kv, tensors, data=b"\0" * offset)


def safetensors_bytes(header: dict | bytes | str, data: bytes = b"", length: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else (header if isinstance(header, str) else json.dumps(header)).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def idx_gz(path: Path, magic: int, dims: list[int], data: bytes | int = b"", level: int = 1) -> Path:
    """An idx.gz file: magic, big-endian uint32 dims, then `data` (bytes, or that many zero bytes, written in
    chunks so that a large claimed size costs no memory here)."""
    # no file name and no time in the gzip header: the same arguments give the same bytes wherever written
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=level,
                                                 mtime=0) as f:
        f.write(magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims))
        if isinstance(data, int):
            chunk = b"\0" * (1 << 20)
            for start in range(0, data, len(chunk)):
                f.write(chunk[: min(len(chunk), data - start)])
        else:
            f.write(data)
    return path


def _status(field: str) -> int:
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1)) * 1024


@contextmanager
def peak_growth():
    """Yields a dict whose "bytes" is, after the block, how far the resident set rose above where it was
    when the block started (Linux: VmHWM, reset through /proc/self/clear_refs)."""
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak to the current resident set
    start = _status("VmRSS")
    result = {"bytes": 0}
    try:
        yield result
    finally:
        result["bytes"] = max(0, _status("VmHWM") - start)
