"""Corpora, evaluation protocols and their token ids (see shared/PROTOCOL.md); image sets and vision protocols."""

from .corpora import Corpus, known_corpora, load_corpus, load_sotu, load_text, sotu_directory, sotu_splits
from .hub import load_c4, load_wikitext2, probe_hub
from .images import ImageDataset, load_digits_dataset, load_fashion_mnist, load_image_dataset, read_idx
from .protocols import (
    Protocol,
    custom_protocol,
    get_protocol,
    list_protocols,
    register_protocol,
)
from .tokenized import (
    ProtocolData,
    clear_cache,
    cut_windows,
    encode,
    prepare,
    sample_document_windows,
    sample_windows,
)
from .vision_protocols import (
    VisionProtocol,
    VisionProtocolData,
    get_vision_protocol,
    list_vision_protocols,
    register_vision_protocol,
)

__all__ = [
    "Corpus",
    "ImageDataset",
    "VisionProtocol",
    "VisionProtocolData",
    "get_vision_protocol",
    "list_vision_protocols",
    "load_digits_dataset",
    "load_fashion_mnist",
    "load_image_dataset",
    "read_idx",
    "register_vision_protocol",
    "Protocol",
    "ProtocolData",
    "clear_cache",
    "custom_protocol",
    "cut_windows",
    "encode",
    "get_protocol",
    "known_corpora",
    "list_protocols",
    "load_c4",
    "load_corpus",
    "load_sotu",
    "load_text",
    "load_wikitext2",
    "prepare",
    "probe_hub",
    "register_protocol",
    "sample_document_windows",
    "sample_windows",
    "sotu_directory",
    "sotu_splits",
]
