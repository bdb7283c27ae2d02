"""Sweep cells as Ray tasks on a local Ray instance with 2 CPUs; same rows as the local executor."""

from __future__ import annotations

import pytest

ray = pytest.importorskip("ray")

from crescendo.store import ResultStore  # noqa: E402
from crescendo.sweep import grid_tasks, run_sweep  # noqa: E402
from crescendo.workflow import (
    BenchFactory,  # noqa: E402
    resolve_protocol,  # noqa: E402
)

pytestmark = pytest.mark.ray


@pytest.fixture
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


def test_ray_backend_matches_local(saved_tiny, tmp_path, local_ray):
    model_dir, corpus = saved_tiny
    protocol = resolve_protocol(corpus, 32, 4, 4)
    factory = BenchFactory(str(model_dir), protocol, dtype="float32", device="cpu")
    tasks = grid_tasks("magnitude", [0.5], "rtn", [4])
    with ResultStore(tmp_path / "ray.sqlite") as store:
        counts = run_sweep(factory, "tiny", protocol.name, tasks, store, backend="ray")
        ray_rows = {r.recipe: r.metrics.perplexity for r in store.rows()}
    assert counts["computed"] == len(tasks) == 5  # dense, 2 singles, 2 orders
    with ResultStore(tmp_path / "local.sqlite") as store:
        run_sweep(factory, "tiny", protocol.name, tasks, store, backend="local")
        local_rows = {r.recipe: r.metrics.perplexity for r in store.rows()}
    assert ray_rows == local_rows
    with ResultStore(tmp_path / "ray.sqlite") as store:  # rerun: nothing left to do
        assert run_sweep(factory, "tiny", protocol.name, tasks, store, backend="ray")["computed"] == 0
