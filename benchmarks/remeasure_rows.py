"""Re-measure stored rows whose figures a code change moved, in place (same key), keeping a log.

A fix that changes what a recipe computes (e.g. GPTQ/SparseGPT no longer zeroing input columns that
look dead after an activation quantizer) makes the rows measured before it stale. This recomputes
the rows whose recipe matches `--match` under the row's own protocol and seed, replaces them (the
row now records the commit that measured it) and writes before/after figures to `--log`.

    python benchmarks/remeasure_rows.py --store docs/results/order/order.sqlite \\
        --match '^rtn:w\\d+a\\d+ > sparsegpt' --log docs/results/order/remeasured.json

Where re-measuring costs more than it is worth, `--supersede REASON` marks the matching rows superseded
instead (`ResultStore.mark_superseded`: kept, never reported as current); rows the log says were
re-measured are current and left alone.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import torch

from crescendo.store import ResultStore, code_commit, record_run
from crescendo.workflow import Workbench, resolve_protocol


def _bench(protocol_id: str, model: str, layerwise: bool) -> Workbench:
    """The workbench a row's protocol id names: `name[overrides]@dtype`."""
    name, _, dtype = protocol_id.partition("@")
    dtype = dtype or "float32"
    base, _, over = name.partition("[")
    options = dict(kv.split("=") for kv in over.rstrip("]").split(",")) if over else {}
    protocol = resolve_protocol(base, seqlen=int(options["seqlen"]) if "seqlen" in options else None,
                                eval_windows=int(options["n_eval_windows"]) if "n_eval_windows" in options else None,
                                nsamples=int(options["n_calibration"]) if "n_calibration" in options else None)
    bench = Workbench.load(model, protocol, dtype=dtype, progress=False)
    if bench.protocol_id != protocol_id:
        raise SystemExit(f"cannot rebuild protocol {protocol_id!r} (got {bench.protocol_id!r})")
    bench.layerwise_samples = 4 if layerwise else bench.layerwise_samples
    return bench


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True)
    parser.add_argument("--match", required=True, help="regular expression on the recipe")
    parser.add_argument("--log", required=True, help="JSON file of before/after figures (appended)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--supersede", default=None, metavar="REASON",
                        help="mark the matching rows superseded with this reason instead of re-measuring them")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pattern = re.compile(args.match)
    log_path = Path(args.log)
    log = json.loads(log_path.read_text()) if log_path.exists() else {"entries": []}
    done = {(e["recipe"], e["seed"], e["protocol"]) for e in log["entries"]}
    with ResultStore(args.store) as store:
        rows = [r for r in store.rows() if pattern.search(r.recipe) and (r.recipe, r.seed, r.protocol) not in done]
        if args.supersede:
            for row in rows:
                if not row.extra.get("superseded"):
                    store.mark_superseded(row.key, f"{args.supersede} (marked at {code_commit()})")
                    print(f"superseded: {row.recipe} (seed {row.seed}, {row.protocol})", flush=True)
            return 0
        benches: dict = {}
        for row in sorted(rows, key=lambda r: (r.protocol, r.recipe)):
            layerwise = bool(row.metrics.per_block_error)
            key = (row.protocol, row.model)
            if key not in benches:
                benches.clear()
                benches[key] = _bench(row.protocol, row.model, layerwise)
            bench = benches[key]
            torch.manual_seed(row.seed)
            start = time.perf_counter()
            model, result = bench.compress(row.recipe)
            compress_seconds = time.perf_counter() - start
            found = bench.measure(model, layerwise=layerwise)
            metrics, eval_seconds = found.metrics, found.seconds
            dead = sum(s.dead_inputs for s in result.stages)
            del model
            record_run(store, model=row.model, protocol=row.protocol, recipe=row.recipe, seed=row.seed, kind=row.kind,
                       metrics=metrics, timings={"compress_seconds": compress_seconds, "eval_seconds": eval_seconds},
                       extra=row.extra, device="cpu", units=found.units)
            entry = {"recipe": row.recipe, "seed": row.seed, "protocol": row.protocol, "before": row.metrics.metric,
                     "after": metrics.metric, "metric_name": metrics.metric_name, "dead_inputs": dead,
                     "commit": code_commit()}
            log["entries"].append(entry)
            log_path.write_text(json.dumps(log, indent=1))
            print(f"{row.recipe:<44} M {row.metrics.metric:.6g} -> {metrics.metric:.6g}  ({compress_seconds:.0f} s)",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
