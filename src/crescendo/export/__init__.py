"""Packed export: save a compressed model as packed integer codes, reload it exactly, verify it.

    save_packed(model, tokenizer, out_dir, metadata)  -> Path
    load(directory, device="cpu")                     -> (model, tokenizer, metadata)
    verify(directory)                                  -> VerifyReport
"""

from .load import load
from .save import save_packed
from .verify import VerifyReport, verify

__all__ = ["save_packed", "load", "verify", "VerifyReport"]
