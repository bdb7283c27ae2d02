"""Workbench.compress_tree: every prefix shared by several recipes is computed once, and the result is
what compressing each recipe on its own gives."""

from __future__ import annotations

import torch
from conftest import tiny_bench

from crescendo.recipe import parse_recipe
from crescendo.workflow import Workbench

RECIPES = ["magnitude:0.5", "rtn:w4", "magnitude:0.5 > rtn:w4", "rtn:w4 > magnitude:0.5", "magnitude:0.5 > rtn:w8"]


class CountingBench(Workbench):
    applied: list[str]

    def compress_inplace(self, model, recipe):
        self.applied = getattr(self, "applied", []) + [str(s) for s in parse_recipe(recipe).stages]
        return super().compress_inplace(model, recipe)


def weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_shared_prefixes_run_once_and_give_what_each_recipe_gives_alone():
    bench = tiny_bench(CountingBench)
    runs = list(bench.compress_tree(RECIPES))
    assert [str(r.recipe) for r in runs] == [str(parse_recipe(r)) for r in RECIPES]  # the order given
    # magnitude:0.5 and rtn:w4 once each as singles, then only each composed recipe's last stage
    assert sorted(bench.applied) == sorted(["magnitude:0.5", "rtn:w4", "rtn:w4", "magnitude:0.5", "rtn:w8"])
    assert [s["stage"] for s in runs[2].stages] == ["magnitude:0.5", "rtn:w4"]
    assert runs[2].compress_seconds == sum(s["seconds"] for s in runs[2].stages)
    for run in runs:
        alone, _ = tiny_bench().compress(run.recipe)
        tree, ref = weights(run.model), weights(alone)
        assert all(torch.equal(tree[n], ref[n]) for n in ref), run.recipe


def test_a_yielded_model_is_the_callers_to_change():
    bench = tiny_bench()
    runs = bench.compress_tree(["magnitude:0.5", "magnitude:0.5 > rtn:w4"])
    first = next(runs)
    with torch.no_grad():
        for p in first.model.parameters():
            p.zero_()  # must not leak into the cached prefix the next recipe starts from
    second = next(runs)
    alone, _ = tiny_bench().compress("magnitude:0.5 > rtn:w4")
    assert all(torch.equal(a, b) for a, b in zip(weights(second.model).values(), weights(alone).values()))
    assert any(p.abs().sum() > 0 for p in second.model.parameters())


def test_interleaved_mode_compresses_every_recipe_whole():
    bench = tiny_bench(CountingBench, mode="interleaved")
    runs = list(bench.compress_tree(["magnitude:0.5", "magnitude:0.5 > rtn:w4"]))
    assert bench.applied == ["magnitude:0.5", "magnitude:0.5", "rtn:w4"]  # no prefix reused
    assert [s["stage"] for s in runs[1].stages] == ["magnitude:0.5", "rtn:w4"]


def test_a_prefix_is_kept_across_recipes_that_do_not_use_it():
    bench = tiny_bench(CountingBench)
    runs = list(bench.compress_tree(["magnitude:0.5", "rtn:w4", "rtn:w8", "magnitude:0.5 > rtn:w8"]))
    assert sorted(bench.applied) == sorted(["magnitude:0.5", "rtn:w4", "rtn:w8", "rtn:w8"])  # magnitude once
    alone, _ = tiny_bench().compress("magnitude:0.5 > rtn:w8")
    assert all(torch.equal(a, b) for a, b in zip(weights(runs[3].model).values(), weights(alone).values()))
