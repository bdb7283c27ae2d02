"""The CUDA path: the same recipes on a GPU, when one is present (skipped otherwise; never required)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model

from crescendo.api import compress
from crescendo.eval.perplexity import perplexity
from crescendo.models.adapters import get_weight
from crescendo.state import state_of

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


def test_gptq_grid_identical_on_cpu_and_cuda():
    """Given the very same W and H, the fitted grid (scales, zero points) is identical bit for bit on both
    devices, and so are the codes of the first column (no error feedback has reached it yet); later
    columns may differ only where the two devices' Cholesky factors round differently."""
    from crescendo.grids import UniformGrid
    from crescendo.kernels.obs import obs_sweep, prepare_hessian

    g = torch.Generator().manual_seed(0)
    W = torch.randn(256, 512, generator=g) * 0.02
    X = torch.randn(2048, 512, generator=g)
    H = X.t() @ X / 2048
    grid = UniformGrid(4)
    cpu = obs_sweep(W, prepare_hessian(H), grid=grid)
    gpu = obs_sweep(W.cuda(), prepare_hessian(H.cuda()), grid=grid)
    for key in cpu.grid_params:
        assert torch.equal(cpu.grid_params[key], gpu.grid_params[key].cpu()), key
    codes_cpu = grid.encode_all(cpu.weight, cpu.grid_params)
    codes_gpu = grid.encode_all(gpu.weight.cpu(), cpu.grid_params)
    assert torch.equal(codes_cpu[:, 0], codes_gpu[:, 0])
    assert (codes_cpu != codes_gpu).float().mean() < 0.01
