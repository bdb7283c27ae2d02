"""compress, eval, verify, report, demo: one library call each, then rendering."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .common import _is_vision, _workbench

_SUMMARY_KEYS = ("sparsity", "avg_weight_bits", "compression_ratio", "bop_reduction", "size_reduction")


def _compress_vision(args, recipe) -> int:
    """`compress` under a vision protocol: accuracy instead of perplexity; saves in the packed format."""
    from ..errors import ConfigError
    from ..outputs import check_output_dir

    if args.format is not None and not args.save:
        raise ConfigError(f"--format {args.format} needs --save PATH")
    if args.save and args.format not in (None, "packed"):
        raise ConfigError("vision models are saved in the packed format (--format packed); it reloads and verifies")
    if args.mode != "stagewise":
        raise ConfigError(f"--mode {args.mode} is implemented for language models, not vision protocols")
    if args.save:
        check_output_dir(args.save)
    bench = _workbench(args)
    dense = None if args.no_dense else bench.dense()
    model, outcome = bench.run(recipe)
    result = {**bench.describe(), "recipe": outcome.recipe, "dense_accuracy": dense.accuracy if dense else None,
              "accuracy": outcome.accuracy, **{k: outcome.summary[k] for k in _SUMMARY_KEYS},
              "batchnorm": outcome.summary.get("batchnorm"), "stages": outcome.stages,
              "compress_seconds": outcome.compress_seconds, "eval_seconds": outcome.eval_seconds}
    if args.save:
        from ..export import save_packed

        save_packed(model, None, args.save, {**result, "format": "packed"})
        result["saved"] = args.save
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"model {result['model']}  protocol {result['protocol']}  recipe {result['recipe']}")
    for s in outcome.stages:
        print(f"  stage {s['stage']:<32} {s['seconds']:8.1f} s")
    bn = {"folded": "folded into the convs (foldbn)", "kept": "kept as float layers after the convs",
          None: "none in the model"}[result["batchnorm"]]
    print(f"  sparsity {result['sparsity']:.4f}  avg weight bits {result['avg_weight_bits']:.3f}  "
          f"compression ratio {result['compression_ratio']:.2f}x  batch norm: {bn}")
    print(f"  BOP reduction {result['bop_reduction']:.2f}x  size reduction {result['size_reduction']:.2f}x "
          f"(vs dense W16A16, block layers; N:M halves MACs as in OBC)")
    if dense:
        print(f"  dense accuracy      {dense.accuracy:.2f}%")
    print(f"  compressed accuracy {outcome.accuracy:.2f}%   [{result['protocol']}]")
    if args.save:
        print(f"  saved to {args.save}")
    return 0


def _cmd_compress(args) -> int:
    from ..api import check_requirements
    from ..recipe import load_recipe
    from ..workflow import save_hf

    recipe = load_recipe(args.recipe)  # validate before loading anything
    if _is_vision(args):
        return _compress_vision(args, recipe)
    check_requirements(recipe)
    if args.mode == "interleaved":
        from ..engine.interleaved import check_interleavable

        check_interleavable(recipe.stages)
    fmt = _check_save_target(args, recipe)
    if fmt == "hf" and any(s.kind == "share" for s in recipe.stages):
        from ..errors import ConfigError

        raise ConfigError("a shared model is saved with --format packed: transformers cannot build its factored layers")
    bench = _workbench(args)
    if fmt in ("gguf", "compressed-tensors"):
        from ..export.fit import check_model_fits

        check_model_fits(bench.model, recipe, fmt)  # group widths against the layers, before compressing
    if fmt == "gguf":
        from ..export.gguf import check_gguf_model

        check_gguf_model(bench.model, bench.tokenizer, _source_gguf(bench))  # before compressing
    bench.check_memory([recipe])  # a block-wise run: a budget the calibration cannot fit in is refused now
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
    notes = []
    if args.save and fmt == "packed":
        from ..export import save_packed

        save_packed(model, bench.tokenizer, args.save, {**result, "format": "packed"})
    elif args.save and fmt == "gguf":
        from ..export.gguf import save_gguf

        report = save_gguf(model, bench.tokenizer, args.save, {**result, "format": "gguf"}, other=args.gguf_other,
                           source_gguf=_source_gguf(bench))
        result["gguf"] = {"types": report.types, "changed_by_cast": report.changed, "tokenizer": report.tokenizer}
        if report.changed:
            notes.append(f"note: {len(report.changed)} tensors outside the compressed linears were rounded to "
                         f"{args.gguf_other} (largest change {max(report.changed.values()):.3g}); "
                         f"--gguf-other f32 keeps them exact")
    elif args.save and fmt == "compressed-tensors":
        from ..export import save_compressed_tensors

        save_compressed_tensors(model, bench.tokenizer, args.save, {**result, "format": fmt})
    elif args.save:
        save_hf(model, bench.tokenizer, args.save, {**result, "format": "hf"})
    if args.save:
        result["saved"], result["format"] = args.save, fmt
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"model {result['model']}  protocol {result['protocol']}  dtype {result['dtype']}  mode {result['mode']}  "
          f"recipe {result['recipe']}")
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
        print(f"  saved to {args.save} ({fmt})")
    for note in notes:
        print(f"  {note}")
    return 0


def _check_save_target(args, recipe) -> str | None:
    """The export format, after checking (before any model is loaded) that the recipe fits it and the
    output path is free; ConfigError otherwise."""
    from ..errors import ConfigError
    from ..export.fit import FORMATS, check_recipe_fits, require_reader
    from ..outputs import check_output_dir, check_output_file

    if args.format is not None and not args.save:
        raise ConfigError(f"--format {args.format} needs --save PATH")
    if not args.save:
        return None
    fmt = args.format or "hf"
    if fmt in FORMATS:
        require_reader(fmt)
        check_recipe_fits(recipe, fmt)
    if fmt == "gguf":
        path = Path(args.save)
        if path.suffix != ".gguf":
            raise ConfigError(f"--format gguf writes one file; give --save a path ending in .gguf, not {path}")
        if path.exists():
            raise ConfigError(f"output file {path} exists")
        check_output_file(path)
    else:
        check_output_dir(args.save)
    return fmt


def _source_gguf(bench) -> str | None:
    """The .gguf file the model was loaded from (its tokenizer keys are copied into a GGUF export)."""
    return bench.info.path if bench.info.source in ("embedded", "gguf") else None


def _cmd_report(args) -> int:
    from ..options import cer_settings
    from ..report import build_report

    index = build_report(args.store, args.out, model=args.model, protocol=args.protocol,
                         cer=cer_settings(args))
    print(f"report: {index.html}  ({len(index.figures)} figures, {len(index.experiments)} experiments)")
    for label, summary in index.summaries.items():
        agreement = "n/a" if summary.agreement is None else f"{summary.agreement:.0%}"
        if index.curve_warnings.get(label):
            print(f"  WARNING: {label}: {index.curve_warnings[label]}")
        print(f"  {label}: Progressive Intensity Hypothesis {summary.verdict} "
              f"(predicted order right in {agreement} of {summary.decided} decided cells)")
    return 0


def _cmd_verify(args) -> int:
    from ..errors import ConfigError
    from ..export import verify

    if not Path(args.directory).is_dir() and not (Path(args.directory).is_file() and args.directory.endswith(".gguf")):
        raise ConfigError(f"{args.directory}: no such directory or .gguf file")
    report = verify(args.directory)
    if args.json:
        print(json.dumps({"ok": report.ok, "failure": report.failure, "summary": report.summary}, default=str))
    elif report.ok:
        print(f"OK {args.directory}: " + ", ".join(f"{k} {v}" for k, v in report.summary.items() if not isinstance(v, (dict, list))))
    else:
        from ..errors import one_line

        print(f"crescendo: verify failed: {one_line(report.failure or 'verification failed', 1000)}", file=sys.stderr)
    return 0 if report.ok else 1


def _cmd_eval(args) -> int:
    bench = _workbench(args)
    if bench.metric_name == "accuracy":
        measured = bench.dense()
        result = {**bench.describe(), "accuracy": measured.accuracy, "correct": measured.correct,
                  "total": measured.total, "seconds": measured.seconds}
        print(json.dumps(result) if args.json else
              f"{result['model']}  {result['protocol']}: top-1 accuracy {measured.accuracy:.2f}% "
              f"({measured.correct}/{measured.total}, {measured.seconds:.1f} s)")
        return 0
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
    if _is_vision(args):
        from ..errors import ConfigError

        raise ConfigError("--tasks runs lm-eval tasks on language models, not on a vision model")
    from ..errors import ConfigError
    from ..eval.zeroshot import check_tasks, zero_shot

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


def _cmd_demo(args) -> int:
    from ..demo import choose_plan, run_demo
    from ..options import margin_setting, race_settings, with_margin
    from ..workflow import fast_bfloat16

    fast = fast_bfloat16(args.device)
    if args.dtype is None:
        args.dtype = "bfloat16" if fast else "float32"
    if _is_vision(args):
        from ..errors import ConfigError

        raise ConfigError("the demo runs on language models; for a vision model use compress or order")
    plan, why = choose_plan(args.full, fast)
    # progress (the demo's lines, the engine's and transformers' bars) only on a terminal, never under --quiet
    args.quiet = args.quiet or not sys.stderr.isatty()
    args.eval_windows = plan.eval_windows if args.eval_windows is None else args.eval_windows
    args.nsamples = plan.calibration if args.nsamples is None else args.nsamples
    race = race_settings(args, relative=True)
    margin = margin_setting(args, relative=True)

    def load():
        bench = _workbench(args)
        with_margin(bench, margin)
        return bench

    result = run_demo(load, plan, why, race, progress=not args.quiet)
    bench, c = result.bench, result.comparison
    rows = [("dense", -result.dense.metric, 0.0, 16.0, 1.0, 0.0, len(result.dense.units))]
    for order in result.orders:
        s = order["summary"]
        rows.append((order["recipe"], -order["metric"], s["sparsity"], s["avg_weight_bits"], s["compression_ratio"],
                     sum(order["stage_seconds"]), len(order["evaluation"].units)))
    advantage = result.orders[0]["metric"] - result.orders[1]["metric"]  # A(P -> Q) = M(P first) - M(Q first)
    same_as = plan.order_command(args.model) + (f" --dtype {args.dtype}" if args.dtype != "float32" else "")
    if args.json:
        print(json.dumps({**bench.describe(), "plan": plan.name, "why": why, "pruner": plan.pruner,
                          "quantizer": plan.quantizer, "rows": [dict(zip(
                              ("recipe", "perplexity", "sparsity", "avg_weight_bits", "compression_ratio",
                               "compress_seconds", "units"), r)) for r in rows],
                          "order_advantage_prune_first": advantage, "comparison": c.to_dict(),
                          "race": None if result.race is None else result.race.to_dict(),
                          "timings": result.timings, "total_seconds": result.total_seconds, "same_as": same_as}))
        return 0
    print(f"crescendo demo ({plan.name}): {bench.model_name}, protocol {bench.protocol_id}, compute {bench.dtype}"
          + (" (autocast; the float32 reference is --dtype float32)" if bench.dtype != "float32" else ""))
    print(f"  why this plan: {why}")
    print(f"| {'recipe':<26} | {'perplexity':>10} | {'sparsity':>8} | {'bits':>6} | {'C':>6} | {'compress s':>10} | "
          f"{'windows':>7} |")
    print(f"|{'-' * 28}|{'-' * 12}|{'-' * 10}|{'-' * 8}|{'-' * 8}|{'-' * 12}|{'-' * 9}|")
    for r in rows:
        print(f"| {r[0]:<26} | {r[1]:>10.3f} | {r[2]:>8.3f} | {r[3]:>6.2f} | {r[4]:>6.2f} | {r[5]:>10.1f} | "
              f"{r[6]:>7} |")
    lo, hi = c.interval
    words = {"first better": "prune first is better", "second better": "quantize first is better",
             "equivalent": f"the orders are equivalent within {c.margin.name}",
             "undetermined": "undetermined: the interval straddles 0"}[c.verdict]
    print(f"order advantage A({plan.pruner} -> {plan.quantizer}) = ppl(quantize first) - ppl(prune first) = "
          f"{advantage:+.3f}, {c.confidence:.0%} interval [{lo:+.3f}, {hi:+.3f}]: {words}")
    print(f"  ({c.method}{'; ' + '; '.join(c.notes) if c.notes else ''})")
    print("time: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in result.timings.items())
          + f"; total {result.total_seconds:.0f} s")
    print(f"the same figures: {same_as}")
    return 0
