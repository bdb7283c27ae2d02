"""Replay the order predictors on stored order sweeps and score them cell by cell.

Every cell of every experiment in the given stores (both orders of one pruner ratio and one
quantizer bit-width measured) becomes a decision per predictor: the predictor asks for what it
needs; stored measurements are served (and counted in its cost as if measured), data-free looks
at the weights run on the model. The truth is the stored orders: mean over seeds, spread over
seeds, collapse (a model keeping < 25% of dense quality).

Run it on the stores the predictors were designed on to see how the design fits (that proves
nothing), and on a hold-out store measured after the predictors were committed to judge them.

    python benchmarks/chooser_replay.py --store docs/results/order/order.sqlite --json out.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections import defaultdict
from pathlib import Path

from crescendo.chooser import PREDICTORS, decide, exhaustive_cost
from crescendo.chooser.measurements import COLLAPSE_RETAINED, retained
from crescendo.chooser.scoring import Cell, score
from crescendo.recipe import parse_recipe
from crescendo.report.data import group_rows
from crescendo.store import ResultStore, code_commit


class _PrefixedEvaluator:
    """The dense model after a shared prefix (e.g. `rotate`), for the predictors' weight looks."""

    def __init__(self, bench, prefix: str) -> None:
        self.bench, self.metric_name, self.margin = bench, bench.metric_name, bench.margin
        self._base = None
        self.prefix = prefix

    def fresh(self):
        if self._base is None:
            self._base = self.bench.fresh()
            if self.prefix:
                self.bench.compress_inplace(self._base, parse_recipe(self.prefix))
        return copy.deepcopy(self._base)

    def dense_weights(self, stages):
        """Every decoder-block linear's (out, in) weights, read once (the replayed stages target them)."""
        if not hasattr(self, "_weights"):
            from crescendo.models.adapters import get_adapter, get_weight

            self.fresh()
            self._weights = {n: get_weight(m) for n, m in get_adapter(self._base).all_block_linears(self._base).items()}
        return self._weights


def cells_of(rows, prefix_filter=None):
    """(experiment key, cell) pairs with both orders measured, and what the store knows of each."""
    grouping = group_rows(rows)
    out = []
    for exp in grouping.experiments:
        key = exp.key
        if exp.dense is None:
            continue
        head = f"{key.prefix} > " if key.prefix else ""
        for (ratio, bits, first), _ in sorted(exp.orders.items()):
            if first != "prune":
                continue
            pf, qf = exp.orders.get((ratio, bits, "prune")), exp.orders.get((ratio, bits, "quant"))
            p_alone, q_alone = exp.prune.get(ratio), exp.quant.get(bits)
            if qf is None or p_alone is None or q_alone is None:
                continue
            p_text = key.prune.format(r=f"{ratio:g}")
            q_text = key.quant.format(b=bits)
            p, q = str(parse_recipe(p_text)), str(parse_recipe(q_text))
            seeds_pf, seeds_qf = dict(pf.per_seed), dict(qf.per_seed)
            orders = {(p, q): {s: -v for s, v in seeds_pf.items()}, (q, p): {s: -v for s, v in seeds_qf.items()}}
            dense = -exp.dense.perplexity
            collapsed = {o for o, m in ((((p, q)), -pf.perplexity), (((q, p)), -qf.perplexity))
                         if retained(dense, m, "-perplexity") < COLLAPSE_RETAINED}
            known = {"dense": dense, p: -p_alone.perplexity, q: -q_alone.perplexity,
                     f"{p} > {q}": -pf.perplexity, f"{q} > {p}": -qf.perplexity}
            errors = {}
            for recipe, meas in ((f"{p} > {q}", pf), (f"{q} > {p}", qf)):
                if meas.per_block_error:
                    errors[recipe] = meas.per_block_error[-1]
            units = {(p, q): {s: u for s, u in pf.units if u is not None},
                     (q, p): {s: u for s, u in qf.units if u is not None}}
            with_units = all(len(v) == len(pf.seeds) for v in units.values())
            # stores measured before units were kept can only be judged by the old spread rule (said in the output)
            cell = Cell(key.model, key.protocol, (p, q), orders, collapsed, units=units if with_units else {},
                        rule="interval" if with_units else "spread")
            out.append((key, head, cell, known, errors))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", nargs="+", required=True)
    parser.add_argument("--predictors", nargs="*", default=None, help="default: every registered predictor")
    parser.add_argument("--model", default="smollm2-135m", help="the model the stores were measured on")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    predictors = args.predictors or PREDICTORS.names()
    rows = []
    for path in args.store:
        with ResultStore(path, readonly=True) as store:
            rows += store.rows()
    cells = cells_of(rows)
    if not cells:
        print("no cells with both orders and both singles measured", file=sys.stderr)
        return 2
    from crescendo.workflow import Workbench

    bench = Workbench.load(args.model, "sotu-v1-quick", progress=False)  # the weights only: nothing evaluated
    evaluators = {}
    calls = defaultdict(dict)
    costs = defaultdict(dict)
    per_cell = []
    for i, (key, head, cell, known, errors) in enumerate(cells):
        evaluator = evaluators.setdefault(key.prefix, _PrefixedEvaluator(bench, key.prefix))
        entry = {"experiment": key.label, "methods": list(cell.methods), "best": list(cell.best),
                 "advantage": cell.advantage(), "noise": cell.noise, "decisive": cell.decisive}
        for name in predictors:
            if name == "race" and not cell.units:
                entry[name] = {"error": "no per-unit results to replay a race on"}
                continue
            try:
                d = decide(name, evaluator, list(cell.methods), known=known, known_errors=errors,
                           known_units={" > ".join(o): u[s] for o, u in cell.units.items() for s in u
                                        if s == min(u)} or None)
            except Exception as e:  # noqa: BLE001 - a predictor that cannot judge this cell says why
                entry[name] = {"error": str(e)}
                continue
            calls[name][i] = None if d.order is None else tuple(d.order)
            full = exhaustive_cost(2)
            costs[name][i] = (d.cost.stage_applications + d.cost.evaluations) / (
                full.stage_applications + full.evaluations)
            entry[name] = {"order": d.order, "reason": d.reason}
        per_cell.append(entry)
    just_cells = [c for _, _, c, _, _ in cells]
    scores = {name: score(name, just_cells, calls[name], costs[name]).to_dict() for name in predictors}
    rules = sorted({c.rule for c in just_cells})
    print(f"# chooser replay on {', '.join(args.store)} (code {code_commit()}): {len(just_cells)} cells, "
          f"{sum(bool(c.decisive) for c in just_cells)} decisive (rule: {' and '.join(rules)}; the spread rule "
          "judges cells whose rows have no per-unit results)")
    print("| predictor | hits / calls (decisive) | hit rate [95% Wilson] | hit-or-within-noise / cells | abstentions | "
          "mean / worst regret | cost (stage apps + evals) / exhaustive |")
    print("|---|---|---|---|---|---|---|")
    for name, s in scores.items():
        rate = "-" if s["hit_rate"] is None else f"{s['hit_rate']:.0%} [{s['hit_rate_95'][0]:.0%}, {s['hit_rate_95'][1]:.0%}]"
        cost = "-" if s["mean_cost_fraction"] is None else f"{s['mean_cost_fraction']:.2f}"
        print(f"| {name} | {s['hits']} / {s['calls']} | {rate} | {s['hit_or_within_noise']} / {s['cells']} | "
              f"{s['abstentions']} | {s['mean_regret']:.3g} / {s['worst_regret']:.3g} | {cost} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"stores": args.store, "commit": code_commit(), "scores": scores,
                                               "cells": per_cell}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
