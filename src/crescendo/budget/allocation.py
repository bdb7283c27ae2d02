"""Mixed-precision bit allocation under a budget, and its application in two orders.

`allocate_bits` chooses one bit-width per layer from per-layer sensitivities (HAWQ-V2 traces or the
layer-wise output-error proxy of `crescendo.budget.sensitivity`) so that an average-bits or a BOP
budget is met (OBC's "mixed quantization ... for various BOP reduction targets", seed 000).

`allocation_recipe` turns an allocation into a recipe with one stage per bit-width. Seed 003 (Section
5.4, Figure 10, App. C) treats each bit-width as its own compression method: the same final
allocation applied 8 -> 2 bits ("progressive", weakest first, the Progressive Intensity Hypothesis)
or 2 -> 8 bits ("regressive"). With a calibrated quantizer (GPTQ) later stages see the layers earlier
stages quantized, so the two orders give different models; `progressive_vs_regressive` measures
A(prog -> regr) = M(prog) - M(regr).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from ..analysis.metrics import order_advantage
from ..errors import ConfigError
from ..recipe import parse_recipe
from ..types import check_bits
from .accounting import LayerCost, layer_bops

DEFAULT_CHOICES = (2, 3, 4, 5, 6, 7, 8)
_SLACK = 1e-9  # relative tolerance on the budget: float sums must not reject an exact fit


@dataclass(frozen=True)
class AvgBits:
    """Budget: the parameter-weighted average of the weight bit-widths is at most `bits`."""

    bits: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.bits) and self.bits > 0):
            raise ConfigError(f"average-bits budget must be a positive number, got {self.bits}")


@dataclass(frozen=True)
class BopReduction:
    """Budget: dense W16A16 BOPs / compressed BOPs is at least `target` (OBC's BOP reduction target).

    Activation bits, sparsity and N:M patterns are taken from the LayerCosts as given; only the weight
    bits are chosen.
    """

    target: float
    count_unstructured: bool = False  # see accounting.effective_macs

    def __post_init__(self) -> None:
        if not (math.isfinite(self.target) and self.target >= 1.0):
            raise ConfigError(f"BOP reduction target must be a number >= 1, got {self.target}")


Budget = AvgBits | BopReduction


def _budget_costs(costs: Mapping[str, LayerCost], choices: Sequence[int], budget: Budget):
    """Per-layer cost of each bit choice, and the limit their sum must not exceed."""
    if isinstance(budget, AvgBits):
        table = {n: {b: float(c.params * b) for b in choices} for n, c in costs.items()}
        return table, budget.bits * sum(c.params for c in costs.values())
    if isinstance(budget, BopReduction):
        flag = budget.count_unstructured
        table = {n: {b: layer_bops(replace(c, weight_bits=float(b)), count_unstructured=flag) for b in choices}
                 for n, c in costs.items()}
        dense = sum(layer_bops(c.dense_baseline()) for c in costs.values())
        return table, dense / budget.target
    raise ConfigError(f"budget must be AvgBits or BopReduction, got {budget!r}")


def _error_table(sensitivity: Mapping[str, Any], costs: Mapping[str, LayerCost], choices: Sequence[int]):
    """name -> {bits: expected error}. A plain float s_l (a HAWQ-V2 average trace) becomes
    s_l * n_l * 4^-b: the squared error of b-bit uniform rounding falls by 4 per extra bit (step / 2),
    so Omega_l(b) = Tr(H_l)/n_l * ||Q_b(W_l) - W_l||^2 up to one constant shared by all layers."""
    if set(sensitivity) != set(costs):
        extra = sorted(set(sensitivity) ^ set(costs))
        raise ConfigError(f"sensitivity and costs must name the same layers; they differ on {extra[:3]}")
    table = {}
    for name, s in sensitivity.items():
        if isinstance(s, Mapping):
            missing = [b for b in choices if b not in s]
            if missing:
                raise ConfigError(f"layer {name!r}: no sensitivity for bit-widths {missing}")
            table[name] = {b: float(s[b]) for b in choices}
        else:
            table[name] = {b: float(s) * costs[name].params * 4.0 ** (-b) for b in choices}
        if any(not math.isfinite(v) for v in table[name].values()):
            raise ConfigError(f"layer {name!r}: sensitivities must be finite")
    return table


def allocate_bits(
    sensitivity: Mapping[str, Mapping[int, float]] | Mapping[str, float],
    costs: Mapping[str, LayerCost],
    choices: Sequence[int] = DEFAULT_CHOICES,
    budget: Budget = AvgBits(4.0),
) -> dict[str, int]:
    """One weight bit-width per layer that meets `budget` with a small total sensitivity.

    Algorithm (greedy on error per unit of budget, a Lagrangian heuristic for this multiple-choice
    knapsack): start with every layer at the largest choice; while the budget is exceeded, lower by one
    choice the layer whose step costs the least error increase per unit of budget saved (bits x params
    for AvgBits, BOPs for BopReduction); then spend the slack left below the limit on the upgrades that
    remove the most error per unit of budget and still fit. The result never exceeds the budget (the
    safe side) and stops one step short of it at most. Ties go to the layer listed first.

    Parameters:
        sensitivity: per layer either {bits: error} (e.g. `output_error_proxy`, `hawq_v2_sensitivity`)
            or one float (a HAWQ-V2 average trace, read as error s * n * 4^-b).
        costs: per layer its LayerCost (shapes, activation bits, sparsity); weight bits are replaced.
        choices: allowed bit-widths (each in 2..8).
        budget: AvgBits(b) or BopReduction(target).

    Raises:
        ConfigError: when even the smallest choice everywhere misses the budget, or on bad input.

    Example:
        >>> costs = {n: LayerCost.linear(n, 8, 8) for n in "ab"}
        >>> allocate_bits({"a": 100.0, "b": 1.0}, costs, budget=AvgBits(5))
        {'a': 7, 'b': 3}
    """
    choices = sorted({check_bits(b) for b in choices})
    if not choices:
        raise ConfigError("need at least one bit-width choice")
    if not costs:
        raise ConfigError("need at least one layer to allocate bits to")
    error = _error_table(sensitivity, costs, choices)
    cost, limit = _budget_costs(costs, choices, budget)
    limit *= 1.0 + _SLACK
    lowest = sum(cost[n][choices[0]] for n in costs)
    if lowest > limit:
        raise ConfigError(f"budget {budget} is infeasible: {choices[0]} bits everywhere still misses it")
    index = {n: len(choices) - 1 for n in costs}  # position in `choices`
    total = sum(cost[n][choices[-1]] for n in costs)
    while total > limit:
        best, best_rate = None, math.inf
        for n, i in index.items():
            if i == 0:
                continue
            saved = cost[n][choices[i]] - cost[n][choices[i - 1]]
            if saved <= 0:
                continue
            rate = (error[n][choices[i - 1]] - error[n][choices[i]]) / saved
            if rate < best_rate:
                best, best_rate = n, rate
        assert best is not None  # lowest <= limit guarantees a move while total > limit
        total -= cost[best][choices[index[best]]] - cost[best][choices[index[best] - 1]]
        index[best] -= 1
    while True:  # fill the slack: best error reduction per unit of budget among upgrades that fit
        best, best_rate = None, 0.0
        for n, i in index.items():
            if i == len(choices) - 1:
                continue
            extra = cost[n][choices[i + 1]] - cost[n][choices[i]]
            gain = error[n][choices[i]] - error[n][choices[i + 1]]
            if total + extra > limit or gain <= 0:
                continue
            rate = gain / extra if extra > 0 else math.inf
            if rate > best_rate:
                best, best_rate = n, rate
        if best is None:
            break
        total += cost[best][choices[index[best] + 1]] - cost[best][choices[index[best]]]
        index[best] += 1
    return {n: choices[i] for n, i in index.items()}


Order = Literal["progressive", "regressive"]


def allocation_recipe(
    bits_by_layer: Mapping[str, int],
    method: str = "rtn",
    order: Order = "progressive",
    act_bits: int | None = None,
) -> str:
    """A recipe with one `method:wB` stage per distinct bit-width, each including exactly its layers.

    Stages go 8 -> 2 bits for "progressive" (weakest first) and 2 -> 8 for "regressive" (seed 003,
    Figure 10); the final bit-width of every layer is the same in both. Include patterns are
    `^(?:name1|name2)$` over re.escape'd full module names. The returned string is canonical
    (`str(parse_recipe(...))`), so it is what `crescendo compress --recipe` accepts.

    Example:
        >>> print(allocation_recipe({"h.0.up": 4, "h.0.down": 8, "h.1.up": 4}))
        rtn:w8,include=^(?:h\\.0\\.down)$ > rtn:w4,include=^(?:h\\.0\\.up|h\\.1\\.up)$
    """
    if order not in ("progressive", "regressive"):
        raise ConfigError(f"order must be 'progressive' or 'regressive', got {order!r}")
    if not bits_by_layer:
        raise ConfigError("need at least one layer to build an allocation recipe")
    groups: dict[int, list[str]] = {}
    for name, bits in bits_by_layer.items():
        groups.setdefault(check_bits(bits), []).append(name)
    acts = "" if act_bits is None else f"a{check_bits(act_bits, 'activation bits')}"
    stages = []
    for bits in sorted(groups, reverse=order == "progressive"):
        pattern = "^(?:" + "|".join(re.escape(n) for n in groups[bits]) + ")$"
        stages.append(f"{method}:w{bits}{acts},include={pattern}")
    return str(parse_recipe(" > ".join(stages)))


def progressive_vs_regressive(
    bench: Any, bits_by_layer: Mapping[str, int], method: str = "gptq", act_bits: int | None = None
) -> dict[str, Any]:
    """Apply one allocation in both orders on copies of the bench's model and compare (003, Figure 10).

    `bench` is a Workbench (or anything with `compress(recipe) -> (model, result)` and `metric(model)`,
    M higher is better). Returns {"progressive": {...}, "regressive": {...}, "advantage": A} where each
    order holds its recipe and metric, and A(prog -> regr) = M(prog) - M(regr) (Definition 4 of 003).

    Example:
        >>> out = progressive_vs_regressive(bench, allocate_bits(err, costs, budget=AvgBits(4)))  # doctest: +SKIP
        >>> out["advantage"]  # > 0: progressive (8 -> 2) wins, as the hypothesis predicts  # doctest: +SKIP
    """
    out: dict[str, Any] = {"metric_name": getattr(bench, "metric_name", "metric")}
    for order in ("progressive", "regressive"):
        recipe = allocation_recipe(bits_by_layer, method=method, order=order, act_bits=act_bits)
        model, _ = bench.compress(recipe)
        out[order] = {"recipe": recipe, "metric": float(bench.metric(model))}
        del model
    out["advantage"] = order_advantage(out["progressive"]["metric"], out["regressive"]["metric"])
    return out
