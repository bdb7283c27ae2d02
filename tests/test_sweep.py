"""Sweep grids: several quantizers and a shared prefix reuse the expensive first stages."""

from __future__ import annotations

import torch
from conftest import tiny_bench

from crescendo.recipe import parse_recipe
from crescendo.store import ResultStore
from crescendo.sweep import grid_tasks, run_sweep
from crescendo.workflow import Workbench


class CountingBench(Workbench):
    """Counts every stage application so the test can see what was shared."""

    applied: list[str]

    def compress_inplace(self, model, recipe, *args, **kwargs):
        self.applied = getattr(self, "applied", []) + [str(s) for s in parse_recipe(recipe).stages]
        return super().compress_inplace(model, recipe, *args, **kwargs)


def test_several_quantizers_share_the_pruning_runs(tmp_path):
    tasks = grid_tasks("sparsegpt", [0.5], ["rtn:w{b}a{b}", "rtn:w{b}"], [4, 8])
    recipes = [t.recipe for t in tasks]
    assert len(recipes) == len(set(recipes)) == 1 + 1 + 2 * (2 + 2 * 2)  # dense, P, per quantizer: 2 Q + 4 orders
    bench = tiny_bench(CountingBench)
    with ResultStore(tmp_path / "s.sqlite") as store:
        counts = run_sweep(lambda: bench, "tiny", "tiny", tasks, store)
        assert counts["computed"] == len(tasks)
        assert {r.recipe for r in store.rows()} == set(recipes)
    # sparsegpt:0.5 runs once for P alone and all four P > Q rows; once more after each of the 4 quantizers
    assert bench.applied.count("sparsegpt:0.5") == 1 + 4


def test_prefix_starts_every_compressed_recipe_and_is_shared(tmp_path):
    tasks = grid_tasks("magnitude", [0.5], "rtn", [4], prefix="rotate")
    assert [t.recipe for t in tasks] == ["dense", "rotate > rtn:w4", "rotate > magnitude:0.5",
                                         "rotate > magnitude:0.5 > rtn:w4", "rotate > rtn:w4 > magnitude:0.5"]
    assert all(t.extra["prefix"] == "rotate" for t in tasks[1:])
    bench = tiny_bench(CountingBench)
    with ResultStore(tmp_path / "s.sqlite") as store:
        run_sweep(lambda: bench, "tiny", "tiny", tasks, store)
        rows = {r.recipe: r for r in store.rows()}
    assert bench.applied.count("rotate") == 2  # once per group (Q first, P first), not once per row
    assert bench.applied.count("magnitude:0.5") == 2  # P alone shares with P > Q; once after Q
    assert rows["rotate > magnitude:0.5"].metrics.sparsity > 0.45


def test_measure_reuses_stored_rows(tmp_path):
    from crescendo.sweep import measure

    bench = tiny_bench(CountingBench)
    with ResultStore(tmp_path / "s.sqlite") as store:
        first = measure(bench, "magnitude:0.5 >  rtn:w4", store)
        again = measure(bench, "magnitude:0.5 > rtn:w4", store)
        assert bench.applied == ["magnitude:0.5", "rtn:w4"]  # computed once, canonical spelling shared
        assert again.key == first.key and again.metrics == first.metrics
        assert measure(bench, "dense", store, kind="dense").metrics.perplexity > 1
        assert len(store) == 2


def test_report_keeps_rotated_and_plain_experiments_apart(tmp_path):
    from crescendo.report.data import group_rows

    bench = tiny_bench()
    with ResultStore(tmp_path / "s.sqlite") as store:
        for prefix in ("", "rotate"):
            run_sweep(lambda: bench, "tiny", "tiny", grid_tasks("magnitude", [0.5], "rtn", [4], prefix=prefix), store)
        grouping = group_rows(store.rows())
    assert [e.key.prefix for e in grouping.experiments] == ["", "rotate"] and not grouping.skipped
    plain, rotated = grouping.experiments
    for exp in grouping.experiments:
        assert set(exp.prune) == {0.5} and set(exp.quant) == {4} and len(exp.orders) == 2
    assert plain.prune[0.5].perplexity != rotated.prune[0.5].perplexity  # each its own single
    assert "after rotate" in rotated.key.label and plain.key.slug != rotated.key.slug


def test_multistage_rows_only_for_chosen_bits_and_quantizer():
    tasks = grid_tasks("sparsegpt", [0.5], ["rtn:w{b}a{b}", "rtn:w{b}"], [4, 8], multistage_total=0.5,
                       multistage_step=0.25, multistage_bits=[4], multistage_quant=["rtn:w{b}"])
    staged = [t.recipe for t in tasks if t.kind == "multistage"]
    assert staged == ["sparsegpt:0.25 > rtn:w4 > sparsegpt:0.25"]  # the endpoints are the order rows


def test_bfloat16_stages_calibrate_on_the_weights_earlier_stages_wrote():
    """Autocast's cast cache once kept the pre-compression bf16 copies alive for the whole compress
    call: a second calibrated stage then saw the dense model (and propagation inside a stage did too)."""
    bench = tiny_bench(dtype="bfloat16")
    down = "include=^(?:model\\.layers\\.0\\.mlp\\.down_proj)$"
    gate_up = "include=^(?:model\\.layers\\.0\\.mlp\\.(?:gate|up)_proj)$"
    alone, _ = bench.compress(f"gptq:w8,{down}")
    after, _ = bench.compress(f"gptq:w3,{gate_up} > gptq:w8,{down}")
    w = lambda m: m.model.layers[0].mlp.down_proj.weight
    assert not torch.equal(w(alone), w(after))
