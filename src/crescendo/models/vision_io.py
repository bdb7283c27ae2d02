"""Saving and loading the vision reference models: `model.safetensors` + `config.json`, never pickle.

config.json holds {"format": "crescendo-vision", "format_version": 1, "config": {"arch": ..., fields},
plus the caller's metadata: dataset, normalization, training, test accuracy}. Loading validates the
config (bounded sizes), builds the architecture, and checks every tensor name, shape and dtype in the
safetensors header against it before reading a single weight.

Example:
    >>> import tempfile
    >>> from crescendo.models.vision import ViTMiniConfig, build_vision_model
    >>> tmp = Path(tempfile.mkdtemp())
    >>> model = build_vision_model(ViTMiniConfig(image_size=8, patch_size=2, dim=16, depth=1, heads=2, mlp_dim=16))
    >>> _ = save_vision_model(model, tmp / "vit", {"dataset": "digits"})
    >>> load_vision_model(tmp / "vit").metadata["dataset"]
    'digits'
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import ModelError
from ..outputs import atomic_output_dir
from .vision import VisionClassifier, VisionConfig, build_vision_model, config_from_dict, config_to_dict

FORMAT = "crescendo-vision"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
_RESERVED = ("format", "format_version", "config")
_MAX_CONFIG_BYTES = 1 << 20  # a config.json is a few kilobytes


@dataclass(frozen=True, eq=False)
class LoadedVisionModel:
    """A model rebuilt from a directory, with the metadata saved beside it (dataset, normalization, ...)."""

    model: VisionClassifier
    config: VisionConfig
    metadata: dict

    @property
    def normalization(self) -> dict | None:
        """{"pixel_max", "mean", "std"} as saved by training, or None when the saver gave none."""
        return self.metadata.get("normalization")


def save_vision_model(model: VisionClassifier, directory: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Write `model` (float32 weights) and its config + `metadata` to a new or empty `directory`, atomically."""
    if not isinstance(model, VisionClassifier):
        raise ModelError(f"save_vision_model takes a crescendo vision model, got {type(model).__name__}")
    document = vision_config_document(model, metadata)
    try:
        text = json.dumps(document, indent=2, sort_keys=False)
    except (TypeError, ValueError) as e:
        raise ModelError(f"metadata is not JSON-serialisable: {e}") from None
    tensors = {name: t.detach().to("cpu", torch.float32 if t.is_floating_point() else t.dtype).contiguous()
               for name, t in model.state_dict().items()}
    with atomic_output_dir(directory) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT})
        (tmp / WEIGHTS_FILE).chmod(0o644)  # safetensors creates it owner-only; the config beside it is 0644
        (tmp / CONFIG_FILE).write_text(text + "\n")
    return Path(directory)


def vision_config_document(model: VisionClassifier, extra: dict | None = None) -> dict:
    """The config.json document of `model` (format, version, architecture) plus `extra` keys."""
    extra = dict(extra or {})
    clash = [k for k in _RESERVED if k in extra]
    if clash:
        raise ModelError(f"metadata may not set the reserved keys {', '.join(clash)}")
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "config": config_to_dict(model.config), **extra}


def is_vision_document(document: dict) -> bool:
    """Whether a parsed config.json describes a crescendo vision model."""
    return isinstance(document, dict) and document.get("format") == FORMAT


def build_from_document(document: dict, where: str = "config.json") -> VisionClassifier:
    """A freshly initialised model of the architecture a config.json document names (validated)."""
    if document.get("format_version") != FORMAT_VERSION:
        raise ModelError(f"{where}: format_version {document.get('format_version')!r}; this crescendo reads "
                         f"{FORMAT_VERSION}")
    try:
        return build_vision_model(config_from_dict(document.get("config")))
    except TypeError as e:
        raise ModelError(f"{where}: bad config ({e})") from None
    except ModelError as e:
        raise ModelError(f"{where}: {e}") from None


def _read_document(directory: Path) -> dict:
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise ModelError(f"{directory}: no {CONFIG_FILE}; not a saved crescendo vision model")
    if path.stat().st_size > _MAX_CONFIG_BYTES:
        raise ModelError(f"{path}: larger than {_MAX_CONFIG_BYTES} bytes; not a crescendo vision config")
    try:
        document = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ModelError(f"{path}: not a crescendo vision config (format must be {FORMAT!r})")
    if document.get("format_version") != FORMAT_VERSION:
        raise ModelError(f"{path}: format_version {document.get('format_version')!r}; this crescendo reads "
                         f"{FORMAT_VERSION}")
    return document


def load_vision_model(directory: str | os.PathLike) -> LoadedVisionModel:
    """Rebuild a model saved by `save_vision_model`, in eval mode; any mismatch raises ModelError."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ModelError(f"{directory}: no such directory")
    document = _read_document(directory)
    try:
        config = config_from_dict(document["config"])
    except TypeError as e:  # a field of the wrong kind that the dataclass itself refuses
        raise ModelError(f"{directory / CONFIG_FILE}: bad config ({e})") from None
    except ModelError as e:
        raise ModelError(f"{directory / CONFIG_FILE}: {e}") from None
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelError(f"{directory}: no {WEIGHTS_FILE}")
    model = build_vision_model(config)
    expected = model.state_dict()
    try:
        with safe_open(str(weights), framework="pt") as f:
            names = set(f.keys())
            missing, unexpected = sorted(set(expected) - names), sorted(names - set(expected))
            if missing or unexpected:
                raise ModelError(f"{weights}: tensors do not match {config.arch}: missing {missing[:3]}, "
                                 f"unexpected {unexpected[:3]}")
            for name, ref in expected.items():
                piece = f.get_slice(name)
                shape, dtype = tuple(piece.get_shape()), piece.get_dtype()
                want = "F32" if ref.is_floating_point() else "I64"
                if shape != tuple(ref.shape) or dtype != want:
                    raise ModelError(f"{weights}: tensor {name} is {dtype} {shape}, the config needs "
                                     f"{want} {tuple(ref.shape)}")
            state = {name: f.get_tensor(name) for name in expected}
    except ModelError:
        raise
    except Exception as e:  # safetensors raises its own error types for a corrupt header or file
        raise ModelError(f"{weights}: unreadable safetensors file ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    model.load_state_dict(state, strict=True)
    metadata = {k: v for k, v in document.items() if k not in _RESERVED}
    return LoadedVisionModel(model.eval(), config, metadata)
