"""The fine-tune between allocation steps keeps quantized layers on their grids and pruned weights at zero."""

from __future__ import annotations

import torch

from crescendo.api import compress
from crescendo.data.images import load_image_dataset
from crescendo.models.adapters import get_weight
from crescendo.models.vision import ResNetMiniConfig, build_vision_model
from crescendo.state import state_of
from crescendo.vision.finetune import FinetuneConfig, finetune_


def test_finetune_trains_the_rest_and_keeps_every_invariant():
    torch.manual_seed(0)
    model = build_vision_model(ResNetMiniConfig(image_size=8, widths=(8, 16), depths=(1, 1), strides=(1, 2))).eval()
    compress(model, "rtn:w3,include=^blocks\\.0\\. > magnitude:0.5,include=^blocks\\.1\\.conv1$", progress=False)
    before = {n: get_weight(model.get_submodule(n)) for n in ("blocks.0.conv1", "blocks.1.conv1", "blocks.1.conv2")}
    out = finetune_(model, load_image_dataset("digits"), FinetuneConfig(epochs=0.2, batch_size=64), seed=0)
    assert out["steps"] == 5 and model.training is False
    after = {n: get_weight(model.get_submodule(n)) for n in before}
    record = state_of(model).records["blocks.0.conv1"]
    assert torch.equal(after["blocks.0.conv1"], before["blocks.0.conv1"])  # quantized: frozen on its grid
    assert torch.equal(record.grid.project_all(after["blocks.0.conv1"], record.grid_params), after["blocks.0.conv1"])
    mask = state_of(model).records["blocks.1.conv1"].mask
    assert (after["blocks.1.conv1"][mask] == 0).all() and not torch.equal(after["blocks.1.conv1"], before["blocks.1.conv1"])
    assert not torch.equal(after["blocks.1.conv2"], before["blocks.1.conv2"])  # untouched layers train
    assert all(p.requires_grad for p in model.parameters())  # flags restored
