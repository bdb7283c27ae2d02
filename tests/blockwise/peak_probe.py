"""Run by test_blockwise_memory in a fresh process: block-wise compression and evaluation of the model
directory argv[1]; prints {"peak": VmHWM bytes, "estimate": the largest planned peak} as JSON."""

import json
import sys

import torch

from crescendo.api import compress
from crescendo.blockwise import load_blockwise, parse_memory, residency_of
from crescendo.blockwise.memory import peak_resident_bytes
from crescendo.eval.perplexity import perplexity

model, _, _ = load_blockwise(sys.argv[1], max_memory=parse_memory("64GB"))
residency = type(residency_of(model))
planned = []
real = residency.plan


def plan(self, *args, **kwargs):
    found = real(self, *args, **kwargs)
    planned.append(found.peak)
    return found


residency.plan = plan
g = torch.Generator().manual_seed(1)
calibration = [torch.randint(0, 1000, (1, 128), generator=g) for _ in range(8)]
compress(model, "sparsegpt:0.5 > gptq:w4", calibration, progress=False)
perplexity(model, torch.randint(0, 1000, (8, 128), generator=g), progress=False, batch_size=2)
print(json.dumps({"peak": peak_resident_bytes(), "estimate": max(planned)}))
