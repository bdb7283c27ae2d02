"""Harma et al.'s experiment on the embedded model: magnitude pruning (50% and 2:4) with max-scaled
block formats (MXFP8, MXFP6, MXFP4, HBFP8, HBFP6, INT8 block), S->Q against Q->S.

For every (pruning, format) pair: perplexity of each alone and of both orders, the orthogonality
verdict (composed per-linear output error vs the sum of the single errors) and the per-block error
through depth. Writes a Markdown table, a JSON file and one figure per pruning setting.

    python benchmarks/harma.py --out docs/results/harma [--protocol sotu-v1-quick]
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from crescendo.analysis.order import run_order_study, study_to_dict  # noqa: E402
from crescendo.options import add_bench_options
from crescendo.workflow import bench_from_options  # noqa: E402

PRUNING = ["magnitude:0.5", "magnitude:2:4"]
FORMATS = ["mxfp8", "mxfp6", "mxfp4", "hbfp8", "hbfp6", "int8b"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_bench_options(parser)
    parser.add_argument("--out", default="docs/results/harma")
    parser.add_argument("--layerwise-samples", type=int, default=4)
    parser.add_argument("--pruning", nargs="*", default=PRUNING)
    parser.add_argument("--formats", nargs="*", default=FORMATS)
    parser.add_argument("--from-json", default=None, help="re-render from a harma.json instead of measuring")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    if args.from_json:  # re-render the table and figures from an earlier run's JSON
        saved = json.loads(Path(args.from_json).read_text())
        model, protocol, device, results = saved["model"], saved["protocol"], saved["device"], saved["results"]
        args.pruning = list(dict.fromkeys(r["prune"] for r in results))
    else:
        bench = bench_from_options(args, layerwise_samples=args.layerwise_samples)
        model, protocol = bench.model_name, bench.protocol_id
        device = torch.cuda.get_device_name(0) if bench.device.startswith("cuda") else platform.processor() or "cpu"
        results = []
        memo: dict = {}  # dense and each single are measured once, not once per pair
        for prune in args.pruning:
            for fmt in args.formats:
                study = study_to_dict(run_order_study(bench, [prune, fmt], bits=(), layerwise=True, memo=memo))
                results.append({"prune": prune, "format": fmt, **study})
                print(f"{prune:>14} {fmt:>6}  S->Q {study['orders'][0]['perplexity']:.3f}", flush=True)
        (out / "harma.json").write_text(json.dumps({"model": model, "protocol": protocol,
                                                   "device": device, "results": results}, indent=1))
    lines = [f"# Harma et al.'s S->Q vs Q->S on {model} ({protocol}, {device})", "",
             f"Dense perplexity {results[0]['dense']:.3f}. A(S->Q) = ppl(Q->S) - ppl(S->Q): positive means "
             "pruning first is better. Orthogonal: the composed layer-wise output error (summed over every "
             "linear, on the dense model's inputs) is at most the sum of the single methods' errors; the "
             "ratio composed / sum is given, so a verdict on the boundary (a ratio near 1) reads as one.", "",
             "| pruning | format | S alone | Q alone | S->Q | Q->S | A(S->Q) | S->Q composed/sum | Q->S composed/sum |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        prune, fmt = r["prune"], r["format"]
        ppl = {" > ".join(o["order"]): o["perplexity"] for o in r["orders"]}
        sq, qs = ppl[f"{prune} > {fmt}"], ppl[f"{fmt} > {prune}"]
        orth = r["orthogonality"]

        def verdict(key: str) -> str:
            v = orth[key]
            return f"{v['composed_error'] / v['sum_single_errors']:.3f} ({'orth.' if v['orthogonal'] else 'NOT orth.'})"

        lines.append(f"| {prune} | {fmt} | {r['singles'][prune]:.3f} | {r['singles'][fmt]:.3f} | {sq:.3f} | {qs:.3f} | "
                     f"{qs - sq:+.3f} | {verdict(f'{prune} > {fmt}')} | {verdict(f'{fmt} > {prune}')} |")
    (out / "harma.md").write_text("\n".join(lines) + "\n")
    for prune in args.pruning:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for i, r in enumerate(x for x in results if x["prune"] == prune):
            colour = plt.cm.tab10(i)
            for key, style in ((f"{prune} > {r['format']}", "-"), (f"{r['format']} > {prune}", "--")):
                per_block = r["layer_errors"][key]["per_block"]
                ax.plot(range(1, len(per_block) + 1), per_block, style, color=colour,
                        label=f"{r['format']} {'S->Q' if style == '-' else 'Q->S'}")
        ax.set_yscale("log")
        ax.set_xlabel("decoder block")
        ax.set_ylabel("relative output error ||h' - h||^2 / ||h||^2")
        ax.set_title(f"Error through depth, {prune} with block formats\n{model}, {protocol}")
        ax.grid(alpha=0.3)
        ax.legend(ncol=2, fontsize=7)
        fig.tight_layout()
        fig.savefig(out / f"depth_{prune.replace(':', '_')}.png", dpi=130)
        plt.close(fig)


if __name__ == "__main__":
    main()
