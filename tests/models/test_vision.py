"""Vision models: outline (stem/blocks/head), shapes, config bounds, safetensors round trip."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from crescendo.errors import ModelError
from crescendo.models.vision import (
    MAX_PARAMETERS,
    ResNetMiniConfig,
    ViTMiniConfig,
    build_vision_model,
    config_from_dict,
    config_to_dict,
)
from crescendo.models.vision_io import load_vision_model, save_vision_model

TINY = {
    "resnet-mini": ResNetMiniConfig(image_size=8, in_channels=3, num_classes=5, widths=(4, 8), depths=(1, 2), strides=(1, 2)),
    "vit-mini": ViTMiniConfig(image_size=8, in_channels=3, num_classes=5, patch_size=2, dim=16, depth=2, heads=2, mlp_dim=24),
    "vit-mini-cls": ViTMiniConfig(image_size=8, in_channels=3, num_classes=5, patch_size=4, dim=16, depth=1, heads=4,
                                  mlp_dim=8, pool="cls"),
}


def tiny(name, seed=0):
    torch.manual_seed(seed)
    return build_vision_model(TINY[name]).eval()


@pytest.mark.parametrize("name", sorted(TINY))
def test_forward_is_head_of_blocks_of_stem(name):
    model = tiny(name)
    x = torch.randn(3, 3, 8, 8)
    h = model.stem(x)
    for block in model.blocks:
        h = block(h)
        assert isinstance(h, torch.Tensor)
    logits = model.head(h)
    assert logits.shape == (3, 5)
    torch.testing.assert_close(model(x), logits, rtol=0, atol=0)
    assert isinstance(model.blocks, torch.nn.ModuleList) and len(model.blocks) == (3 if "resnet" in name else TINY[name].depth)


def test_block_shapes():
    resnet, vit = tiny("resnet-mini"), tiny("vit-mini")
    h = resnet.stem(torch.randn(2, 3, 8, 8))
    shapes = []
    for block in resnet.blocks:
        h = block(h)
        shapes.append(tuple(h.shape))
    assert shapes == [(2, 4, 8, 8), (2, 8, 4, 4), (2, 8, 4, 4)]
    assert isinstance(resnet.blocks[0].shortcut, torch.nn.Identity)  # same shape: no projection
    assert isinstance(resnet.blocks[1].shortcut, torch.nn.Sequential)  # 4 -> 8 channels, stride 2
    assert vit.stem(torch.randn(2, 3, 8, 8)).shape == (2, 16, 16)  # 4x4 patches of 2x2, mean pooling: no class token
    assert tiny("vit-mini-cls").stem(torch.randn(2, 3, 8, 8)).shape == (2, 5, 16)  # 4 patches + class token
    attn = vit.blocks[0].attn
    assert all(isinstance(getattr(attn, n), torch.nn.Linear) for n in ("q_proj", "k_proj", "v_proj", "out_proj"))
    assert vit.blocks[0].fc1.out_features == 24 and vit.blocks[0].fc2.in_features == 24


def test_attention_matches_a_hand_written_softmax():
    attn = tiny("vit-mini").blocks[0].attn
    x = torch.randn(2, 5, 16)
    q, k, v = (p(x).view(2, 5, 2, 8).transpose(1, 2) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
    weights = torch.softmax(q @ k.transpose(-1, -2) / 8 ** 0.5, dim=-1)
    expected = attn.out_proj((weights @ v).transpose(1, 2).reshape(2, 5, 16))
    torch.testing.assert_close(attn(x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["resnet-mini", "vit-mini"])
def test_wrong_image_shape_is_a_clear_error(name):
    model = tiny(name)
    with pytest.raises(ModelError, match=r"takes images of shape \(B, 3, 8, 8\), got \(2, 3, 28, 28\)"):
        model(torch.randn(2, 3, 28, 28))
    with pytest.raises(ModelError, match="takes images"):
        model(torch.randn(2, 1, 8, 8))


@pytest.mark.parametrize("make, message", [
    (lambda: ResNetMiniConfig(widths=(10 ** 7,), depths=(1,), strides=(1,)), r"widths\[0\]"),
    (lambda: ResNetMiniConfig(widths=(2048, 2048, 2048), depths=(16, 16, 16)), "parameters"),
    (lambda: ResNetMiniConfig(widths=(8, 8), depths=(1,), strides=(1,)), "one of each per stage"),
    (lambda: ResNetMiniConfig(image_size=4, widths=(4,) * 4, depths=(1,) * 4, strides=(2,) * 4), "below one pixel"),
    (lambda: ResNetMiniConfig(widths=[8, 8, 8]), "tuple"),
    (lambda: ResNetMiniConfig(image_size=10 ** 6), "image_size"),
    (lambda: ResNetMiniConfig(num_classes=True), "num_classes"),
    (lambda: ViTMiniConfig(dim=10 ** 7), "dim"),
    (lambda: ViTMiniConfig(dim=2048, depth=32, mlp_dim=8192), "parameters"),
    (lambda: ViTMiniConfig(patch_size=5), "does not divide"),
    (lambda: ViTMiniConfig(dim=64, heads=5), "multiple of heads"),
    (lambda: ViTMiniConfig(depth=0), "depth"),
    (lambda: ViTMiniConfig(pool="max"), "pool"),
    (lambda: ViTMiniConfig(image_size=512, patch_size=1), "patches"),
])
def test_config_bounds_refuse_before_allocating(make, message):
    with pytest.raises(ModelError, match=message):
        make()


@pytest.mark.parametrize("name", ["resnet-mini", "vit-mini"])
def test_parameter_estimate_is_close_to_the_model(name):
    config = TINY[name]
    actual = sum(p.numel() for p in build_vision_model(config).parameters())
    assert 0.8 * actual <= config.parameter_estimate() <= actual  # weights counted, small vectors not
    assert MAX_PARAMETERS >= 10 ** 7


@pytest.mark.parametrize("name", sorted(TINY))
def test_save_load_round_trip_gives_identical_logits(name, tmp_path):
    model = tiny(name)
    if "resnet" in name:  # non-trivial batch-norm statistics must travel too
        model.train()
        model(torch.randn(16, 3, 8, 8) * 3 + 1)
        model.eval()
    save_vision_model(model, tmp_path / "m", {"dataset": "digits", "normalization": {"mean": [0.5], "std": [0.2]}})
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    assert (tmp_path / "m" / "model.safetensors").stat().st_mode & 0o777 == 0o644
    loaded = load_vision_model(tmp_path / "m")
    assert loaded.config == TINY[name] and loaded.metadata["dataset"] == "digits"
    assert loaded.normalization == {"mean": [0.5], "std": [0.2]} and not loaded.model.training
    x = torch.randn(4, 3, 8, 8)
    torch.testing.assert_close(loaded.model(x), model(x), rtol=0, atol=0)


def test_config_dict_round_trip_and_refusals():
    for config in TINY.values():
        assert config_from_dict(json.loads(json.dumps(config_to_dict(config)))) == config
    with pytest.raises(ModelError, match="unknown vision architecture"):
        config_from_dict({"arch": "resnet-huge"})
    with pytest.raises(ModelError, match="unknown fields width"):
        config_from_dict({"arch": "resnet-mini", "width": 3})


def _saved(tmp_path):
    save_vision_model(tiny("resnet-mini"), tmp_path / "m", {})
    return tmp_path / "m"


def test_load_refuses_a_bad_directory(tmp_path):
    with pytest.raises(ModelError, match="no such directory"):
        load_vision_model(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        load_vision_model(tmp_path / "empty")
    d = _saved(tmp_path)
    document = json.loads((d / "config.json").read_text())
    document["config"]["widths"] = [4, 16]  # the weights were saved for (4, 8)
    (d / "config.json").write_text(json.dumps(document))
    with pytest.raises(ModelError, match=r"tensor blocks\.1\.conv1\.weight is F32 \(8, 4, 3, 3\), the config needs F32 \(16, 4, 3, 3\)"):
        load_vision_model(d)
    document["config"]["widths"] = [10 ** 7, 8]  # a crafted size is refused before any allocation
    (d / "config.json").write_text(json.dumps(document))
    with pytest.raises(ModelError, match=r"widths\[0\]"):
        load_vision_model(d)
    (d / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        load_vision_model(d)


def test_load_refuses_mismatched_or_corrupt_weights(tmp_path):
    d = _saved(tmp_path)
    model = tiny("resnet-mini")
    state = {k: v for k, v in model.state_dict().items() if k != "head.fc.bias"}
    save_file(state, str(d / "model.safetensors"))
    with pytest.raises(ModelError, match=r"missing \['head\.fc\.bias'\]"):
        load_vision_model(d)
    (d / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(ModelError, match="unreadable safetensors"):
        load_vision_model(d)
    (d / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="no model.safetensors"):
        load_vision_model(d)


def test_save_refuses_reserved_metadata_and_non_empty_directory(tmp_path):
    with pytest.raises(ModelError, match="reserved"):
        save_vision_model(tiny("vit-mini"), tmp_path / "a", {"config": {}})
    d = _saved(tmp_path)
    from crescendo.errors import ConfigError

    with pytest.raises(ConfigError, match="not empty"):
        save_vision_model(tiny("vit-mini"), d, {})
