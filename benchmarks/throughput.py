"""Throughput on the embedded model: evaluation tokens/s in float32 and bfloat16 (autocast), and the
compression wall time and peak resident memory of SparseGPT 50% and GPTQ 4 bits (sotu-v1-quick
calibration: 32 windows of 512).

Each measurement runs in a fresh subprocess so that its peak resident memory (ru_maxrss) is its own.

    python benchmarks/throughput.py [--windows 16]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

CHILD = r"""
import json, resource, sys, time, torch
from crescendo.workflow import Workbench
kind, arg, windows = sys.argv[1], sys.argv[2], int(sys.argv[3])
bench = Workbench.load("smollm2-135m", "sotu-v1-quick", dtype=arg if kind == "eval" else "float32", progress=False)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if kind == "eval":
    from crescendo.eval.perplexity import perplexity
    with bench.compute():
        perplexity(bench.model, bench.data.eval_windows[:1], progress=False)  # warm-up
        r = perplexity(bench.model, bench.data.eval_windows[:windows], progress=False)
    out = {"tokens_per_second": r.tokens_per_second, "seconds": r.seconds, "tokens": r.tokens}
else:
    model, result = bench.compress(arg)
    out = {"seconds": sum(s.seconds for s in result.stages)}
out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
out["rss_after_load_mib"] = base / 1024
print(json.dumps(out))
"""


def child(kind: str, arg: str, windows: int) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, kind, arg, str(windows)], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=16, help="eval windows of 512 tokens to time")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    print(f"# throughput: smollm2-135m, sotu-v1-quick, {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
          f"torch threads default")
    rows = {}
    for dtype in ("float32", "bfloat16"):
        r = child("eval", dtype, args.windows)
        rows[f"eval {dtype}"] = r
        print(f"eval {dtype:<9}: {r['tokens_per_second']:7.0f} tokens/s ({r['tokens']} tokens in {r['seconds']:.1f} s), "
              f"peak RSS {r['peak_rss_mib']:.0f} MiB", flush=True)
    for recipe in ("sparsegpt:0.5", "gptq:w4"):
        r = child("compress", recipe, 0)
        rows[recipe] = r
        print(f"compress {recipe:<14}: {r['seconds']:6.1f} s (float32), peak RSS {r['peak_rss_mib']:.0f} MiB "
              f"(after loading the model and data: {r['rss_after_load_mib']:.0f} MiB)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"time": time.strftime("%Y-%m-%d %H:%M"), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    _ = resource  # the parent's own RSS is not reported: each measurement is a child process
    main()
