"""The order predictors judged on a pre-registered hold-out (issue 15).

The plan (docs/results/chooser/holdout_plan.json) was committed after the predictors and before any
of its cells was measured; every row this script stores records the commit that measured it and the
plan it belongs to. An extension (holdout_plan_2.json: more studies, the same rules and predictors) is
registered the same way and pooled with the first: pass both to --plan.

    measure  every study of the plan, every calibration seed: the dense model, each method alone and
             every order (prefixes shared), plus each order's last-block calibration error; rows go
             to a results store and a rerun resumes (a study-seed whose rows exist is skipped).
    score    the predictors replayed on the measured cells: each sees the plan's predictor seed (the
             first seed) exactly as if it had measured it, and its cost is counted in stage
             applications + evaluations against the exhaustive study's. The truth is the mean over
             seeds; a cell is decisive when neither of its two best orders collapsed and the
             advantage of the best over the runner-up exceeds its spread over seeds.

    python benchmarks/chooser_holdout.py measure --plan docs/results/chooser/holdout_plan.json \\
        --store docs/results/chooser/holdout.sqlite [--models resnet-mini vit-mini] [--threads 1]
    python benchmarks/chooser_holdout.py score --plan PLAN [EXTENSION ...] --store ... --out docs/results/chooser/holdout
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import torch

from crescendo.chooser import check_choice, decide, exhaustive_cost
from crescendo.chooser.measurements import COLLAPSE_RETAINED, Measurements, retained
from crescendo.chooser.scoring import Cell, score
from crescendo.errors import ConfigError
from crescendo.recipe import parse_stage
from crescendo.store import ResultStore, RunMetrics, code_commit, record_run
from crescendo.workflow import BenchFactory, resolve_protocol


def load_plan(path: str) -> dict:
    plan = json.loads(Path(path).read_text(encoding="utf-8"))
    for study in plan["studies"]:
        study["methods"] = [parse_stage(m).text for m in study["methods"]]  # canonical texts
        study["plan"] = path
    plan["path"] = path
    plan["registered_at"] = _first_commit(path)
    return plan


def load_plans(paths: list[str]) -> dict:
    """One plan, or a first plan and its registered extensions pooled: their studies in order, under the
    first plan's seeds and predictors (an extension that changes them is refused)."""
    plans = [load_plan(p) for p in paths]
    first = plans[0]
    for extra in plans[1:]:
        for key in ("seeds", "predictor_seed", "predictors"):
            if extra[key] != first[key]:
                raise ConfigError(f"plan {extra['path']}: {key} {extra[key]} differs from {first['path']}'s {first[key]}")
    ids = [s["id"] for p in plans for s in p["studies"]]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"plans {', '.join(paths)} repeat a study id")
    return {**first, "studies": [s for p in plans for s in p["studies"]],
            "registered": [(p["path"], p["registered_at"]) for p in plans]}


def _protocol(study: dict):
    if study.get("vision"):
        from crescendo.data.vision_protocols import get_vision_protocol

        return get_vision_protocol(study["protocol"])
    return resolve_protocol(study["protocol"], eval_windows=study.get("eval_windows"))


def _bench(study: dict, seed: int, cache: dict, keep: bool = False):
    """The study's bench for `seed`, from `cache`: one model in memory at a time, or every model asked for
    with `keep` (scoring reads weights of all three models in plan order)."""
    key = (study["model"], study["protocol"], study.get("eval_windows"), seed)
    if key not in cache:
        if not keep:
            cache.clear()
        options = {} if study.get("vision") else {"dtype": "float32"}
        bench = BenchFactory(study["model"], _protocol(study), calibration_seed=seed, **options)()
        bench.layerwise_samples = 4
        cache[key] = bench
    return cache[key]


def _recipes(methods: list[str]) -> list[tuple[str, tuple[int, ...]]]:
    n = len(methods)
    singles = [(methods[i], (i,)) for i in range(n)]
    orders = [(" > ".join(methods[i] for i in p), p) for p in itertools.permutations(range(n))]
    return singles + orders


def _model_key(study: dict) -> str:
    """The name rows carry: the model's name, or a vision model directory's last component."""
    return Path(study["model"]).name


def _rows(store: ResultStore, model: str, protocol: str, seed: int) -> dict[str, object]:
    return {r.recipe: r for r in store.rows(model=model, protocol=protocol) if r.seed == seed}


def calibrated(methods: list[str]) -> bool:
    """Whether any method of a study draws on calibration data (its cell has seed-to-seed spread)."""
    return any(parse_stage(m).spec.calibrated for m in methods)


def measure(plan: dict, store_path: str, models: list[str] | None, only: list[str] | None = None,
            extra_seeds: list[int] | None = None) -> None:
    """Measure every study-seed whose rows (with per-unit results) are not all stored. `extra_seeds`:
    further calibration seeds, for the studies with a calibrated method only (data-free studies have
    no seed spread to sample)."""
    commit = code_commit()
    cache: dict = {}
    with ResultStore(store_path) as store:
        for study in plan["studies"]:
            if (models and _model_key(study) not in models) or (only and study["id"] not in only):
                continue
            seeds = list(plan["seeds"]) + (list(extra_seeds or []) if calibrated(study["methods"]) else [])
            for seed in seeds:
                bench = None
                methods = study["methods"]
                protocol_id = study["protocol_id"]
                have = {r: row for r, row in _rows(store, _model_key(study), protocol_id, seed).items()
                        if row.units is not None}  # rows measured before units were kept are measured again
                needed = ["dense"] + [r for r, _ in _recipes(methods)]
                errors_needed = [r for r, p in _recipes(methods) if len(p) == len(methods)]
                if all(r in have for r in needed) and all(
                        have[r].extra.get("last_block_error", "missing") != "missing" for r in errors_needed):
                    continue
                start = time.perf_counter()
                bench = _bench(study, seed, cache)
                if bench.protocol_id != protocol_id:
                    raise ConfigError(f"study {study['id']}: the bench measures {bench.protocol_id}, the plan "
                                      f"says {protocol_id}")
                known = {r: have[r].metrics.metric for r in needed if r in have}
                m = Measurements(bench, [parse_stage(t) for t in methods], known=known)
                m.dense()
                errors = {}
                for recipe, path in _recipes(methods):
                    m.metric(path)
                    if len(path) == len(methods):
                        errors[recipe] = m.calibration_error(path)
                m.release()
                for recipe in ["dense"] + [r for r, _ in _recipes(methods)]:
                    found = m.evaluations.get(recipe)
                    if found is None and recipe not in errors:
                        continue  # stored with its units already (a shared single, the dense model)
                    metric = found.metric if found is not None else have[recipe].metrics.metric
                    units = found.units if found is not None else have[recipe].units
                    kind = "dense" if recipe == "dense" else ("single" if ">" not in recipe else "order")
                    metrics = (RunMetrics.from_accuracy(metric) if bench.metric_name == "accuracy"
                               else RunMetrics.from_perplexity(-metric))
                    extra = {"study": "chooser-holdout", "study_id": study["id"], "plan": study["plan"], "commit": commit}
                    if recipe in errors:
                        extra["last_block_error"] = errors[recipe]
                    record_run(store, model=_model_key(study), protocol=protocol_id, recipe=recipe, seed=seed, kind=kind,
                               metrics=metrics, extra=extra, device="cpu", units=units)
                print(f"[{study['id']} seed {seed}] {len(methods)} methods measured in "
                      f"{time.perf_counter() - start:.0f} s", flush=True)


class _WeightsOnly:
    """An evaluator that only serves the dense weights (every metric of the replay is known) and the
    protocol's equivalence margin (a replayed race reads it). Benches and weights are kept per model in
    `cache`, so predictors and studies of one model read them once."""

    def __init__(self, study: dict, cache: dict) -> None:
        from crescendo.analysis.uncertainty import Margin

        self.study, self.cache = study, cache
        self.metric_name = "accuracy" if study.get("vision") else "-perplexity"
        self.margin = Margin(_protocol(study).margin, relative=not study.get("vision"))

    def fresh(self):
        return _bench(self.study, 0, self.cache, keep=True).fresh()

    def dense_weights(self, stages):
        """The (out, in) dense weights of every linear the stages target, as a live predictor reads them
        (`Measurements.dense_weights`), read once per model and target set."""
        key = ("weights", self.study["model"], tuple(repr(s.config.targets) for s in stages))
        if key not in self.cache:
            from crescendo.models.adapters import get_adapter, get_weight, select_targets

            model = _bench(self.study, 0, self.cache, keep=True).model
            adapter, names = get_adapter(model), {}
            for stage in stages:
                if stage.config.targets is not None:
                    names.update(select_targets(model, adapter, stage.config.targets))
            self.cache[key] = {n: get_weight(m) for n, m in names.items()}
        return self.cache[key]

    def evaluation(self, model, units=None):  # pragma: no cover - a replay that asks for a metric is a bug
        raise RuntimeError("the replay asked for a measurement the store does not hold")

    def apply(self, model, stage):
        _bench(self.study, 0, self.cache).apply(model, stage)


BASELINES = ("prune-first", "quant-first", "race")  # scored beside the plan's predictors (issue 24)
CEILING = "exhaustive@seed0"  # the exhaustive study at the predictor seed: what one seed can reach


def score_plan(plan: dict, store_path: str, out: str | None) -> int:
    """Score every predictor (the plan's, the free baselines, the racing chooser and the seed-0 ceiling)
    on the measured cells, under the interval rule and, beside it, the first plan's spread rule. The
    truth uses every seed measured (a third seed where one was added); predictors see the plan's
    predictor seed."""
    predictor_seed = plan["predictor_seed"]
    names = list(plan["predictors"]) + [b for b in BASELINES if b not in plan["predictors"]] + [CEILING]
    cells, meta, calls, costs = [], [], defaultdict(dict), defaultdict(dict)
    cache: dict = {}
    missing = []
    with ResultStore(store_path, readonly=True) as store:
        for study in plan["studies"]:
            methods = study["methods"]
            needed = ["dense"] + [r for r, _ in _recipes(methods)]
            present = {s: _rows(store, _model_key(study), study["protocol_id"], s) for s in sorted(
                {r.seed for r in store.rows(model=_model_key(study), protocol=study["protocol_id"])})}
            seeds = [s for s, rows in present.items() if all(r in rows for r in needed)]
            if not set(plan["seeds"]) <= set(seeds):
                missing.append(study["id"])
                continue
            by_seed = {s: present[s] for s in seeds}
            finals = [(r, p) for r, p in _recipes(methods) if len(p) == len(methods)]
            orders = {tuple(methods[i] for i in p): {s: by_seed[s][r].metrics.metric for s in seeds} for r, p in finals}
            units = {tuple(methods[i] for i in p): {s: by_seed[s][r].units for s in seeds if by_seed[s][r].units is not None}
                     for r, p in finals}
            metric_name = by_seed[seeds[0]]["dense"].metrics.metric_name
            dense = sum(by_seed[s]["dense"].metrics.metric for s in seeds) / len(seeds)
            collapsed = {o for o, v in orders.items()
                         if retained(dense, sum(v.values()) / len(v), metric_name) < COLLAPSE_RETAINED}
            margin = _WeightsOnly(study, cache).margin
            cell = Cell(_model_key(study), study["protocol_id"], tuple(methods), orders, collapsed, units=units,
                        margin=margin, data_free=not calibrated(methods))
            index = len(cells)
            cells.append(cell)
            rows = by_seed[predictor_seed]
            known = {r: rows[r].metrics.metric for r in needed}
            # a stored None means "undefined here" (blocks were removed): the replay must see it as the
            # live predictor would, not as a measurement that is missing
            known_errors = {r: rows[r].extra["last_block_error"] for r, _ in finals
                            if "last_block_error" in rows[r].extra}
            known_units = {r: rows[r].units for r, _ in finals if rows[r].units is not None}
            comparison = cell.comparison
            entry = {"id": study["id"], "model": _model_key(study), "methods": methods, "seeds": seeds,
                     "best": list(cell.best), "advantage": cell.advantage(), "noise": cell.noise,
                     "interval": None if comparison is None else list(comparison.interval),
                     "verdict": None if comparison is None else comparison.verdict,
                     "decisive": cell.decisive_interval, "decisive_spread": cell.decisive_spread,
                     "data_free": cell.data_free, "collapsed": [list(o) for o in collapsed],
                     "orders": {" > ".join(o): v for o, v in orders.items()}, "decisions": {}}
            full = exhaustive_cost(len(methods))
            for name in names:
                if name == CEILING:
                    best0 = max(orders, key=lambda o: orders[o][predictor_seed])
                    calls[name][index], costs[name][index] = best0, 1.0
                    entry["decisions"][name] = {"order": list(best0), "reason": "best order at the predictor seed",
                                                "cost_fraction": 1.0}
                    continue
                try:
                    check_choice(name, methods)
                except ConfigError as e:
                    entry["decisions"][name] = {"cannot_judge": str(e)}
                    continue
                if name == "race" and len(known_units) != len(finals):
                    entry["decisions"][name] = {"cannot_judge": "no per-unit results to replay a race on"}
                    continue
                d = decide(name, _WeightsOnly(study, cache), methods, known=known, known_errors=known_errors,
                           known_units=known_units)
                calls[name][index] = None if d.order is None else tuple(d.order)
                costs[name][index] = d.cost.counted / (full.stage_applications + full.evaluations)
                entry["decisions"][name] = {"order": d.order, "reason": d.reason, "cost_fraction": costs[name][index]}
            meta.append(entry)
    if missing:
        print(f"{len(missing)} studies not measured yet: {', '.join(missing[:8])}", file=sys.stderr)
    if not cells:
        return 2
    return _report(plan, names, cells, meta, calls, costs, store_path, out, missing)


def _subset_scores(name, cells, calls, costs, keep, rule):
    idx = [i for i, c in enumerate(cells) if keep(c) and i in calls[name]]
    sub = [replace(cells[i], rule=rule) for i in idx]
    return score(name, sub, {j: calls[name][i] for j, i in enumerate(idx)},
                 {j: costs[name][i] for j, i in enumerate(idx)}).to_dict()


GROUPS_FIXED = [("two methods", lambda c: len(c.methods) == 2), ("three methods", lambda c: len(c.methods) == 3),
                ("data-free cells", lambda c: c.data_free), ("calibrated cells", lambda c: not c.data_free)]


def _report(plan, names, cells, meta, calls, costs, store_path, out, missing) -> int:
    commit = code_commit()
    predictor_seed = plan["predictor_seed"]
    groups = [("pooled", lambda c: True)]
    groups += [(m, (lambda m: lambda c: c.model == m)(m)) for m in sorted({c.model for c in cells})]
    groups += GROUPS_FIXED
    table = {rule: {name: {g: _subset_scores(name, cells, calls, costs, keep, rule) for g, keep in groups}
                    for name in names} for rule in ("interval", "spread")}
    seeds_used = sorted({s for e in meta for s in e["seeds"]})
    lines = ["# Order predictors on the pre-registered hold-out",
             "",
             "Plans: " + "; ".join(f"`{p}` (committed at {c})" for p, c in plan["registered"]) + ", each before "
             f"any of its rows was measured. Store: `{store_path}`. Scored at code {commit}. Rows measured at: "
             f"{', '.join(sorted({e for e in _commits(store_path)}))}.",
             "",
             f"{len(cells)} cells ({sum(bool(c.decisive_interval) for c in cells)} decisive by the interval rule, "
             f"{sum(c.decisive_spread for c in cells)} by the spread rule; "
             f"{sum(len(c.methods) == 3 for c in cells)} three-method studies; {sum(c.data_free for c in cells)} "
             f"data-free), seeds {seeds_used} (plan seeds {plan['seeds']}; calibrated studies may have more), "
             f"predictors see seed {predictor_seed}. Truth = mean over seeds. Interval rule: the best order against "
             "the runner-up, paired over units and seeds (95% interval: bootstrap over units plus seed-to-seed "
             "variation), must be 'first better' (and neither collapsed). Spread rule (the first plan's): A above its "
             "spread over seeds. Cost = (stage applications + evaluations) / the exhaustive study's; raced evaluations "
             "count by the share of units used (replayed: what the predictor would have measured, counted, not timed). "
             f"prune-first, quant-first: free rules; race: the racing chooser replayed on the stored units of seed "
             f"{predictor_seed}; {CEILING}: the exhaustive study at that seed, the ceiling one seed can reach."
             + (f" Not yet measured: {len(missing)} planned studies ({', '.join(missing)})." if missing else ""),
             ""]
    for rule in ("interval", "spread"):
        lines += [f"## Decisive by the {rule} rule", "",
                  "| predictor | cells | hits / calls (decisive) | hit rate [95% Wilson] | hit-or-within-noise [95%] | "
                  "abstentions | mean / worst regret | cost / exhaustive |",
                  "|---|---|---|---|---|---|---|---|"]
        for name in names:
            for g, _ in groups:
                s = table[rule][name][g]
                if not s["cells"]:
                    continue
                rate = "-" if s["hit_rate"] is None else \
                    f"{s['hit_rate']:.0%} [{s['hit_rate_95'][0]:.0%}, {s['hit_rate_95'][1]:.0%}]"
                hn = f"{s['hit_or_within_noise']}/{s['cells']} = {s['hit_or_within_noise_rate']:.0%} " \
                     f"[{s['hit_or_within_noise_95'][0]:.0%}, {s['hit_or_within_noise_95'][1]:.0%}]"
                cost = "-" if s["mean_cost_fraction"] is None else f"{s['mean_cost_fraction']:.2f}"
                lines.append(f"| {name} ({g}) | {s['cells']} | {s['hits']} / {s['calls']} | {rate} | {hn} | "
                             f"{s['abstentions']} | {s['mean_regret']:.3g} / {s['worst_regret']:.3g} | {cost} |")
        lines.append("")
    lines += ["Cannot judge: a predictor that refuses a study's methods (e.g. `zeros` on a block remover) is "
              "not scored on it; the cells column says on how many it was. Cells without per-unit results are "
              "left out of the interval rule's counts.", "",
              "## Cells", "", "| study | model | methods | seeds | best | A (best - runner-up) [95%] | verdict | "
              "spread | decisive (interval / spread) | " + " | ".join(names) + " |",
              "|" + "---|" * (9 + len(names))]
    for e in meta:
        picks = []
        for name in names:
            d = e["decisions"].get(name, {"cannot_judge": "-"})
            picks.append("n/a" if "cannot_judge" in d else ("abstain" if d["order"] is None else
                         ("best" if tuple(d["order"]) == tuple(e["best"]) else "other")))
        span = "-" if e["interval"] is None else f"[{e['interval'][0]:.4g}, {e['interval'][1]:.4g}]"
        dec = f"{'-' if e['decisive'] is None else 'yes' if e['decisive'] else 'no'} / " \
              f"{'yes' if e['decisive_spread'] else 'no'}"
        lines.append(f"| {e['id']} | {e['model']} | {', '.join(e['methods'])} | {len(e['seeds'])} | "
                     f"{' > '.join(e['best'])} | {e['advantage']:.4g} {span} | {e['verdict'] or 'no units'} | "
                     f"{e['noise']:.3g} | {dec} | " + " | ".join(picks) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        Path(out + ".md").write_text(text, encoding="utf-8")
        Path(out + ".json").write_text(json.dumps({"plans": [p for p, _ in plan["registered"]], "store": store_path,
                                                   "commit": commit, "scores": table, "cells": meta}, indent=1,
                                                  default=str), encoding="utf-8")
    return 0


def _commits(store_path: str) -> set[str]:
    with ResultStore(store_path, readonly=True) as store:
        return {str(r.environment.get("commit")) for r in store.rows()}


def _first_commit(path: str) -> str:
    """The commit that added `path` (the registration), from git; '?' outside a checkout."""
    import subprocess

    try:
        out = subprocess.run(["git", "log", "--diff-filter=A", "--format=%h", "--", path], capture_output=True,
                             text=True, timeout=30, check=False).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return "?"
    return out[-1] if out else "?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["measure", "score"])
    parser.add_argument("--plan", nargs="+", default=["docs/results/chooser/holdout_plan.json"],
                        help="the plan, then any registered extensions of it (pooled)")
    parser.add_argument("--store", default="docs/results/chooser/holdout.sqlite")
    parser.add_argument("--models", nargs="*", default=None, help="measure only these models' studies")
    parser.add_argument("--studies", nargs="*", default=None, help="measure only these study ids")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--extra-seeds", default=None,
                        help="measure: comma-separated calibration seeds beyond the plan's, for the studies with a "
                             "calibrated method (a third seed where the cost allows)")
    parser.add_argument("--out", default=None, help="score: write OUT.md and OUT.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    plan = load_plans(args.plan)
    if args.action == "measure":
        extra = [int(x) for x in args.extra_seeds.split(",")] if args.extra_seeds else None
        measure(plan, args.store, args.models, args.studies, extra)
        return 0
    return score_plan(plan, args.store, args.out)


if __name__ == "__main__":
    sys.exit(main())
