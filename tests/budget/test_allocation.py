"""Bit allocation under avg-bits / BOP budgets, and its recipes in progressive and regressive order."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from conftest import tiny_bench

from crescendo.api import layer_costs
from crescendo.budget.accounting import LayerCost, bop_reduction
from crescendo.budget.allocation import (
    AvgBits,
    BopReduction,
    allocate_bits,
    allocation_recipe,
    progressive_vs_regressive,
)
from crescendo.errors import ConfigError
from crescendo.recipe import parse_recipe
from crescendo.state import state_of

CHOICES = (2, 3, 4, 5, 6, 7, 8)


def _layers(sizes):
    return {f"l{i}": LayerCost.linear(f"l{i}", i_in, i_out) for i, (i_in, i_out) in enumerate(sizes)}


def _avg_bits(bits, costs):
    return sum(bits[n] * c.params for n, c in costs.items()) / sum(c.params for c in costs.values())


def test_avg_bits_budget_is_met_from_the_safe_side_and_tight():
    costs = _layers([(64, 64), (64, 128), (128, 64), (32, 32), (128, 128)])
    g = torch.Generator().manual_seed(0)
    sens = {n: {b: float(torch.rand(1, generator=g)) * c.params * 4.0**-b for b in CHOICES} for n, c in costs.items()}
    for budget in (2.0, 3.3, 4.0, 5.5, 8.0):
        bits = allocate_bits(sens, costs, CHOICES, AvgBits(budget))
        assert set(bits) == set(costs) and all(b in CHOICES for b in bits.values())
        avg = _avg_bits(bits, costs)
        assert avg <= budget + 1e-12
        total = budget * sum(c.params for c in costs.values())
        # tight: no single one-step upgrade still fits (every upgrade lowers the error here)
        spent = sum(bits[n] * c.params for n, c in costs.items())
        assert all(bits[n] == 8 or spent + c.params > total for n, c in costs.items())


def test_less_sensitive_layers_get_fewer_bits():
    costs = _layers([(64, 64)] * 4)
    trace = {"l0": 1.0, "l1": 10.0, "l2": 100.0, "l3": 1000.0}  # HAWQ-V2 traces as plain floats
    bits = allocate_bits(trace, costs, CHOICES, AvgBits(4.0))
    assert bits["l0"] <= bits["l1"] <= bits["l2"] <= bits["l3"] and bits["l0"] < bits["l3"]
    assert _avg_bits(bits, costs) == pytest.approx(4.0)


@pytest.mark.parametrize("acts", [16.0, 8.0])
def test_bop_target_is_met(acts):
    costs = {n: LayerCost.linear(n, i, o, act_bits=acts) for n, (i, o) in
             {"a": (64, 64), "b": (64, 256), "c": (256, 64)}.items()}
    sens = {"a": 5.0, "b": 1.0, "c": 0.1}
    for target in (2.0, 4.5, 8.0):
        bits = allocate_bits(sens, costs, CHOICES, BopReduction(target))
        reached = bop_reduction([replace(c, weight_bits=float(bits[n])) for n, c in costs.items()])
        assert reached >= target * (1 - 1e-9)


def test_infeasible_or_bad_budgets_are_config_errors():
    costs = _layers([(8, 8), (8, 8)])
    with pytest.raises(ConfigError, match="infeasible"):
        allocate_bits({"l0": 1.0, "l1": 1.0}, costs, CHOICES, AvgBits(1.5))
    with pytest.raises(ConfigError, match="infeasible"):
        allocate_bits({"l0": 1.0, "l1": 1.0}, costs, CHOICES, BopReduction(9.0))  # a16: at most 16 / 2 = 8x
    with pytest.raises(ConfigError):
        BopReduction(0.5)
    with pytest.raises(ConfigError):
        AvgBits(0)
    with pytest.raises(ConfigError, match="same layers"):
        allocate_bits({"l0": 1.0}, costs, CHOICES, AvgBits(4))
    with pytest.raises(ConfigError, match="no sensitivity"):
        allocate_bits({"l0": {8: 1.0}, "l1": {8: 1.0}}, costs, CHOICES, AvgBits(4))
    with pytest.raises(ConfigError):
        allocate_bits({"l0": 1.0, "l1": 1.0}, costs, (1, 4), AvgBits(4))


@pytest.fixture
def bench():
    return tiny_bench()


def _allocation(model):
    costs = {c.name: c for c in layer_costs(model)}
    trace = {n: float(i % 5 + 1) for i, n in enumerate(costs)}
    return allocate_bits(trace, costs, CHOICES, AvgBits(4.0))


def test_recipes_parse_and_the_orders_reverse_the_same_stages(bench):
    bits = _allocation(bench.model)
    assert len(set(bits.values())) >= 3
    prog = allocation_recipe(bits, "gptq", "progressive")
    regr = allocation_recipe(bits, "gptq", "regressive")
    assert prog.split(" > ") == regr.split(" > ")[::-1]
    stage_bits = [s.config.weight_bits for s in parse_recipe(prog).stages]
    assert stage_bits == sorted(set(bits.values()), reverse=True)
    assert str(parse_recipe(prog)) == prog
    with_acts = parse_recipe(allocation_recipe(bits, "rtn", "progressive", act_bits=8))
    assert all(s.config.act_bits == 8 for s in with_acts.stages)
    with pytest.raises(ConfigError):
        allocation_recipe(bits, "rtn", "sideways")
    # both orders leave every layer at its allocated bit-width
    for recipe in (allocation_recipe(bits, "rtn", "progressive"), allocation_recipe(bits, "rtn", "regressive")):
        model, _ = bench.compress(recipe)
        records = state_of(model).records
        assert {n: records[n].grid.bits for n in bits} == bits


def test_progressive_vs_regressive(bench):
    bits = _allocation(bench.model)
    rtn = progressive_vs_regressive(bench, bits, method="rtn")
    assert rtn["advantage"] == 0.0  # data-free, disjoint layers: the order cannot matter
    out = progressive_vs_regressive(bench, bits, method="gptq")
    assert out["progressive"]["recipe"].startswith(f"gptq:w{max(bits.values())},")
    assert out["regressive"]["recipe"].startswith(f"gptq:w{min(bits.values())},")
    assert out["advantage"] == out["progressive"]["metric"] - out["regressive"]["metric"]
    assert out["advantage"] != 0.0  # GPTQ calibrates later stages on earlier-quantized layers
    assert out["metric_name"] == "-perplexity"
