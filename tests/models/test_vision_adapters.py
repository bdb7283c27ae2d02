"""Vision adapters and the conv layer view: (out, in*kh*kw) weights, unfolded inputs, positions, folding."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from crescendo.errors import ConfigError, ModelError
from crescendo.models.adapters import get_adapter, get_weight, in_features, input_rows, set_weight_, weight_shape
from crescendo.models.batchnorm import fold_batchnorm_
from crescendo.models.vision import ResNetMiniConfig, ViTMiniConfig, build_vision_model

RESNET = ResNetMiniConfig(image_size=8, widths=(4, 8), depths=(1, 1), strides=(1, 2))
VIT = ViTMiniConfig(image_size=8, patch_size=2, dim=16, depth=2, heads=2, mlp_dim=24)


def tiny(config, seed=0):
    torch.manual_seed(seed)
    model = build_vision_model(config).eval()
    for m in model.modules():  # non-trivial batch-norm statistics, so folding has something to fold
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model


@pytest.mark.parametrize("stride,padding,dilation", [(1, 1, 1), (2, 1, 1), (1, 0, 2), (1, "same", 1)])
def test_conv_weight_view_times_unfolded_input_is_the_conv(stride, padding, dilation):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, stride=stride, padding=padding, dilation=dilation, bias=False)
    x = torch.randn(2, 3, 9, 9)
    y = conv(x)  # (B, out, H', W')
    rows = input_rows(conv, x)  # (B * H' * W', 27)
    w = get_weight(conv)
    assert w.shape == (5, 27) == weight_shape(conv) and in_features(conv) == 27
    expected = y.permute(0, 2, 3, 1).reshape(-1, 5)
    assert torch.allclose(rows @ w.t(), expected, atol=1e-5)


def test_set_weight_writes_the_conv_layout_back():
    conv = nn.Conv2d(2, 3, 3, bias=False)
    w = torch.arange(54, dtype=torch.float32).reshape(3, 18)
    set_weight_(conv, w)
    assert torch.equal(conv.weight, w.reshape(3, 2, 3, 3)) and torch.equal(get_weight(conv), w)


def test_grouped_convolutions_are_refused_with_their_name():
    model = tiny(RESNET)
    model.blocks[0].conv1 = nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False)
    with pytest.raises(ModelError, match=r"blocks\.0\.conv1: grouped or depthwise"):
        get_adapter(model).all_block_linears(model)


def test_adapters_find_block_layers_and_positions():
    resnet, vit = tiny(RESNET), tiny(VIT)
    ra, va = get_adapter(resnet), get_adapter(vit)
    assert (ra.family, va.family, ra.modality) == ("resnet-mini", "vit-mini", "image")
    assert list(ra.all_block_linears(resnet)) == ["blocks.0.conv1", "blocks.0.conv2", "blocks.1.conv1",
                                                  "blocks.1.conv2", "blocks.1.shortcut.0"]
    # block 0 keeps 8x8, block 1 strides to 4x4; the ViT has 16 patch tokens
    assert ra.positions(resnet) == {"blocks.0.conv1": 64, "blocks.0.conv2": 64, "blocks.1.conv1": 16,
                                    "blocks.1.conv2": 16, "blocks.1.shortcut.0": 16}
    assert set(va.positions(vit).values()) == {16} and len(va.positions(vit)) == 12
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(ra.logits(resnet, resnet.blocks[1](resnet.blocks[0](resnet.stem(x)))), resnet(x))
    assert va.head_dim(vit) == 8
    with pytest.raises(ConfigError, match="needs key/value projections; resnet-mini has none"):
        ra.check_kv_supported(["blocks.0.conv1"])
    with pytest.raises(ConfigError, match="classifier"):
        ra.check_block_removal()


def test_folding_batch_norm_keeps_the_function_and_removes_the_norms():
    model = tiny(RESNET)
    adapter = get_adapter(model)
    pairs = adapter.batchnorm_pairs(model)
    assert ("stem.conv", "stem.bn") in pairs and ("blocks.1.shortcut.0", "blocks.1.shortcut.1") in pairs
    assert len(pairs) == 6
    folded = copy.deepcopy(model)
    fold_batchnorm_(folded, pairs)
    x = torch.randn(4, 1, 8, 8)
    assert torch.allclose(folded(x), model(x), atol=1e-5)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert folded.blocks[0].conv1.bias is not None and adapter.batchnorm_pairs(folded) == []
