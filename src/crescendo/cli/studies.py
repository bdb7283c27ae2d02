"""order, sweep, search: the order studies and budgeted searches."""

from __future__ import annotations

import json

from ..options import cer_settings, margin_setting, race_settings, with_margin
from .common import (
    _bench_options,
    _floats,
    _ints,
    _is_vision,
    _model_name,
    _protocol,
    _vision_options,
    _workbench,
    progress_wanted,
)


def _cmd_choose(args) -> int:
    from ..chooser import check_choice, decide
    from ..errors import ConfigError
    from ..recipe import parse_stage

    rule, _ = check_choice(args.predictor or "auto", args.methods)  # unknown predictor, < 2 methods, cannot judge
    if args.store:
        raise ConfigError("--choose records nothing; run without --store (or without --choose to record the study)")
    _check_reference(args)
    if args.layerwise_samples < 1:
        raise ConfigError(f"--layerwise-samples must be >= 1, got {args.layerwise_samples}")
    _check_orders([parse_stage(m) for m in args.methods])
    if args.race and not rule.races:
        raise ConfigError(f"--race does not apply to predictor {rule.name}: it races no candidates (pih and race do)")
    vision = _is_vision(args)
    race = race_settings(args, relative=not vision, implied=rule.name == "race")
    margin = margin_setting(args, relative=not vision)
    bench = _workbench(args)
    with_margin(bench, margin)
    if race is not None:
        race.check(bench.n_units)
    bench.layerwise_samples = args.layerwise_samples
    decision = decide(rule.name, bench, args.methods, race=race)
    out = {**bench.describe(), **decision.to_dict()}
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"order choice: {out['model']}  protocol {out['protocol']}  predictor {decision.predictor}")
    if decision.abstained:
        print(f"  ABSTAINS: {decision.reason}")
    else:
        print(f"  chosen order : {' > '.join(decision.order)}")
        print(f"  because      : {decision.reason}")
    for recipe, value in decision.measured.items():
        shown = -value if bench.metric_name == "-perplexity" else value
        print(f"  measured     : {recipe:<40} {'ppl' if bench.metric_name == '-perplexity' else 'M'} {shown:.4g}")
    c, e = decision.cost, decision.exhaustive
    raced = f" + {c.partial_evaluations:.2f} in raced units" if c.partial_evaluations else ""
    print(f"  cost         : {c.stage_applications} stage applications, {c.evaluations} evaluations{raced}, "
          f"{c.weight_passes} weight passes, {c.seconds:.1f} s")
    if "units_used" in decision.evidence:
        used = ", ".join(f"{k} {v}" for k, v in decision.evidence["units_used"].items())
        print(f"  race         : stopped ({decision.evidence['stop']}); units used of "
              f"{decision.evidence['total_units']}: {used}")
    print(f"  exhaustive   : {e.stage_applications} stage applications, {e.evaluations} evaluations "
          f"(plus the reference curve for CERs)")
    return 0


def _cmd_order(args) -> int:
    from ..analysis.order import run_order_study, study_to_dict

    if args.choose:
        return _cmd_choose(args)
    from ..errors import ConfigError
    from ..recipe import parse_stage

    if args.predictor is not None:
        raise ConfigError("--predictor applies with --choose only (the full study measures every order)")
    stages = [parse_stage(m) for m in args.methods]  # validate before loading anything
    bits = _check_reference(args)
    if len(stages) < 2 or len({s.text for s in stages}) != len(stages):
        raise ConfigError("--methods needs at least two distinct methods")
    _check_orders(stages)
    if args.layerwise_samples < 1:
        raise ConfigError(f"--layerwise-samples must be >= 1, got {args.layerwise_samples}")
    settings = cer_settings(args)
    vision = _is_vision(args)
    race = race_settings(args, relative=not vision)
    margin = margin_setting(args, relative=not vision)
    store = _open_store(args.store) if args.store else None
    bench = _workbench(args)
    with_margin(bench, margin)
    if race is not None:
        race.check(bench.n_units)  # a round larger than the protocol's units: refused before any stage runs
    bench.layerwise_samples = args.layerwise_samples
    bench.check_memory([s.text for s in stages])  # a block-wise run: refused now if the calibration cannot fit
    recorder = _recorder(store, bench, race) if store is not None else None  # an empty store is falsy
    study = run_order_study(bench, [s.text for s in stages], reference=args.reference, bits=bits,
                            layerwise=not args.no_layerwise, on_result=recorder, cer_settings=settings, race=race)
    out = {**bench.describe(), **study_to_dict(study)}
    if store is not None:
        _record_error_analysis(store, bench, out, study, race)
    if args.json:
        print(json.dumps(out))
        return 0
    _print_order(out)
    return 0


def _check_orders(stages) -> None:
    """Every order of the methods is a recipe: each must be one that can be compressed (checked before loading)."""
    from itertools import permutations

    from ..recipe import check_zero_representable

    if len(stages) <= 6:  # an order study runs all n! orders; beyond 6 it is refused elsewhere or impractical
        for order in permutations(stages):
            check_zero_representable(order)


def _check_reference(args) -> list[int]:
    """The reference curve's bit-widths, after checking --bits and --reference (before any model loads)."""
    from ..errors import ConfigError
    from ..recipe import parse_recipe
    from ..types import check_bits

    bits = [check_bits(b) for b in _ints(args.bits, "--bits")]
    if len(set(bits)) < 2:
        raise ConfigError("--bits needs at least two distinct bit-widths for the reference curve")
    if "{b}" not in args.reference:
        raise ConfigError(f"--reference {args.reference!r} must contain {{b}} (e.g. rtn:w{{b}})")
    for b in bits:
        parse_recipe(_fill(args.reference, b))
    return bits


def _open_store(path: str):
    """The results store at `path`, checked now; a new store's file appears with its first row."""
    from ..store import ResultStore

    return ResultStore(path)


def _fill(template: str, b: int) -> str:
    from ..errors import ConfigError

    try:
        return template.format(b=b)
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(f"template {template!r} is malformed: {e!r}") from None


_STUDY = {"study": "order"}  # marks order-study rows, so reports do not take them for sweep rows


def _metrics(bench, metric: float, **more):
    """RunMetrics of a measured M: accuracy for a vision bench, else perplexity = -M."""
    from ..store import RunMetrics

    if bench.metric_name == "accuracy":
        return RunMetrics.from_accuracy(metric, **more)
    return RunMetrics.from_perplexity(-metric, **more)


def _row_protocol(bench, kind: str, race) -> str:
    """Raced measurements (singles and orders under --race) are stored under their own protocol id."""
    return bench.protocol_id + (race.label() if race is not None and kind in ("single", "order") else "")


def _recorder(store, bench, race=None):
    from ..store import record_run

    def record(kind: str, recipe: str, found) -> None:
        extra = {} if kind == "dense" else _STUDY
        record_run(store, model=bench.model_name, protocol=_row_protocol(bench, kind, race), recipe=recipe, seed=0,
                   kind=kind, metrics=_metrics(bench, found.metric), extra=extra, device=bench.device,
                   units=found.units)

    return record


def _record_error_analysis(store, bench, out: dict, study, race) -> None:
    """Rewrite each composed order's row with its interference and orthogonality excess."""
    from ..store import record_run

    for entry in out["orders"]:
        key = " > ".join(entry["order"])
        verdict = out["orthogonality"].get(key)
        if verdict is None:
            continue
        metric = entry["metric"] if "metric" in entry else -entry["perplexity"]
        metrics = _metrics(
            bench, metric, interference=out["interference"].get(key), orthogonality_excess=verdict["excess"],
            composed_error=verdict["composed_error"], sum_single_errors=verdict["sum_single_errors"])
        record_run(store, model=bench.model_name, protocol=_row_protocol(bench, "order", race), recipe=key, seed=0,
                   kind="order", metrics=metrics, extra={**_STUDY, "methods": entry["order"]}, device=bench.device,
                   units=study.units.get(key))


def _print_order(out: dict) -> None:
    value = "perplexity" if out["metric"] == "-perplexity" else "metric"  # the key each entry holds
    shown = "ppl" if value == "perplexity" else "acc"
    print(f"order study: {out['model']}  protocol {out['protocol']}  ({out['dtype']}, metric M = {out['metric']})")
    print(f"  dense {'perplexity' if value == 'perplexity' else out['metric']} {out['dense']:.3f}")
    print("  reference curve: " + ", ".join(f"{c['bits']}b {c[value]:.2f}" for c in out["curve"]))
    print(f"  {out['cer_method']}")
    if out["curve_warning"]:
        print(f"  WARNING: {out['curve_warning']}")
    units = out["units"]
    for m, v in out["singles"].items():
        cer = out["cer"][m]
        text = "undefined" if cer is None else f"{cer:.2f}" if isinstance(cer, float) else cer
        print(f"  alone  {m:<28} {shown} {v:9.3f}   CER {text}{_used(units.get(m))}")
    for key, g in out["gap"].items():
        print(f"  gap G({key}) = {g:+.3f}{_interval(out['gap_comparison'].get(key))}")
    for o in out["orders"]:
        key = " > ".join(o["order"])
        print(f"  order  {key:<44} {shown} {o[value]:9.3f}{_used(units.get(key))}")
    for key, a in out["advantage"].items():
        print(f"  advantage A({key}) = {a:+.3f}{_interval(out['advantage_comparison'].get(key))}")
    for group, r in out["races"].items():
        used = ", ".join(f"{n} {u}" for n, u in r["units_used"].items())
        print(f"  race of the {group}: stopped ({r['stop']}) after {r['rounds']} round(s); units used: {used} "
              f"of {r['total_units']}")
    agree = {True: "agrees with the measurement", False: "DISAGREES with the measurement",
             None: "undecided"}[out["prediction_agrees"]]
    if out["prediction_open"]:
        agree += "; the CERs cannot order " + ", ".join(out["prediction_open"])
    predicted = " > ".join(out["predicted_order"]) or "none (no CER)"
    best = out["best_order_verdict"]
    against = "" if best is None else f"  ({best['verdict']} than {best['second']}: A {_interval(best).strip()})"
    print(f"  best measured order : {' > '.join(out['best_order'])}{against}")
    print(f"  PIH prediction      : {predicted}  ({agree})")
    for o in out["orders"]:
        key = " > ".join(o["order"])
        v = out["orthogonality"].get(key)
        if v is None:
            continue
        prefix, last = " → ".join(o["order"][:-1]), o["order"][-1]
        delta = out["interference"].get(key)
        delta_text = "n/a" if delta is None else f"{delta:+.4g}"
        verdict = "orthogonal" if v["orthogonal"] else "NOT orthogonal"
        print(f"  {key}:")
        print(f"    interference Δ({prefix} → {last}) (003 Def. 6: {last}'s error after {prefix} "
              f"minus its error alone) = {delta_text}")
        print(f"    excess over the sum of single errors (Harma) = {v['excess']:+.4g} "
              f"(composed {v['composed_error']:.4g} vs sum {v['sum_single_errors']:.4g}) -> {verdict}")
    for key, v in out["layer_errors"].items():
        print(f"  layer-wise error {key:<44} total {v['total']:.4g}  last block {v['per_block'][-1]:.4g}")
    print(f"  stage applications: {out['stage_applications']} (naive n*n! = {out['naive_stage_applications']})")


def _interval(c: dict | None) -> str:
    """`  [lo, hi] 95%, verdict` of a comparison dict, or a note that there are no per-unit results."""
    if c is None:
        return "  (no per-unit results: no interval)"
    lo, hi = c["interval"]
    notes = f"; {'; '.join(c['notes'])}" if c["notes"] else ""
    return f"  [{lo:+.3f}, {hi:+.3f}] {c['confidence']:.0%}, {c['verdict']}{notes}"


def _used(u: dict | None) -> str:
    return "" if u is None or u["used"] == u["total"] else f"   ({u['used']} of {u['total']} units)"


def _with_acts(quant: str, acts: bool) -> str:
    """`rtn` -> `rtn:w{b}a{b}` under --acts; templates are taken as written."""
    return quant + ":w{b}a{b}" if acts and "{" not in quant else quant


def _cmd_sweep(args) -> int:
    import dataclasses

    from ..cache import PrefixCache, default_cache_dir
    from ..errors import ConfigError
    from ..sweep import check_lanes, grid_tasks, run_sweep, usable_cores
    from ..workflow import BenchFactory

    ratios = _floats(args.ratios, "--ratios")
    bits = _ints(args.bits, "--bits")
    quant = [_with_acts(q, args.acts) for q in args.quant]
    staged_bits = _ints(args.multistage_bits, "--multistage-bits") if args.multistage_bits else None
    staged_quant = None if args.multistage_quant is None else [_with_acts(q, args.acts) for q in args.multistage_quant]
    tasks = grid_tasks(args.prune, ratios, quant, bits, multistage_total=args.multistage,
                       multistage_step=args.multistage_step, multistage_bits=staged_bits,
                       multistage_quant=staged_quant, prefix=args.prefix)  # validates every recipe first
    if args.layerwise_samples < 1:
        raise ConfigError(f"--layerwise-samples must be >= 1, got {args.layerwise_samples}")
    vision = _is_vision(args)
    if vision:
        from ..data.vision_protocols import get_vision_protocol

        protocol = get_vision_protocol(args.protocol)
        options = _vision_options(args)
    else:
        protocol = _protocol(args)
        options = {"dtype": args.dtype, **_bench_options(args)}
    model_name = _model_name(args.model)
    lanes = usable_cores() if args.lanes is None else args.lanes
    check_lanes(lanes)
    if options.get("max_memory") is not None:  # the budget is one process's: one lane holds the model
        if (args.lanes or 1) > 1:
            raise ConfigError("--max-memory is the budget of one process; a block-wise sweep runs in one lane "
                              "(drop --lanes)")
        lanes = 1
    cache_dir = None if args.no_cache else str(PrefixCache(args.cache or default_cache_dir()).directory)
    seeds = _ints(args.seeds, "--seeds") if args.seeds else [args.seed]
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds must be distinct integers >= 0, got {args.seeds!r}")
    race = race_settings(args, relative=not vision)
    if race is not None:
        if args.backend != "local" or (args.lanes or 1) > 1:
            raise ConfigError("a raced sweep runs in one lane: drop --backend ray and --lanes, or --race")
        if args.multistage is not None:
            raise ConfigError("--race races the order cells; run --multistage without --race")
        lanes = 1
    if args.margin is not None:  # the margin is the protocol's, carried to every lane with it
        protocol = dataclasses.replace(protocol, margin=margin_setting(args, relative=not vision).value)
    if args.backend == "ray":
        from ..distributed import require_ray

        require_ray()  # a refusal creates no store
    store = _open_store(args.store)
    from ..workflow import protocol_id

    counts: dict[str, int] = {}
    for seed in seeds:  # each seed draws its own calibration windows: a replicate of every cell
        factory = BenchFactory(args.model, protocol, progress=progress_wanted(args) and lanes == 1, layerwise=args.layerwise,
                               device=args.device, layerwise_samples=args.layerwise_samples,
                               calibration_seed=seed, recipes=[t.recipe for t in tasks if t.recipe != "dense"],
                               **options)
        name = protocol_id(protocol.name, args.dtype, args.eval_weights)
        if race is not None:
            from ..sweep_race import run_raced_sweep

            done = run_raced_sweep(factory(), model_name, name, tasks, store, seed=seed, race_settings=race,
                                   cache=PrefixCache(cache_dir) if cache_dir else None, device=args.device,
                                   on_row=None if args.json else _print_row)
        else:
            done = run_sweep(factory, model_name, name, tasks, store, seed=seed, backend=args.backend,
                             device=args.device, lanes=lanes, cache_dir=cache_dir,
                             on_row=None if args.json else _print_row)
        counts = {k: counts.get(k, 0) + v for k, v in done.items()}
    summary = _sweep_cells(store, model_name, name + (race.label() if race is not None else ""))
    if args.json:
        print(json.dumps({"store": args.store, "seeds": seeds, **counts, "cells": summary}))
    else:
        elsewhere = f", {counts['elsewhere']} being computed by another process" if counts["elsewhere"] else ""
        print(f"sweep done: {counts['computed']} computed, {counts['skipped']} already in {args.store}{elsewhere}, "
              f"{counts['total']} in all")
        for cell in summary:
            lo, hi = cell["interval"] or (None, None)
            span = "(no units: no interval)" if lo is None else f"[{lo:+.3f}, {hi:+.3f}] {cell['verdict']}"
            print(f"  {cell['experiment']}  p={cell['ratio']:g} B={cell['bits']}: A(Q->P) = {cell['advantage']:+.3f} {span}")
    return 0


def _sweep_cells(store, model: str, protocol: str) -> list[dict]:
    """Every cell of the store's rows for (model, protocol) with both orders: A(Q->P) over the seeds stored,
    with its interval and verdict (what the report's A grid shows)."""
    from ..report.analysis import cells
    from ..report.data import group_rows

    out = []
    for exp in group_rows(store.rows(model=model, protocol=protocol)).experiments:
        for c in cells(exp):
            comparison = c.comparison
            out.append({"experiment": f"{exp.key.prune} x {exp.key.quant}", "ratio": c.ratio, "bits": c.bits,
                        "advantage": c.advantage, "interval": None if comparison is None else list(comparison.interval),
                        "verdict": None if comparison is None else comparison.verdict})
    return out


def _print_row(row) -> None:
    m = row.metrics
    shown = f"ppl {m.perplexity:10.3f}" if m.perplexity is not None else f"{m.metric_name} {m.metric:8.3f}"
    print(f"  {row.recipe:<48} {shown}", flush=True)


def _cmd_search(args) -> int:
    from ..budget.search import SearchConfig, plot_pareto, search
    from ..outputs import check_output_file

    quant = _with_acts(args.quant, args.acts)
    config = SearchConfig(target_bops=args.target_bops, target_size=args.target_size, sampler=args.sampler,
                          generations=args.generations, population=args.population, seed=args.seed,
                          bits=tuple(_ints(args.bits, "--bits")), prune=args.prune, quant=quant,
                          count_unstructured=args.count_unstructured)  # validates before loading the model
    if args.plot:
        check_output_file(args.plot, ".png")
    store = _open_store(args.store) if args.store else None
    bench = _workbench(args)
    def value(p) -> str:
        return f"ppl {p.perplexity:10.3f}" if p.perplexity is not None else f"{bench.metric_name} {p.metric:8.3f}"

    show = None if args.json or args.quiet else (
        lambda p: print(f"  g{p.generation} {value(p)}  BOPs {p.bop_reduction:6.2f}x  {p.recipe}", flush=True))
    result = search(bench, config, store=store, on_point=show)
    if args.plot:
        plot_pareto({args.sampler: result}, args.plot)
    best = result.best
    if args.json:
        print(json.dumps({**bench.describe(), "recipe": best.recipe, "perplexity": best.perplexity, "metric": best.metric,
                          "bop_reduction": best.bop_reduction, "size_reduction": best.size_reduction,
                          "pareto": [p.to_dict() for p in result.pareto], "evaluated": len(result.evaluated),
                          "sum_range": list(result.sum_range), "seconds": result.seconds}))
        return 0
    print(f"search: {bench.model_name}  protocol {bench.protocol_id}  sampler {args.sampler}  seed {args.seed}  "
          f"{len(result.evaluated)} configurations in {result.seconds:.1f} s")
    print(f"  best recipe: {best.recipe}")
    print(f"  {value(best)}  BOP reduction {best.bop_reduction:.2f}x  size reduction {best.size_reduction:.2f}x")
    print(f"  Pareto front (BOP reduction -> {'perplexity' if best.perplexity is not None else bench.metric_name}): "
          + ", ".join(f"{p.bop_reduction:.2f}x {p.perplexity if p.perplexity is not None else p.metric:.3f}"
                      for p in result.pareto))
    if args.plot:
        print(f"  plot: {args.plot}")
    return 0




def _cmd_cache(args) -> int:
    from ..cache import PrefixCache, default_cache_dir

    cache = PrefixCache(args.dir or default_cache_dir())
    if args.action == "clear":
        removed = cache.clear()
        print(json.dumps({"cache": str(cache.directory), "removed": removed}) if args.json
              else f"cache {cache.directory}: removed {removed} entries")
        return 0
    entries = cache.entries()
    if args.json:
        print(json.dumps({"cache": str(cache.directory), "entries": entries}))
        return 0
    print(f"cache {cache.directory}: {len(entries)} entries, {sum(e['bytes'] for e in entries) / 2**20:.1f} MiB")
    for e in entries:
        k = e["key"] or {}
        state = "ok" if e["ok"] else "CORRUPT (will be recomputed)"
        print(f"  {e['entry'][:12]}  {k.get('model')}  {k.get('protocol')}  seed {k.get('seed')}  {k.get('prefix')!r}  "
              f"v{k.get('version')} {k.get('commit')}  {e['bytes'] / 2**20:.1f} MiB  {state}")
    return 0


def _cmd_compare(args) -> int:
    """Two stored rows compared pairwise on their per-unit results: A with its interval and verdict."""
    from ..analysis.uncertainty import Margin, check_confidence, compare_rows
    from ..errors import ConfigError
    from ..recipe import parse_recipe
    from ..store import ResultStore

    check_confidence(args.confidence)
    names = [r if r == "dense" else str(parse_recipe(r)) for r in (args.first, args.second)]
    with ResultStore(args.store, readonly=True) as store:
        found = [[r for r in store.rows(recipe=name, model=args.model) if args.protocol in (None, r.protocol)]
                 for name in names]
    for name, rows in zip(names, found):
        if not rows:
            raise ConfigError(f"{args.store} has no row of {name!r}" + (f" for model {args.model}" if args.model else "")
                              + (f" under protocol {args.protocol}" if args.protocol else ""))
        where = {(r.model, r.protocol) for r in rows}
        if len(where) > 1:
            raise ConfigError(f"{name!r} is stored for {len(where)} model/protocol pairs: name one with --model and "
                              "--protocol")
    newest = [{r.seed: r for r in sorted(rows, key=lambda r: (r.created, r.key))} for rows in found]
    seeds = sorted(set(newest[0]) & set(newest[1]))
    if args.seeds:
        wanted = _ints(args.seeds, "--seeds")
        if not set(wanted) <= set(seeds):
            raise ConfigError(f"--seeds {args.seeds}: both rows are stored for seeds {seeds} only")
        seeds = wanted
    if not seeds:
        raise ConfigError("the two rows share no calibration seed")
    first, second = [[by[s] for s in seeds] for by in newest]
    margin = None
    if args.margin is not None:
        margin = Margin(args.margin, relative=first[0].units is not None and first[0].units.kind == "window-loss")
    c = compare_rows(first, second, margin=margin, confidence=args.confidence)
    out = {"model": first[0].model, "protocol": first[0].protocol, "seeds": seeds, **c.to_dict()}
    if args.json:
        print(json.dumps(out))
        return 0
    unit = "perplexity points" if c.metric_name == "-perplexity" else "accuracy points"
    print(f"compare: {out['model']}  protocol {out['protocol']}  seeds {seeds}")
    print(f"  A = M({c.first}) - M({c.second}) = {c.difference:+.4f} {unit}, {c.confidence:.0%} interval "
          f"[{c.interval[0]:+.4f}, {c.interval[1]:+.4f}]: {c.verdict} (margin {c.margin.name})")
    print(f"  {c.method}; {c.n_units} of {c.total_units} units" + "".join(f"; {n}" for n in c.notes))
    if c.mcnemar_p is not None:
        print("  exact McNemar p per seed: " + ", ".join(f"{p:.3g}" for p in c.mcnemar_p))
    return 0
