"""Wall time of one sweep cell on the embedded model, evaluated in full and raced (issue 13's 90 s target;
issue 24's: the raced evaluation at least 3x faster than the full one, same cell, same run).

A cell is what an order sweep measures per (pruner, quantizer) pair: both singles and both orders,
each evaluated, with the orders built on the singles. Both modes run the library's own sweep code on
the cell's four recipes (`sweep.run_sweep`, `sweep_race.run_raced_sweep`) into temporary stores, in one
process, one after the other (`--repeats` alternates which goes first: A B, B A, ...); the dense model
is the sweep's, not the cell's, and is left out. Evaluation runs under the faster of the protocol's
variants on this machine: bfloat16 weights where bfloat16 is fast (CUDA, AMX), float32 elsewhere;
`--eval-weights` overrides it.

Run it with nothing else on the cores; it prints the load average before and after.

    python benchmarks/sweep_cell.py [bench options] [--pruner sparsegpt:0.3] [--quantizer rtn:w4] [--repeats 1]
        [--race-round N] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from crescendo.analysis.sequential import RaceSettings
from crescendo.options import add_bench_options, refused_in_one_line
from crescendo.recipe import parse_stage
from crescendo.store import ResultStore, code_commit
from crescendo.sweep import SweepTask, run_sweep
from crescendo.sweep_race import run_raced_sweep
from crescendo.workflow import bench_from_options, fast_bfloat16

TARGET_S = 90.0


def cell_tasks(p: str, q: str) -> list[SweepTask]:
    """The cell's four recipes as `sweep.grid_tasks` writes them (no dense row)."""
    extra = {"prune": "p", "quant": "q"}
    return [SweepTask(p, "single", {**extra, "method": "prune", "ratio": 0.0}),
            SweepTask(q, "single", {**extra, "method": "quant", "bits": 0}),
            SweepTask(f"{p} > {q}", "order", {**extra, "ratio": 0.0, "bits": 0, "first": "prune"}),
            SweepTask(f"{q} > {p}", "order", {**extra, "ratio": 0.0, "bits": 0, "first": "quant"})]


def run(mode: str, bench, tasks, settings: RaceSettings, folder: Path) -> dict:
    """One cell in `mode` ("full" or "raced") into a fresh store; seconds in all, in stages, in evaluation."""
    path = folder / f"{mode}-{time.monotonic_ns()}.sqlite"
    start = time.perf_counter()
    with ResultStore(path) as store:
        if mode == "full":
            run_sweep(lambda: bench, "cell", bench.protocol_id, tasks, store, lanes=1)
        else:
            run_raced_sweep(bench, "cell", bench.protocol_id, tasks, store, seed=0, race_settings=settings)
        rows = store.rows()
    total = time.perf_counter() - start
    evaluating = sum(r.timings.get("eval_seconds", 0.0) for r in rows)
    units = {r.recipe: (len(r.units), r.units.total) for r in rows}
    verdict = {r.recipe: r.extra.get("race", {}).get("stop") for r in rows if r.kind == "order"}
    return {"mode": mode, "total": total, "evaluating": evaluating, "stages": total - evaluating, "units": units,
            "stop": verdict, "metrics": {r.recipe: r.metrics.metric for r in rows}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_bench_options(parser)
    parser.set_defaults(eval_weights=None)  # the fast variant here, unless asked for
    parser.add_argument("--pruner", default="sparsegpt:0.3")
    parser.add_argument("--quantizer", default="rtn:w4")
    parser.add_argument("--repeats", type=int, default=1, help="pairs of (full, raced) runs, alternating the order")
    parser.add_argument("--race-round", type=int, default=None)
    parser.add_argument("--out", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    with refused_in_one_line(parser):
        p, q = parse_stage(args.pruner).text, parse_stage(args.quantizer).text
        settings = RaceSettings(round_size=args.race_round)
    args.eval_weights = args.eval_weights or ("bfloat16" if fast_bfloat16(args.device) else "float32")
    commit = code_commit()
    load_before = os.getloadavg()
    bench = bench_from_options(args)
    lines: list[str] = []

    def say(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            for mode in (("full", "raced") if i % 2 == 0 else ("raced", "full")):
                r = run(mode, bench, cell_tasks(p, q), settings, Path(tmp))
                results.append(r)
                used = ", ".join(f"{k} {n}/{t}" for k, (n, t) in r["units"].items())
                say(f"{mode:<5} cell {p} x {q}: {r['total']:6.1f} s (stages {r['stages']:6.1f} s, evaluation "
                    f"{r['evaluating']:6.1f} s; load {os.getloadavg()[0]:.2f}); units: {used}")
    full = [r for r in results if r["mode"] == "full"]
    raced = [r for r in results if r["mode"] == "raced"]
    ratios = [f["evaluating"] / max(r["evaluating"], 1e-9) for f, r in zip(full, raced)]
    say(f"evaluation, full / raced: {', '.join(f'{x:.2f}' for x in ratios)} (target >= 3); cell in full "
        f"{min(f['total'] for f in full):.1f} s, raced {min(r['total'] for r in raced):.1f} s (issue 13's target "
        f"<= {TARGET_S:.0f} s)")
    load_after = os.getloadavg()
    head = (f"# sweep cell: {bench.model_name}, {bench.protocol_id}, torch threads {torch.get_num_threads()}, "
            f"{os.cpu_count()} CPUs, code {commit}, race rounds {settings.rounds_of(bench.n_units)} of "
            f"{bench.n_units} units")
    say(f"load average before {load_before[0]:.2f} / {load_before[1]:.2f}, after {load_after[0]:.2f} / "
        f"{load_after[1]:.2f} (1 / 5 min)")
    if args.out:
        Path(args.out).write_text("\n".join([head] + lines) + "\n", encoding="utf-8")
    print(head)
    return 0


if __name__ == "__main__":
    sys.exit(main())
