"""Mixed-precision token activations: the lowest-norm tokens of each sample at low bits."""

from __future__ import annotations

import pytest
import torch

from crescendo.api import compress
from crescendo.errors import RecipeError
from crescendo.grids import UniformGrid
from crescendo.methods.mixact import MixedTokenQuantizer
from crescendo.models.vision import ResNetMiniConfig, ViTMiniConfig, build_vision_model
from crescendo.recipe import parse_recipe


def test_the_weakest_tokens_of_each_sample_get_the_low_grid():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 8, generator=g)
    x[0, 3] *= 0.01  # sample 0: token 3 is the weakest; sample 1: token 1 and token 4
    x[1, 1] *= 0.01
    x[1, 4] *= 0.02
    high, low = UniformGrid(4, symmetric=True), UniformGrid(2, symmetric=True)
    q = MixedTokenQuantizer(4, 2, 0.4)(x)  # round(0.4 * 5) = 2 tokens per sample
    norms = x.norm(dim=-1)
    for b in range(2):
        weakest = set(torch.topk(norms[b], 2, largest=False).indices.tolist())
        for t in range(5):
            grid = low if t in weakest else high
            assert torch.equal(q[b, t], grid.quantize(x[b, t][None])[0])
    assert {3} < set(torch.topk(norms[0], 2, largest=False).indices.tolist())
    assert torch.equal(MixedTokenQuantizer(4, 2, 0.0)(x), high.quantize(x.reshape(-1, 8)).reshape(x.shape))


def test_mixact_stage_parses_attaches_and_refuses_convs():
    assert str(parse_recipe("mixact:a4,low=2,ratio=0.3,include=^blocks\\.0\\.")) == \
        "mixact:a4,low=2,ratio=0.3,include=^blocks\\.0\\."
    with pytest.raises(RecipeError, match="below the base bits"):
        parse_recipe("mixact:a4,low=4")
    torch.manual_seed(0)
    vit = build_vision_model(ViTMiniConfig(image_size=8, patch_size=2, dim=16, depth=1, heads=2, mlp_dim=16)).eval()
    summary = compress(vit, "mixact:a4,low=2,ratio=0.5", progress=False).summary
    assert isinstance(vit.blocks[0].fc1.input_transforms[0], MixedTokenQuantizer)
    assert summary.bop_reduction == pytest.approx(4.0)  # counted at the base bits
    resnet = build_vision_model(ResNetMiniConfig(image_size=8, widths=(4,), depths=(1,), strides=(1,))).eval()
    with pytest.raises(Exception, match="not convolutions"):
        compress(resnet, "mixact:a4,low=2,ratio=0.5", progress=False)
