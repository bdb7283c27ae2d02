"""Loading causal language models (embedded default, local directories, .gguf files, hub ids); vision models."""

from .loading import (
    EMBEDDED_MODEL,
    ModelInfo,
    ResolvedSpec,
    embedded_gguf_path,
    load_model,
    resolve_model_spec,
)
from .vision import ResNetMiniConfig, VisionClassifier, ViTMiniConfig, build_vision_model
from .vision_io import LoadedVisionModel, load_vision_model, save_vision_model

__all__ = [
    "EMBEDDED_MODEL",
    "LoadedVisionModel",
    "ResNetMiniConfig",
    "ViTMiniConfig",
    "VisionClassifier",
    "build_vision_model",
    "load_vision_model",
    "save_vision_model",
    "ModelInfo",
    "ResolvedSpec",
    "embedded_gguf_path",
    "load_model",
    "resolve_model_spec",
]
