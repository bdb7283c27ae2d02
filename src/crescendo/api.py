"""The library entry points: `compress(model, recipe, calibration)` and the summary of what it did."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace

import torch
from torch import nn

from .blockwise.residency import residency_of, resident_block
from .budget.accounting import LayerCost, layer_cost, model_bops, model_size_bits
from .engine.capture import calibration_batch_size as calibration_batch_size_for
from .engine.interleaved import apply_interleaved_, check_interleavable, check_mode
from .engine.sequential import StageReport, apply_stage_
from .errors import ConfigError
from .models.adapters import Adapter, get_adapter, in_features, select_targets
from .models.sharing import container_name, sharing_params
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
    mode: str = "stagewise"  # how the stages were composed (crescendo.engine.interleaved)


def summarize(model: nn.Module, adapter: Adapter | None = None) -> CompressionSummary:
    """Sparsity, average weight bits and compression ratio of the decoder-block linears (one pass
    over the blocks: a block-wise model loads each block once)."""
    adapter = adapter or get_adapter(model)
    state = state_of(model)
    records = state.records
    total = pruned = zeros = 0
    bits = 0.0
    positions = adapter.positions(model)
    stored: list[LayerCost] = []  # storage costs: shared scales count in the weight bits
    arithmetic: list[LayerCost] = []  # arithmetic costs: element bits only
    for index in range(len(adapter.blocks(model))):
        with resident_block(model, index):
            for name, module in adapter.block_linears(model, index).items():
                n = module.weight.numel()
                rec = records.get(name)
                total += n
                zeros += int((module.weight == 0).sum())
                pruned += int(rec.mask.sum()) if rec is not None and rec.mask is not None else 0
                bits += n * (rec.weight_bits(in_features(module)) if rec is not None else 16.0)
                stored.append(_layer_cost(name, module, rec, positions, storage=True))
                arithmetic.append(_layer_cost(name, module, rec, positions, storage=False))
    removed = state.removed.params if state.removed else 0  # whole blocks removed (SLEB) count as pruned
    pruned += removed
    zeros += removed
    bits += removed * 16.0
    total += removed
    sparsity = pruned / total if total else 0.0
    avg_bits = bits / total if total else 16.0
    # what the compressed model stores beyond its linears' weights: unmerged adapters, at 16 bits
    extra_bits = sum(c.params for c in adapter_costs(model)) * 16.0
    size_bits = avg_bits * (1.0 - sparsity) * total + extra_bits
    # the dense model: shared linears count with the weights their factors replaced
    dense_params, factor_params = sharing_params(model)
    ratio = 16.0 * (total - factor_params + dense_params) / size_bits if size_bits > 0 else float("inf")
    bops, size = _reductions(model, stored, arithmetic)
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
    for index in range(len(adapter.blocks(model))):
        with resident_block(model, index):
            for name, module in adapter.block_linears(model, index).items():
                costs.append(_layer_cost(name, module, records.get(name), positions, storage))
    return costs


def _layer_cost(name: str, module: nn.Module, rec, positions: dict[str, int], storage: bool) -> LayerCost:
    n_in = in_features(module)
    n_out = module.weight.numel() // n_in
    if rec is None:
        return layer_cost(name, n_in, n_out, positions.get(name, 1))
    act_bits = rec.act_grid.bits_per_element if rec.act_grid is not None else 16.0
    nm = rec.nm if rec.nm is not None and abs(rec.sparsity - rec.nm.ratio) < 1e-9 else None
    if rec.grid is None:
        weight_bits = 16.0
    else:
        weight_bits = rec.weight_bits(n_in) if storage else rec.grid.bits_per_element
    return layer_cost(name, n_in, n_out, positions.get(name, 1), weight_bits=weight_bits, act_bits=act_bits,
                      sparsity=0.0 if nm is not None else rec.sparsity, nm=nm)


def adapter_costs(model: nn.Module) -> list[LayerCost]:
    """The two 16-bit linears (A: in -> r, B: r -> out) of every unmerged LoRA adapter: they add
    storage and arithmetic that the dense model does not have."""
    from .models.lora import LoRABranch
    from .transforms import branches

    costs = []
    for name, module in model.named_modules():
        for i, branch in enumerate(b for b in branches(module) if isinstance(b, LoRABranch)):
            r, n_in = branch.lora_A.shape
            costs.append(LayerCost.linear(f"{name}.lora.{i}.A", int(n_in), int(r)))
            costs.append(LayerCost.linear(f"{name}.lora.{i}.B", int(r), int(branch.lora_B.shape[0])))
    return costs


def _sharing_costs(model: nn.Module, arithmetic: list[LayerCost]) -> tuple[list[LayerCost], list[LayerCost]]:
    """(the dense linears a share stage replaced, the basis products of the blocks that reuse their
    owner's basis: stored once, it is still computed once per block)."""
    info = state_of(model).sharing
    if info is None:
        return [], []
    by_name = {c.name: c for c in arithmetic}
    dense = [LayerCost.linear(m, g.in_features, g.out_features) for g in info.groups for m in g.members]
    reused = [replace(by_name[f"{g.members[0]}.basis"], name=f"{m}.basis") for g in info.groups for m in g.members[1:]]
    return dense, reused


def _reductions(model: nn.Module, linears: list[LayerCost], arithmetic: list[LayerCost]) -> tuple[float, float]:
    replaced, reused = _sharing_costs(model, arithmetic)
    # the dense model: its own linears (adapters are no part of it; shared linears as they were before)
    dense = [c.dense_baseline() for c in linears if container_name(c.name) == c.name] + replaced
    extra = adapter_costs(model)
    stored, arithmetic = linears + extra, arithmetic + reused + extra
    removed = state_of(model).removed
    dense += [LayerCost.linear("removed", i, o) for i, o in (removed.linears if removed else [])]
    return model_bops(dense) / model_bops(arithmetic), model_size_bits(dense) / model_size_bits(stored)


def check_requirements(recipe: Recipe) -> None:
    """Raise ConfigError (one line, naming the extra to install) if a stage needs a missing package."""
    for stage in recipe.stages:
        if stage.spec.requires is not None:
            stage.spec.requires()


def validate_recipe(model: nn.Module, recipe: Recipe, have_calibration: bool, adapter: Adapter | None = None) -> None:
    """Check every stage against the model before anything is changed (no half-compressed models)."""
    adapter = adapter or get_adapter(model)
    check_requirements(recipe)
    records = state_of(model).records
    pruned = {n for n, r in records.items() if r.mask is not None}  # layers holding zeros that must stay
    zeroless = {n: r.grid for n, r in records.items() if r.grid is not None and not r.grid.represents_zero}
    for position, stage in enumerate(recipe.stages):
        if stage.kind == "rotate" and (position > 0 or state_of(model).compressed):
            raise ConfigError("rotate must be the first stage (it would densify pruned weights)")
        spec, config = stage.spec, stage.config
        if stage.calibrated and not have_calibration:
            raise ConfigError(f"stage {stage} needs calibration data")
        if spec.check is not None:
            spec.check(model, adapter, config, recipe.stages[:position])
        if config.targets is not None:
            targets = select_targets(model, adapter, config.targets)
            if config.kv_bits is not None:
                adapter.check_kv_supported(targets)
            _check_zero_representable(stage, targets, pruned, zeroless)
        if stage.kind == "rotate" and not adapter.rotatable:
            raise ConfigError(f"rotate is implemented for the LLaMA family, not {adapter.family}")


def check_blockwise_recipe(recipe: Recipe) -> None:
    """A block-wise model (`crescendo.blockwise`) takes per-layer stages only: whole-model stages
    (rotate, sleb, lora, finetune, share, foldbn) need every block at once."""
    for stage in recipe.stages:
        if stage.spec.apply_model is not None:
            raise ConfigError(f"stage {stage} works on the whole model at once; a block-wise run (--max-memory) "
                              f"applies per-layer stages only (pruners, quantizers, formats)")


def _check_zero_representable(stage, targets, pruned: set[str], zeroless: dict) -> None:
    """A grid without 0 (llama.cpp's Q4_1) cannot hold pruned weights, before or after the pruning."""
    grid = stage.config.weight_grid if stage.spec.compress_linear is not None else None
    if stage.config.sparsity is not None:
        clash = sorted(set(targets) & set(zeroless))
        pruned.update(targets)
    elif grid is not None and not grid.represents_zero:
        clash = sorted(set(targets) & pruned)
        zeroless.update({n: grid for n in targets})
    else:
        if grid is not None:
            for n in targets:
                zeroless.pop(n, None)
        return
    if clash:
        bad = zeroless.get(clash[0], grid)
        raise ConfigError(f"stage {stage}: {clash[0]} would be pruned and on {bad!r}, which cannot represent 0 "
                          f"(pruned weights must stay exactly zero); use a symmetric format such as fmt=q4_0")


@torch.no_grad()
def compress(
    model: nn.Module,
    recipe: str | Recipe,
    calibration: list[torch.Tensor] | None = None,
    *,
    progress: bool = True,
    calibration_batch_size: int | None = None,
    mode: str = "stagewise",
) -> CompressionResult:
    """Apply `recipe` to `model` in place, stage after stage (f2 ∘ f1: f2 sees the model f1 made).

    calibration: windows of input ids (1, seqlen) used by calibrated stages (GPTQ, SparseGPT, Wanda).
    calibration_batch_size: windows per block call in calibrated stages (None: as many as fit in free
    memory; results equal one-at-a-time up to float reassociation).
    mode: "stagewise" (default, f2 ∘ f1 as above) or "interleaved": all per-layer stages applied block
    by block in one pass (`crescendo.engine.interleaved`: faster, different calibration semantics).

    Usage (a model and its calibration batches at hand):

        result = compress(model, "sparsegpt:0.5 > gptq:w4,g128", calibration)
        result.summary.sparsity, result.summary.avg_weight_bits
    """
    recipe = parse_recipe(recipe)
    adapter = get_adapter(model)
    check_mode(mode)
    validate_recipe(model, recipe, bool(calibration), adapter)
    if mode == "interleaved":
        check_interleavable(recipe.stages)
    calibrated = bool(calibration) and any(stage.calibrated for stage in recipe.stages)
    blockwise = residency_of(model)
    if blockwise is not None:  # the memory plan, before anything is read: windows per block call, prefetch
        check_blockwise_recipe(recipe)
        if calibration_batch_size is not None and calibrated:
            calibration_batch_size_for(model, calibration, calibration_batch_size)  # checked against the windows
        windows = len(calibration) if calibrated else 0
        seqlen = int(calibration[0].shape[-1]) if calibrated else 1
        plan = blockwise.plan(model, adapter, windows, seqlen, calibrated, calibration_batch_size)
        calibration_batch_size = plan.batch_size if calibrated else calibration_batch_size
        blockwise.check_space(model)
    elif calibrated:
        calibration_batch_size = calibration_batch_size_for(model, calibration, calibration_batch_size)
    was_training = model.training
    model.eval()
    result = CompressionResult(recipe, mode=mode)
    try:
        if mode == "interleaved":
            result.stages = apply_interleaved_(model, recipe.stages, adapter, calibration, progress=progress,
                                               batch_size=calibration_batch_size)
        for stage in recipe.stages if mode == "stagewise" else ():
            report = apply_stage_(model, stage, adapter, calibration, progress=progress,
                                  batch_size=calibration_batch_size)
            log.info("stage %s: %.1f s", stage, report.seconds)
            result.stages.append(report)
    finally:
        model.train(was_training)
    result.summary = summarize(model, adapter)
    return result
