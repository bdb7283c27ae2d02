"""The command line: parse, build configs, call one library function, render. Bad input exits 2."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from collections.abc import Callable, Sequence

from . import __version__
from .errors import CrescendoError

log = logging.getLogger("crescendo")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit code 2 (argparse prints usage too)
        self.exit(2, f"crescendo: error: {message}\n")


def _common(p: argparse.ArgumentParser, recipe: bool = False) -> None:
    p.add_argument("--model", default="smollm2-135m", help="hub id, local directory, .gguf file or smollm2-135m")
    p.add_argument("--protocol", default="sotu-v1-quick",
                   help="sotu-v1-quick (default), sotu-v1-full, wikitext2, c4, or a corpus: text:TEST[,CALIB], wikitext2:DIR")
    p.add_argument("--seqlen", type=int, default=None, help="override the protocol's window length")
    p.add_argument("--eval-windows", type=int, default=None, help="override the number of eval windows")
    p.add_argument("--nsamples", type=int, default=None, help="override the number of calibration windows")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="compute dtype: float32 (the protocols' reference) or bfloat16 autocast (about 2x faster on "
                        "CPUs with AMX; weights stay float32 so quantized weights stay exactly on their grids)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    if recipe:
        p.add_argument("--recipe", required=True, help="e.g. 'sparsegpt:0.5 > gptq:w4,g128' or a YAML file")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="crescendo", description="Order-aware joint model compression.")
    parser.add_argument("--version", action="version", version=f"crescendo {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress messages")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("compress", help="compress a model with a recipe and measure it")
    _common(p, recipe=True)
    p.add_argument("--save", default=None, help="write the compressed model to this (new or empty) directory")
    p.add_argument("--format", default="hf", choices=["hf", "packed"],
                   help="hf: float weights transformers loads as is; packed: integer codes, scales, bitmasks")
    p.add_argument("--no-dense", action="store_true", help="skip the dense perplexity")
    p.set_defaults(func=_cmd_compress)

    p = sub.add_parser("eval", help="perplexity of a model under a protocol, or lm-eval task metrics (--tasks)")
    _common(p)
    p.add_argument("--tasks", default=None, help="comma-separated lm-eval tasks instead of perplexity, e.g. "
                   "arc_easy,hellaswag (needs the lmeval extra)")
    p.add_argument("--tasks-include", default=None, metavar="DIR",
                   help="directory of task YAMLs in lm-eval's format (tasks with local data)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="at most N documents per task (smoke tests)")
    p.set_defaults(func=_cmd_eval_tasks)

    p = sub.add_parser("order", help="every order of n methods, CER, order advantage, PIH prediction")
    _common(p)
    p.add_argument("--methods", nargs="+", required=True, help="stage strings, e.g. sparsegpt:0.5 gptq:w4")
    p.add_argument("--reference", default="rtn:w{b}", help="reference quantizer template over {b} (default rtn:w{b})")
    p.add_argument("--bits", default="8,7,6,5,4,3", help="reference curve bit-widths (default 8..3)")
    p.add_argument("--no-layerwise", action="store_true", help="skip layer-wise errors (orthogonality, interference)")
    p.add_argument("--layerwise-samples", type=int, default=8, help="calibration windows for layer-wise errors")
    p.add_argument("--store", default=None, help="also record every measurement in this results store")
    p.set_defaults(func=_cmd_order)

    p = sub.add_parser("sweep", help="resumable (ratio x bits x order) grid into a results store")
    _common(p)
    p.add_argument("--prune", default="sparsegpt", help="pruning method or template, e.g. sparsegpt or wanda:{r},nm=2:4")
    p.add_argument("--ratios", default="0.1,0.2,0.3,0.5", help="pruning ratios")
    p.add_argument("--quant", default="rtn", help="quantizer or template over {b}, e.g. rtn or rtn:w{b}a{b}")
    p.add_argument("--bits", default="3,4,6,8", help="bit-widths")
    p.add_argument("--acts", action="store_true", help="activations at the weight bit-width (quant:w{b}a{b})")
    p.add_argument("--multistage", type=float, default=None, help="also P(p1) > Q > P(p2) with p1 + p2 = this")
    p.add_argument("--multistage-step", type=float, default=0.05)
    p.add_argument("--layerwise", action="store_true", help="store per-block error through depth for every row")
    p.add_argument("--layerwise-samples", type=int, default=4, help="calibration windows for --layerwise")
    p.add_argument("--store", default="crescendo-results.sqlite", help="results store (SQLite)")
    p.add_argument("--backend", default="local", choices=["local", "ray"])
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("search", help="evolutionary search of per-block (pruning, bits) under a BOP/size target")
    _common(p)
    p.add_argument("--target-bops", type=float, default=None, help="minimum BOP reduction vs dense W16A16, e.g. 8")
    p.add_argument("--target-size", type=float, default=None, help="minimum size reduction vs dense 16-bit")
    p.add_argument("--sampler", default="uniform-sum", choices=["uniform-sum", "uniform"],
                   help="initial pruning ratios: uniform-sum (MixA-Q Algorithm 1) or naive uniform")
    p.add_argument("--generations", type=int, default=4)
    p.add_argument("--population", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bits", default="2,3,4,5,6,7,8", help="weight bit-width choices per block")
    p.add_argument("--prune", default="magnitude", help="pruning method or template over {r}")
    p.add_argument("--quant", default="rtn", help="quantizer or template over {b}, e.g. rtn or gptq:w{b}a{b}")
    p.add_argument("--acts", action="store_true", help="activations at the weight bit-width (quant:w{b}a{b})")
    p.add_argument("--count-unstructured", action="store_true", help="let unstructured sparsity reduce BOPs")
    p.add_argument("--store", default=None, help="also record every evaluated configuration in this results store")
    p.add_argument("--plot", default=None, help="write the Pareto front (perplexity vs BOP reduction) to this PNG")
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser("report", help="rebuild figures, tables and an HTML page from a results store")
    p.add_argument("--store", required=True, help="results store written by sweep/order")
    p.add_argument("--out", required=True, help="new or empty output directory")
    p.add_argument("--model", default=None, help="only rows of this model")
    p.add_argument("--protocol", default=None, help="only rows of this protocol")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("verify", help="check a packed directory against its recipe (grids, sparsity, NaN/Inf)")
    p.add_argument("directory")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser("demo", help="dense vs S>Q vs Q>S on the embedded model (sotu-v1-quick)")
    _common(p)
    p.set_defaults(dtype="bfloat16")  # fits in 10 minutes on 2 cores; --dtype float32 for the reference
    p.set_defaults(func=_cmd_demo)
    return parser


def _protocol(args):
    from .workflow import resolve_protocol

    return resolve_protocol(args.protocol, args.seqlen, args.eval_windows, args.nsamples)


def _workbench(args):
    from .workflow import Workbench

    if args.quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    return Workbench.load(args.model, _protocol(args), dtype=args.dtype, device=args.device, progress=not args.quiet)


def _cmd_compress(args) -> int:
    from .recipe import load_recipe
    from .outputs import check_output_dir
    from .workflow import save_hf

    recipe = load_recipe(args.recipe)  # validate before loading anything
    if args.save:
        check_output_dir(args.save)
    bench = _workbench(args)
    dense = None if args.no_dense else bench.dense()
    model, outcome = bench.run(recipe)
    result = {
        **bench.describe(),
        "recipe": outcome.recipe,
        "dense_perplexity": dense.perplexity if dense else None,
        "perplexity": outcome.perplexity,
        **{k: outcome.summary[k] for k in ("sparsity", "avg_weight_bits", "compression_ratio", "bop_reduction",
                                           "size_reduction")},
        "stages": outcome.stages,
        "compress_seconds": outcome.compress_seconds,
        "eval_seconds": outcome.eval_seconds,
    }
    if args.save and args.format == "packed":
        from .export import save_packed

        save_packed(model, bench.tokenizer, args.save, {**result, "format": "packed"})
        result["saved"] = args.save
    elif args.save:
        save_hf(model, bench.tokenizer, args.save, {**result, "format": "hf"})
        result["saved"] = args.save
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"model {result['model']}  protocol {result['protocol']}  dtype {result['dtype']}  recipe {result['recipe']}")
    for s in outcome.stages:
        print(f"  stage {s['stage']:<32} {s['seconds']:8.1f} s")
    print(f"  sparsity {result['sparsity']:.4f}  avg weight bits {result['avg_weight_bits']:.3f}  "
          f"compression ratio {result['compression_ratio']:.2f}x")
    print(f"  BOP reduction {result['bop_reduction']:.2f}x  size reduction {result['size_reduction']:.2f}x "
          f"(vs dense W16A16; N:M halves MACs as in OBC, bitmasks counted in size)")
    if dense:
        print(f"  dense perplexity      {dense.perplexity:.3f}")
    print(f"  compressed perplexity {outcome.perplexity:.3f}   [{result['protocol']}]")
    if args.save:
        print(f"  saved to {args.save}")
    return 0


def _cmd_report(args) -> int:
    from .report import build_report

    index = build_report(args.store, args.out, model=args.model, protocol=args.protocol)
    print(f"report: {index.html}  ({len(index.figures)} figures, {len(index.experiments)} experiments)")
    for label, summary in index.summaries.items():
        agreement = "n/a" if summary.agreement is None else f"{summary.agreement:.0%}"
        print(f"  {label}: Progressive Intensity Hypothesis {summary.verdict} "
              f"(predicted order right in {agreement} of {summary.decided} decided cells)")
    return 0


def _cmd_verify(args) -> int:
    from .errors import ConfigError
    from .export import verify

    if not Path(args.directory).is_dir():
        raise ConfigError(f"{args.directory}: no such directory")
    report = verify(args.directory)
    if args.json:
        print(json.dumps({"ok": report.ok, "failure": report.failure, "summary": report.summary}, default=str))
    elif report.ok:
        print(f"OK {args.directory}: " + ", ".join(f"{k} {v}" for k, v in report.summary.items() if not isinstance(v, (dict, list))))
    else:
        print(f"crescendo: verify failed: {report.failure}", file=sys.stderr)
    return 0 if report.ok else 1


def _cmd_eval(args) -> int:
    bench = _workbench(args)
    ppl = bench.dense()
    result = {**bench.describe(), "perplexity": ppl.perplexity, "seconds": ppl.seconds,
              "tokens_per_second": ppl.tokens_per_second}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['model']}  {result['protocol']}  {result['dtype']}: perplexity {ppl.perplexity:.3f} "
              f"({ppl.seconds:.1f} s, {ppl.tokens_per_second:.0f} tokens/s)")
    return 0


def _cmd_eval_tasks(args) -> int:
    """`eval --tasks`: lm-eval metrics of the loaded model; without --tasks, `_cmd_eval`'s perplexity."""
    if not args.tasks:
        return _cmd_eval(args)
    from .errors import ConfigError
    from .eval.zeroshot import check_tasks, zero_shot

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks:
        raise ConfigError("--tasks needs at least one task name")
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be a positive number of documents, got {args.limit}")
    check_tasks(tasks, args.tasks_include)  # unknown names and unreachable hub data fail before loading the model
    bench = _workbench(args)
    with bench.compute():
        scores = zero_shot(bench.model, bench.tokenizer, tasks, include_path=args.tasks_include, limit=args.limit)
    result = {**bench.describe(), "tasks": scores, "limit": args.limit}
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{result['model']}  {result['dtype']}  lm-eval" + (f" (limit {args.limit} per task)" if args.limit else ""))
    for task, metrics in scores.items():
        samples = f"  ({metrics['samples']:.0f} samples)" if "samples" in metrics else ""
        for metric, value in metrics.items():
            if metric != "samples" and "_stderr" not in metric:
                stderr = metrics.get(metric.replace("/", "_stderr/", 1) if "/" in metric else f"{metric}_stderr")
                spread = f" ± {stderr:.4f}" if stderr is not None else ""
                print(f"  {task:<28} {metric:<16} {value:8.4f}{spread}{samples}")
    return 0


def _ints(text: str, what: str) -> list[int]:
    from .errors import ConfigError

    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated integers, got {text!r}") from None


def _floats(text: str, what: str) -> list[float]:
    from .errors import ConfigError
    from .types import check_ratio

    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated numbers, got {text!r}") from None
    return [check_ratio(v) for v in values]


def _cmd_order(args) -> int:
    from .analysis.order import run_order_study, study_to_dict
    from .recipe import parse_recipe, parse_stage
    from .types import check_bits

    stages = [parse_stage(m) for m in args.methods]  # validate before loading anything
    bits = [check_bits(b) for b in _ints(args.bits, "--bits")]
    for b in bits:
        parse_recipe(args.reference.format(b=b))
    if len(stages) < 2 or len({s.text for s in stages}) != len(stages):
        from .errors import ConfigError

        raise ConfigError("--methods needs at least two distinct methods")
    store = _open_store(args.store) if args.store else None
    bench = _workbench(args)
    bench.layerwise_samples = args.layerwise_samples
    recorder = _recorder(store, bench, args) if store else None
    study = run_order_study(bench, [s.text for s in stages], reference=args.reference, bits=bits,
                            layerwise=not args.no_layerwise, on_result=recorder)
    out = {**bench.describe(), **study_to_dict(study)}
    if args.json:
        print(json.dumps(out))
        return 0
    _print_order(out)
    return 0


def _open_store(path: str):
    from .store import ResultStore

    return ResultStore(path)


def _recorder(store, bench, args):
    from .store import Row

    def record(kind: str, recipe: str, metric: float) -> None:
        store.put(Row.create(bench.model_name, bench.protocol_id, recipe, 0, __version__, kind,
                             metrics={"perplexity": -metric}))

    return record


def _print_order(out: dict) -> None:
    print(f"order study: {out['model']}  protocol {out['protocol']}  ({out['dtype']}, metric M = {out['metric']})")
    print(f"  dense perplexity {out['dense']:.3f}")
    print("  reference curve: " + ", ".join(f"{c['bits']}b {c['perplexity']:.2f}" for c in out["curve"]))
    for m, v in out["singles"].items():
        print(f"  alone  {m:<28} ppl {v:9.3f}   CER {out['cer'][m]}")
    for key, g in out["gap"].items():
        print(f"  gap G({key}) = {g:+.3f}")
    for o in out["orders"]:
        print(f"  order  {' > '.join(o['order']):<44} ppl {o['perplexity']:9.3f}")
    for key, a in out["advantage"].items():
        print(f"  advantage A({key}) = {a:+.3f}")
    agree = "agrees" if out["prediction_agrees"] else "DISAGREES"
    print(f"  best measured order : {' > '.join(out['best_order'])}")
    print(f"  PIH prediction      : {' > '.join(out['predicted_order'])}  ({agree} with the measurement)")
    for key, v in out["orthogonality"].items():
        verdict = "orthogonal" if v["orthogonal"] else "NOT orthogonal"
        print(f"  {key}: composed error {v['composed_error']:.4g} vs sum of singles {v['sum_single_errors']:.4g} "
              f"-> {verdict}; interference {out['interference'][key]:+.4g}")
    for key, v in out["layer_errors"].items():
        print(f"  layer-wise error {key:<44} total {v['total']:.4g}  last block {v['per_block'][-1]:.4g}")
    print(f"  stage applications: {out['stage_applications']} (naive n*n! = {out['naive_stage_applications']})")


def _cmd_sweep(args) -> int:
    from .sweep import grid_tasks, run_sweep

    ratios = _floats(args.ratios, "--ratios")
    bits = _ints(args.bits, "--bits")
    quant = args.quant
    if args.acts and "{" not in quant:
        quant = quant + ":w{b}a{b}"
    tasks = grid_tasks(args.prune, ratios, quant, bits, multistage_total=args.multistage,
                       multistage_step=args.multistage_step)  # validates every recipe first
    store = _open_store(args.store)
    protocol = _protocol(args)
    factory = BenchFactory(args.model, protocol, args.dtype, args.device, not args.quiet, args.layerwise,
                           args.layerwise_samples)
    model_name = _model_name(args.model)
    from .workflow import protocol_id

    counts = run_sweep(factory, model_name, protocol_id(protocol.name, args.dtype), tasks, store, seed=args.seed, backend=args.backend,
                       on_row=None if args.json else _print_row)
    if args.json:
        print(json.dumps({"store": args.store, **counts}))
    else:
        print(f"sweep done: {counts['computed']} computed, {counts['skipped']} already in {args.store}, "
              f"{counts['total']} in all")
    return 0


def _print_row(row) -> None:
    print(f"  {row.recipe:<48} ppl {row.metrics['perplexity']:10.3f}", flush=True)


def _cmd_search(args) -> int:
    from .budget.search import SearchConfig, plot_pareto, search

    quant = args.quant + ":w{b}a{b}" if args.acts and "{" not in args.quant else args.quant
    config = SearchConfig(target_bops=args.target_bops, target_size=args.target_size, sampler=args.sampler,
                          generations=args.generations, population=args.population, seed=args.seed,
                          bits=tuple(_ints(args.bits, "--bits")), prune=args.prune, quant=quant,
                          count_unstructured=args.count_unstructured)  # validates before loading the model
    store = _open_store(args.store) if args.store else None
    bench = _workbench(args)
    show = None if args.json or args.quiet else (
        lambda p: print(f"  g{p.generation} ppl {p.perplexity:10.3f}  BOPs {p.bop_reduction:6.2f}x  {p.recipe}", flush=True))
    result = search(bench, config, store=store, on_point=show)
    if args.plot:
        plot_pareto({args.sampler: result}, args.plot)
    best = result.best
    if args.json:
        print(json.dumps({**bench.describe(), "recipe": best.recipe, "perplexity": best.perplexity,
                          "bop_reduction": best.bop_reduction, "size_reduction": best.size_reduction,
                          "pareto": [p.to_dict() for p in result.pareto], "evaluated": len(result.evaluated),
                          "sum_range": list(result.sum_range), "seconds": result.seconds}))
        return 0
    print(f"search: {bench.model_name}  protocol {bench.protocol_id}  sampler {args.sampler}  seed {args.seed}  "
          f"{len(result.evaluated)} configurations in {result.seconds:.1f} s")
    print(f"  best recipe: {best.recipe}")
    print(f"  perplexity {best.perplexity:.3f}  BOP reduction {best.bop_reduction:.2f}x  "
          f"size reduction {best.size_reduction:.2f}x")
    print("  Pareto front (BOP reduction -> perplexity): "
          + ", ".join(f"{p.bop_reduction:.2f}x {p.perplexity:.3f}" for p in result.pareto))
    if args.plot:
        print(f"  plot: {args.plot}")
    return 0


def _model_name(spec: str) -> str:
    from .models.loading import resolve_model_spec

    info = resolve_model_spec(spec).info
    return str(Path(info.path).resolve()) if info.source == "local" and info.path else info.name


class BenchFactory:
    """A picklable recipe for a Workbench (Ray tasks rebuild it in their own process)."""

    def __init__(self, model, protocol, dtype, device, progress, layerwise=False, layerwise_samples=4):
        self.model, self.protocol, self.dtype, self.device = model, protocol, dtype, device
        self.progress, self.layerwise, self.layerwise_samples = progress, layerwise, layerwise_samples

    def __call__(self):
        from .workflow import Workbench

        bench = Workbench.load(self.model, self.protocol, dtype=self.dtype, device=self.device, progress=self.progress,
                               layerwise_samples=self.layerwise_samples)
        bench.store_layerwise = self.layerwise
        return bench


DEMO_RECIPES = ("sparsegpt:0.5 > gptq:w4", "gptq:w4 > sparsegpt:0.5")


def _cmd_demo(args) -> int:
    bench = _workbench(args)
    dense = bench.dense()
    rows = [("dense", dense.perplexity, 0.0, 16.0, 1.0, 0.0)]
    outcomes = []
    for recipe in DEMO_RECIPES:
        _, outcome = bench.run(recipe)
        outcomes.append(outcome)
        s = outcome.summary
        rows.append((outcome.recipe, outcome.perplexity, s["sparsity"], s["avg_weight_bits"],
                     s["compression_ratio"], outcome.compress_seconds))
    advantage = outcomes[0].metric - outcomes[1].metric  # A(Q -> P) = M(P∘Q) - M(Q∘P), with M = -ppl
    if args.json:
        print(json.dumps({**bench.describe(), "rows": [dict(zip(("recipe", "perplexity", "sparsity", "avg_weight_bits",
                          "compression_ratio", "compress_seconds"), r)) for r in rows],
                          "order_advantage_prune_first": advantage}))
        return 0
    print(f"crescendo demo: {bench.model_name}, protocol {bench.protocol.name}, compute {bench.dtype}"
          + (" (autocast; the float32 reference is --dtype float32)" if bench.dtype != "float32" else ""))
    print(f"| {'recipe':<26} | {'perplexity':>10} | {'sparsity':>8} | {'bits':>6} | {'C':>6} | {'compress s':>10} |")
    print(f"|{'-' * 28}|{'-' * 12}|{'-' * 10}|{'-' * 8}|{'-' * 8}|{'-' * 12}|")
    for r in rows:
        print(f"| {r[0]:<26} | {r[1]:>10.3f} | {r[2]:>8.3f} | {r[3]:>6.2f} | {r[4]:>6.2f} | {r[5]:>10.1f} |")
    better = "prune first (S>Q)" if advantage > 0 else "quantize first (Q>S)"
    print(f"order advantage A(SparseGPT -> GPTQ) = ppl(Q>S) - ppl(S>Q) = {advantage:+.3f}: {better} is better")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except CrescendoError as e:
        print(f"crescendo: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("crescendo: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
