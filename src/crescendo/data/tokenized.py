"""A protocol made concrete for one tokenizer: eval windows and calibration samples as token ids.

Conventions (shared/PROTOCOL.md, and IST-DASLab gptq/sparsegpt `datautils.py`):

- each split is tokenized once, in full, by calling the tokenizer plainly, `tokenizer(text)`
  (for SmolLM2 this adds no BOS token); a long split is tokenized in pieces cut where that gives
  the same ids (`pieces`), to bound the tokenizer's memory;
- eval windows: the test ids cut into non-overlapping windows of seqlen, the first n kept;
- calibration from one text: `random.seed(seed)`, then per sample
  `i = random.randint(0, len(ids) - seqlen - 1)`, window = ids[i:i+seqlen];
- calibration from documents (C4): per sample, draw `random.randint(0, len(docs) - 1)` until a
  document has more than seqlen tokens, then a window inside it with the rule above.

A local `random.Random(seed)` replaces the global seeding: it yields the same sequence without
touching the global generator other code may rely on.
"""

from __future__ import annotations

import logging
import random
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import DataError
from .corpora import load_corpus
from .pieces import encode_in_pieces
from .protocols import Protocol

log = logging.getLogger(__name__)

@dataclass(frozen=True, eq=False)
class ProtocolData:
    """Token ids of one protocol under one tokenizer. Tensors may be shared: treat them as read-only."""

    protocol: Protocol
    test_ids: torch.Tensor  # (1, N) the whole test split
    eval_windows: torch.Tensor  # (n_windows, seqlen) the windows perplexity is measured on
    calibration: list[torch.Tensor]  # n_calibration tensors, each (1, seqlen)

    @property
    def n_eval_windows(self) -> int:
        return int(self.eval_windows.shape[0])


_CACHE_SIZE = 4  # a few (protocol, tokenizer) pairs: sotu-v1-full's calibration ids are ~18 MB
_CACHE: OrderedDict[tuple[Protocol, str], ProtocolData] = OrderedDict()


def encode(tokenizer: Any, text: str) -> torch.Tensor:
    """`tokenizer(text)["input_ids"]` as a LongTensor of shape (1, N); a long text is tokenized in
    pieces that give the same ids with a fraction of the memory (`pieces`)."""
    return encode_in_pieces(tokenizer, text)


def cut_windows(ids: torch.Tensor, seqlen: int, n_windows: int | None,
                what: str = "test split") -> torch.Tensor:
    """Non-overlapping windows of `seqlen` from ids (1, N): the first `n_windows` (None = all full).

    Returns a view of shape (n_windows, seqlen). Raises DataError when fewer windows are available.
    """
    available = ids.shape[-1] // seqlen
    wanted = available if n_windows is None else n_windows
    if available == 0 or wanted > available:
        asked = "at least 1" if n_windows is None else str(n_windows)
        raise DataError(f"{what}: {asked} windows of {seqlen} tokens requested, but its "
                        f"{ids.shape[-1]} tokens hold only {available}")
    return ids.reshape(-1)[: wanted * seqlen].view(wanted, seqlen)


def sample_windows(ids: torch.Tensor, n_samples: int, seqlen: int, seed: int,
                   what: str = "calibration split") -> list[torch.Tensor]:
    """GPTQ's trainloader: n windows ids[i:i+seqlen], i = randint(0, len - seqlen - 1), seeded.

    ids: (1, N) -> list of (1, seqlen). Raises DataError when N < seqlen + 1.
    """
    flat = ids.reshape(-1)
    if n_samples > 0 and flat.numel() < seqlen + 1:
        raise DataError(f"{what}: {n_samples} calibration windows of {seqlen} tokens requested, "
                        f"but it has only {flat.numel()} tokens (needs {seqlen + 1})")
    rng = random.Random(seed)
    windows = []
    for _ in range(n_samples):
        i = rng.randint(0, flat.numel() - seqlen - 1)
        windows.append(flat[i : i + seqlen].view(1, seqlen))
    return windows


def sample_document_windows(documents: Sequence[str], tokenizer: Any, n_samples: int, seqlen: int,
                            seed: int, what: str = "calibration documents") -> list[torch.Tensor]:
    """SparseGPT's C4 trainloader: per sample, random documents until one has > seqlen tokens, then
    a random window inside it. Returns n tensors of shape (1, seqlen).

    The reference tests `>= seqlen`, which crashes in `randint(0, -1)` on a document of exactly
    seqlen tokens; `>` (as Wanda) draws the same windows whenever the reference does not crash.
    Documents found too short are remembered, so a corpus with none long enough raises DataError
    instead of looping forever, without changing the random sequence.
    """
    if n_samples > 0 and len(documents) == 0:
        raise DataError(f"{what}: {n_samples} calibration windows requested from no documents")
    rng = random.Random(seed)
    encoded: dict[int, torch.Tensor] = {}
    too_short: set[int] = set()
    windows = []
    for _ in range(n_samples):
        while True:
            d = rng.randint(0, len(documents) - 1)
            if d not in encoded:
                encoded[d] = encode(tokenizer, documents[d]).reshape(-1)
            if encoded[d].numel() > seqlen:
                break
            too_short.add(d)
            if len(too_short) == len(documents):
                raise DataError(f"{what}: {n_samples} windows of {seqlen} tokens requested, but "
                                f"none of the {len(documents)} documents is longer than {seqlen} tokens")
        ids = encoded[d]
        i = rng.randint(0, ids.numel() - seqlen - 1)
        windows.append(ids[i : i + seqlen].view(1, seqlen))
    return windows


def _tokenizer_key(tokenizer: Any) -> str | None:
    name = getattr(tokenizer, "name_or_path", None)
    return f"{type(tokenizer).__qualname__}:{name}" if name else None


def prepare(protocol: Protocol, tokenizer: Any, *, cache: bool = True) -> ProtocolData:
    """Load the protocol's corpus, tokenize it, cut the eval windows and draw the calibration samples.

    Results are kept in a small in-process cache keyed by (protocol, tokenizer class and
    name_or_path) unless `cache=False`; tokenizers without a name are never cached.

    Example:
            data = prepare(get_protocol("sotu-v1-quick"), tokenizer)
            data.eval_windows.shape, len(data.calibration)  # -> (torch.Size([64, 512]), 32)
    """
    key = _tokenizer_key(tokenizer)
    if cache and key is not None and (protocol, key) in _CACHE:
        _CACHE.move_to_end((protocol, key))
        return _CACHE[(protocol, key)]
    corpus = load_corpus(protocol.corpus)
    where = f"protocol {protocol.name!r}"
    test_ids = encode(tokenizer, corpus.test_text)
    windows = cut_windows(test_ids, protocol.seqlen, protocol.n_eval_windows, f"{where}, test split")
    if protocol.n_calibration == 0:
        calibration: list[torch.Tensor] = []  # eval-only: skip tokenizing the larger split
    elif corpus.calibration_documents is not None:
        calibration = sample_document_windows(corpus.calibration_documents, tokenizer,
                                              protocol.n_calibration, protocol.seqlen, protocol.seed,
                                              f"{where}, calibration documents")
    else:
        assert corpus.calibration_text is not None  # Corpus guarantees one of the two
        calibration = sample_windows(encode(tokenizer, corpus.calibration_text), protocol.n_calibration,
                                     protocol.seqlen, protocol.seed, f"{where}, calibration split")
    log.info("%s: %d test tokens, %d eval windows, %d calibration windows", protocol.name,
             test_ids.shape[1], windows.shape[0], len(calibration))
    data = ProtocolData(protocol, test_ids, windows, calibration)
    if cache and key is not None:
        _CACHE[(protocol, key)] = data
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return data


def clear_cache() -> None:
    """Forget every cached `prepare` result."""
    _CACHE.clear()
