"""003's Table 4 on the embedded model: SparseGPT and SLEB at several ratios, with and without
QuaRot-style rotation (perplexity; Difference = rotated - unrotated).

    python benchmarks/rotation_pruning.py --out docs/results/table4.md [--methods sparsegpt sleb] [--store F]

A method may carry its own ratios after "@" (`"sleb:{r},samples=4@0.0333,0.0667"`); the others use
--ratios, and a cell a method does not measure is left empty.

With --store, rows already in the results store (same model, protocol and recipe, e.g. from the
Table 1 sweep) are reused and new ones are added.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from crescendo.errors import ConfigError
from crescendo.options import add_bench_options, refused_in_one_line
from crescendo.recipe import parse_recipe
from crescendo.store import ResultStore
from crescendo.sweep import measure
from crescendo.workflow import bench_from_options

RATIOS = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_bench_options(parser)
    parser.add_argument("--methods", nargs="*", default=["sparsegpt", "sleb"],
                        help="pruning methods, or templates over {r} such as sleb:{r},samples=4, optionally "
                             "with their own ratios after @ (sleb@0.0333,0.0667)")
    parser.add_argument("--ratios", nargs="*", type=float, default=RATIOS)
    parser.add_argument("--out", default="docs/results/table4.md")
    parser.add_argument("--store", default=None, help="results store to reuse and extend")
    args = parser.parse_args()
    with refused_in_one_line(parser):  # every recipe is checked before the model loads: a bad one costs nothing
        plan = [_method_ratios(m, args.ratios) for m in args.methods]
        for method, method_ratios in plan:
            for r in method_ratios:
                parse_recipe(f"rotate > {_stage(method, r)}")
    bench = bench_from_options(args)
    store = ResultStore(args.store) if args.store else None
    device = torch.cuda.get_device_name(0) if bench.device.startswith("cuda") else platform.processor() or "cpu"
    dense = measure(bench, "dense", store, kind="dense").metrics.perplexity
    methods = [m for m, _ in plan]
    ratios = sorted({r for _, rs in plan for r in rs})
    rows = {}
    for method, method_ratios in plan:
        for r in method_ratios:
            stage = _stage(method, r)
            plain = measure(bench, stage, store).metrics.perplexity
            rotated = measure(bench, f"rotate > {stage}", store).metrics.perplexity
            rows[(method, r)] = (plain, rotated)
            print(f"{stage}  no rotation {plain:.3f}  rotation {rotated:.3f}", flush=True)
    head = " | ".join(f"{m} no rot. | {m} rot. | {m} diff." for m in methods)
    lines = [f"# Table 4 analogue: pruning with and without rotation ({bench.model_name}, {bench.protocol_id}, "
             f"{device})", "", f"Dense perplexity {dense:.3f}. SLEB ratio = fraction of the "
             f"{len(bench.model.model.layers)} decoder blocks removed (rounded to whole blocks).", "",
             f"| ratio | {head} |", "|---" * (1 + 3 * len(methods)) + "|"]
    for r in ratios:
        cells = " | ".join(_cells(rows.get((m, r))) for m in methods)
        lines.append(f"| {r:g} | {cells} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    Path(args.out).with_suffix(".json").write_text(json.dumps(
        {"dense": dense, "device": device, "rows": [{"method": m, "ratio": r, "plain": p, "rotated": q}
                                                    for (m, r), (p, q) in rows.items()]}, indent=1))


def _method_ratios(text: str, default: list[float]) -> tuple[str, list[float]]:
    """"template@r1,r2" -> (template, [r1, r2]); a bare template takes the default ratios."""
    method, sep, ratios = text.rpartition("@")
    if not sep:
        return text, list(default)
    try:
        return method, [float(r) for r in ratios.split(",")]
    except ValueError:
        raise ConfigError(f"bad ratio list {ratios!r} in --methods {text!r}") from None


def _stage(method: str, ratio: float) -> str:
    return method.format(r=f"{ratio:g}") if "{" in method else f"{method}:{ratio:g}"


def _cells(row: tuple[float, float] | None) -> str:
    if row is None:
        return " |  | "
    plain, rotated = row
    return f"{plain:.3f} | {rotated:.3f} | {rotated - plain:+.3f}"


if __name__ == "__main__":
    main()
