"""The seeds' vision experiments on the fmnist-v1 reference models (issue 14). Each part writes
<out>/<part>.md and <part>.json and keeps its measurements in <out>/<part>.sqlite, so a rerun
resumes: a measured configuration is read back, not recomputed.

    python benchmarks/vision_experiments.py --parts allocation compound actsearch

allocation  003's Figure 10 in its own setting: HAWQ-V2 bit allocation on the ResNet from {2..8}
            bits at several average bit-widths (total compression ratio C = 16 / average bits),
            applied one bit-width at a time 8 -> 2 ("progressive") and 2 -> 8 ("regressive"),
            with a short fine-tune after each step (--finetune-epochs; quantized layers frozen on
            their grids, the rest trains) and without one (GPTQ stages: the calibration of later
            stages sees the earlier ones; RTN stages without fine-tune commute, A = 0 exactly, the
            control). A(prog -> regr) = M(prog) - M(regr) per ratio.
compound    seed 000 (OBC, App. A.10) on the ResNet: batch norms folded, SparseGPT 2:4, then per-layer
            bits (output-error proxy on the pruned model, allocated under a BOP-reduction target)
            against uniform bits at the same BOPs, for RTN and GPTQ.
actsearch   seed 004 (MixA-Q, Tab. 6 / Fig. 8) on the ViT: per-block ratios of tokens at low bits
            (base 4, low 2), evolutionary search from uniform-sum and from naive sampling, fitness on
            2,000 held-out training images; after two generations, test accuracy against
            equivalent bits (eqs. 3-5) and the Pareto fronts, with uniform 4/3/2-bit baselines.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import time
from pathlib import Path

import torch

from crescendo import __version__
from crescendo.api import layer_costs
from crescendo.budget.act_search import ActSearchConfig, ActSpace, front, search_act_ratios
from crescendo.budget.allocation import AvgBits, BopReduction, allocate_bits, allocation_recipe
from crescendo.budget.sensitivity import hawq_v2_sensitivity, hessian_trace, output_error_proxy
from crescendo.data.images import load_image_dataset
from crescendo.eval.accuracy import accuracy
from crescendo.recipe import Recipe, parse_recipe
from crescendo.store import ResultStore, RunMetrics, code_commit, record_run, run_key
from crescendo.sweep import measure
from crescendo.vision.bench import VisionWorkbench, file_sha256
from crescendo.vision.finetune import FinetuneConfig, finetune_

MODELS = "docs/results/vision/models"


def _header(bench, title: str, command: str) -> list[str]:
    source = Path(bench.source)
    sha = file_sha256(source / "model.safetensors")
    return [f"# {title}", "", f"Model `{bench.model_name}` (`{source}/model.safetensors`, sha256 `{sha}`), protocol "
            f"{bench.protocol.describe()}. M = top-1 accuracy (%), higher is better. Float32, one torch thread, "
            f"2 shared CPU cores. crescendo {__version__} at commit {code_commit()}.", "",
            f"Command: `{command}`", ""]


def _bits_histogram(bits: dict[str, int]) -> str:
    return ", ".join(f"{b}b: {sum(1 for v in bits.values() if v == b)}" for b in sorted(set(bits.values()), reverse=True))


# -- allocation (003, Figure 10) -----------------------------------------------------------------
def _stages_in_order(bits: dict[str, int], method: str, order: str) -> list[str]:
    return [s.text for s in parse_recipe(allocation_recipe(bits, method, order)).stages]


def allocation(bench, args, out: Path, command: str) -> dict:
    model = bench.model
    names = [c.name for c in layer_costs(model, storage=False)]
    labels = bench.data.calibration_labels.split(bench.protocol.calibration_batch_size)
    batches = bench.calibration[: args.hawq_batches]
    start = time.perf_counter()
    traces = hessian_trace(model, batches, names, n_probes=args.hawq_probes, labels=list(labels[: len(batches)]))
    trace_seconds = time.perf_counter() - start
    choices = list(range(2, 9))
    omega = hawq_v2_sensitivity(model, traces, choices)
    costs = {c.name: c for c in layer_costs(model, storage=False)}
    data = load_image_dataset(bench.protocol.dataset, args.data_dir)
    ft = FinetuneConfig(epochs=args.finetune_epochs)
    ft_protocol = f"{bench.protocol_id}+finetune({args.finetune_epochs:g}ep/stage)"
    rows, out_json = [], {"traces": traces, "trace_seconds": trace_seconds, "finetune": vars(ft)}
    with ResultStore(out / "allocation.sqlite") as store:
        for avg in args.avg_bits:
            bits = allocate_bits(omega, costs, choices, AvgBits(avg))
            entry = {"avg_bits": avg, "ratio": 16.0 / avg, "bits": bits, "histogram": _bits_histogram(bits)}
            for label, method, tune in (("gptq", "gptq", False), ("rtn", "rtn", False), ("rtn+ft", "rtn", True)):
                for order in ("progressive", "regressive"):
                    stages = _stages_in_order(bits, method, order)
                    recipe = " > ".join(stages)
                    protocol = ft_protocol if tune else bench.protocol_id
                    key = run_key(bench.model_name, protocol, recipe, 0, __version__)
                    found = store.get(key)
                    if found is None:
                        began = time.perf_counter()
                        m = copy.deepcopy(model)
                        losses = []
                        for k, stage in enumerate(stages):
                            bench.compress_inplace(m, Recipe((parse_recipe(stage).stages[0],)))
                            if tune:
                                losses.append(finetune_(m, data, ft, seed=k)["loss"])
                        m.eval()
                        measured = bench.measure(m)
                        found = record_run(store, model=bench.model_name, protocol=protocol, recipe=recipe, seed=0,
                                           kind="run", metrics=measured.metrics, units=measured.units,
                                           timings={"seconds": time.perf_counter() - began},
                                           extra={"part": "allocation", "avg_bits": avg, "order": order, "method": method,
                                                  "finetune_epochs": args.finetune_epochs if tune else 0,
                                                  "finetune_losses": losses, "bits": bits})
                        del m
                    entry[f"{label}:{order}"] = found.metrics.metric
                entry[f"A {label}"] = entry[f"{label}:progressive"] - entry[f"{label}:regressive"]
                print(f"allocation avg {avg:g} bits {label}: prog {entry[f'{label}:progressive']:.2f} regr "
                      f"{entry[f'{label}:regressive']:.2f} A {entry[f'A {label}']:+.2f}", flush=True)
            rows.append(entry)
    out_json["rows"] = rows
    dense = bench.dense().accuracy
    lines = _header(bench, "003 Figure 10 on resnet-mini: progressive (8 -> 2) vs regressive (2 -> 8) bit allocation",
                    command)
    lines += [f"HAWQ-V2: average Hessian trace of the calibration cross-entropy per block conv (Hutchinson, "
              f"{args.hawq_probes} Rademacher probes on {len(batches)} calibration batches of 32, {trace_seconds:.0f} s), "
              f"Omega_l(b) = Tr(H_l)/n_l * ||Q_b(W_l) - W_l||^2 with per-channel RTN; one allocation per average "
              f"bit-width from {{2..8}} (`allocate_bits`, AvgBits), the same final allocation in both orders. Each "
              f"bit-width is one stage. Fine-tune: {args.finetune_epochs:g} epoch of the 60,000 training images after "
              f"every stage, SGD Nesterov lr {ft.lr} cosine to 0, batch {ft.batch_size}, crop + flip, quantized "
              f"layers frozen on their grids, batch norms kept (not folded) and trained. Dense accuracy {dense:.2f}%.",
              "", "A(prog -> regr) = M(progressive) - M(regressive): > 0 means 8 -> 2 wins, as the hypothesis "
              "predicts.", "",
              "| avg bits | C | layers per bit-width | GPTQ prog | GPTQ regr | A (GPTQ, no FT) | RTN prog | RTN regr "
              "| A (RTN, no FT) | RTN+FT prog | RTN+FT regr | A (RTN + FT) |", "|---" * 12 + "|"]
    for r in rows:
        lines.append(f"| {r['avg_bits']:g} | {r['ratio']:.2f} | {r['histogram']} | {r['gptq:progressive']:.2f} | "
                     f"{r['gptq:regressive']:.2f} | {r['A gptq']:+.2f} | {r['rtn:progressive']:.2f} | "
                     f"{r['rtn:regressive']:.2f} | {r['A rtn']:+.2f} | {r['rtn+ft:progressive']:.2f} | "
                     f"{r['rtn+ft:regressive']:.2f} | {r['A rtn+ft']:+.2f} |")
    _plot_allocation(rows, out / "allocation.png")
    lines += ["", "![A by compression ratio](allocation.png)", ""]
    out_json["lines"] = lines
    return out_json


def _plot_allocation(rows: list[dict], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 3.6), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    xs = [r["ratio"] for r in rows]
    for label, key, marker in (("RTN + fine-tune", "A rtn+ft", "o"), ("GPTQ, no fine-tune", "A gptq", "s"),
                               ("RTN, no fine-tune (control)", "A rtn", "^")):
        ax.plot(xs, [r[key] for r in rows], marker=marker, label=label)
    ax.axhline(0, color="0.4", linewidth=0.8)
    ax.set_xlabel("total compression ratio C = 16 / average bits")
    ax.set_ylabel("A(prog -> regr), accuracy points")
    ax.set_title("resnet-mini, fmnist-v1: progressive vs regressive")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, bbox_inches="tight")


# -- compound (seed 000) -------------------------------------------------------------------------
def compound(bench, args, out: Path, command: str) -> dict:
    prune = "foldbn > sparsegpt:2:4"
    base, _ = bench.compress(prune)
    costs = {c.name: c for c in layer_costs(base, storage=False)}
    choices = list(range(2, 9))
    proxy = output_error_proxy(base, bench.calibration[: args.proxy_batches], {n: choices for n in costs})
    rows = []
    with ResultStore(out / "compound.sqlite") as store:
        dense = measure(bench, "dense", store, kind="dense")
        rows.append({"setting": "dense", "recipe": "dense", "row": dense})
        rows.append({"setting": "2:4 alone", "recipe": prune, "row": measure(bench, prune, store, kind="run")})
        for method in ("rtn", "gptq"):
            for b in args.uniform_bits:
                uniform = f"{prune} > {method}:w{b}"
                u = measure(bench, uniform, store, kind="run", extra={"method": method, "uniform_bits": b})
                target = u.metrics.bop_reduction
                bits = allocate_bits(proxy, costs, choices, BopReduction(target))
                mixed = f"{prune} > {allocation_recipe(bits, method, 'progressive')}"
                x = measure(bench, mixed, store, kind="run",
                            extra={"method": method, "target_bops": target, "bits": bits})
                rows.append({"setting": f"{method} uniform {b} bits", "recipe": uniform, "row": u})
                rows.append({"setting": f"{method} mixed at {target:.2f}x", "recipe": mixed, "row": x,
                             "histogram": _bits_histogram(bits)})
                print(f"compound {method} {b} bits: uniform {u.metrics.accuracy:.2f} ({target:.2f}x)  mixed "
                      f"{x.metrics.accuracy:.2f} ({x.metrics.bop_reduction:.2f}x) {_bits_histogram(bits)}", flush=True)
    lines = _header(bench, "Seed 000's compound setting on resnet-mini: 2:4 + uniform vs per-layer weight bits",
                    command)
    lines += [f"Batch norms folded into the convs, SparseGPT 2:4 on every block conv (N:M along the flattened "
              f"in x kh x kw axis), then weight quantization (per output channel, asymmetric). Uniform: every block "
              f"conv at B bits; its BOP reduction is the target. Mixed: bits from {{2..8}} per conv, allocated "
              f"(`allocate_bits`, BopReduction) by the output-error proxy tr(dW H dW^T) of RTN on the pruned model "
              f"({args.proxy_batches} calibration batches), quantized 8 -> 2. BOPs: MACs per image (a conv's "
              f"H_out x W_out positions) x weight bits x 16-bit activations, 2:4 halving the MACs (OBC); the stem "
              f"conv and the head stay dense and are not counted.", "",
              "| setting | accuracy | BOP reduction | size reduction | avg weight bits | bits: layers |",
              "|---|---|---|---|---|---|"]
    for r in rows:
        m = r["row"].metrics
        lines.append(f"| {r['setting']} | {m.accuracy:.2f} | {m.bop_reduction or 1:.2f}x | {m.size_reduction or 1:.2f}x | "
                     f"{m.avg_weight_bits or 16:.2f} | {r.get('histogram', '')} |")
    return {"rows": [{"setting": r["setting"], "recipe": r["recipe"], "metrics": r["row"].metrics.to_dict(),
                      "histogram": r.get("histogram")} for r in rows], "lines": lines}


# -- actsearch (seed 004) ------------------------------------------------------------------------
def actsearch(bench, args, out: Path, command: str) -> dict:
    data = load_image_dataset(bench.protocol.dataset, args.data_dir)
    calibration = set(bench.protocol.calibration_indices(data.train_images.shape[0]))
    rest = [i for i in range(data.train_images.shape[0]) if i not in calibration]
    held = torch.tensor(sorted(random.Random(1).sample(rest, args.search_images)))
    images, labels = data.normalize(data.train_images[held]), data.train_labels[held]
    space = ActSpace(bench.model, args.base_bits, args.low_bits)
    search_protocol = f"fmnist-train-heldout{args.search_images}-seed1"
    results, evaluated = {}, {}
    with ResultStore(out / "actsearch.sqlite") as store:
        def fitness(recipe: str) -> float:
            key = run_key(bench.model_name, search_protocol, recipe, 0, __version__)
            row = store.get(key)
            if row is None:
                model, _ = bench.compress(recipe)
                result = accuracy(model, images, labels)
                row = record_run(store, model=bench.model_name, protocol=search_protocol, recipe=recipe, seed=0,
                                 kind="search", metrics=RunMetrics.from_accuracy(result.accuracy))
            return row.metrics.metric

        baselines = {}
        for b in (args.base_bits, args.base_bits - 1, args.low_bits):
            recipe = f"act:a{b}"
            test = measure(bench, recipe, store, kind="run").metrics.accuracy
            baselines[b] = {"recipe": recipe, "eq_bits": float(b), "search_accuracy": fitness(recipe),
                            "test_accuracy": test}
        for sampler in ("uniform-sum", "uniform"):
            config = ActSearchConfig(args.base_bits, args.low_bits, sampler, population=args.population,
                                     generations=args.generations, seed=args.seed)
            points = search_act_ratios(space, config, fitness)
            evaluated[sampler] = points
            pareto = front(points)
            tested = []
            for p in pareto:
                test = measure(bench, p.recipe, store, kind="run", extra={"sampler": sampler}).metrics.accuracy
                tested.append({**p.to_dict(), "test_accuracy": test})
            results[sampler] = {"evaluated": [p.to_dict() for p in points], "front": tested,
                                "sum_range": list(space.sum_range(config.cost_range))}
            print(f"actsearch {sampler}: {len(points)} configurations, front "
                  + ", ".join(f"{t['eq_bits']:.2f}b {t['accuracy']:.2f}/{t['test_accuracy']:.2f}" for t in tested),
                  flush=True)
    table6 = []
    for target in args.eq_targets:
        row = {"target": target}
        for sampler, r in results.items():
            fit = [t for t in r["front"] if t["eq_bits"] <= target + 1e-9]
            best = max(fit, key=lambda t: t["accuracy"]) if fit else None
            row[sampler] = best
        table6.append(row)
    _plot_fronts(results, baselines, out / "actsearch_pareto.png")
    lines = _header(bench, "Seed 004's Table 6 / Figure 8 on vit-mini: uniform-sum vs naive sampling", command)
    lines += [f"Per block, a ratio r in {{0, 0.1, ..., 0.8}} of each image's tokens (the lowest-L2-norm ones at "
              f"each linear's input) quantized at {args.low_bits} bits, the others at {args.base_bits} bits (`mixact`, "
              f"per-token symmetric, dynamic; weights stay float). Equivalent bits: eq. 5 with MixA-Q's ratios "
              f"1 - r/2 (eq. 3), GMACs_i = the block's linear MACs per image ({space.gmacs[0] * 1e3:.3f} MMACs each; "
              f"attention's two matmuls not counted), C = patch embedding + head ({space.fixed_gmacs * 1e3:.3f} MMACs). "
              f"Evolutionary search, population {args.population}, {args.generations} generations after the initial one, "
              f"seed {args.seed}; initial ratios by uniform-sum sampling (Algorithm 1, sum range "
              f"{results['uniform-sum']['sum_range']} from relative costs [0.65, 0.95] as App. 6.1) or naive uniform "
              f"sampling. Fitness: accuracy on {args.search_images} training images outside the calibration set "
              f"(seed 1), never the test set; the Pareto fronts are then measured on the test set.", "",
              "Table 6 analogue: per equivalent-bit budget, the front point with the best search accuracy within it; "
              "test accuracy (search accuracy).", "",
              "| eq. bits <= | uniform-sum | naive uniform |", "|---|---|---|"]
    for row in table6:
        def show(t):
            return "-" if t is None else f"{t['test_accuracy']:.2f} ({t['accuracy']:.2f}) at {t['eq_bits']:.2f}"
        lines.append(f"| {row['target']:g} | {show(row['uniform-sum'])} | {show(row['uniform'])} |")
    lines += ["", "Uniform baselines (every token at one bit-width): " + ", ".join(
        f"a{b}: test {v['test_accuracy']:.2f} (search {v['search_accuracy']:.2f})" for b, v in baselines.items()),
        "", "![Pareto fronts](actsearch_pareto.png)", ""]
    for sampler, r in results.items():
        lines.append(f"Front, {sampler} (eq. bits: test / search accuracy): " + ", ".join(
            f"{t['eq_bits']:.2f}: {t['test_accuracy']:.2f} / {t['accuracy']:.2f}" for t in r["front"]))
        lines.append("")
    return {"results": results, "baselines": baselines, "table6": table6, "gmacs": space.gmacs,
            "fixed_gmacs": space.fixed_gmacs, "lines": lines}


def _plot_fronts(results: dict, baselines: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for k, (sampler, r) in enumerate(results.items()):
        pts = r["evaluated"]
        ax.scatter([p["eq_bits"] for p in pts], [p["accuracy"] for p in pts], s=12, alpha=0.35, color=f"C{k}")
        f = sorted(r["front"], key=lambda t: t["eq_bits"])
        ax.step([t["eq_bits"] for t in f], [t["accuracy"] for t in f], where="post", marker="o", color=f"C{k}",
                label=f"{sampler} ({len(pts)} configurations)")
    ax.scatter([v["eq_bits"] for v in baselines.values()], [v["search_accuracy"] for v in baselines.values()],
               marker="x", color="k", s=40, label="uniform bits (PTQ baseline)")
    ax.set_xlabel("equivalent activation bits (eq. 5)")
    ax.set_ylabel("accuracy on the held-out search images (%)")
    ax.set_title("vit-mini: Pareto fronts after two generations")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, bbox_inches="tight")


PARTS = {"allocation": ("fmnist-resnet-mini-s0", allocation), "compound": ("fmnist-resnet-mini-s0", compound),
         "actsearch": ("fmnist-vit-mini-s0", actsearch)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/results/vision")
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS))
    parser.add_argument("--models", default=MODELS, help="directory holding the reference models")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--avg-bits", type=float, nargs="+", default=[6.0, 4.0, 3.0, 2.5])
    parser.add_argument("--finetune-epochs", type=float, default=0.1, help="fine-tune after each allocation step")
    parser.add_argument("--hawq-probes", type=int, default=32)
    parser.add_argument("--hawq-batches", type=int, default=4)
    parser.add_argument("--uniform-bits", type=int, nargs="+", default=[8, 6, 5, 4, 3, 2])
    parser.add_argument("--proxy-batches", type=int, default=8)
    parser.add_argument("--base-bits", type=int, default=4)
    parser.add_argument("--low-bits", type=int, default=2)
    parser.add_argument("--population", type=int, default=12)
    parser.add_argument("--generations", type=int, default=2)
    parser.add_argument("--search-images", type=int, default=2000)
    parser.add_argument("--eq-targets", type=float, nargs="+", default=[3.5, 3.25, 3.0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/vision_experiments.py " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in vars(args).items() if v is not None and k not in ("out", "models"))
    for part in args.parts:
        name, run = PARTS[part]
        bench = VisionWorkbench.load(str(Path(args.models) / name), "fmnist-v1", device="cpu", progress=False,
                                     data_dir=args.data_dir)
        result = run(bench, args, out, command)
        lines = result.pop("lines")
        (out / f"{part}.md").write_text("\n".join(lines) + "\n")
        (out / f"{part}.json").write_text(json.dumps({**bench.describe(), "command": command, "commit": code_commit(),
                                                      **result}, indent=1, default=str))


if __name__ == "__main__":
    main()
