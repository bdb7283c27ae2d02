"""The interleaved mode: every stage of a recipe applied block by block in one sequential pass.

The default ("stagewise") composition f2 ∘ f1 applies f1 to the whole model, then f2 to the model f1
produced: each calibrated stage captures the first block's inputs afresh and runs every block twice
(statistics, then the next block's inputs). The interleaved mode makes one pass instead: for block i,
stage 1, stage 2, ... each compress the block's targets (a calibrated stage collects its statistic by
running the block as the earlier stages left it), then the block runs once more to give block i + 1
its inputs. For n calibrated stages and B blocks that is one capture and (n + 1) B - 1 block runs
instead of n captures and n (2 B - 1).

The semantics differ, which is why this mode is opt-in and every report names it: a stage
calibrating block i sees inputs that went through blocks 0 .. i-1 compressed by *all* stages, also
the later ones (stagewise, stage k sees them compressed by stages 1 .. k only), and with the
activation quantizers of every stage already attached there, its own included (stagewise attaches a
stage's activation quantizers when the stage ends, so its own calibration sees unquantized
activations, QuaRot's convention). Block 0 gets the same weights in both modes; data-free stages
(magnitude, RTN, block formats) give the same weights everywhere, and so does a single weight-only
stage. Whole-model stages (block
removal, LoRA, fine-tuning, sharing) have no per-block form and are refused, except a leading
`rotate`, which is applied to the whole model before the pass. Targets outside the decoder blocks
(e.g. `include=lm_head`) are refused as well.
"""

from __future__ import annotations

import time

import torch
from torch import nn
from tqdm.auto import tqdm

from ..blockwise.residency import resident_block, resident_inputs
from ..errors import ConfigError
from ..models.adapters import Adapter, select_targets
from ..state import state_of
from .capture import capture_first_block_inputs
from .sequential import StageReport, apply_stage_, compress_block_

MODES = ("stagewise", "interleaved")


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ConfigError(f"unknown compression mode {mode!r}; choose one of {', '.join(MODES)}")
    return mode


def check_interleavable(stages) -> None:
    """Refuse what the interleaved mode cannot apply block by block (before anything changes)."""
    for position, stage in enumerate(stages):
        if stage.spec.apply_model is not None and not (stage.kind == "rotate" and position == 0):
            raise ConfigError(f"interleaved mode applies per-layer stages block by block; {stage} is a whole-model "
                              "stage (only a leading rotate is allowed): use the default stagewise mode")


def apply_interleaved_(
    model: nn.Module,
    stages,
    adapter: Adapter,
    calibration: list[torch.Tensor] | None,
    *,
    progress: bool = True,
    batch_size: int | None = None,
) -> list[StageReport]:
    """Apply recipe `stages` to `model` in place in one block-by-block pass; one report per stage
    (its `seconds` count the stage's own work; the shared capture and block runs are not split)."""
    check_interleavable(stages)
    stages = list(stages)
    reports: list[StageReport] = []
    if stages and stages[0].kind == "rotate":
        reports.append(apply_stage_(model, stages.pop(0), adapter, calibration, progress=progress,
                                    batch_size=batch_size))
    prefix = adapter.blocks_path + "."
    targets = []
    for stage in stages:
        chosen = select_targets(model, adapter, stage.config.targets)
        outside = [n for n in chosen if not n.startswith(prefix)]
        if outside:
            raise ConfigError(f"interleaved mode compresses decoder-block linears only; {stage} targets {outside}")
        targets.append(chosen)
        reports.append(StageReport(stage.spec.name, str(stage), 0.0, len(chosen)))
    own = reports[len(reports) - len(stages):]
    calibrated = any(stage.spec.statistic_for(stage.config) is not None for stage in stages)
    if calibrated and not calibration:
        raise ConfigError("interleaved mode: a calibrated stage needs calibration data")
    state = state_of(model)
    blocks = adapter.blocks(model)
    inputs = None
    if calibrated:
        with resident_inputs(model):
            inputs = capture_first_block_inputs(model, blocks[0], calibration, batch_size, adapter)
    desc = "interleaved: " + " > ".join(str(s) for s in stages)
    for index in tqdm(range(len(blocks)), desc=desc, disable=not progress, leave=False):
        block = blocks[index]
        in_block = adapter.block_linears(model, index)
        with resident_block(model, index, write=any(n in chosen for n in in_block for chosen in targets)):
            for stage, chosen, report in zip(stages, targets, own):
                linears = {n: m for n, m in in_block.items() if n in chosen}
                if not linears:
                    continue
                start = time.perf_counter()
                compress_block_(block, inputs, linears, state, stage.spec, stage.config, str(stage), report)
                if stage.spec.attach_linear is not None:  # later stages on this block, and later blocks, see it
                    for name, module in linears.items():
                        stage.spec.attach_linear(module, state.record(name), stage.config, adapter, model)
                report.seconds += time.perf_counter() - start
            if calibrated and index + 1 < len(blocks):
                inputs.advance_(block)
    return reports
