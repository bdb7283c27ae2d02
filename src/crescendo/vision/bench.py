"""The vision counterpart of `crescendo.workflow.Workbench`: M = top-1 accuracy under a vision protocol.

`VisionWorkbench` loads a saved vision model (a `save_vision_model` directory or a packed export of
one) and a vision protocol's data once, and offers what the CLI, sweeps, order studies and searches
use from a workbench: `measure`, `compress` / `compress_inplace` on deep copies, and the order-study
Evaluator protocol (`metric`, `apply`, `fresh`, `layer_errors`), with M = accuracy in percent
(higher is better). Everything runs in float32.

Example:
    >>> bench = VisionWorkbench.load("docs/results/vision/models/fmnist-resnet-mini-s0", "fmnist-v1")  # doctest: +SKIP
    >>> bench.dense().accuracy  # doctest: +SKIP
    91.96
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..api import CompressionResult, compress, summarize
from ..data.vision_protocols import VisionProtocol, VisionProtocolData, get_vision_protocol
from ..errors import ConfigError, DataError, ModelError
from ..eval.accuracy import AccuracyResult, accuracy
from ..models.vision import VisionClassifier
from ..outcome import Measured, Outcome, stage_rows
from ..recipe import Recipe, parse_recipe
from ..state import state_of
from ..store import RunMetrics
from ..units import Evaluation, Units


@dataclass(kw_only=True)
class VisionRunOutcome(Outcome):
    """A vision model measured by top-1 accuracy."""

    accuracy: float

    @property
    def metric(self) -> float:
        """M = top-1 accuracy in percent."""
        return self.accuracy


def load_vision_any(spec: str, device: str = "cpu") -> tuple[VisionClassifier, dict]:
    """A vision model from a `save_vision_model` directory or a packed export of one; (model, metadata).

    A packed export comes back with its compression state and quantizers (`crescendo.export.load`)."""
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise ModelError(f"{spec}: no such directory (a vision model is a directory with config.json)")
    if (path / "crescendo_export.json").is_file():
        from ..export import load as load_packed

        model, _, metadata = load_packed(path, device=device)
        if not isinstance(model, VisionClassifier):
            raise ModelError(f"{spec}: a packed export of a language model, not a vision model")
        return model, metadata
    from ..models.vision_io import load_vision_model

    loaded = load_vision_model(path)
    return loaded.model.to(device), loaded.metadata


def is_vision_model_dir(spec: str) -> bool:
    """Whether `spec` is a directory whose config.json is a crescendo vision config (cheap: reads JSON)."""
    import json

    config = Path(spec).expanduser() / "config.json"
    if not config.is_file() or config.stat().st_size > 1 << 20:
        return False
    try:
        document = json.loads(config.read_text())
    except (OSError, ValueError):
        return False
    from ..models.vision_io import is_vision_document

    return is_vision_document(document)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class VisionWorkbench:
    """A dense vision model and a vision protocol's data, loaded once and never modified."""

    metric_name = "accuracy"
    dtype = "float32"
    eval_weights = "float32"
    tokenizer = None

    def __init__(self, model: VisionClassifier, name: str, protocol: VisionProtocol, data: VisionProtocolData, *,
                 device: str = "cpu", progress: bool = True, layerwise_samples: int = 4,
                 calibration_batch_size: int | None = None, eval_batch_size: int = 500,
                 source: str | None = None) -> None:
        config = model.config
        images = data.test_images
        if tuple(images.shape[1:]) != (config.in_channels, config.image_size, config.image_size):
            raise DataError(f"{name} takes {config.in_channels}x{config.image_size}x{config.image_size} images; "
                            f"protocol {protocol.name} ({protocol.dataset}) has {'x'.join(map(str, images.shape[1:]))}")
        if isinstance(eval_batch_size, bool) or not isinstance(eval_batch_size, int) or eval_batch_size < 1:
            raise ConfigError(f"eval batch size must be an integer >= 1, got {eval_batch_size!r}")
        self.model = model.eval()
        self.name, self.protocol, self.data = name, protocol, data
        self.device, self.progress = device, progress
        self.layerwise_samples = layerwise_samples  # calibration batches for layer-wise errors
        self.calibration_batch_size = calibration_batch_size
        self.eval_batch_size = eval_batch_size
        self.source = source  # the directory the model came from
        self._dense: AccuracyResult | None = None

    @classmethod
    def load(cls, model: str, protocol: str | VisionProtocol = "fmnist-v1", *, device: str | None = None,
             data_dir: str | None = None, calibration_seed: int | None = None, **kwargs: Any) -> VisionWorkbench:
        """Load a vision model directory and prepare a vision protocol's data (`data_dir`: Fashion-MNIST
        files; `calibration_seed`: draw the calibration images with this seed, a replicate)."""
        protocol = get_vision_protocol(protocol) if isinstance(protocol, str) else protocol
        if calibration_seed is not None:
            if isinstance(calibration_seed, bool) or not isinstance(calibration_seed, int) or calibration_seed < 0:
                raise ConfigError(f"calibration seed must be an integer >= 0, got {calibration_seed!r}")
            protocol = replace(protocol, seed=calibration_seed)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        net, _ = load_vision_any(model, device=device)  # a bad model directory fails before the data loads
        if data_dir is not None and protocol.dataset != "fashion-mnist":
            raise ConfigError(f"--data-dir only applies to fashion-mnist; {protocol.dataset} is embedded")
        data = protocol.prepare(data_dir=data_dir)
        return cls(net, Path(model).expanduser().resolve().name, protocol, data, device=device, source=str(model),
                   **kwargs)

    # -- identity ---------------------------------------------------------------------------------
    @property
    def protocol_id(self) -> str:
        return self.protocol.name

    @property
    def model_name(self) -> str:
        return self.name

    @property
    def calibration(self) -> list[torch.Tensor]:
        return [batch.to(self.device) for batch in self.data.calibration]

    def compute(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()  # float32, the vision protocols' reference

    def describe(self) -> dict[str, Any]:
        return {"model": self.model_name, "protocol": self.protocol_id, "dtype": self.dtype,
                "eval_weights": self.eval_weights, "device": self.device, "metric": self.metric_name}

    # -- measuring ----------------------------------------------------------------------------------
    def evaluate(self, model: nn.Module, images: Sequence[int] | None = None) -> AccuracyResult:
        """Top-1 accuracy on the protocol's whole test split (or on the test images `images`, in that order)."""
        if images is None:
            return accuracy(model, self.data.test_images, self.data.test_labels, batch_size=self.eval_batch_size)
        index = torch.as_tensor(list(images) if not isinstance(images, torch.Tensor) else images, dtype=torch.long)
        return accuracy(model, self.data.test_images[index], self.data.test_labels[index],
                        batch_size=self.eval_batch_size)

    def dense(self) -> AccuracyResult:
        if self._dense is None:
            self._dense = self.evaluate(self.model)
        return self._dense

    unit_kind = "correct"  # what `evaluation` keeps per unit (crescendo.units.KINDS)

    @property
    def n_units(self) -> int:
        """The protocol's evaluation units: its test images."""
        return int(self.data.test_images.shape[0])

    @property
    def margin(self):
        """The protocol's equivalence margin (accuracy points)."""
        from ..analysis.uncertainty import Margin

        return Margin(self.protocol.margin, relative=False)

    def evaluation(self, model: nn.Module, units: Sequence[int] | None = None) -> Evaluation:
        """M = top-1 accuracy with the correctness of every test image (or of the images `units`)."""
        result = self.dense() if units is None and model is self.model else self.evaluate(model, units)
        per_unit = Units("correct", result.per_image.numpy(), total=self.n_units,
                         index=None if units is None else [int(i) for i in units])
        return Evaluation(result.accuracy, per_unit, result.seconds)

    def measure(self, model: nn.Module, layerwise: bool = False) -> Measured:
        """Typed metrics (accuracy and compression summary; with `layerwise`, the per-block error), the
        evaluation seconds and the per-image correctness."""
        found = self.evaluation(model)
        summary = summarize(model).to_dict()
        summary.pop("batchnorm", None)  # the recipe names it (foldbn); rows hold numbers only
        more: dict[str, Any] = {}
        if layerwise:
            errors = self.layer_errors(model, per_linear=False)
            if errors is not None:
                more["per_block_error"] = errors["per_block"]
        return Measured(RunMetrics.from_accuracy(found.metric, summary, **more), found.seconds, found.units)

    # -- compressing --------------------------------------------------------------------------------
    def fresh(self) -> nn.Module:
        return copy.deepcopy(self.model)

    def compress(self, recipe: str | Recipe, base: nn.Module | None = None) -> tuple[nn.Module, CompressionResult]:
        model = copy.deepcopy(base if base is not None else self.model)
        return model, self.compress_inplace(model, recipe)

    def compress_inplace(self, model: nn.Module, recipe: str | Recipe) -> CompressionResult:
        return compress(model, recipe, self.calibration, progress=self.progress,
                        calibration_batch_size=self.calibration_batch_size)

    def run(self, recipe: str | Recipe) -> tuple[nn.Module, VisionRunOutcome]:
        recipe = parse_recipe(recipe)
        start = time.perf_counter()
        model, result = self.compress(recipe)
        seconds = time.perf_counter() - start
        return model, self.outcome(str(recipe), result, seconds, self.evaluation(model))

    def outcome(self, recipe: str, result: CompressionResult, compress_seconds: float,
                found: Evaluation) -> VisionRunOutcome:
        """The outcome of a compressed and evaluated recipe (its accuracy over the units `found` holds)."""
        return VisionRunOutcome(recipe=recipe, accuracy=found.metric, summary=result.summary.to_dict(),
                                stages=stage_rows(result), compress_seconds=compress_seconds,
                                eval_seconds=found.seconds, units=found.units)

    # -- the Evaluator protocol of analysis.order ---------------------------------------------------
    def metric(self, model: nn.Module) -> float:
        return self.evaluation(model).metric

    def apply(self, model: nn.Module, stage) -> None:
        self.compress_inplace(model, Recipe((stage,)))

    def layer_errors(self, model: nn.Module, per_linear: bool = True) -> dict[str, Any] | None:
        """Layer-wise error against the dense model on the first `layerwise_samples` calibration batches."""
        from ..eval.layerwise import layerwise_error

        if state_of(model).folded_batchnorm != state_of(self.model).folded_batchnorm:
            per_linear = False  # folded convs compute another function of their input than the dense ones
        return layerwise_error(self.model, model, self.calibration[: self.layerwise_samples],
                               per_linear=per_linear, batch_size=self.calibration_batch_size).to_dict()
