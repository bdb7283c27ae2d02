"""The racing chooser's cost in seconds against the exhaustive study's, measured (issue 24's target:
at most 0.25 of the exhaustive seconds for two methods, 0.2 for three).

For each hold-out study (calibration seed 0), in one process: the exhaustive study as the chooser counts
it (the dense model, every method alone and every order, each evaluated in full, prefixes shared) and
the racing chooser (`order --choose --predictor race`: every order built, raced on the protocol's units),
interleaved (A B for one study, B A for the next) on the same loaded bench, wall time each, with the load
average beside every ratio. Both start from the dense weights (no cached prefix, no cached dense figure).
Run it with nothing else on the cores.

    python benchmarks/race_cost.py --plan docs/results/chooser/holdout_plan.json [...] --studies R01 R3M ...
        [--threads 2] [--out docs/results/chooser/race_cost]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import chooser_holdout as holdout  # noqa: E402  (the plan loader and benches of the hold-out)

from crescendo.chooser import decide  # noqa: E402
from crescendo.chooser.measurements import Measurements  # noqa: E402
from crescendo.recipe import parse_stage  # noqa: E402
from crescendo.store import code_commit  # noqa: E402


def exhaustive(bench, methods: list[str]) -> tuple[float, tuple[str, ...]]:
    """Seconds of the exhaustive study and its best order."""
    start = time.perf_counter()
    m = Measurements(bench, [parse_stage(t) for t in methods])
    m.dense()
    for i in range(len(methods)):
        m.single(i)
    metrics = {p: m.metric(p) for p in itertools.permutations(range(len(methods)))}
    m.release()
    best = max(metrics, key=metrics.get)
    return time.perf_counter() - start, tuple(methods[i] for i in best)


def raced(bench, methods: list[str]) -> tuple[float, tuple[str, ...], dict]:
    start = time.perf_counter()
    d = decide("race", bench, methods)
    return time.perf_counter() - start, tuple(d.order), d.evidence


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", nargs="+", required=True)
    parser.add_argument("--studies", nargs="+", required=True)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None, help="write OUT.json and OUT.md")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    plan = holdout.load_plans(args.plan)
    by_id = {s["id"]: s for s in plan["studies"]}
    unknown = [s for s in args.studies if s not in by_id]
    if unknown:
        parser.exit(2, f"{parser.prog}: error: unknown study id(s) {', '.join(unknown)}\n")
    cache: dict = {}
    results = []
    first = by_id[args.studies[0]]
    raced(holdout._bench(first, 0, cache), first["methods"])  # warm-up, untimed: first-call costs of torch and data
    for k, sid in enumerate(args.studies):
        study = by_id[sid]
        bench = holdout._bench(study, 0, cache)
        bench.dense()  # loads lazily cached data first; the timed runs below evaluate a fresh copy
        runs = {}
        for mode in (("exhaustive", "race") if k % 2 == 0 else ("race", "exhaustive")):
            load = os.getloadavg()[0]
            if mode == "exhaustive":
                seconds, best = exhaustive(bench, study["methods"])
                runs[mode] = {"seconds": seconds, "order": list(best), "load": load}
            else:
                seconds, order, evidence = raced(bench, study["methods"])
                runs[mode] = {"seconds": seconds, "order": list(order), "load": load, "evidence": evidence}
        ratio = runs["race"]["seconds"] / runs["exhaustive"]["seconds"]
        entry = {"id": sid, "model": holdout._model_key(study), "methods": study["methods"], "ratio": ratio,
                 "same_order": runs["race"]["order"] == runs["exhaustive"]["order"], **runs}
        results.append(entry)
        print(f"[{sid}] {len(study['methods'])} methods: exhaustive {runs['exhaustive']['seconds']:.1f} s (load "
              f"{runs['exhaustive']['load']:.2f}), race {runs['race']['seconds']:.1f} s (load {runs['race']['load']:.2f}),"
              f" ratio {ratio:.3f}, same order {entry['same_order']}", flush=True)
    lines = [f"# Racing chooser against the exhaustive study, wall time (code {code_commit()}, torch threads "
             f"{torch.get_num_threads()}, {os.cpu_count()} CPUs)", "",
             "| study | model | methods | exhaustive s | race s | ratio | load (exh / race) | same order |",
             "|---|---|---|---|---|---|---|---|"]
    for e in results:
        lines.append(f"| {e['id']} | {e['model']} | {', '.join(e['methods'])} | {e['exhaustive']['seconds']:.1f} | "
                     f"{e['race']['seconds']:.1f} | {e['ratio']:.3f} | {e['exhaustive']['load']:.2f} / "
                     f"{e['race']['load']:.2f} | {e['same_order']} |")
    for n, target in ((2, 0.25), (3, 0.2)):
        ratios = [e["ratio"] for e in results if len(e["methods"]) == n]
        if ratios:
            total = sum(e["race"]["seconds"] for e in results if len(e["methods"]) == n) / sum(
                e["exhaustive"]["seconds"] for e in results if len(e["methods"]) == n)
            lines.append(f"\n{n} methods: median ratio {statistics.median(ratios):.3f}, total seconds ratio "
                         f"{total:.3f} over {len(ratios)} studies (target <= {target})")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out + ".md").write_text(text, encoding="utf-8")
        Path(args.out + ".json").write_text(json.dumps({"commit": code_commit(), "results": results}, indent=1,
                                                       default=str), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
