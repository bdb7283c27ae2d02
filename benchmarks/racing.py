"""Racing replayed on stored full evaluations: does a race reach the full evaluation's verdict, and with
how many units? (issue 24's targets: >= 99% agreement on cells whose full interval excludes zero, no
reversal above the race's error level, median units per decided cell <= 25% of the protocol's, on the
LLM and the vision stores separately).

A cell is every order of one set of methods measured in full, with per-unit results, for one model,
protocol and calibration seed (the order rows whose recipes are permutations of the same stages). The
full verdict: the best order against the runner-up (`uncertainty.compare` over all units). The race:
the cell's orders raced on the stored units (`sequential.race`, the same code a live race runs, reading
the values the evaluation would have produced), so a replay costs nothing and is exact for a
deterministic evaluation. Raced rows, superseded rows and rows without units are left out.

    python benchmarks/racing.py --store docs/results/chooser/holdout.sqlite [more stores] \\
        [--confidence 0.95] [--round N] [--race-seed 0] [--out docs/results/racing/replay]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from crescendo.analysis.sequential import RaceSettings, race
from crescendo.analysis.uncertainty import compare
from crescendo.options import refused_in_one_line
from crescendo.recipe import parse_recipe
from crescendo.report.data import is_superseded
from crescendo.store import ResultStore, code_commit


def cells_of(rows) -> list[dict]:
    """Every complete set of full-unit order rows sharing (model, protocol, seed, stages)."""
    groups: dict[tuple, dict[str, object]] = defaultdict(dict)
    for row in rows:
        if row.kind != "order" or row.units is None or not row.units.full or is_superseded(row) or "+race" in row.protocol:
            continue
        stages = tuple(s.text for s in parse_recipe(row.recipe).stages)
        groups[(row.model, row.protocol, row.seed, tuple(sorted(stages)))][row.recipe] = row
    out = []
    for (model, protocol, seed, stages), found in sorted(groups.items()):
        wanted = {" > ".join(p) for p in itertools.permutations(stages)}
        if set(found) >= wanted and len(stages) >= 2:
            out.append({"model": model, "protocol": protocol, "seed": seed, "methods": list(stages),
                        "rows": {r: found[r] for r in sorted(wanted)}})
    return out


def replay(cell: dict, settings: RaceSettings) -> dict:
    rows = cell["rows"]
    units = {r: row.units for r, row in rows.items()}
    kind, total = next(iter(units.values())).kind, next(iter(units.values())).total
    ranked = sorted(units, key=lambda r: units[r].metric, reverse=True)
    full = compare(units[ranked[0]], units[ranked[1]], labels=(ranked[0], ranked[1]))
    settings.check(total)
    result = race(lambda name, ids: units[name].values[ids], list(units), total, kind=kind,
                  margin=settings.margin, confidence=settings.confidence, round_size=settings.rounds_of(total),
                  seed=settings.seed)
    if result.winner is not None:
        raced = "first better" if result.winner == ranked[0] else "reversed"
    elif result.stop == "equivalent":
        raced = "equivalent"
    else:
        raced = full.verdict  # the units ran out: the race is the full evaluation
    used = sum(result.units_used(r) for r in units) / (len(units) * total)
    return {**{k: v for k, v in cell.items() if k != "rows"}, "kind": kind, "total_units": total,
            "full_verdict": full.verdict, "full_interval": list(full.scale_interval),
            "excludes_zero": full.scale_interval[0] > 0, "race_verdict": raced, "race_stop": result.stop,
            "race_winner": result.winner, "full_best": ranked[0], "units_fraction": used,
            "units_used": {r: result.units_used(r) for r in units}}


def summarize(results: list[dict], label: str) -> dict:
    decisive = [r for r in results if r["excludes_zero"]]
    agree = [r for r in decisive if r["race_verdict"] == r["full_verdict"]]
    reversed_ = [r for r in results if r["race_verdict"] == "reversed"]
    decided_full = [r["units_fraction"] for r in results if r["full_verdict"] in ("first better", "second better")]
    decided_race = [r["units_fraction"] for r in results if r["race_stop"] != "units exhausted"]
    return {"label": label, "cells": len(results), "full_excludes_zero": len(decisive), "agree": len(agree),
            "agreement": len(agree) / len(decisive) if decisive else None, "reversed": len(reversed_),
            "reversal_rate": len(reversed_) / len(results) if results else None,
            "median_units_decided_by_full": statistics.median(decided_full) if decided_full else None,
            "median_units_decided_by_race": statistics.median(decided_race) if decided_race else None,
            "median_units_all": statistics.median(r["units_fraction"] for r in results) if results else None,
            "stops": {s: sum(r["race_stop"] == s for r in results) for s in ("one remains", "equivalent", "units exhausted")}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", nargs="+", required=True)
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--round", type=int, default=None, help="units per round (default: a sixteenth, >= 2)")
    parser.add_argument("--race-seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write OUT.json and OUT.md")
    args = parser.parse_args()
    with refused_in_one_line(parser):
        settings = RaceSettings(confidence=args.confidence, round_size=args.round, seed=args.race_seed)
        rows = []
        for path in args.store:
            with ResultStore(path, readonly=True) as store:
                rows += store.rows()
    results = [replay(c, settings) for c in cells_of(rows)]
    if not results:
        print("no cell with every order measured in full with per-unit results", file=sys.stderr)
        return 2
    groups = [("LLM (window losses)", [r for r in results if r["kind"] == "window-loss"]),
              ("vision (test images)", [r for r in results if r["kind"] == "correct"]),
              ("all", results)]
    summary = [summarize(rs, label) for label, rs in groups if rs]
    lines = [f"# Racing replayed on stored full evaluations (code {code_commit()})", "",
             f"Stores: {', '.join(args.store)}. Race: confidence {args.confidence}, rounds "
             f"{'a sixteenth of the units' if args.round is None else args.round}, unit-order seed {args.race_seed}.",
             "", "| stores | cells | full interval excludes 0 | race agrees | reversed | median units per cell the full "
             "evaluation decides | per cell the race decides | all cells | stops (one remains / equivalent / exhausted) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        def pct(x):
            return "-" if x is None else f"{100 * x:.1f}%"

        lines.append(f"| {s['label']} | {s['cells']} | {s['full_excludes_zero']} | {s['agree']} ({pct(s['agreement'])}) | "
                     f"{s['reversed']} ({pct(s['reversal_rate'])}) | {pct(s['median_units_decided_by_full'])} | "
                     f"{pct(s['median_units_decided_by_race'])} | {pct(s['median_units_all'])} | "
                     f"{s['stops']['one remains']} / {s['stops']['equivalent']} / {s['stops']['units exhausted']} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out + ".md").write_text(text, encoding="utf-8")
        Path(args.out + ".json").write_text(json.dumps({"commit": code_commit(), "stores": args.store,
                                                        "settings": vars(args), "summary": summary,
                                                        "cells": results}, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
