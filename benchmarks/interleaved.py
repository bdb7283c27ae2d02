"""Stagewise vs interleaved composition on the quality benchmark's composed recipes.

    python benchmarks/interleaved.py [bench options] --out docs/results/beyond

For each recipe and mode: perplexity, compression wall seconds and process CPU seconds (CPU time is
less sensitive to other processes on a shared machine than wall time), and the block runs the mode
needs by construction. Writes interleaved.json and interleaved.md naming the protocol and commit.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

from beyond import COMMIT  # the commit of the code that runs

from crescendo.api import compress
from crescendo.models.adapters import get_adapter
from crescendo.options import add_bench_options
from crescendo.recipe import parse_recipe
from crescendo.workflow import bench_from_options

RECIPES = ["sparsegpt:0.5 > gptq:w4", "gptq:w4 > sparsegpt:0.5"]  # benchmarks/quality.py's composed rows


def block_runs(mode: str, calibrated_stages: int, blocks: int) -> int:
    """Block forward passes over the calibration set (captures excluded), by construction."""
    if mode == "stagewise":
        return calibrated_stages * (2 * blocks - 1)
    return (calibrated_stages + 1) * blocks - 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_bench_options(parser)
    parser.add_argument("--out", default="docs/results/beyond")
    parser.add_argument("--recipes", nargs="+", default=RECIPES)
    args = parser.parse_args()
    bench = bench_from_options(args)
    dense = bench.dense().perplexity
    n_blocks = len(get_adapter(bench.model).blocks(bench.model))
    rows = []
    for recipe in args.recipes:
        for mode in ("stagewise", "interleaved"):
            model = copy.deepcopy(bench.model)
            wall, cpu = time.perf_counter(), time.process_time()
            with bench.compute():
                result = compress(model, recipe, bench.calibration, progress=False,
                                  calibration_batch_size=bench.calibration_batch_size, mode=mode)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            ppl = bench.evaluate(model).perplexity
            calibrated = sum(s.spec.calibrated for s in result.recipe.stages)
            rows.append({"recipe": str(result.recipe), "mode": mode, "perplexity": ppl, "compress_wall_s": wall,
                         "compress_cpu_s": cpu, "block_runs": block_runs(mode, calibrated, n_blocks),
                         "captures": calibrated if mode == "stagewise" else 1, **result.summary.to_dict()})
            print(f"{mode:<12} {str(result.recipe):<28} ppl {ppl:9.3f}  wall {wall:7.1f} s  cpu {cpu:7.1f} s",
                  file=sys.stderr, flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    head = {"experiment": "interleaved", "commit": COMMIT, "model": bench.model_name, "protocol": bench.protocol.name,
            "dtype": bench.dtype, "dense_perplexity": dense, "blocks": n_blocks}
    (out / "interleaved.json").write_text(json.dumps({**head, "rows": rows}, indent=2))
    md = ["# interleaved", "", f"Model {head['model']}, protocol `{head['protocol']}` (compute {head['dtype']}), "
          f"commit `{COMMIT}`. Dense perplexity {dense:.3f}. Wall and CPU seconds were measured on a shared "
          "2-core machine under load from other processes: read them as rough; the block runs are exact.", "",
          "| recipe | mode | perplexity | compress wall s | compress CPU s | block runs | captures |",
          "|---|---|---|---|---|---|---|"]
    md += [f"| `{r['recipe']}` | {r['mode']} | {r['perplexity']:.3f} | {r['compress_wall_s']:.0f} | "
           f"{r['compress_cpu_s']:.0f} | {r['block_runs']} | {r['captures']} |" for r in rows]
    by = {(r["recipe"], r["mode"]): r["perplexity"] for r in rows}
    if len(args.recipes) == 2:
        a, b = (str(parse_recipe(x)) for x in args.recipes)
        md += ["", "Order advantage A(first recipe's first stage first) = ppl(second) - ppl(first):"]
        for mode in ("stagewise", "interleaved"):
            md.append(f"- {mode}: {by[(b, mode)] - by[(a, mode)]:+.3f}")
    (out / "interleaved.md").write_text("\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
