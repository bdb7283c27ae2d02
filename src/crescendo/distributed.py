"""Sweep cells as Ray tasks (optional extra `crescendo[ray]`), for grids that outgrow one machine.

Each task rebuilds its own workbench (model and protocol data) from a picklable factory and runs one
group of recipes sharing a first stage; the driver writes each returned row to the store, so the
store has a single writer and stays resumable whatever happens to the workers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .errors import ConfigError


def require_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("backend 'ray' needs Ray: pip install 'crescendo[ray]'") from None
    return ray


def run_groups_on_ray(
    bench_factory: Callable[[], Any], groups: Sequence[Sequence[Any]], seed: int,
    run_group: Callable[[Any, Sequence[Any], int], Any],
) -> Iterator[tuple[Any, Any, dict]]:
    """Yield (task, measurement, timings) as Ray tasks finish; each task runs `run_group(bench, tasks,
    seed)` on a bench built by `bench_factory()` in its own process. Starts a local Ray if none is
    connected."""
    ray = require_ray()
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)

    @ray.remote
    def run_remote(factory, run, tasks, seed):
        return list(run(factory(), tasks, seed))

    pending = [run_remote.remote(bench_factory, run_group, list(g), seed) for g in groups]
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        for item in ray.get(done[0]):
            yield item
