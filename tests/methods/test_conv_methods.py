"""Every per-layer method on convolutions: unfolded Hessians, N:M along the flattened input axis,
per-channel activation quantization, whole-filter pruning, batch-norm folding in a recipe."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from crescendo.api import compress
from crescendo.engine.stats import InputStatistics
from crescendo.errors import ConfigError, RecipeError
from crescendo.grids import UniformGrid
from crescendo.methods.coarse import filter_scores, select_filters
from crescendo.methods.quantization import ActivationQuantizer
from crescendo.models.adapters import get_weight
from crescendo.models.vision import ResNetMiniConfig, ViTMiniConfig, build_vision_model
from crescendo.recipe import parse_recipe
from crescendo.state import state_of

RESNET = ResNetMiniConfig(image_size=8, widths=(8, 16), depths=(1, 1), strides=(1, 2))
VIT = ViTMiniConfig(image_size=8, patch_size=2, dim=16, depth=2, heads=2, mlp_dim=32)


def model_of(config, seed=0):
    torch.manual_seed(seed)
    return build_vision_model(config).eval()


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(8, 1, 8, 8, generator=g) for _ in range(3)]


def test_conv_hessian_is_the_mean_outer_product_of_unfolded_patches(images):
    model = model_of(RESNET)
    conv = model.blocks[0].conv1
    with InputStatistics({"c": conv}, "hessian") as stats:
        inputs = [model.stem(x) for x in images]
        for h in inputs:
            conv(h)
    rows = torch.cat([nn.functional.unfold(h, 3, padding=1).transpose(1, 2).reshape(-1, 72) for h in inputs])
    assert stats.tokens["c"] == 3 * 8 * 64  # one row per output position
    assert torch.allclose(stats.result("c").matrix, rows.t() @ rows / rows.shape[0], atol=1e-5)


def test_activation_quantizer_on_conv_inputs_quantizes_each_position_across_channels():
    grid = UniformGrid(4, symmetric=True)
    x = torch.randn(2, 5, 3, 3)
    q = ActivationQuantizer(grid, axis=1)(x)
    tokens = x.permute(0, 2, 3, 1).reshape(-1, 5)
    assert torch.equal(q, grid.quantize(tokens).reshape(2, 3, 3, 5).permute(0, 3, 1, 2))


@pytest.mark.parametrize("recipe", ["magnitude:2:4", "wanda:2:4", "sparsegpt:2:4"])
def test_nm_runs_along_the_flattened_input_axis(recipe, images):
    model = model_of(RESNET)
    compress(model, recipe, images, progress=False)
    for name in ("blocks.0.conv1", "blocks.1.shortcut.0"):
        w = get_weight(model.get_submodule(name))
        zeros = (w == 0).reshape(w.shape[0], -1, 4).sum(-1)
        assert (zeros >= 2).all() and state_of(model).records[name].nm is not None


def _output_error(dense, model, name, images):
    """||f(W) X - W X||^2 of one layer on the dense model's inputs."""
    from crescendo.eval.layerwise import layerwise_error

    return layerwise_error(dense, model, images).per_linear[name]


def test_gptq_and_sparsegpt_on_convs_beat_their_data_free_counterparts(images):
    dense = model_of(RESNET)
    layer = "blocks.1.conv2"
    errors = {}
    for recipe in ("rtn:w3", "gptq:w3", "magnitude:0.6", "sparsegpt:0.6"):
        model = copy.deepcopy(dense)
        compress(model, recipe, images, progress=False)
        errors[recipe] = _output_error(dense, model, layer, images)
        rec = state_of(model).records[layer]
        if rec.grid is not None:  # every weight on its recorded grid, per output channel
            w = get_weight(model.get_submodule(layer))
            assert torch.equal(rec.grid.project_all(w, rec.grid_params), w)
    assert errors["gptq:w3"] < errors["rtn:w3"]
    assert errors["sparsegpt:0.6"] < errors["magnitude:0.6"]


def test_filter_scores_and_selection_by_hand():
    w = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, -2.0], [1.0, 1.0]])
    assert torch.equal(filter_scores(w, "l1"), torch.tensor([7.0, 1.0, 2.0, 2.0]))
    h = torch.tensor([[1.0, 0.0], [0.0, 0.25]])  # the second input carries little energy
    assert torch.allclose(filter_scores(w, "act", h), torch.tensor([13.0, 1.0, 1.0, 1.25]))
    # round(0.5 * 4) = 2 rows with the smallest l2 norms: rows 1 and 3; a prior row counts as pruned
    assert select_filters(filter_scores(w, "l2"), 0.5, None).tolist() == [False, True, False, True]
    prior = torch.tensor([False, False, True, False])
    assert select_filters(filter_scores(w, "l2"), 0.25, prior).tolist() == [False, True, True, False]


def test_filter_pruning_masks_whole_rows_and_later_stages_keep_them(images):
    model = model_of(RESNET)
    compress(model, "filter:0.25,by=act > gptq:w4", images, progress=False)
    for name, module in {"blocks.0.conv1": 8, "blocks.1.conv2": 16}.items():
        w = get_weight(model.get_submodule(name))
        dead = (w == 0).all(dim=1)
        assert int(dead.sum()) == round(0.25 * module)
        assert torch.equal(state_of(model).records[name].mask.all(dim=1), dead)
    vit = model_of(VIT)  # linears: output neurons
    compress(vit, "filter:0.5", images, progress=False)
    assert int((get_weight(vit.blocks[0].fc1) == 0).all(dim=1).sum()) == 16


def test_foldbn_in_a_recipe(images):
    model = model_of(RESNET)
    reference = copy.deepcopy(model)
    result = compress(model, "foldbn > sparsegpt:0.5", images, progress=False)
    assert result.summary.batchnorm == "folded" and len(state_of(model).folded_batchnorm) == 6
    assert compress(copy.deepcopy(reference), "rtn:w8", progress=False).summary.batchnorm == "kept"
    folded_only = copy.deepcopy(reference)
    compress(folded_only, "foldbn", progress=False)
    x = images[0]
    assert torch.allclose(folded_only(x), reference(x), atol=1e-5)
    with pytest.raises(RecipeError, match="before every weight quantization"):
        parse_recipe("rtn:w4 > foldbn")
    with pytest.raises(ConfigError, match="no batch norm"):
        compress(model_of(VIT), "foldbn", progress=False)
    assert compress(model_of(VIT), "rtn:w8", progress=False).summary.batchnorm is None


def test_activation_quantization_on_a_resnet_attaches_channel_quantizers(images):
    model = model_of(RESNET)
    compress(model, "rtn:w8a4", images, progress=False)
    quantizer = model.blocks[0].conv1.input_transforms[0]
    assert isinstance(quantizer, ActivationQuantizer) and quantizer.axis == 1
    assert compress(model_of(VIT), "act:a4", progress=False).summary.bop_reduction == pytest.approx(4.0)


def test_convs_of_different_geometry_on_one_input_do_not_share_a_hessian(images):
    """A 3x3 conv and a 1x1 shortcut read the same tensor as different (rows, in) matrices: called one
    after the other on it (here because the conv between them is not a target), each keeps its own
    statistic; before the fix the shortcut got the 3x3 conv's Hessian and GPTQ failed on its shape."""
    model = model_of(RESNET)
    block = model.blocks[1]
    assert isinstance(block.shortcut[0], nn.Conv2d)
    h = model.blocks[0](model.stem(images[0]))
    with InputStatistics({"conv1": block.conv1, "shortcut": block.shortcut[0]}, "hessian") as stats:
        block.conv1(h)
        block.shortcut[0](h)
    assert stats.leader("shortcut") == "shortcut"
    assert stats.result("conv1").matrix.shape == (8 * 9, 8 * 9)
    assert stats.result("shortcut").matrix.shape == (8, 8)
    targets = r"include=^blocks\.1\.(conv1|shortcut\.0)$"
    compressed = copy.deepcopy(model)
    compress(compressed, f"gptq:w4,{targets}", images, progress=False)
    assert state_of(compressed).records["blocks.1.shortcut.0"].grid is not None
