"""Exports: runtime formats (GGUF for llama.cpp, compressed-tensors for transformers / vLLM) and
crescendo's own packed layout (formats no runtime stores), each reloadable to the identical model.

    save_gguf(model, tokenizer, path, metadata, other="f16")    -> GGUFReport
    save_compressed_tensors(model, tokenizer, out_dir, metadata) -> Path
    save_packed(model, tokenizer, out_dir, metadata)             -> Path
    load(directory, device="cpu")                                -> (model, tokenizer, metadata)  (packed)
    verify(path)                                                 -> VerifyReport  (all three formats)
"""

from .compressed_tensors import save_compressed_tensors
from .gguf import GGUFReport, save_gguf
from .load import load
from .save import save_packed
from .verify import VerifyReport, verify

__all__ = ["save_packed", "save_gguf", "save_compressed_tensors", "GGUFReport", "load", "verify", "VerifyReport"]
