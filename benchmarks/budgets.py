"""Budgets on the embedded model (issue 5): OBC's compound setting, the order of bit allocation, and
uniform-sum vs naive sampling in the budgeted search.

    python benchmarks/budgets.py --out docs/results/budgets --parts compound allocation search

compound    OBC (seed 000, Sec. 6): SparseGPT 2:4 plus weight quantization at several BOP-reduction
            targets. For each uniform bit-width b in --uniform-bits, 2:4 + RTN b bits sets a target
            (its BOP reduction) and a mixed allocation (output-error proxy on the pruned model,
            `allocate_bits` under BopReduction) is measured at the same target. The 2:4 model is
            computed once; every row quantizes a copy of it.
allocation  003 Figure 10: one mixed allocation (average weight bits --avg-bits, choices
            --alloc-bits) applied with GPTQ 8 -> 2 ("progressive") and 2 -> 8 ("regressive"), with
            A(prog -> regr). The same allocation with RTN is the control: RTN stages on disjoint
            layers commute, so its A must be exactly 0.
search      seed 004 Figure 8's question: the evolutionary search from uniform-sum and from naive
            uniform ratio sampling, same seed, generations and population, under --target-bops.
            Every configuration goes into <out>/search.sqlite; the Pareto fronts are plotted.

Each part writes <part>.md and <part>.json under --out.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from pathlib import Path

import torch

from crescendo.api import layer_costs, summarize
from crescendo.budget.allocation import (
    AvgBits,
    BopReduction,
    allocate_bits,
    allocation_recipe,
    progressive_vs_regressive,
)
from crescendo.budget.search import SearchConfig, plot_pareto, search
from crescendo.budget.sensitivity import hawq_v2_sensitivity, hessian_trace, output_error_proxy
from crescendo.options import add_bench_options
from crescendo.store import ResultStore
from crescendo.workflow import bench_from_options


def _header(bench, title: str) -> list[str]:
    device = torch.cuda.get_device_name(0) if bench.device.startswith("cuda") else platform.processor() or "cpu"
    return [f"# {title}", "", f"{bench.model_name}, protocol {bench.protocol_id}, {device}. Perplexity: lower is "
            "better. BOP reduction: dense W16A16 BOPs / compressed BOPs (2:4 halves the MACs, as in OBC).", ""]


def _proxy(bench, model, choices, samples: int):
    names = [c.name for c in layer_costs(model, storage=False)]
    with bench.compute():
        return output_error_proxy(model, bench.calibration[:samples], {n: list(choices) for n in names})


def _sensitivity(bench, model, choices, args):
    """Per-layer {bits: error}: the output-error proxy, or HAWQ-V2 (average Hessian trace of the
    calibration loss, Hutchinson, times the RTN weight perturbation), per --sensitivity."""
    if args.sensitivity == "proxy":
        return _proxy(bench, model, choices, args.proxy_samples)
    names = [c.name for c in layer_costs(model, storage=False)]
    traces = hessian_trace(model, bench.calibration[: args.hawq_samples], names, n_probes=args.hawq_probes)
    return hawq_v2_sensitivity(model, traces, list(choices))


def _sensitivity_text(args) -> str:
    if args.sensitivity == "proxy":
        return f"the output-error proxy on {args.proxy_samples} calibration windows"
    return (f"HAWQ-V2 (Hutchinson trace of the calibration loss, {args.hawq_probes} probes on "
            f"{args.hawq_samples} windows, float32)")


def _eval(bench, model) -> tuple[float, dict]:
    return bench.evaluate(model).perplexity, summarize(model).to_dict()


def compound(bench, args) -> dict:
    prune = "sparsegpt:2:4"
    start = time.perf_counter()
    base, _ = bench.compress(prune)
    prune_seconds = time.perf_counter() - start
    costs = {c.name: c for c in layer_costs(base, storage=False)}
    start = time.perf_counter()
    sensitivity = _sensitivity(bench, base, args.bits, args)
    sensitivity_seconds = time.perf_counter() - start
    rows = [{"setting": prune, "recipe": prune, **dict(zip(("perplexity", "summary"), _eval(bench, base)))}]
    for b in args.uniform_bits:
        model = copy.deepcopy(base)
        bench.compress_inplace(model, f"rtn:w{b}")
        ppl, summary = _eval(bench, model)
        rows.append({"setting": f"uniform {b} bits", "recipe": f"{prune} > rtn:w{b}", "perplexity": ppl,
                     "summary": summary})
        target = summary["bop_reduction"]
        bits = allocate_bits(sensitivity, costs, args.bits, BopReduction(target))
        recipe = allocation_recipe(bits, "rtn", "progressive")
        model = copy.deepcopy(base)
        bench.compress_inplace(model, recipe)
        ppl_mixed, summary_mixed = _eval(bench, model)
        histogram = {str(k): sum(1 for v in bits.values() if v == k) for k in sorted(set(bits.values()))}
        rows.append({"setting": f"mixed, target {target:.2f}x", "recipe": f"{prune} > {recipe}",
                     "perplexity": ppl_mixed, "summary": summary_mixed, "bits_histogram": histogram})
        print(f"compound 2:4 + {b} bits: uniform {ppl:.3f} ({target:.2f}x)  mixed {ppl_mixed:.3f} "
              f"({summary_mixed['bop_reduction']:.2f}x) {histogram}", flush=True)
        del model
    lines = _header(bench, "OBC's compound setting: SparseGPT 2:4 + uniform vs mixed RTN weight bits")
    lines += [f"SparseGPT 2:4 computed once ({prune_seconds:.0f} s); weights quantized per output channel "
              f"(asymmetric RTN); mixed bits from {{{','.join(map(str, args.bits))}}} chosen per linear by "
              f"{_sensitivity_text(args)} of the pruned model ({sensitivity_seconds:.0f} s).", "",
              "| setting | perplexity | BOP reduction | size reduction | avg weight bits | bits: layers |",
              "|---|---|---|---|---|---|"]
    for r in rows:
        s = r["summary"]
        hist = ", ".join(f"{k}: {v}" for k, v in r.get("bits_histogram", {}).items())
        lines.append(f"| {r['setting']} | {r['perplexity']:.3f} | {s['bop_reduction']:.2f}x | {s['size_reduction']:.2f}x | "
                     f"{s['avg_weight_bits']:.2f} | {hist} |")
    return {"rows": rows, "prune_seconds": prune_seconds, "sensitivity": args.sensitivity,
            "sensitivity_seconds": sensitivity_seconds, "lines": lines}


def allocation(bench, args) -> dict:
    costs = {c.name: c for c in layer_costs(bench.model, storage=False)}
    sensitivity = _proxy(bench, bench.model, args.alloc_bits, args.proxy_samples)
    bits = allocate_bits(sensitivity, costs, args.alloc_bits, AvgBits(args.avg_bits))
    histogram = {str(k): sum(1 for v in bits.values() if v == k) for k in sorted(set(bits.values()))}
    out = {"bits_histogram": histogram, "avg_bits": args.avg_bits}
    for method in ("rtn", "gptq"):
        start = time.perf_counter()
        result = progressive_vs_regressive(bench, bits, method=method)
        result["seconds"] = time.perf_counter() - start
        out[method] = result
        print(f"allocation {method}: progressive {-result['progressive']['metric']:.3f}  regressive "
              f"{-result['regressive']['metric']:.3f}  A(prog -> regr) {result['advantage']:+.3f}", flush=True)
    lines = _header(bench, "Order of mixed-precision allocation: progressive (8 -> 2) vs regressive (2 -> 8)")
    lines += [f"One allocation at {args.avg_bits:g} average weight bits from {{{','.join(map(str, args.alloc_bits))}}} "
              f"(output-error proxy on {args.proxy_samples} calibration windows of the dense model), layers per "
              f"bit-width: {', '.join(f'{k} bits: {v}' for k, v in histogram.items())}. Each bit-width is one stage; "
              "A(prog -> regr) = M(prog) - M(regr) with M = -perplexity, so A > 0 means progressive wins.", "",
              "| quantizer | progressive | regressive | A(prog -> regr) | seconds (both) |", "|---|---|---|---|---|"]
    for method in ("rtn", "gptq"):
        r = out[method]
        lines.append(f"| {method} | {-r['progressive']['metric']:.3f} | {-r['regressive']['metric']:.3f} | "
                     f"{r['advantage']:+.3f} | {r['seconds']:.0f} |")
    out["lines"] = lines
    return out


def search_part(bench, args, out_dir: Path) -> dict:
    runs, out = {}, {}
    with ResultStore(out_dir / "search.sqlite") as store:
        for sampler in ("uniform-sum", "uniform"):
            config = SearchConfig(target_bops=args.target_bops, sampler=sampler, generations=args.generations,
                                  population=args.population, seed=args.seed, prune=args.search_prune)
            result = search(bench, config, store=store)
            runs[sampler] = result
            per_generation = []
            for g in range(args.generations + 1):
                seen = [p.perplexity for p in result.evaluated if p.generation <= g]
                per_generation.append(min(seen))
            out[sampler] = {"best": result.best.to_dict(), "best_by_generation": per_generation,
                            "evaluated": len(result.evaluated), "sum_range": list(result.sum_range),
                            "seconds": result.seconds,
                            "initial_mean_ppl": sum(p.perplexity for p in result.evaluated if p.generation == 0)
                            / max(1, sum(1 for p in result.evaluated if p.generation == 0))}
            print(f"search {sampler}: best {result.best.perplexity:.3f} at {result.best.bop_reduction:.2f}x, "
                  f"by generation {[round(x, 2) for x in per_generation]}", flush=True)
    plot_pareto(runs, out_dir / "search_pareto.png")
    lines = _header(bench, f"Budgeted search: uniform-sum vs naive ratio sampling (target {args.target_bops:g}x BOPs)")
    lines += [f"Evolutionary search over per-block ({args.search_prune} ratio or 2:4, RTN bits 2..8), population "
              f"{args.population}, {args.generations} generations after the initial one, seed {args.seed}; the same "
              "search with the initial pruning ratios drawn by seed 004's Algorithm 1 (uniform-sum) or independently "
              "per block (uniform). Best perplexity found so far after each generation:", "",
              "| sampler | " + " | ".join(f"gen {g}" for g in range(args.generations + 1)) + " | mean ppl of gen 0 | "
              "configurations | best BOP reduction | seconds |",
              "|---" * (args.generations + 6) + "|"]
    for sampler, r in out.items():
        lines.append(f"| {sampler} | " + " | ".join(f"{x:.3f}" for x in r["best_by_generation"]) +
                     f" | {r['initial_mean_ppl']:.3f} | {r['evaluated']} | {r['best']['bop_reduction']:.2f}x | "
                     f"{r['seconds']:.0f} |")
    lines += ["", "![Pareto fronts](search_pareto.png)", ""]
    for sampler, r in out.items():
        lines.append(f"Best {sampler} recipe: `{r['best']['recipe']}`")
        lines.append("")
    out["lines"] = lines
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_bench_options(parser)
    parser.add_argument("--out", default="docs/results/budgets")
    parser.add_argument("--parts", nargs="+", default=["compound", "allocation", "search"],
                        choices=["compound", "allocation", "search"])
    parser.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4, 5, 6, 7, 8], help="mixed-precision choices")
    parser.add_argument("--uniform-bits", type=int, nargs="+", default=[8, 6, 5, 4, 3])
    parser.add_argument("--proxy-samples", type=int, default=8)
    parser.add_argument("--sensitivity", default="proxy", choices=["proxy", "hawq"],
                        help="per-layer sensitivity for the compound allocation (output files get a _hawq suffix)")
    parser.add_argument("--hawq-samples", type=int, default=2)
    parser.add_argument("--hawq-probes", type=int, default=8)
    parser.add_argument("--alloc-bits", type=int, nargs="+", default=[3, 4, 6, 8])
    parser.add_argument("--avg-bits", type=float, default=4.0)
    parser.add_argument("--target-bops", type=float, default=8.0)
    parser.add_argument("--generations", type=int, default=3)
    parser.add_argument("--population", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--search-prune", default="magnitude")
    args = parser.parse_args()
    for option in ("proxy_samples", "hawq_samples", "hawq_probes"):  # before the model loads and prunes
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be >= 1, got {getattr(args, option)}")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    bench = bench_from_options(args)
    for part in args.parts:
        result = {"compound": lambda: compound(bench, args), "allocation": lambda: allocation(bench, args),
                  "search": lambda: search_part(bench, args, out_dir)}[part]()
        lines = result.pop("lines")
        name = f"{part}_hawq" if part == "compound" and args.sensitivity == "hawq" else part
        (out_dir / f"{name}.md").write_text("\n".join(lines) + "\n")
        (out_dir / f"{name}.json").write_text(json.dumps({**bench.describe(), **result}, indent=1, default=str))


if __name__ == "__main__":
    main()
