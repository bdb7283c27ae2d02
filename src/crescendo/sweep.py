"""Resumable grids of compression runs, every result a row in the results store.

A sweep is a list of recipes. Recipes are grouped by their first stage (after a shared prefix such
as `rotate`, if any): the model after those stages is computed once per group and the rest of each
recipe runs on a copy (P(r) alone and P(r) > Q(b) for every b and every quantizer share the
expensive pruning). Before any work, finished rows are looked up by key
(model, protocol, recipe, seed, version), so a sweep killed at any moment and rerun redoes nothing
that was stored and loses nothing: each row is written in its own transaction as soon as it exists.
Every row is claimed in the store before it is computed, so two sweeps on one store share the work
instead of both computing (and the second overwriting) every row.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from . import __version__
from .cache import PrefixCache
from .errors import ConfigError
from .outcome import Measured
from .recipe import Recipe, parse_recipe
from .store import ResultStore, Row, record_run, run_key
from .types import check_ratio

log = logging.getLogger(__name__)

MAX_MULTISTAGE_STEPS = 100  # p1 values of one multi-stage series (each is a full compression)


@dataclass(frozen=True)
class SweepTask:
    recipe: str  # canonical recipe text ("dense" for the uncompressed model)
    kind: str  # "dense" | "single" | "order" | "multistage"
    extra: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


def ratio_label(r: float) -> str:
    """How a ratio is written into a recipe (`sparsegpt:0.05`); refuses ratios the label would round
    (the stored ratio and the one in the recipe must be the same number)."""
    label = f"{r:g}"
    if abs(float(label) - r) > 1e-12:
        raise ConfigError(f"ratio {r!r} has more than 6 significant digits; it would be written as {label}")
    return label


def _check_templates(prune: str, quants: Sequence[str]) -> None:
    # a bare method name gets ":{r}" / ":w{b}" appended; anything with arguments must say where they go
    if ("{" in prune or ":" in prune) and "{r}" not in prune:
        raise ConfigError(f"pruning template {prune!r} must contain {{r}} (or be a bare method name)")
    for q in quants:
        if ("{" in q or ":" in q) and "{b}" not in q:
            raise ConfigError(f"quantizer template {q!r} must contain {{b}} (or be a bare method name)")


def _format(template: str, what: str, **values: Any) -> str:
    try:
        return template.format(**values)
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(f"{what} template {template!r} is malformed: {e!r}") from None


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
    Every recipe is validated here, before any model is loaded.
    """
    quants = [quant] if isinstance(quant, str) else list(quant)
    if not ratios:
        raise ConfigError("a sweep needs at least one pruning ratio")
    if not bits:
        raise ConfigError("a sweep needs at least one bit-width")
    if not quants:
        raise ConfigError("a sweep needs at least one quantizer")
    _check_templates(prune, quants)
    for r in ratios:
        check_ratio(r)
        ratio_label(r)
    steps = None
    if multistage_total is None and (multistage_bits is not None or multistage_quant is not None):
        raise ConfigError("--multistage-bits and --multistage-quant need --multistage TOTAL")
    if multistage_total is not None:
        steps = _multistage_steps(multistage_total, multistage_step)
    if multistage_bits is not None and not set(multistage_bits) <= set(bits):
        raise ConfigError(f"--multistage-bits {list(multistage_bits)} must be among the sweep's bits {list(bits)}")
    if multistage_quant is not None and not set(multistage_quant) <= set(quants):
        raise ConfigError("--multistage-quant templates must be among the sweep's quantizers")
    merged: dict[str, SweepTask] = {}
    for q in quants:
        staged = multistage_quant is None or q in multistage_quant
        for t in _grid(prune, ratios, q, bits, steps if staged else None, multistage_total, multistage_step,
                       multistage_bits, prefix):
            merged.setdefault(t.recipe, t)
    return list(merged.values())


def _multistage_steps(total: float, step: float) -> int:
    if not (math.isfinite(total) and 0 < total < 1):
        raise ConfigError(f"--multistage total must be in (0, 1), got {total}")
    if not (math.isfinite(step) and 0 < step <= total):
        raise ConfigError(f"--multistage-step must be in (0, {total:g}], got {step}")
    steps = total / step
    if abs(steps - round(steps)) > 1e-6:
        raise ConfigError(f"--multistage-step {step:g} must divide the total {total:g} into whole steps")
    if round(steps) > MAX_MULTISTAGE_STEPS:
        raise ConfigError(f"--multistage-step {step:g} gives {round(steps)} steps; at most {MAX_MULTISTAGE_STEPS}")
    return int(round(steps))


def _grid(prune, ratios, quant, bits, steps, total, step, multistage_bits, prefix) -> list[SweepTask]:
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

    def p(r: float) -> str:
        return _format(p_tpl, "pruning", r=ratio_label(r))

    def q(b: int) -> str:
        return _format(q_tpl, "quantizer", b=b)

    add_dense = SweepTask("dense", "dense", {"prune": p_tpl, "quant": q_tpl})
    for b in bits:
        add(q(b), "single", method="quant", bits=b)
    for r in ratios:
        add(p(r), "single", method="prune", ratio=float(ratio_label(r)))
    for r in ratios:
        for b in bits:
            ratio = float(ratio_label(r))
            add(f"{p(r)} > {q(b)}", "order", ratio=ratio, bits=b, first="prune")
            add(f"{q(b)} > {p(r)}", "order", ratio=ratio, bits=b, first="quant")
    if steps is not None:
        for b in bits if multistage_bits is None else multistage_bits:
            for k in range(steps + 1):
                p1 = round(k * step, 10)
                p2 = round(total - p1, 10)
                parts = ([p(p1)] if p1 > 0 else []) + [q(b)] + ([p(p2)] if p2 > 0 else [])
                add(" > ".join(parts), "multistage", total=total, p1=float(ratio_label(p1)),
                    p2=float(ratio_label(p2)), bits=b)
    return [add_dense] + list(tasks.values())


def _shared_depth(task: SweepTask) -> int:
    """Stages a task shares with its group: the common prefix and its first own stage."""
    return int(task.extra.get("prefix_stages", 0)) + 1


def _groups(tasks: Iterable[SweepTask]) -> dict[str, list[SweepTask]]:
    groups: dict[str, list[SweepTask]] = {}
    for t in tasks:
        first = t.recipe if t.recipe == "dense" else str(Recipe(parse_recipe(t.recipe).stages[: _shared_depth(t)]))
        groups.setdefault(first, []).append(t)
    return groups


def run_group(bench, tasks: Sequence[SweepTask], seed: int, cache: PrefixCache | None = None,
              model_name: str | None = None) -> Iterable[tuple[SweepTask, Measured, dict]]:
    """Run tasks sharing a first stage; yields (task, measurement, timings) as each finishes.

    With a `cache`, a shared prefix that has a calibrated stage is read from it when present
    (timings say so) and written to it after it is computed."""
    torch.manual_seed(seed)
    if tasks[0].recipe == "dense":
        found = bench.measure(bench.model)
        yield tasks[0], found, {"eval_seconds": found.seconds}
        return
    depth = _shared_depth(tasks[0])
    prefix = Recipe(parse_recipe(tasks[0].recipe).stages[:depth])
    start = time.perf_counter()
    if cache is not None and not any(stage.spec.calibrated for stage in prefix.stages):
        cache = None  # data-free prefixes (RTN, magnitude, formats) are faster to recompute than to load
    if cache is not None and not cache.holds(bench.model):
        cache = None
    key = cache.key(model_name or bench.model_name, bench.protocol_id, seed, str(prefix)) if cache else None
    base = cache.get(key) if cache else None
    cached = base is not None
    if base is None:
        base, _ = bench.compress(prefix)
        if cache:
            cache.put(key, base)
    else:
        base = base.to(bench.device)
    first_seconds = time.perf_counter() - start
    for task in sorted(tasks, key=lambda t: len(parse_recipe(t.recipe))):
        recipe = parse_recipe(task.recipe)
        rest = Recipe(recipe.stages[depth:])
        start = time.perf_counter()
        model = copy.deepcopy(base)
        result = bench.compress_inplace(model, rest) if len(rest) else None
        seconds = first_seconds + time.perf_counter() - start
        found = bench.measure(model, layerwise=getattr(bench, "store_layerwise", False))
        stage_seconds = [first_seconds] + ([s.seconds for s in result.stages] if result else [])
        yield task, found, {"compress_seconds": seconds, "eval_seconds": found.seconds, "stages": stage_seconds,
                            "prefix_from_cache": cached}
        del model


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, where the OS has one)."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def check_lanes(lanes: int) -> None:
    """ConfigError unless 1 <= lanes <= the usable cores: each lane is a single-threaded process holding its
    own copy of the model, so lanes beyond the cores only add memory and contention."""
    if isinstance(lanes, bool) or not isinstance(lanes, int) or lanes < 1:
        raise ConfigError(f"--lanes must be an integer >= 1, got {lanes!r}")
    if lanes > usable_cores():
        raise ConfigError(f"--lanes {lanes} is more than the {usable_cores()} CPU cores this process may use (each "
                          f"lane is a single-threaded process with its own copy of the model)")


def run_sweep(
    bench_factory: Callable[[], Any],
    model_name: str,
    protocol_name: str,
    tasks: Sequence[SweepTask],
    store: ResultStore,
    *,
    seed: int = 0,
    backend: str = "local",
    device: str | None = None,
    on_row: Callable[[Row], None] | None = None,
    lanes: int = 1,
    cache_dir: str | None = None,
    stop: Callable[[], bool] | None = None,
) -> dict[str, int]:
    """Run every unfinished task; returns {"total", "skipped", "computed", "elsewhere"}.

    Groups of tasks sharing a prefix are claimed in the store one group at a time, so concurrent
    sweeps (and the `lanes` - 1 extra single-threaded processes this one starts, each with its own
    model copy) share the work. "elsewhere": rows another process computed or is computing.
    `cache_dir`: a prefix cache (`crescendo.cache`) shared by every lane. `stop()` is asked before
    each group; True ends the sweep early (lanes stop when the process that started them is gone)."""
    if backend not in ("local", "ray"):
        raise ConfigError(f"unknown backend {backend!r} (local or ray)")
    check_lanes(lanes)
    cache = PrefixCache(cache_dir) if cache_dir is not None else None

    def key(task: SweepTask) -> str:
        return run_key(model_name, protocol_name, task.recipe, seed, __version__)

    todo = [t for t in tasks if not store.has(key(t))]
    counts = {"total": len(tasks), "skipped": len(tasks) - len(todo), "computed": 0, "elsewhere": 0}
    if not todo:
        return counts

    def put(task: SweepTask, found: Measured, timings: dict) -> None:
        row = record_run(store, model=model_name, protocol=protocol_name, recipe=task.recipe, seed=seed,
                         kind=task.kind, metrics=found.metrics, timings=timings, extra=task.extra, device=device,
                         units=found.units)
        counts["computed"] += 1
        if on_row:
            on_row(row)

    groups = list(_groups(todo).values())
    if backend == "ray":
        from .distributed import require_ray, run_groups_on_ray

        require_ray()  # before the first claim creates the store's file
        mine = store.claim_many([key(t) for t in todo])
        counts["elsewhere"] = len(todo) - len(mine)
        groups = [g for g in ([t for t in group if key(t) in set(mine)] for group in groups) if g]
        try:
            for task, found, timings in run_groups_on_ray(bench_factory, groups, seed, run_group):
                put(task, found, timings)
        finally:
            _release_unwritten(store, [key(t) for g in groups for t in g])
        return counts

    # the model and protocol are loaded (and checked: a window longer than the model takes, a corpus too
    # short) before anything is claimed or written, so a sweep refused there leaves no store behind
    bench = bench_factory()
    workers = _start_lanes(lanes - 1, bench_factory, model_name, protocol_name, tasks, store.path, seed, device,
                           cache_dir)
    threads = torch.get_num_threads()
    if lanes > 1:
        torch.set_num_threads(1)  # one single-threaded process per lane
    try:
        for group in groups:
            if stop is not None and stop():
                break
            held = set(store.claim_many([key(t) for t in group]))
            counts["elsewhere"] += len(group) - len(held)
            mine = [t for t in group if key(t) in held]
            if not mine:
                continue
            try:
                for task, found, timings in run_group(bench, mine, seed, cache, model_name):
                    put(task, found, timings)
            finally:
                _release_unwritten(store, [key(t) for t in mine])
    finally:
        torch.set_num_threads(threads)
        for proc in workers:
            proc.join()
    failed = [p.exitcode for p in workers if p.exitcode != 0]
    if failed:
        raise ConfigError(f"{len(failed)} sweep lane(s) failed (exit codes {failed}); rerun to resume")
    return counts


def _release_unwritten(store: ResultStore, keys: list[str]) -> None:
    for k in keys:  # claims of rows that were not written (a failure, an interruption)
        if not store.has(k):
            store.release(k)


def _lane(bench_factory, model_name, protocol_name, tasks, store_path, seed, device, cache_dir, parent) -> None:
    import os

    torch.set_num_threads(1)
    with ResultStore(store_path) as store:
        run_sweep(bench_factory, model_name, protocol_name, tasks, store, seed=seed, device=device,
                  cache_dir=cache_dir, stop=lambda: os.getppid() != parent)


def _start_lanes(n, bench_factory, model_name, protocol_name, tasks, store_path, seed, device, cache_dir) -> list:
    if n <= 0:
        return []
    import multiprocessing
    import os

    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch thread pools
    workers = []
    for _ in range(n):
        proc = context.Process(target=_lane, args=(bench_factory, model_name, protocol_name, list(tasks), store_path,
                                                   seed, device, cache_dir, os.getpid()), daemon=True)
        proc.start()
        workers.append(proc)
    return workers


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
        found = bench.measure(bench.model)
        timings = {"eval_seconds": found.seconds}
    else:
        start = time.perf_counter()
        model, _ = bench.compress(text)
        compress_seconds = time.perf_counter() - start
        found = bench.measure(model)
        del model
        timings = {"compress_seconds": compress_seconds, "eval_seconds": found.seconds}
    return record_run(store, model=bench.model_name, protocol=bench.protocol_id, recipe=text, seed=seed, kind=kind,
                      metrics=found.metrics, timings=timings, extra=extra or {}, device=getattr(bench, "device", None),
                      units=found.units)
