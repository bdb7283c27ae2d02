"""How much does a calibrated recipe depend on float reassociation alone? The same calibration windows
run through the blocks one window per call (batch 1) and all of them per call: the products sum in
another order, nothing else changes. Prints each perplexity (sotu-v1-quick, float32, one thread) and
how many weights differ between the first two batch sizes.

    python benchmarks/reassociation.py                          # gptq:w4, batches 1 and 32
    python benchmarks/reassociation.py --recipe sparsegpt:2:4

Batch 1 is what the engine did before batched calibration (a042520), so a committed figure from before
that commit should come back at batch 1 if nothing else changed.
"""
import argparse
import copy
import time

import torch

from crescendo.api import compress
from crescendo.eval.perplexity import perplexity
from crescendo.options import refused_in_one_line
from crescendo.recipe import parse_recipe
from crescendo.store import code_commit
from crescendo.workflow import Workbench, resolve_protocol

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--recipe", default="gptq:w4")
parser.add_argument("--batches", type=int, nargs="+", default=[1, 32], help="calibration windows per block call")
args = parser.parse_args()
with refused_in_one_line(parser):  # checked before the model loads: a bad recipe costs nothing
    recipe = parse_recipe(args.recipe)
if len(args.batches) < 2 or min(args.batches) < 1:
    parser.error(f"--batches takes at least two batch sizes >= 1, got {args.batches}")

torch.set_num_threads(1)
protocol = resolve_protocol("sotu-v1-quick", None, None, None)
bench = Workbench.load("smollm2-135m", protocol, progress=False)
print(f"# {args.recipe} under float reassociation, code {code_commit()}, one torch thread, "
      f"started {time.strftime('%H:%M')} UTC", flush=True)
weights = {}
for bs in args.batches:
    m = copy.deepcopy(bench.model)
    compress(m, recipe, bench.calibration, progress=False, calibration_batch_size=bs)
    weights[bs] = {n: p.detach().clone() for n, p in m.named_parameters() if "proj" in n}
    ppl = perplexity(m, bench.data.eval_windows, progress=False).perplexity
    print(f"batch {bs}: {args.recipe} perplexity {ppl:.3f} (sotu-v1-quick, 64 windows, float32)", flush=True)
    del m
a, b = (weights[bs] for bs in args.batches[:2])
diff = sum(int((a[n] != b[n]).sum()) for n in a)
total = sum(a[n].numel() for n in a)
print(f"weights that differ between batch {args.batches[0]} and batch {args.batches[1]}: "
      f"{diff} of {total} ({diff / total:.2%})")
