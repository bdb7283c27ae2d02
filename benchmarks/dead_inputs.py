"""Which stored rows the dead-input fix can change: inputs of block linears that are exactly zero on
every calibration token after a recipe prefix (e.g. an activation quantizer rounding a channel to 0).

Before issue 11's fix, SparseGPT and GPTQ zeroed the weights of such inputs; now they keep them. A
row `Q > sparsegpt:p` can only have changed if Q leaves dead inputs on the calibration set, so this
counts them after Q alone, through the whole model in one pass (the pruner's own sequential pass
sees slightly different inputs in later blocks, so a count of 0 here is strong evidence, not proof,
that a row is unchanged; a positive count says the row must be re-measured).

    python benchmarks/dead_inputs.py --prefixes rtn:w4a4 rtn:w6a6 rtn:w8a8 --eval-windows 16 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import sys

import torch

from crescendo.engine.stats import InputStatistics
from crescendo.models.adapters import get_adapter
from crescendo.options import add_bench_options
from crescendo.store import code_commit
from crescendo.workflow import bench_from_options


def count_dead(bench, prefix: str) -> dict:
    model, _ = bench.compress(prefix)
    adapter = get_adapter(model)
    linears = {}
    for index in range(len(adapter.blocks(model))):
        linears.update(adapter.block_linears(model, index))
    with InputStatistics(linears, "input_sq_norm") as stats, torch.no_grad(), bench.compute():
        for ids in bench.calibration:
            adapter.run(model, ids)
    leaders = {stats.leader(n) for n in linears}
    dead = {n: int((stats.result(n) == 0).sum()) for n in sorted(leaders)}
    inputs = sum(int(stats.result(n).numel()) for n in leaders)
    return {"prefix": prefix, "dead": sum(dead.values()), "inputs": inputs,
            "layers_with_dead": {n: d for n, d in dead.items() if d}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_bench_options(parser)
    parser.add_argument("--prefixes", nargs="+", required=True)
    args = parser.parse_args()
    bench = bench_from_options(args)
    print(f"# dead inputs after each prefix: {bench.model_name}, {bench.protocol_id}, "
          f"{len(bench.calibration)} calibration windows, commit {code_commit()}")
    print("| prefix | dead inputs (distinct linear inputs) | of | linears' inputs with any |")
    print("|---|---|---|---|")
    for prefix in args.prefixes:
        r = count_dead(bench, prefix)
        print(f"| {r['prefix']} | {r['dead']} | {r['inputs']} | {len(r['layers_with_dead'])} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
