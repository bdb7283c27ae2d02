"""The search space of `crescendo.budget.search`: per-block (pruning, weight bits) genomes.

A genome holds one gene per decoder block, `(prune, bits)`: `prune` is a ratio on the grid
{0, 0.1, ..., upper} (MixA-Q's space, seed 004) or the string "2:4" (OBC's compound 2:4 + mixed
quantization, seed 000), `bits` one of the weight bit-width choices. Everything here is arithmetic on
shapes and genomes: costs come from the model's linear shapes (never from compressing it), and the
random operators draw from a numpy Generator the caller owns.

Costs follow `crescendo.api.layer_costs` exactly, so a decoded recipe, once compressed, reports the
same BOP and size reductions: N:M halves MACs, unstructured sparsity saves MACs only when
`count_unstructured`, storage counts the grid's shared scales and the sparsity metadata.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from torch import nn

from ..errors import ConfigError
from ..models.adapters import get_adapter, in_features
from ..recipe import Stage, parse_recipe, parse_stage
from ..types import NM
from .accounting import BASELINE_BITS, LayerCost, layer_bops, layer_cost, layer_size_bits

NM_24 = "2:4"
Prune = float | str  # a ratio on the grid, or NM_24
Gene = tuple[Prune, int]
Genome = tuple[Gene, ...]
_TOL = 1e-9  # relative slack when comparing a reduction with its target


@dataclass(frozen=True)
class Targets:
    """Minimum reductions a configuration must reach (None = no constraint)."""

    bops: float | None = None  # dense W16A16 BOPs / compressed BOPs
    size: float | None = None  # dense 16-bit storage / compressed storage

    def violated(self, bops: float, size: float) -> list[str]:
        out = []
        if self.bops is not None and bops < self.bops * (1 - _TOL):
            out.append("bops")
        if self.size is not None and size < self.size * (1 - _TOL):
            out.append("size")
        return out


def ratio_sum_range(n_blocks: int, target: float, quant_factors: Sequence[float], upper: float) -> tuple[float, float]:
    """Range of the sum of pruning ratios for uniform-sum sampling, derived from a reduction target.

    Seed 004 (App. 6.1) maps a range of relative costs [c_lo, c_hi] to a range of ratio sums with
    blocks of equal cost: sum in [(1 - c_hi) n / s, (1 - c_lo) n / s], s = the cost saved per unit
    ratio. Here a pruned weight saves all of its cost (s = 1, SparseViT's eq. 4) and a block quantized
    to b bits keeps a fraction q(b) (b/16, or b/16 * a/16 for BOPs with a-bit activations). The
    target allows a relative cost 1/T = p * q with pruning factor p = 1 - mean ratio, so the useful p
    lie between what the smallest q needs, p_hi = 1/(T q_min), and what the largest q needs,
    p_lo = 1/(T q_max) (pruning more than that only hurts), both clipped to [1 - upper, 1].
    The bounds are widened outwards to the 0.1 grid so the range is never empty.

    Example (8x BOPs, weights 2..8 bits, 16-bit activations, 6 blocks): q in [1/8, 1/2],
    p in [0.25, 1], so ratio sums in [0, 4.5].
        >>> ratio_sum_range(6, 8.0, [b / 16 for b in range(2, 9)], 0.8)
        (0.0, 4.5)
    """
    if target < 1 or not quant_factors:
        raise ConfigError(f"need a reduction target >= 1 and quantization choices, got {target}")
    p_hi = min(1.0, max(1.0 - upper, 1.0 / (target * min(quant_factors))))
    p_lo = min(p_hi, max(1.0 - upper, 1.0 / (target * max(quant_factors))))
    lo = math.floor(round(n_blocks * (1.0 - p_hi) * 10, 9)) / 10
    hi = min(math.ceil(round(n_blocks * (1.0 - p_lo) * 10, 9)) / 10, n_blocks * upper)
    return lo, hi


def _strength(p: Prune) -> tuple[float, int]:
    # sparsity first; 2:4 (50%) right after unstructured 0.5, its mask being more constrained
    return (0.5, 1) if p == NM_24 else (float(p), 0)


def prune_stage(template: str, p: Prune, include: str = "") -> Stage:
    """The pruning stage for option p: `method:p` or the template with {r} = p (a ratio or 2:4)."""
    arg = p if isinstance(p, str) else f"{p:g}"
    stage = parse_stage((template.format(r=arg) if "{r}" in template else f"{template}:{arg}") + include)
    if stage.kind != "prune":
        raise ConfigError(f"{template!r} is not a pruning method")
    return stage


def quant_stage(template: str, b: int, include: str = "") -> Stage:
    """The quantization stage for b weight bits: `method:wB` or the template with {b} = b."""
    stage = parse_stage((template.format(b=b) if "{b}" in template else f"{template}:w{b}") + include)
    grid = stage.config.weight_grid
    if stage.kind != "quantize" or grid is None or grid.bits_per_element != b:
        raise ConfigError(f"{template!r} must quantize weights to {{b}} bits (e.g. rtn, gptq or rtn:w{{b}}a{{b}})")
    return stage


class SearchSpace:
    """Block shapes of one model, the options per block, and how a genome becomes a recipe and costs.

    prune / quant are method names or templates (`wanda:{r}`, `rtn:w{b}a{b}`, `gptq:w{b},g128`);
    the include regex of each stage is added here.
    """

    def __init__(
        self,
        model: nn.Module,
        bits: Sequence[int] = (2, 3, 4, 5, 6, 7, 8),
        prune: str = "magnitude",
        quant: str = "rtn",
        upper: float = 0.8,
        resolution: float = 0.1,
        allow_nm: bool = True,
        count_unstructured: bool = False,
    ) -> None:
        adapter = get_adapter(model)
        self.blocks_path = adapter.blocks_path
        self.blocks: list[list[tuple[str, int, int]]] = []  # per block: (name, in, out)
        positions = adapter.positions(model)  # output positions per sample (convs: H_out x W_out)
        self.positions = {n: positions.get(n, 1) for n in adapter.all_block_linears(model)}
        for i in range(len(adapter.blocks(model))):
            linears = adapter.block_linears(model, i)
            self.blocks.append([(n, in_features(m), m.weight.numel() // in_features(m)) for n, m in linears.items()])
        self.bits = tuple(sorted(set(bits)))
        self.prune, self.quant = prune, quant
        self.upper, self.resolution = upper, resolution
        self.count_unstructured = count_unstructured
        self.ratios = [round(k * resolution, 10) for k in range(int(math.floor(upper / resolution + 1e-9)) + 1)]
        fits_nm = all(i % 4 == 0 for block in self.blocks for _, i, _ in block)
        self.options: list[Prune] = self.ratios + ([NM_24] if allow_nm and fits_nm else [])
        self._quant = {b: quant_stage(quant, b) for b in self.bits}  # validates the templates now
        prune_stage(prune, NM_24 if NM_24 in self.options else 0.5)
        self._cache: dict[tuple[int, Prune, int], tuple[float, float, float, float]] = {}

    # -- recipes --------------------------------------------------------------------------------
    def _include(self, blocks: list[int]) -> str:
        ids = str(blocks[0]) if len(blocks) == 1 else "(?:" + "|".join(str(i) for i in blocks) + ")"
        return f",include=^{re.escape(self.blocks_path)}\\.{ids}\\."

    def recipe(self, genome: Genome) -> str:
        """Canonical recipe: one prune stage per distinct pruning option (ratio 0: none), weakest
        first, then one quantization stage per distinct bit-width, 8 -> 2 (progressive, seed 003)."""
        if len(genome) != len(self.blocks):
            raise ConfigError(f"a genome needs one gene per block ({len(self.blocks)}), got {len(genome)}")
        by_prune: dict[Prune, list[int]] = {}
        by_bits: dict[int, list[int]] = {}
        for i, (p, b) in enumerate(genome):
            if p != 0:
                by_prune.setdefault(p, []).append(i)
            by_bits.setdefault(b, []).append(i)
        stages = [prune_stage(self.prune, p, self._include(by_prune[p])).text for p in sorted(by_prune, key=_strength)]
        stages += [quant_stage(self.quant, b, self._include(by_bits[b])).text for b in sorted(by_bits, reverse=True)]
        return str(parse_recipe(" > ".join(stages)))

    # -- costs ----------------------------------------------------------------------------------
    def act_bits(self, b: int) -> float:
        """Activation bits the quantization stage at `b` weight bits leaves (16 = not quantized)."""
        config = self._quant[b].config
        return float(config.act_bits) if config.act_bits is not None else BASELINE_BITS

    def layer_costs(self, genome: Genome, storage: bool) -> list[LayerCost]:
        """LayerCosts of the decoded configuration, as `api.layer_costs(model, storage=...)` would
        report them after compressing: storage bits include the grid's shared scales."""
        return [c for i, (p, b) in enumerate(genome) for c in self._block_costs(i, p, b, storage)]

    def _block_costs(self, i: int, p: Prune, b: int, storage: bool) -> list[LayerCost]:
        grid = self._quant[b].config.weight_grid
        act = self.act_bits(b)
        out = []
        for name, n_in, n_out in self.blocks[i]:
            w_bits = grid.avg_bits(n_in) if storage else float(b)
            at = self.positions[name]
            if p == NM_24:
                out.append(layer_cost(name, n_in, n_out, at, weight_bits=w_bits, act_bits=act, nm=NM(2, 4)))
            else:
                pruned = int(round(n_in * n_out * float(p)))  # the pruners' exact count (kernels.pruning)
                out.append(layer_cost(name, n_in, n_out, at, weight_bits=w_bits, act_bits=act,
                                      sparsity=pruned / (n_in * n_out)))
        return out

    def _block(self, i: int, p: Prune, b: int) -> tuple[float, float, float, float]:
        """(BOPs, dense BOPs, size bits, dense size bits) of block i under gene (p, b), cached."""
        key = (i, p, b)
        if key not in self._cache:
            arith, stored = self._block_costs(i, p, b, False), self._block_costs(i, p, b, True)
            self._cache[key] = (
                sum(layer_bops(c, count_unstructured=self.count_unstructured) for c in arith),
                sum(layer_bops(c.dense_baseline()) for c in arith),
                sum(layer_size_bits(c) for c in stored),
                sum(layer_size_bits(c.dense_baseline()) for c in stored),
            )
        return self._cache[key]

    def reductions(self, genome: Genome) -> tuple[float, float]:
        """(BOP reduction, size reduction) of the configuration against the dense W16A16 model."""
        parts = [self._block(i, p, b) for i, (p, b) in enumerate(genome)]
        return sum(x[1] for x in parts) / sum(x[0] for x in parts), sum(x[3] for x in parts) / sum(x[2] for x in parts)

    def check_feasible(self, targets: Targets) -> None:
        """ConfigError unless each target is reachable: per block, the cheapest gene for that target."""
        every = [(p, b) for p in self.options for b in self.bits]
        for kind, target, col in (("BOP", targets.bops, 0), ("size", targets.size, 2)):
            if target is None:
                continue
            cheapest = []
            for i in range(len(self.blocks)):
                cost = {gene: self._block(i, *gene)[col] for gene in every}
                cheapest.append(min(every, key=cost.__getitem__))
            best = self.reductions(tuple(cheapest))[0 if kind == "BOP" else 1]
            if best < target * (1 - _TOL):
                raise ConfigError(f"{kind} reduction target {target:g} is infeasible: at most {best:.3g} is reachable "
                                  f"with bits {list(self.bits)} and pruning options up to {self.options[-1]}")

    # -- random operators -----------------------------------------------------------------------
    def repair(self, genome: Genome, targets: Targets, rng: np.random.Generator) -> Genome:
        """Lower the bits of random blocks one choice at a time until every target is met (so the
        result lands just on the safe side); when every block is at the lowest bits, strengthen the
        pruning of a random block by the smallest step that lowers the violated cost."""
        genes = list(genome)
        for _ in range(len(genes) * (len(self.bits) + len(self.options)) + 1):
            violated = targets.violated(*self.reductions(tuple(genes)))
            if not violated:
                return tuple(genes)
            lowerable = [i for i, (_, b) in enumerate(genes) if b > self.bits[0]]
            if lowerable:
                i = lowerable[int(rng.integers(len(lowerable)))]
                p, b = genes[i]
                genes[i] = (p, self.bits[self.bits.index(b) - 1])
                continue
            col = 0 if violated[0] == "bops" else 2
            moves = []
            for i, (p, b) in enumerate(genes):
                now = self._block(i, p, b)[col]
                cheaper = [(self._block(i, q, b)[col], k) for k, q in enumerate(self.options)]
                cheaper = [c for c in cheaper if c[0] < now * (1 - _TOL)]
                if cheaper:
                    moves.append((i, self.options[max(cheaper)[1]]))
            if not moves:
                break
            i, q = moves[int(rng.integers(len(moves)))]
            genes[i] = (q, genes[i][1])
        raise ConfigError(f"could not repair a configuration to meet {targets}")

    def sample(self, rng: np.random.Generator, ratios: Sequence[float], nm_probability: float) -> Genome:
        """Genes from sampled ratios (each becomes 2:4 with `nm_probability`) and uniform bits."""
        nm = NM_24 in self.options
        prune = [NM_24 if nm and rng.random() < nm_probability else float(r) for r in ratios]
        bits = [self.bits[int(rng.integers(len(self.bits)))] for _ in ratios]
        return tuple(zip(prune, bits))

    def mutate(self, genome: Genome, rng: np.random.Generator, rate: float) -> Genome:
        """Each gene changes with probability `rate`: its pruning (to a neighbouring ratio, or to /
        from 2:4) or its bits (one choice up or down), with equal odds."""
        out = []
        for p, b in genome:
            if rng.random() < rate:
                if rng.random() < 0.5:
                    if p == NM_24:
                        near = [r for r in self.ratios if abs(r - 0.5) < self.resolution * 1.5]
                    else:
                        near = [r for r in self.ratios if 0 < abs(r - float(p)) < self.resolution * 1.5]
                        near += [NM_24] if NM_24 in self.options else []
                    p = near[int(rng.integers(len(near)))] if near else p
                else:
                    k = self.bits.index(b)
                    near = [self.bits[j] for j in (k - 1, k + 1) if 0 <= j < len(self.bits)]
                    b = near[int(rng.integers(len(near)))] if near else b
            out.append((p, b))
        return tuple(out)

    @staticmethod
    def crossover(a: Genome, b: Genome, rng: np.random.Generator) -> Genome:
        """Uniform crossover: each block's gene from either parent with probability 1/2."""
        pick = rng.random(len(a)) < 0.5
        return tuple(x if keep else y for x, y, keep in zip(a, b, pick))
