"""Wall time of one sweep cell on the embedded model (issue 13's target: <= 90 s on two cores).

A cell is what an order sweep measures per (pruner, quantizer) pair: both singles and both orders,
each evaluated, with the orders built on the singles (prefix sharing), so the stages applied are
P, Q, then Q on a copy of P and P on Q. The dense model is the sweep's, not the cell's: it is timed
apart and left out of the cell's total. Evaluation runs under the faster of the protocol's variants
on this machine: bfloat16 weights where bfloat16 is fast (CUDA, AMX), float32 elsewhere; `--eval-weights`
overrides it.

Run it with nothing else on the cores; it prints the load average before and after.

    python benchmarks/sweep_cell.py [bench options] [--pruner sparsegpt:0.3] [--quantizer rtn:w4] [--out FILE]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import torch

from crescendo.recipe import parse_stage
from crescendo.store import code_commit
from crescendo.workflow import add_bench_options, bench_from_options, fast_bfloat16

TARGET_S = 90.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_bench_options(parser)
    parser.set_defaults(eval_weights=None)  # the fast variant here, unless asked for
    parser.add_argument("--pruner", default="sparsegpt:0.3")
    parser.add_argument("--quantizer", default="rtn:w4")
    parser.add_argument("--out", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    P, Q = parse_stage(args.pruner), parse_stage(args.quantizer)
    args.eval_weights = args.eval_weights or ("bfloat16" if fast_bfloat16(args.device) else "float32")
    commit = code_commit()
    load_before = os.getloadavg()
    bench = bench_from_options(args)

    lines = []

    def say(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    start = time.perf_counter()
    dense = bench.metric(bench.fresh())
    say(f"dense (the sweep's, not counted)    {time.perf_counter() - start:6.1f} s   M = {dense:.3f}")

    timings: list[tuple[str, float, float]] = []

    def step(label: str, model, stage=None) -> None:
        t0 = time.perf_counter()
        if stage is not None:
            bench.apply(model, stage)
        t1 = time.perf_counter()
        metric = bench.metric(model)
        t2 = time.perf_counter()
        timings.append((label, t1 - t0, t2 - t1))
        say(f"{label:<36} apply {t1 - t0:6.1f} s   evaluate {t2 - t1:6.1f} s   M = {metric:.3f}")

    cell_start = time.perf_counter()
    p_model = bench.fresh()
    step(P.text, p_model, P)
    pq = copy.deepcopy(p_model)
    step(f"{P.text} > {Q.text}", pq, Q)
    del pq, p_model
    q_model = bench.fresh()
    step(Q.text, q_model, Q)
    step(f"{Q.text} > {P.text}", q_model, P)
    total = time.perf_counter() - cell_start
    applying, evaluating = sum(t[1] for t in timings), sum(t[2] for t in timings)
    load_after = os.getloadavg()
    head = (f"# sweep cell: {bench.model_name}, {bench.protocol_id}, torch threads {torch.get_num_threads()}, "
            f"{os.cpu_count()} CPUs, code {commit}")
    summary = (f"cell {P.text} x {Q.text}: {total:.1f} s (stages {applying:.1f} s, evaluations {evaluating:.1f} s, "
               f"rest {total - applying - evaluating:.1f} s); target <= {TARGET_S:.0f} s: "
               f"{'met' if total <= TARGET_S else 'not met'}")
    load = (f"load average before {load_before[0]:.2f} / {load_before[1]:.2f}, "
            f"after {load_after[0]:.2f} / {load_after[1]:.2f} (1 / 5 min)")
    say(summary)
    say(load)
    if args.out:
        Path(args.out).write_text("\n".join([head] + lines) + "\n", encoding="utf-8")
    print(head)
    return 0


if __name__ == "__main__":
    sys.exit(main())
