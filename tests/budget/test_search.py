"""Evolutionary (pruning, bits) search on a tiny LLaMA: budgets, reproducibility, store rows, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import TINY_PROTOCOL_ARGS, tiny_bench

from crescendo.budget.genome import NM_24, SearchSpace, Targets, ratio_sum_range
from crescendo.budget.search import SearchConfig, SearchPoint, pareto_front, plot_pareto, search
from crescendo.cli import main
from crescendo.errors import ConfigError, RecipeError
from crescendo.recipe import parse_recipe
from crescendo.store import ResultStore

TARGET = 4.0  # 16-bit activations: every block <= 4 bits, or 2:4 with <= 8 bits


@pytest.fixture
def bench():
    return tiny_bench()


def test_search_is_reproducible_meets_the_target_and_stores_every_row(bench, tmp_path):
    config = SearchConfig(target_bops=TARGET, generations=2, population=4, seed=7)
    with ResultStore(tmp_path / "runs.sqlite") as store:
        first = search(bench, config, store=store)
        rows = store.rows(kind="search")
    second = search(bench, config)
    assert first.best.recipe == second.best.recipe and first.best.metric == second.best.metric
    assert [p.recipe for p in first.evaluated] == [p.recipe for p in second.evaluated]
    assert len(first.evaluated) >= 4 and len({p.recipe for p in first.evaluated}) == len(first.evaluated)
    assert all(p.bop_reduction >= TARGET * (1 - 1e-9) for p in first.evaluated)
    assert {r.recipe for r in rows} == {p.recipe for p in first.evaluated}
    for row in rows:
        m = row.metrics
        assert m.perplexity is not None and m.bop_reduction is not None and m.size_reduction is not None
        assert row.extra["sampler"] == "uniform-sum" and row.extra["seed"] == 7
        assert row.extra["generation"] in (0, 1, 2) and len(row.extra["genome"]) == 2
        assert row.metrics.bop_reduction >= TARGET * (1 - 1e-9)
    assert first.best.metric == max(p.metric for p in first.evaluated)
    assert first.best in first.pareto


def test_best_recipe_reproduces_its_metric_and_costs(bench):
    result = search(bench, SearchConfig(target_bops=TARGET, generations=1, population=3, seed=1))
    best = result.best
    assert str(parse_recipe(best.recipe)) == best.recipe  # what `crescendo compress --recipe` accepts
    model, compressed = bench.compress(best.recipe)
    assert bench.metric(model) == best.metric
    # the costs computed from the genome are the ones the compressed model reports
    assert compressed.summary.bop_reduction == pytest.approx(best.bop_reduction, rel=1e-6)
    assert compressed.summary.size_reduction == pytest.approx(best.size_reduction, rel=1e-6)


def test_genome_costs_match_the_compressed_model_for_every_option(bench):
    space = SearchSpace(bench.model)
    assert space.options[-1] == NM_24 and space.options[:3] == [0.0, 0.1, 0.2]
    for genome in [((0.0, 8), (NM_24, 2)), ((0.3, 4), (0.8, 3)), ((NM_24, 5), (0.5, 6))]:
        recipe = space.recipe(genome)
        _, compressed = bench.compress(recipe)
        bops, size = space.reductions(genome)
        assert compressed.summary.bop_reduction == pytest.approx(bops, rel=1e-6)
        assert compressed.summary.size_reduction == pytest.approx(size, rel=1e-6)
    recipe = space.recipe(((0.0, 8), (0.3, 4)))
    assert recipe == ("magnitude:0.3,include=^model\\.layers\\.1\\. > rtn:w8,include=^model\\.layers\\.0\\. > "
                      "rtn:w4,include=^model\\.layers\\.1\\.")  # ratio 0: no prune stage; bits 8 -> 2
    assert "(?:0|1)" in space.recipe(((0.5, 4), (0.5, 4)))  # blocks sharing a setting share a stage


def test_repair_lands_on_the_safe_side(bench):
    space = SearchSpace(bench.model)
    rng = np.random.default_rng(0)
    for targets in (Targets(bops=6.0), Targets(size=6.0), Targets(bops=3.0, size=3.0), Targets(bops=10.0)):
        genome = space.repair(((0.0, 8), (0.0, 8)), targets, rng)
        bops, size = space.reductions(genome)
        assert not targets.violated(bops, size)
    assert space.repair(((0.0, 8), (0.0, 8)), Targets(bops=10.0), rng)[0][0] == NM_24  # 2-bit alone gives 8x
    with pytest.raises(ConfigError, match="infeasible"):
        space.check_feasible(Targets(bops=1000.0))


def test_ratio_sum_range_follows_the_target():
    assert ratio_sum_range(6, 8.0, [b / 16 for b in range(2, 9)], 0.8) == (0.0, 4.5)
    # with activations at the weight bits the quantization alone reaches more, pruning needs less
    assert ratio_sum_range(6, 8.0, [(b / 16) ** 2 for b in range(2, 9)], 0.8) == (0.0, 3.0)
    lo, hi = ratio_sum_range(6, 32.0, [b / 16 for b in range(2, 9)], 0.8)
    assert (lo, hi) == (4.5, 4.8)  # 2 bits give 8x: pruning must keep 1/4 (mean ratio 0.75) or less


@pytest.mark.parametrize("kwargs, message", [
    ({"target_bops": 0.5}, ">= 1"),
    ({"target_bops": 4, "population": 1}, "population"),
    ({"target_bops": 4, "generations": 0}, "generations"),
    ({}, "target"),
    ({"target_bops": 4, "sampler": "sobol"}, "sampler"),
    ({"target_bops": 4, "bits": (1, 4)}, "bit-width"),
])
def test_bad_config_is_a_config_error(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        SearchConfig(**kwargs)


def test_bad_method_templates_fail_before_any_model_is_loaded():
    with pytest.raises(RecipeError):
        SearchConfig(target_bops=4, quant="magnitude")
    with pytest.raises(RecipeError):
        SearchConfig(target_bops=4, prune="rtn")


def test_pareto_front_and_plot_compare_samplers(bench, tmp_path):
    pts = [SearchPoint(f"r{i}", (), m, -m, b, b, 0) for i, (m, b) in enumerate([(-10, 4), (-12, 8), (-13, 6)])]
    assert [p.recipe for p in pareto_front(pts)] == ["r0", "r1"]
    uniform = search(bench, SearchConfig(target_bops=TARGET, generations=1, population=2, sampler="uniform"))
    assert all(p.bop_reduction >= TARGET * (1 - 1e-9) for p in uniform.evaluated)
    path = plot_pareto({"uniform": uniform, "hand-made": pts}, tmp_path / "front.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_search_json(saved_tiny, capsys, tmp_path):
    model_dir, protocol = saved_tiny
    code = main(["search", "--model", str(model_dir), "--protocol", protocol, *TINY_PROTOCOL_ARGS, "--target-bops", "4",
                 "--generations", "1", "--population", "2", "--seed", "3", "--store", str(tmp_path / "s.sqlite"),
                 "--plot", str(tmp_path / "front.png"), "--json", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    result = json.loads(out)
    for key in ("recipe", "perplexity", "bop_reduction", "size_reduction", "pareto"):
        assert key in result
    assert result["bop_reduction"] >= 4 and result["perplexity"] > 1 and isinstance(result["pareto"], list)
    parse_recipe(result["recipe"])
    assert (tmp_path / "front.png").is_file()
    with ResultStore(tmp_path / "s.sqlite") as store:
        assert result["recipe"] in {r.recipe for r in store.rows(kind="search")}
    code = main(["search", "--model", str(model_dir), "--protocol", protocol, *TINY_PROTOCOL_ARGS, "--target-bops", "4",
                 "--generations", "1", "--population", "2", "--sampler", "uniform", "--acts", "--quiet"])
    text = capsys.readouterr().out
    assert code == 0 and "perplexity" in text and "BOP reduction" in text
    best = parse_recipe(text.split("best recipe: ")[1].splitlines()[0])
    quant = [s.config for s in best.stages if s.kind == "quantize"]
    assert quant and all(c.act_bits == c.weight_bits for c in quant)  # --acts: activations at the weight bits


@pytest.mark.parametrize("argv, message", [
    (["--target-bops", "0.5"], ">= 1"),
    (["--target-bops", "4", "--population", "1"], "population"),
    (["--target-bops", "4", "--generations", "0"], "generations"),
])
def test_cli_search_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    code = main(["search", *argv])
    out = capsys.readouterr()
    assert code == 2 and message in out.err and out.err.count("\n") == 1 and out.out == ""
