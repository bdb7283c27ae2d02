"""Models larger than memory: weights stay in their checkpoint, one decoder block at a time is loaded.

    load_blockwise(spec, device=..., max_memory=..., offload_dir=...) -> (model, tokenizer, info)
    resident_block(model, i, write=False)     context: block i on the device (no-op in memory)
    resident_inputs(model), resident_head(model)   contexts: what runs before the first / after the last block
    is_blockwise(model), residency_of(model)
    parse_memory("1.5GB") -> bytes

The engine, the evaluation, the summaries and the exporters wrap their per-block work in these
contexts, so one code path serves models in memory and block-wise models (see `residency`).
"""

from .loading import load_blockwise
from .memory import format_bytes, parse_memory
from .residency import (
    NotResident,
    is_blockwise,
    residency_of,
    resident_block,
    resident_group,
    resident_head,
    resident_inputs,
)

__all__ = ["load_blockwise", "parse_memory", "format_bytes", "NotResident", "is_blockwise", "resident_block",
           "resident_group", "resident_inputs", "resident_head",
           "residency_of"]
