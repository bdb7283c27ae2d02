"""Named evaluation protocols: which corpus, how it is windowed, how calibration samples are drawn.

Numbers are only comparable under an identical protocol, so every figure crescendo reports carries
a protocol name. The registered protocols are specified in shared/PROTOCOL.md; `custom_protocol`
builds one on demand (e.g. for a `text:` corpus) and `dataclasses.replace` overrides a field.

Example:
    >>> get_protocol("sotu-v1-quick").seqlen
    512
    >>> dataclasses.replace(get_protocol("sotu-v1-quick"), n_eval_windows=8).describe()
    'sotu-v1-quick (corpus sotu, seqlen 512, first 8 windows, 32 calibration samples, seed 0, float32)'
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..errors import DataError

DTYPES = ("float32", "bfloat16", "float16")
HUB_CORPORA = ("wikitext2", "c4")  # corpora that may be given a local copy as "name:DIR"


@dataclass(frozen=True)
class Protocol:
    """How to measure perplexity and draw calibration data.

    Eval: the test split's token ids cut into non-overlapping windows of `seqlen`, the first
    `n_eval_windows` kept (None = every full window). Calibration: `n_calibration` windows of `seqlen`
    drawn from the calibration split with `random.Random(seed)` (GPTQ/SparseGPT convention).
    """

    name: str
    corpus: str  # a corpus spec for `load_corpus`: "sotu", "text:...", "wikitext2[:DIR]", "c4[:DIR]"
    seqlen: int  # tokens per window, eval and calibration alike
    n_eval_windows: int | None  # None = all full windows of the test split
    n_calibration: int  # calibration windows; 0 for an eval-only protocol
    seed: int = 0  # seeds the calibration sampler
    dtype: str = "float32"  # the model dtype the protocol's reference figures were measured in
    margin: float = 0.005  # equivalence margin delta: two runs closer than 0.5% of perplexity are "equivalent"

    def __post_init__(self) -> None:
        if not self.name:
            raise DataError("a protocol needs a name")
        if isinstance(self.seqlen, bool) or not isinstance(self.seqlen, int) or self.seqlen < 2:
            raise DataError(f"protocol {self.name!r}: seqlen must be an integer >= 2, got {self.seqlen!r}")
        if self.n_eval_windows is not None and (
            isinstance(self.n_eval_windows, bool) or not isinstance(self.n_eval_windows, int)
            or self.n_eval_windows < 1
        ):
            raise DataError(f"protocol {self.name!r}: n_eval_windows must be None (all) or an "
                            f"integer >= 1, got {self.n_eval_windows!r}")
        if isinstance(self.n_calibration, bool) or not isinstance(self.n_calibration, int) \
                or self.n_calibration < 0:
            raise DataError(f"protocol {self.name!r}: n_calibration must be an integer >= 0, "
                            f"got {self.n_calibration!r}")
        if isinstance(self.margin, bool) or not isinstance(self.margin, (int, float)) or \
                not 0 <= self.margin < 1:
            raise DataError(f"protocol {self.name!r}: margin must be a fraction of perplexity in [0, 1), "
                            f"got {self.margin!r}")
        if self.dtype not in DTYPES:
            raise DataError(f"protocol {self.name!r}: dtype must be one of {', '.join(DTYPES)}, "
                            f"got {self.dtype!r}")

    def describe(self) -> str:
        """One line naming every setting, for reports."""
        n = self.n_eval_windows
        windows = "all full windows" if n is None else f"first {n} windows"
        return (f"{self.name} (corpus {self.corpus}, seqlen {self.seqlen}, {windows}, "
                f"{self.n_calibration} calibration samples, seed {self.seed}, {self.dtype})")


_REGISTRY: dict[str, Protocol] = {}


def register_protocol(protocol: Protocol) -> Protocol:
    """Add a protocol to the registry; a name registered twice raises DataError."""
    if protocol.name in _REGISTRY:
        raise DataError(f"protocol {protocol.name!r} is already registered")
    _REGISTRY[protocol.name] = protocol
    return protocol


def list_protocols() -> list[str]:
    """Names of the registered protocols."""
    return sorted(_REGISTRY)


def get_protocol(name: str) -> Protocol:
    """The registered protocol `name`.

    A hub protocol may name a local copy of its corpus: `get_protocol("wikitext2:/data/wikitext")` is
    protocol wikitext2 reading corpus `wikitext2:/data/wikitext` (same protocol, other source).
    """
    if name in _REGISTRY:
        return _REGISTRY[name]
    base, sep, local = name.partition(":")
    if sep and local and base in _REGISTRY and _REGISTRY[base].corpus in HUB_CORPORA:
        return dataclasses.replace(_REGISTRY[base], corpus=f"{_REGISTRY[base].corpus}:{local}")
    raise DataError(f"unknown protocol {name!r}; known: {', '.join(list_protocols())} "
                    f"(a local text corpus: custom_protocol('text:FILE', ...))")


def custom_protocol(
    corpus_spec: str,
    seqlen: int,
    n_eval_windows: int | None,
    n_calibration: int,
    *,
    seed: int = 0,
    dtype: str = "float32",
    name: str | None = None,
) -> Protocol:
    """A protocol built on demand (not registered), named after its settings unless `name` is given.

    Example:
        >>> custom_protocol("text:/tmp/speeches.txt", 256, None, 16).name
        'custom[text:/tmp/speeches.txt|seqlen=256|windows=all|calibration=16|seed=0]'
    """
    windows = "all" if n_eval_windows is None else str(n_eval_windows)
    name = name or (f"custom[{corpus_spec}|seqlen={seqlen}|windows={windows}|"
                    f"calibration={n_calibration}|seed={seed}]")
    return Protocol(name, corpus_spec, seqlen, n_eval_windows, n_calibration, seed, dtype)


SOTU_V1_QUICK = register_protocol(Protocol("sotu-v1-quick", "sotu", 512, 64, 32))
SOTU_V1_FULL = register_protocol(Protocol("sotu-v1-full", "sotu", 2048, None, 128))
WIKITEXT2 = register_protocol(Protocol("wikitext2", "wikitext2", 2048, None, 128))
C4 = register_protocol(Protocol("c4", "c4", 2048, 256, 128))  # GPTQ: valenc[:, :256 * seqlen]
