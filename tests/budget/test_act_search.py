"""MixA-Q's search space on a ViT: recipes, equivalent bits (eq. 5), samplers, Pareto survivors."""

from __future__ import annotations

import pytest
import torch

from crescendo.budget.act_search import ActPoint, ActSearchConfig, ActSpace, front, pareto_ranks, search_act_ratios
from crescendo.errors import ConfigError
from crescendo.models.vision import ViTMiniConfig, build_vision_model
from crescendo.recipe import parse_recipe


@pytest.fixture(scope="module")
def space():
    torch.manual_seed(0)
    vit = build_vision_model(ViTMiniConfig(image_size=8, patch_size=2, dim=16, depth=3, heads=2, mlp_dim=32)).eval()
    return ActSpace(vit, 4, 2)


def test_costs_recipes_and_equivalent_bits(space):
    # per block: 16 tokens x (4 x 16 x 16 + 2 x 16 x 32) MACs; C: patch embedding 16 x 4 x 16 + head 16 x 10
    assert space.gmacs == [16 * (4 * 256 + 2 * 512) / 1e9] * 3
    assert space.fixed_gmacs == pytest.approx((16 * 4 * 16 + 16 * 10) / 1e9)
    assert space.eq_bits((0.0, 0.0, 0.0)) == 4.0
    g, c = space.gmacs[0], space.fixed_gmacs
    assert space.eq_bits((0.8, 0.0, 0.4)) == pytest.approx(4 * ((0.6 + 1 + 0.8) * g + c) / (3 * g + c))
    recipe = space.recipe((0.2, 0.0, 0.2))
    assert recipe == ("mixact:a4,low=2,ratio=0,include=^blocks\\.1\\. > "
                      "mixact:a4,low=2,ratio=0.2,include=^blocks\\.(?:0|2)\\.")
    assert str(parse_recipe(recipe)) == recipe
    assert space.sum_range((0.65, 0.95)) == pytest.approx((0.3, 2.1))


def test_pareto_ranks_by_hand():
    pts = [ActPoint("a", (0.0,), 90.0, 4.0, 0), ActPoint("b", (0.1,), 88.0, 3.5, 0),
           ActPoint("c", (0.2,), 87.0, 3.8, 0), ActPoint("d", (0.3,), 80.0, 3.0, 0)]
    assert pareto_ranks(pts) == [0, 0, 1, 0]
    assert [p.recipe for p in front(pts)] == ["d", "b", "a"]


def test_search_evaluates_each_configuration_once_and_samplers_differ(space):
    calls = []

    def evaluate(recipe: str) -> float:  # a deterministic fitness: fewer low-bit tokens score higher
        calls.append(recipe)
        return 90.0 - sum(float(x.split(",")[0]) for x in recipe.split("ratio=")[1:])

    by = {}
    for sampler in ("uniform-sum", "uniform"):
        points = search_act_ratios(space, ActSearchConfig(sampler=sampler, population=6, generations=2, seed=3),
                                   evaluate)
        assert len({p.genome for p in points}) == len(points) and {p.generation for p in points} <= {0, 1, 2}
        assert all(r in space.options for p in points for r in p.genome)
        by[sampler] = [p.genome for p in points if p.generation == 0]
    lo, hi = space.sum_range((0.65, 0.95))
    assert all(lo - 1e-9 <= sum(g) <= hi + 1e-9 for g in by["uniform-sum"])
    assert by["uniform-sum"] != by["uniform"] and len(calls) == len(set(calls))
    with pytest.raises(ConfigError):
        ActSearchConfig(sampler="grid")
