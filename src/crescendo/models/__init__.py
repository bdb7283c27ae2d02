"""Loading causal language models (embedded default, local directories, .gguf files, hub ids)."""

from .loading import (
    EMBEDDED_MODEL,
    ModelInfo,
    ResolvedSpec,
    embedded_gguf_path,
    load_model,
    resolve_model_spec,
)

__all__ = [
    "EMBEDDED_MODEL",
    "ModelInfo",
    "ResolvedSpec",
    "embedded_gguf_path",
    "load_model",
    "resolve_model_spec",
]
