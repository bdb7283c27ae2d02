"""Parameter sharing (`share`): Basis Sharing (Wang et al., ICLR 2025) across consecutive blocks.

`share:group=2,rank=128` (or `ratio=0.3`, the fraction of parameters removed per module type, the
paper's "compression ratio") splits the decoder blocks into groups of `group` consecutive blocks
(the last group may be shorter) and, for every module type the stage targets (all decoder-block
linears by default), replaces the group's weights by one basis from the SVD of their stacked,
calibration-whitened weights plus per-block coefficients (`crescendo.kernels.sharing`). Whitening
uses the summed X^T X of the group's inputs, collected block by block on calibration data flowing
through the current model (f2 ∘ f1, as every calibrated stage); the next group calibrates on the
already shared model. Each shared linear becomes a `FactoredLinear` under its own name
(`crescendo.models.sharing`); its basis and coefficient linears are ordinary linears to later stages.

Composition, so that no stage undoes another:
- share, then prune / quantize / LoRA / fine-tune: the later stage acts on the factors (basis and
  coefficient linears), with their own masks and grids; a calibrated stage compresses a shared basis
  with the statistics of its owner block (the first of its group).
- prune or quantize, then share: the factors are dense, so they cannot keep the earlier masks and
  grids. The stage is refused unless it says `absorb`, in which case those masks and grids are
  dropped on purpose (named in the state) and the earlier stage's compression is no longer counted.
- activation / KV quantizers and online Hadamards of a shared linear stay around both factors;
  unmerged LoRA adapters must be merged first; block removal (sleb) after sharing is refused; a model
  is shared once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from ..engine.capture import capture_first_block_inputs, run_block
from ..engine.stats import InputStatistics
from ..errors import ConfigError
from ..kernels.sharing import shared_basis, shared_rank
from ..models.adapters import get_weight, select_targets
from ..models.sharing import container_name, factor_group_
from ..state import SharedGroup, SharingInfo, state_of
from ..types import Targets, check_ratio
from . import args as A
from .base import MethodConfig, MethodSpec, register_method

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShareConfig(MethodConfig):
    """Basis Sharing: `group` consecutive blocks share one basis of `rank` (or removing `ratio`)."""

    group: int = 2
    rank: int | None = None  # basis vectors per group, the same for every module type
    ratio: float | None = None  # fraction of each module type's parameters removed (rank per type)
    absorb: bool = False  # share linears that earlier stages pruned / quantized, dropping masks and grids
    target: Targets = field(default_factory=Targets)

    def __post_init__(self) -> None:
        if self.group < 1:
            raise ConfigError(f"share group must be >= 1, got {self.group}")
        if (self.rank is None) == (self.ratio is None):
            raise ConfigError("share needs exactly one of rank=R or ratio=P (fraction of parameters removed)")
        if self.rank is not None and self.rank < 1:
            raise ConfigError(f"share rank must be >= 1, got {self.rank}")
        if self.ratio is not None and check_ratio(self.ratio, "share ratio") <= 0:
            raise ConfigError("share ratio must be > 0")

    @property
    def targets(self) -> Targets:
        return self.target

    def text(self) -> str:
        size = f"rank={self.rank}" if self.rank is not None else f"ratio={self.ratio:g}"
        args = [f"group={self.group}", size] + (["absorb"] if self.absorb else []) + self.target.args()
        return "share:" + ",".join(args)

    @classmethod
    def parse(cls, name: str, positional: list[str], keyword: dict[str, str]) -> ShareConfig:
        target = A.pop_targets(keyword)
        values: dict = {"absorb": A.pop_flag(positional, "absorb")}
        if "group" in keyword:
            values["group"] = A.parse_int(keyword.pop("group"), "share group")
        if "rank" in keyword:
            values["rank"] = A.parse_int(keyword.pop("rank"), "share rank")
        if "ratio" in keyword:
            values["ratio"] = A.parse_float(keyword.pop("ratio"), "share ratio")
        A.reject_leftovers(name, positional, keyword)
        return cls(target=target, **values)


def _chunks(n_blocks: int, group: int) -> list[list[int]]:
    return [list(range(s, min(s + group, n_blocks))) for s in range(0, n_blocks, group)]


def plan_sharing(model, adapter, config: ShareConfig) -> list[SharedGroup]:
    """The groups a share stage would form on `model`, or ConfigError saying why it does not fit."""
    n_blocks = len(adapter.blocks(model))
    if n_blocks < 2:
        raise ConfigError(f"share needs repeated decoder blocks; this {adapter.family} model has {n_blocks}")
    if config.group > n_blocks:
        raise ConfigError(f"share:group={config.group} does not fit: the model has {n_blocks} decoder blocks")
    targets = select_targets(model, adapter, config.targets)
    prefix = adapter.blocks_path + "."
    by_kind: dict[str, dict[int, str]] = {}
    for name in targets:
        if not name.startswith(prefix) or container_name(name) != name:
            raise ConfigError(f"share acts on the decoder blocks' original linears, not {name}"
                              + (" (a model is shared once)" if container_name(name) != name else ""))
        index, _, kind = name[len(prefix):].partition(".")
        by_kind.setdefault(kind, {})[int(index)] = name
    groups = []
    for kind, names in by_kind.items():
        for chunk in _chunks(n_blocks, config.group):
            present = [i for i in chunk if i in names]
            if not present:
                continue
            if len(present) != len(chunk):
                missing = sorted(set(chunk) - set(present))
                raise ConfigError(f"share: {kind} is targeted in blocks {present} but not {missing} of the group "
                                  f"{chunk}; a group shares one basis, so target all its blocks or none")
            members = [names[i] for i in chunk]
            shapes = {tuple(get_weight(targets[m]).shape) for m in members}
            if len(shapes) != 1:
                raise ConfigError(f"share: {kind} has different shapes {sorted(shapes)} in blocks {chunk}")
            out_f, in_f = shapes.pop()
            m = len(members)
            rank = config.rank if config.rank is not None else shared_rank(in_f, out_f, m, config.ratio)
            if rank < 1 or rank > min(in_f, m * out_f):
                raise ConfigError(f"share rank {rank} does not fit {kind} ({in_f} -> {out_f}, {m} blocks): it must "
                                  f"be in 1..{min(in_f, m * out_f)}")
            if rank * (in_f + m * out_f) >= m * in_f * out_f:
                raise ConfigError(f"share rank {rank} does not compress {kind} in a group of {m}: its factors hold "
                                  f"{rank * (in_f + m * out_f)} parameters, the weights it replaces {m * in_f * out_f}")
            groups.append(SharedGroup(kind, members, rank, in_f, out_f))
    return groups


def check_share(model, adapter, config: ShareConfig, earlier) -> None:
    """Refuse a share stage whose factors could not keep an earlier stage's invariants (see the module)."""
    state = state_of(model)
    if state.sharing is not None or any(s.method == "share" for s in earlier):
        raise ConfigError("a model is shared once: the recipe has a second share stage")
    groups = plan_sharing(model, adapter, config)
    shared = {m for g in groups for m in g.members}
    if state.lora is not None and shared & set(state.lora.targets) or any(
            s.method == "lora" and not s.config.merge and shared & set(select_targets(model, adapter, s.config.targets))
            for s in earlier):
        raise ConfigError("share after unmerged LoRA adapters: merge them first (lora:...,merge)")
    if config.absorb:
        return
    touched = [n for n in shared if (r := state.records.get(n)) is not None and (r.mask is not None or r.grid is not None)]
    for stage in earlier:
        c = stage.config
        if c.targets is not None and (c.sparsity is not None or (stage.spec.compress_linear and c.weight_grid)):
            touched += sorted(shared & set(select_targets(model, adapter, c.targets)))
    if touched:
        raise ConfigError(f"share after pruning or quantizing {touched[0]}: its dense factors cannot keep that mask "
                          "or grid; share first, or add 'absorb' to drop them on purpose")


def share_model(model, adapter, config: ShareConfig, calibration, progress: bool = True,
                batch_size: int | None = None) -> dict:
    """Apply a `share` stage to `model` in place (see the module docstring)."""
    groups = plan_sharing(model, adapter, config)
    state = state_of(model)
    text = config.text()
    blocks = adapter.blocks(model)
    by_chunk: dict[int, list[SharedGroup]] = {}
    for g in groups:  # chunk c holds blocks c*group .. c*group + group - 1
        owner_block = int(g.members[0][len(adapter.blocks_path) + 1:].partition(".")[0])
        by_chunk.setdefault(owner_block // config.group, []).append(g)
    names = {m for g in groups for m in g.members}
    inputs = capture_first_block_inputs(model, blocks[0], calibration, batch_size)
    absorbed: list[str] = []
    for c, chunk in enumerate(tqdm(_chunks(len(blocks), config.group), desc=text, disable=not progress, leave=False)):
        start = inputs
        hessians = {}
        for index in chunk:
            linears = {n: m for n, m in adapter.block_linears(model, index).items() if n in names}
            with InputStatistics(linears, "hessian") as stats:
                outputs = run_block(blocks[index], inputs)
            hessians.update({n: stats.result(n).matrix for n in linears})
            inputs = inputs.with_hidden(outputs)
        for g in by_chunk.get(c, []):
            weights = [get_weight(model.get_submodule(m)) for m in g.members]
            H = sum(hessians[m].double() for m in g.members)
            basis, coefficients = shared_basis(weights, H, g.rank)
            factor_group_(model, g.members, basis, coefficients)
            for i, member in enumerate(g.members):
                rec = state.records.get(member)
                if rec is not None and (rec.mask is not None or rec.grid is not None):
                    rec.mask = rec.nm = rec.grid = rec.grid_params = None
                    absorbed.append(member)
                state.record(member).history.append(text)
                for factor in ["coefficient"] + (["basis"] if i == 0 else []):
                    state.record(f"{member}.{factor}").history.append(text)
        if by_chunk.get(c):  # the next group calibrates on this one's shared weights
            inputs = start
            for index in chunk:
                inputs = inputs.with_hidden(run_block(blocks[index], inputs))
    if absorbed:
        log.warning("%s absorbed the masks / grids of %d linears: their factors are dense", text, len(absorbed))
    state.sharing = SharingInfo(config.group, text, groups, absorbed)
    dense = sum(len(g.members) * g.in_features * g.out_features for g in groups)
    factors = sum(g.rank * (g.in_features + len(g.members) * g.out_features) for g in groups)
    return {"groups": len(groups), "shared_linears": len(names), "dense_params": dense, "factor_params": factors,
            "absorbed": len(absorbed)}


register_method(MethodSpec("share", "share", ShareConfig, apply_model=share_model, needs_calibration=True,
                           check=check_share))
