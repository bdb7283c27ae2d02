"""Quality benchmark on the embedded model (PROTOCOL.md orderings must hold).

Rows: dense; magnitude, Wanda and SparseGPT at 50% and 2:4; RTN and GPTQ at 8, 4 and 3 bits per
channel and 4 bits group 64; SparseGPT 50% then GPTQ 4 bits and the reverse. Prints perplexity and
compression seconds per row, then checks the orderings the reference implementations imply. A composed
row starts from its first stage's row when that is a row too (the same computation, done once); its
seconds are the sum of its stages'. The header and the JSON name the commit of the code that ran.

    python benchmarks/quality.py [--model smollm2-135m] [--protocol sotu-v1-quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch

from crescendo.api import summarize
from crescendo.options import add_bench_options, refused_in_one_line
from crescendo.recipe import parse_recipe
from crescendo.store import code_commit
from crescendo.workflow import bench_from_options

ROWS = [
    "magnitude:0.5", "wanda:0.5", "sparsegpt:0.5",
    "magnitude:2:4", "wanda:2:4", "sparsegpt:2:4",
    "rtn:w8", "gptq:w8", "rtn:w4", "gptq:w4", "rtn:w3", "gptq:w3", "rtn:w4,g64", "gptq:w4,g64",
    "sparsegpt:0.5 > gptq:w4", "gptq:w4 > sparsegpt:0.5",
]

ORDERINGS = [  # (better, worse, why): lower perplexity first
    ("sparsegpt:0.5", "magnitude:0.5", "SparseGPT far better than magnitude at 50%"),
    ("wanda:0.5", "magnitude:0.5", "Wanda far better than magnitude at 50%"),
    ("sparsegpt:2:4", "magnitude:2:4", "SparseGPT better than magnitude at 2:4"),
    ("wanda:2:4", "magnitude:2:4", "Wanda better than magnitude at 2:4"),
    ("gptq:w4", "rtn:w4", "GPTQ better than RTN at 4 bits"),
    ("gptq:w3", "rtn:w3", "GPTQ better than RTN at 3 bits"),
    ("gptq:w4", "gptq:w3", "GPTQ-4 better than GPTQ-3"),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_bench_options(parser)
    parser.add_argument("--rows", nargs="*", default=ROWS)
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args()
    with refused_in_one_line(parser):  # checked before the model loads: a bad row costs nothing
        for recipe in args.rows:
            parse_recipe(recipe)

    commit = code_commit()
    bench = bench_from_options(args)
    device = torch.cuda.get_device_name(0) if bench.device.startswith("cuda") else platform.processor() or "cpu"
    print(f"# quality: {bench.model_name}, protocol {bench.protocol.name}, float32, device {device}, "
          f"torch threads {torch.get_num_threads()}, code {commit}")
    dense = bench.dense()
    rows = [{"recipe": "dense", "perplexity": dense.perplexity, "compress_seconds": 0.0}]
    print(f"| {'recipe':<28} | {'perplexity':>10} | {'sparsity':>8} | {'bits':>6} | {'compress s':>10} |")
    print(f"|{'-' * 30}|{'-' * 12}|{'-' * 10}|{'-' * 8}|{'-' * 12}|")
    print(f"| {'dense':<28} | {dense.perplexity:>10.3f} | {0:>8.3f} | {16:>6.2f} | {0:>10.1f} |", flush=True)
    for run in bench.compress_tree(args.rows):  # a composed row starts from its first stage's row
        out_row = {"recipe": str(run.recipe), "perplexity": bench.evaluate(run.model).perplexity,
                   "compress_seconds": run.compress_seconds, **summarize(run.model).to_dict()}
        rows.append(out_row)
        print(f"| {out_row['recipe']:<28} | {out_row['perplexity']:>10.3f} | {out_row['sparsity']:>8.3f} | "
              f"{out_row['avg_weight_bits']:>6.2f} | {out_row['compress_seconds']:>10.1f} |", flush=True)
    ppl = {r["recipe"]: r["perplexity"] for r in rows}
    failures = 0
    print()
    for better, worse, why in ORDERINGS:
        if better in ppl and worse in ppl:
            ok = ppl[better] < ppl[worse]
            failures += not ok
            print(f"{'PASS' if ok else 'FAIL'}  {why}: {ppl[better]:.3f} < {ppl[worse]:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": bench.model_name, "protocol": bench.protocol.name, "device": device,
                       "threads": torch.get_num_threads(), "commit": commit,
                       "time": time.strftime("%Y-%m-%d %H:%M"), "rows": rows}, f, indent=2)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
