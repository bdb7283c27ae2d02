"""The library entry points: `compress(model, recipe, calibration)` and the summary of what it did."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .budget.accounting import LayerCost, layer_cost, model_bops, model_size_bits
from .engine.capture import calibration_batch_size as calibration_batch_size_for
from .engine.sequential import StageReport, apply_stage_
from .errors import ConfigError
from .models.adapters import Adapter, get_adapter, in_features, select_targets
from .recipe import Recipe, parse_recipe
from .state import state_of

log = logging.getLogger(__name__)


@dataclass
class CompressionSummary:
    """What a compressed model holds, over every decoder-block linear (the protocol's compressed set)."""

    sparsity: float  # fraction of pruned (held-at-zero) weights
    avg_weight_bits: float  # storage bits per stored weight, shared scales included (16 = unquantized)
    compression_ratio: float  # 16-bit dense memory / compressed memory = 1/(1-p) * 16/B (003, Section 2)
    params: int
    bop_reduction: float = 1.0  # dense W16A16 BOPs / compressed BOPs (N:M halves MACs, as in OBC)
    size_reduction: float = 1.0  # dense 16-bit size / compressed size, sparsity metadata included
    zero_fraction: float = 0.0  # weights exactly zero, pruned or rounded to zero by a quantizer (removed blocks count)
    # models with batch norms after convolutions: "folded" (foldbn ran: the counted conv weights are
    # the folded ones) or "kept" (batch norms stay float layers after the convs); None: no batch norm
    batchnorm: str | None = None

    def to_dict(self) -> dict:
        out = asdict(self)
        if out["batchnorm"] is None:
            del out["batchnorm"]
        return out


@dataclass
class CompressionResult:
    recipe: Recipe
    stages: list[StageReport] = field(default_factory=list)
    summary: CompressionSummary | None = None


def summarize(model: nn.Module, adapter: Adapter | None = None) -> CompressionSummary:
    """Sparsity, average weight bits and compression ratio of the decoder-block linears."""
    adapter = adapter or get_adapter(model)
    state = state_of(model)
    records = state.records
    total = pruned = zeros = 0
    bits = 0.0
    for name, module in adapter.all_block_linears(model).items():
        n = module.weight.numel()
        rec = records.get(name)
        total += n
        zeros += int((module.weight == 0).sum())
        pruned += int(rec.mask.sum()) if rec is not None and rec.mask is not None else 0
        bits += n * (rec.weight_bits(in_features(module)) if rec is not None else 16.0)
    removed = state.removed.params if state.removed else 0  # whole blocks removed (SLEB) count as pruned
    pruned += removed
    zeros += removed
    bits += removed * 16.0
    total += removed
    sparsity = pruned / total if total else 0.0
    avg_bits = bits / total if total else 16.0
    ratio = 16.0 / (avg_bits * (1.0 - sparsity)) if sparsity < 1 else float("inf")
    bops, size = _reductions(model, adapter)
    return CompressionSummary(sparsity=sparsity, avg_weight_bits=avg_bits, compression_ratio=ratio, params=total,
                              bop_reduction=bops, size_reduction=size, zero_fraction=zeros / total if total else 0.0,
                              batchnorm=_batchnorm(model, adapter))


def _batchnorm(model: nn.Module, adapter: Adapter) -> str | None:
    if state_of(model).folded_batchnorm:
        return "folded"
    pairs = getattr(adapter, "batchnorm_pairs", None)
    return "kept" if pairs is not None and pairs(model) else None


def layer_costs(model: nn.Module, adapter: Adapter | None = None, storage: bool = True) -> list[LayerCost]:
    """BOP/size description of every block layer as compressed (budget.accounting).

    storage=True counts shared scales in the weight bits (for sizes); False counts the arithmetic's
    element bits only (for BOPs: a W8 layer multiplies 8-bit values whatever its scales cost).
    MACs are per output position the adapter names (a conv's H_out x W_out per image), else per token."""
    adapter = adapter or get_adapter(model)
    records = state_of(model).records
    positions = adapter.positions(model)
    costs = []
    for name, module in adapter.all_block_linears(model).items():
        n_in = in_features(module)
        n_out = module.weight.numel() // n_in
        rec = records.get(name)
        if rec is None:
            costs.append(layer_cost(name, n_in, n_out, positions.get(name, 1)))
            continue
        act_bits = rec.act_grid.bits_per_element if rec.act_grid is not None else 16.0
        nm = rec.nm if rec.nm is not None and abs(rec.sparsity - rec.nm.ratio) < 1e-9 else None
        if rec.grid is None:
            weight_bits = 16.0
        else:
            weight_bits = rec.weight_bits(n_in) if storage else rec.grid.bits_per_element
        costs.append(layer_cost(name, n_in, n_out, positions.get(name, 1), weight_bits=weight_bits, act_bits=act_bits,
                                sparsity=0.0 if nm is not None else rec.sparsity, nm=nm))
    return costs



def _reductions(model: nn.Module, adapter: Adapter) -> tuple[float, float]:
    stored, arithmetic = layer_costs(model, adapter), layer_costs(model, adapter, storage=False)
    dense = [c.dense_baseline() for c in stored]
    removed = state_of(model).removed
    dense += [LayerCost.linear("removed", i, o) for i, o in (removed.linears if removed else [])]
    return model_bops(dense) / model_bops(arithmetic), model_size_bits(dense) / model_size_bits(stored)


def validate_recipe(model: nn.Module, recipe: Recipe, have_calibration: bool, adapter: Adapter | None = None) -> None:
    """Check every stage against the model before anything is changed (no half-compressed models)."""
    adapter = adapter or get_adapter(model)
    for position, stage in enumerate(recipe.stages):
        if stage.kind == "rotate" and (position > 0 or state_of(model).compressed):
            raise ConfigError("rotate must be the first stage (it would densify pruned weights)")
        spec, config = stage.spec, stage.config
        if stage.calibrated and not have_calibration:
            raise ConfigError(f"stage {stage} needs calibration data")
        if spec.check_model is not None:
            spec.check_model(model, adapter, config)
        if config.targets is not None:
            targets = select_targets(model, adapter, config.targets)
            if config.kv_bits is not None:
                adapter.check_kv_supported(targets)
        if stage.kind == "rotate" and not adapter.rotatable:
            raise ConfigError(f"rotate is implemented for the LLaMA family, not {adapter.family}")


@torch.no_grad()
def compress(
    model: nn.Module,
    recipe: str | Recipe,
    calibration: list[torch.Tensor] | None = None,
    *,
    progress: bool = True,
    calibration_batch_size: int | None = None,
) -> CompressionResult:
    """Apply `recipe` to `model` in place, stage after stage (f2 ∘ f1: f2 sees the model f1 made).

    calibration: windows of input ids (1, seqlen) used by calibrated stages (GPTQ, SparseGPT, Wanda).
    calibration_batch_size: windows per block call in calibrated stages (None: as many as fit in free
    memory; results equal one-at-a-time up to float reassociation).

    Usage (a model and its calibration batches at hand):

        result = compress(model, "sparsegpt:0.5 > gptq:w4,g128", calibration)
        result.summary.sparsity, result.summary.avg_weight_bits
    """
    recipe = parse_recipe(recipe)
    adapter = get_adapter(model)
    validate_recipe(model, recipe, bool(calibration), adapter)
    if calibration and any(stage.calibrated for stage in recipe.stages):
        calibration_batch_size = calibration_batch_size_for(model, calibration, calibration_batch_size)
    was_training = model.training
    model.eval()
    result = CompressionResult(recipe)
    try:
        for stage in recipe.stages:
            report = apply_stage_(model, stage, adapter, calibration, progress=progress,
                                  batch_size=calibration_batch_size)
            log.info("stage %s: %.1f s", stage, report.seconds)
            result.stages.append(report)
    finally:
        model.train(was_training)
    result.summary = summarize(model, adapter)
    return result
