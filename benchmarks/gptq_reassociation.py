"""How much does gptq:w4 depend on float reassociation alone? The same calibration windows run through
the blocks one window per call (batch 1) and all 32 per call: the products sum in another order, nothing
else changes. Prints both perplexities (sotu-v1-quick, float32, one thread) and how many weights differ.

    python benchmarks/gptq_reassociation.py
"""
import copy

import torch

from crescendo.api import compress
from crescendo.eval.perplexity import perplexity
from crescendo.workflow import Workbench, resolve_protocol

torch.set_num_threads(1)
protocol = resolve_protocol("sotu-v1-quick", None, None, None)
bench = Workbench.load("smollm2-135m", protocol, progress=False)
out = {}
for bs in (1, 32):
    m = copy.deepcopy(bench.model)
    compress(m, "gptq:w4", bench.calibration, progress=False, calibration_batch_size=bs)
    w = {n: p.detach().clone() for n, p in m.named_parameters() if "proj" in n}
    out[bs] = w
    ppl = perplexity(m, bench.data.eval_windows, progress=False).perplexity
    print(f"batch {bs}: gptq:w4 perplexity {ppl:.3f} (sotu-v1-quick, 64 windows, float32)", flush=True)
diff = sum(int((out[1][n] != out[32][n]).sum()) for n in out[1])
total = sum(out[1][n].numel() for n in out[1])
print(f"weights that differ between batch 1 and batch 32: {diff} of {total} ({diff / total:.2%})")
