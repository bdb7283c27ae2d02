"""The CUDA path: the same recipes on a GPU, when one is present (skipped otherwise; never required)."""

from __future__ import annotations

import pytest
import torch

from crescendo.api import compress
from crescendo.state import state_of
from crescendo.eval.perplexity import perplexity
from crescendo.models.adapters import get_weight
from conftest import tiny_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

RECIPES = [
    "sparsegpt:0.5 > gptq:w4,g32",
    "gptq:w4,actorder > sparsegpt:0.5",
    "wanda:2:4 > rtn:w8a8kv8",
    "rotate > gptq:w4a4",
    "magnitude:0.5 > mxfp4 > hbfp8:a",
    "rtn:w4 > sleb:0.5",
]


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipes_on_cuda_match_cpu_invariants(recipe, calibration, eval_ids):
    model = tiny_model("llama").cuda()
    compress(model, recipe, [c.cuda() for c in calibration], progress=False)
    modules = dict(model.named_modules())
    for name, rec in state_of(model).records.items():
        w = get_weight(modules[name])
        assert w.is_cuda
        if rec.mask is not None:
            assert torch.all(w[rec.mask] == 0)
        if rec.grid is not None:
            assert torch.equal(rec.grid.project_all(w, rec.grid_params), w)
    assert perplexity(model, eval_ids.cuda(), progress=False).perplexity < 1e4


def test_gptq_same_on_cpu_and_cuda(calibration):
    cpu, gpu = tiny_model("llama"), tiny_model("llama").cuda()
    compress(cpu, "gptq:w4", calibration, progress=False)
    compress(gpu, "gptq:w4", [c.cuda() for c in calibration], progress=False)
    a = cpu.model.layers[0].mlp.down_proj.weight
    b = gpu.model.layers[0].mlp.down_proj.weight.cpu()
    assert (a != b).float().mean() < 0.01  # float rounding may flip a few grid points, not more
