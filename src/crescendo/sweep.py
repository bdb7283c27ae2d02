"""Resumable grids of compression runs, every result a row in the results store.

A sweep is a list of recipes. Recipes are grouped by their first stage (after a shared prefix such
as `rotate`, if any): the model after those stages is computed once per group and the rest of each
recipe runs on a copy (P(r) alone and P(r) > Q(b) for every b and every quantizer share the
expensive pruning). Before any work, finished rows are looked up by key
(model, protocol, recipe, seed, version), so a sweep killed at any moment and rerun redoes nothing
that was stored and loses nothing: each row is written in its own transaction as soon as it exists.
"""

from __future__ import annotations

import copy
import logging
import platform
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from . import __version__
from .errors import ConfigError
from .recipe import Recipe, parse_recipe
from .store import ResultStore, Row, run_key

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepTask:
    recipe: str  # canonical recipe text ("dense" for the uncompressed model)
    kind: str  # "dense" | "single" | "order" | "multistage"
    extra: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


def _fmt_ratio(r: float) -> str:
    return f"{r:g}"


def stage_text(template: str, **values: Any) -> str:
    """`sparsegpt` -> `sparsegpt:{r}` style expansion; a template containing `{` is formatted."""
    return template.format(**values)


def grid_tasks(
    prune: str,
    ratios: Sequence[float],
    quant: str | Sequence[str],
    bits: Sequence[int],
    *,
    multistage_total: float | None = None,
    multistage_step: float = 0.05,
    multistage_bits: Sequence[int] | None = None,
    multistage_quant: Sequence[str] | None = None,
    prefix: str = "",
) -> list[SweepTask]:
    """Both orders and both singles of every (ratio, bits) cell, plus the dense model.

    prune / quant: method names (`sparsegpt`, `rtn`) or templates (`wanda:{r},nm=2:4`, `rtn:w{b}a{b}`);
    several quantizers give one grid each, sharing the pruning singles.
    multistage_total: also P(p1) > Q(b) > P(p2) for p1 + p2 = total in steps of `multistage_step`
    (003, Figure 7), for the bit-widths in `multistage_bits` and the quantizers in `multistage_quant`
    (default: all of them).
    prefix: stages every compressed recipe starts with (`rotate`: orders on the rotated model, as
    003 does with QuaRot); the dense row stays the unmodified model.
    """
    if not isinstance(quant, str):
        merged: dict[str, SweepTask] = {}
        for q in quant:
            staged = multistage_quant is None or q in multistage_quant
            for t in grid_tasks(prune, ratios, q, bits, multistage_total=multistage_total if staged else None,
                                multistage_step=multistage_step, multistage_bits=multistage_bits, prefix=prefix):
                merged.setdefault(t.recipe, t)
        return list(merged.values())
    p_tpl = prune if "{" in prune else prune + ":{r}"
    q_tpl = quant if "{" in quant else quant + ":w{b}"
    head = str(parse_recipe(prefix)) + " > " if prefix.strip() else ""
    n_prefix = len(parse_recipe(prefix)) if head else 0
    tasks: dict[str, SweepTask] = {}

    def add(recipe: str, kind: str, **extra: Any) -> None:
        text = str(parse_recipe(head + recipe))  # canonical spelling, validated now
        info = {**extra, "prune": p_tpl, "quant": q_tpl}
        if head:
            info.update(prefix=head[:-3], prefix_stages=n_prefix)
        tasks.setdefault(text, SweepTask(text, kind, info))

    add_dense = SweepTask("dense", "dense", {"prune": p_tpl, "quant": q_tpl})
    for b in bits:
        add(q_tpl.format(b=b), "single", method="quant", bits=b)
    for r in ratios:
        add(p_tpl.format(r=_fmt_ratio(r)), "single", method="prune", ratio=r)
    for r in ratios:
        for b in bits:
            p, q = p_tpl.format(r=_fmt_ratio(r)), q_tpl.format(b=b)
            add(f"{p} > {q}", "order", ratio=r, bits=b, first="prune")
            add(f"{q} > {p}", "order", ratio=r, bits=b, first="quant")
    if multistage_total is not None:
        steps = int(round(multistage_total / multistage_step))
        for b in bits if multistage_bits is None else multistage_bits:
            q = q_tpl.format(b=b)
            for k in range(steps + 1):
                p1 = round(k * multistage_step, 10)
                p2 = round(multistage_total - p1, 10)
                parts = ([p_tpl.format(r=_fmt_ratio(p1))] if p1 > 0 else []) + [q]
                parts += [p_tpl.format(r=_fmt_ratio(p2))] if p2 > 0 else []
                add(" > ".join(parts), "multistage", total=multistage_total, p1=p1, p2=p2, bits=b)
    return [add_dense] + list(tasks.values())


def environment() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def _shared_depth(task: SweepTask) -> int:
    """Stages a task shares with its group: the common prefix and its first own stage."""
    return int(task.extra.get("prefix_stages", 0)) + 1


def _groups(tasks: Iterable[SweepTask]) -> dict[str, list[SweepTask]]:
    groups: dict[str, list[SweepTask]] = {}
    for t in tasks:
        first = t.recipe if t.recipe == "dense" else str(Recipe(parse_recipe(t.recipe).stages[: _shared_depth(t)]))
        groups.setdefault(first, []).append(t)
    return groups


def run_group(bench, tasks: Sequence[SweepTask], seed: int) -> Iterable[tuple[SweepTask, dict, dict]]:
    """Run tasks sharing a first stage; yields (task, metrics, timings) as each finishes."""
    torch.manual_seed(seed)
    if tasks[0].recipe == "dense":
        ppl = bench.dense()
        yield tasks[0], {"perplexity": ppl.perplexity, "sparsity": 0.0, "avg_weight_bits": 16.0,
                         "compression_ratio": 1.0}, {"eval_seconds": ppl.seconds}
        return
    depth = _shared_depth(tasks[0])
    start = time.perf_counter()
    base, _ = bench.compress(Recipe(parse_recipe(tasks[0].recipe).stages[:depth]))
    first_seconds = time.perf_counter() - start
    for task in sorted(tasks, key=lambda t: len(parse_recipe(t.recipe))):
        recipe = parse_recipe(task.recipe)
        rest = Recipe(recipe.stages[depth:])
        start = time.perf_counter()
        model = copy.deepcopy(base)
        result = bench.compress_inplace(model, rest) if len(rest) else None
        from .api import summarize

        summary = summarize(model)
        seconds = first_seconds + time.perf_counter() - start
        ppl = bench.evaluate(model)
        metrics = {"perplexity": ppl.perplexity, **summary.to_dict()}
        if getattr(bench, "store_layerwise", False):
            errors = bench.layer_errors(model, per_linear=False)  # error through depth, per block
            if errors is not None:
                metrics["per_block_error"] = errors["per_block"]
        stage_seconds = [first_seconds] + ([s.seconds for s in result.stages] if result else [])
        yield task, metrics, {"compress_seconds": seconds, "eval_seconds": ppl.seconds, "stages": stage_seconds}
        del model


def run_sweep(
    bench_factory: Callable[[], Any],
    model_name: str,
    protocol_name: str,
    tasks: Sequence[SweepTask],
    store: ResultStore,
    *,
    seed: int = 0,
    backend: str = "local",
    on_row: Callable[[Row], None] | None = None,
) -> dict[str, int]:
    """Run every unfinished task; returns {"total", "skipped", "computed"}."""
    todo = [t for t in tasks if not store.has(run_key(model_name, protocol_name, t.recipe, seed, __version__))]
    counts = {"total": len(tasks), "skipped": len(tasks) - len(todo), "computed": 0}
    if not todo:
        return counts
    env = environment()

    def put(task: SweepTask, metrics: dict, timings: dict) -> None:
        row = Row.create(model_name, protocol_name, task.recipe, seed, __version__, task.kind,
                         metrics=metrics, timings=timings, environment=env, extra=task.extra)
        store.put(row)
        counts["computed"] += 1
        if on_row:
            on_row(row)

    groups = _groups(todo)
    if backend == "local":
        bench = bench_factory()
        for group in groups.values():
            for task, metrics, timings in run_group(bench, group, seed):
                put(task, metrics, timings)
    elif backend == "ray":
        from .distributed import run_groups_on_ray

        for task, metrics, timings in run_groups_on_ray(bench_factory, list(groups.values()), seed):
            put(task, metrics, timings)
    else:
        raise ConfigError(f"unknown backend {backend!r} (local or ray)")
    return counts


def measure(bench, recipe: str, store: ResultStore | None = None, *, kind: str = "run", seed: int = 0,
            extra: dict[str, Any] | None = None) -> Row:
    """One recipe's row: read from `store` when it is there (same model, protocol, recipe, seed,
    version), else compressed, evaluated and stored. Benchmarks that share recipes (Table 1's
    `rotate > sleb:0.05` is also in Table 4) then compute each of them once."""
    text = "dense" if recipe == "dense" else str(parse_recipe(recipe))
    key = run_key(bench.model_name, bench.protocol_id, text, seed, __version__)
    found = store.get(key) if store is not None else None
    if found is not None:
        return found
    torch.manual_seed(seed)
    if text == "dense":
        ppl = bench.dense()
        metrics, timings = {"perplexity": ppl.perplexity}, {"eval_seconds": ppl.seconds}
    else:
        model, outcome = bench.run(text)
        del model
        metrics = {"perplexity": outcome.perplexity, **outcome.summary}
        timings = {"compress_seconds": outcome.compress_seconds, "eval_seconds": outcome.eval_seconds}
    row = Row.create(bench.model_name, bench.protocol_id, text, seed, __version__, kind, metrics=metrics,
                     timings=timings, environment=environment(), extra=extra or {})
    if store is not None:
        store.put(row)
    return row
