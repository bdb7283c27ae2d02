"""Quantize-then-prune with and without zeros=pruned on the embedded model.

Low-bit RTN rounds many weights to exactly zero; a following pruner ranks those first, so
`rtn:w3 > sparsegpt:0.1` may prune nothing new. This measures, for each (bits, ratio), the
quantizer alone, Q > P as the sweep runs it, Q > P with zeros=pruned (the ratio pruned on top of the
quantizer's zeros) and P > Q, with the exact-zero fraction of each. Rows already in --store (the
order sweep's) are reused; new ones are added as kind "run" (the sweep report ignores them).

    python benchmarks/quant_zeros.py --store docs/results/order/order.sqlite --out docs/results/order/quant_zeros.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from crescendo.options import add_bench_options
from crescendo.store import ResultStore
from crescendo.sweep import measure
from crescendo.workflow import bench_from_options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_bench_options(parser)
    parser.add_argument("--bits", type=int, nargs="+", default=[3, 4])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.1, 0.2])
    parser.add_argument("--prune", default="sparsegpt")
    parser.add_argument("--store", default=None)
    parser.add_argument("--out", default="docs/results/order/quant_zeros.md")
    args = parser.parse_args()
    bench = bench_from_options(args)
    store = ResultStore(args.store) if args.store else None
    rows = []

    def get(recipe: str) -> dict:
        row = measure(bench, recipe, store)
        return {"recipe": row.recipe, "perplexity": row.metrics.perplexity,
                "zero_fraction": row.metrics.zero_fraction, "sparsity": row.metrics.sparsity}

    for b in args.bits:
        q = get(f"rtn:w{b}")
        for r in args.ratios:
            p = f"{args.prune}:{r:g}"
            cell = {"bits": b, "ratio": r, "quant_alone": q, "q_then_p": get(f"rtn:w{b} > {p}"),
                    "q_then_p_zeros_pruned": get(f"rtn:w{b} > {p},zeros=pruned"), "p_then_q": get(f"{p} > rtn:w{b}")}
            rows.append(cell)
            print(json.dumps({k: (v["perplexity"] if isinstance(v, dict) else v) for k, v in cell.items()}), flush=True)

    def z(m: dict) -> str:
        return "-" if m["zero_fraction"] is None else f"{100 * m['zero_fraction']:.1f}%"

    lines = [f"# Quantize-then-prune and the quantizer's zeros ({bench.model_name}, {bench.protocol_id})", "",
             "Perplexity (exact-zero fraction of the decoder-block weights). zeros=pruned: the weights RTN "
             "rounded to zero count as pruned and the ratio is pruned on top of them.", "",
             f"| RTN bits | {args.prune} ratio | Q alone | Q > P (default) | Q > P, zeros=pruned | P > Q |",
             "|---|---|---|---|---|---|"]
    for c in rows:
        cells = [c[k] for k in ("quant_alone", "q_then_p", "q_then_p_zeros_pruned", "p_then_q")]
        lines.append(f"| {c['bits']} | {c['ratio']:g} | " + " | ".join(f"{m['perplexity']:.3f} ({z(m)})" for m in cells) + " |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    Path(args.out).with_suffix(".json").write_text(json.dumps({**bench.describe(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
