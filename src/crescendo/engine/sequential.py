"""Apply one recipe stage to a model, block by block, with calibration data flowing through it.

f2 ∘ f1 means: f1 on the whole model, then f2 on the model f1 produced. So each stage captures the
inputs of the first block from the *current* model, and for each block collects the statistic its
method needs, compresses the block's target linears, re-runs the block to get the next block's
inputs. Data-free stages (magnitude, RTN, block formats) skip the forward passes entirely.
Activation quantizers a stage adds are attached at the end of the stage, so the stage's own weight
calibration sees unquantized activations (QuaRot's convention) and later stages see quantized ones.
Every block's work runs inside `resident_block` (and the capture inside `resident_inputs`): for a
block-wise model (`crescendo.blockwise`) that loads the block, and saves it once compressed; for a
model in memory it does nothing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..blockwise.residency import group_name, resident_block, resident_group, resident_inputs
from ..errors import ConfigError
from ..models.adapters import (
    Adapter,
    get_weight,
    select_targets,
    set_weight_,
    tied_names,
)
from ..state import LinearRecord, state_of
from .capture import capture_first_block_inputs
from .stats import Hessian, InputStatistics

log = logging.getLogger(__name__)


@dataclass
class StageReport:
    """What one stage did: its timing, the linears it touched and the calibration facts worth naming."""

    method: str
    stage: str
    seconds: float
    layers: int
    # inputs exactly zero on every calibration token (e.g. rounded to zero by an activation
    # quantizer): their weights are left as they are, not zeroed as the reference codes do
    dead_inputs: int = 0
    statistics: int = 0  # distinct input statistics accumulated (linears sharing an input share one)
    details: dict[str, Any] = field(default_factory=dict)  # what a whole-model stage reports (e.g. losses)


def apply_stage_(
    model: nn.Module,
    stage,
    adapter: Adapter,
    calibration: list[torch.Tensor] | None,
    *,
    progress: bool = True,
    batch_size: int | None = None,
) -> StageReport:
    """Apply `stage` (a recipe Stage) to `model` in place; returns what it did.

    batch_size: calibration windows per block call (None: as many as fit in free memory)."""
    spec, config = stage.spec, stage.config
    start = time.perf_counter()
    state = state_of(model)
    if spec.apply_model is not None:
        if spec.needs_calibration and not calibration:
            raise ConfigError(f"stage {stage} needs calibration data")
        details = spec.apply_model(model, adapter, config, calibration, progress=progress, batch_size=batch_size)
        return StageReport(spec.name, str(stage), time.perf_counter() - start, 0, details=dict(details or {}))

    targets = select_targets(model, adapter, config.targets)
    tied = tied_names(model, list(targets))
    if tied:
        log.warning("stage %s compresses tied weights %s: the tensors they share change too", stage, tied)
    report = StageReport(spec.name, str(stage), 0.0, len(targets))
    statistic = spec.statistic_for(config)
    if statistic is None:
        groups: dict[str, list[str]] = {}  # one load per block of a block-wise model
        for name in targets:
            groups.setdefault(group_name(model, name, adapter.blocks_path), []).append(name)
        for names in tqdm(groups.values(), desc=f"{stage}", disable=not progress, leave=False):
            with resident_group(model, names[0], write=spec.compress_linear is not None):
                for name in names:
                    _compress_one(targets[name], None, state.record(name), spec, config, str(stage))
    else:
        _calibrated_pass(model, adapter, targets, calibration, spec, config, str(stage), report, progress, batch_size)
    if spec.attach_linear is not None:
        for name, module in targets.items():
            spec.attach_linear(module, state.record(name), config, adapter, model)
    report.seconds = time.perf_counter() - start
    return report


def _compress_one(module: nn.Module, stats, record: LinearRecord, spec, config, text: str) -> None:
    if spec.compress_linear is None:
        return
    weight = get_weight(module)  # (out, in) float32
    new = spec.compress_linear(weight, stats, record, config)
    set_weight_(module, new)
    record.history.append(text)


def calibration_targets(adapter: Adapter, targets: dict[str, nn.Module], text: str) -> None:
    """A calibrated stage compresses decoder-block linears only (it calibrates them block by block)."""
    outside = [n for n in targets if not n.startswith(adapter.blocks_path + ".")]
    if outside:
        raise ConfigError(f"stage {text} is calibrated and compresses only block layers, not {outside}")


def compress_block_(block: nn.Module, inputs, linears: dict[str, nn.Module], state, spec, config, text: str,
                    report: StageReport) -> None:
    """One stage on one block's target `linears`: collect the statistic its method needs by running
    the block on `inputs` (none for data-free methods), compress each linear, attach its quantizers."""
    kind = spec.statistic_for(config)
    if kind is None:
        for name, module in linears.items():
            _compress_one(module, None, state.record(name), spec, config, text)
        return
    with InputStatistics(linears, kind) as stats:
        inputs.run(block)
    seen: set[str] = set()
    last = {stats.leader(n): n for n in linears}  # the last linear to use each shared statistic
    for name, module in linears.items():
        statistic = stats.result(name)
        if stats.leader(name) not in seen:
            seen.add(stats.leader(name))
            report.statistics += 1
            if isinstance(statistic, Hessian):
                report.dead_inputs += statistic.dead_inputs
        _compress_one(module, statistic, state.record(name), spec, config, text)
        del statistic
        if last[stats.leader(name)] == name:
            stats.release(name)  # its (in, in) matrix and factor are not held while the next linears work


def _calibrated_pass(model, adapter, targets, calibration, spec, config, text, report: StageReport,
                     progress, batch_size) -> None:
    if not calibration:
        raise ConfigError(f"stage {text} needs calibration data")
    calibration_targets(adapter, targets, text)
    state = state_of(model)
    blocks = adapter.blocks(model)
    with resident_inputs(model):
        inputs = capture_first_block_inputs(model, blocks[0], calibration, batch_size, adapter)
    for index in tqdm(range(len(blocks)), desc=f"{text}", disable=not progress, leave=False):
        block = blocks[index]
        linears = {n: m for n, m in adapter.block_linears(model, index).items() if n in targets}
        with resident_block(model, index, write=bool(linears)):
            if linears:
                compress_block_(block, inputs, linears, state, spec, config, text, report)
            if index + 1 < len(blocks):
                inputs.advance_(block)
