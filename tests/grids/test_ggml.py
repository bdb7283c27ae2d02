"""llama.cpp block types: the values llama.cpp's quantizer produces, the fmt= option, and Q4_1's missing zero."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_model

from crescendo.api import compress
from crescendo.errors import CrescendoError, RecipeError
from crescendo.grids import GGMLGrid
from crescendo.recipe import parse_recipe
from crescendo.state import state_of


def _weights(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(24, 128, generator=g) * torch.logspace(-4, 1, 24)[:, None]
    w[:, ::5] = 0
    w[2, 32:64] = 0  # an all-zero block
    w[3, :32] = 1.0  # a constant block (Q4_1: d = 0)
    return w


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("kind", ["q8_0", "q4_0", "q4_1"])
def test_round_to_nearest_gives_gguf_pys_values_bit_for_bit(kind, seed):
    from gguf import GGMLQuantizationType, dequantize, quantize

    w = _weights(seed)
    grid = GGMLGrid(kind)
    params = grid.fit_all(w)
    q = grid.project_all(w, params)
    t = GGMLQuantizationType[kind.upper()]
    theirs = torch.from_numpy(np.ascontiguousarray(dequantize(quantize(w.numpy(), t), t)))
    assert torch.equal(q.view(torch.int32), theirs.view(torch.int32))  # including the sign of zeros
    assert torch.equal(grid.project_all(q, params), q)  # idempotent with the recorded parameters
    assert torch.equal(params["scale"], params["scale"].half().float())  # float16 block scales


def test_hand_computed_q4_0_block():
    w = torch.zeros(1, 32)
    w[0, :4] = torch.tensor([-8.0, 3.9, 0.2, 0.3])
    q = GGMLGrid("q4_0").quantize(w)
    # d = (-8) / -8 = 1; q = trunc(x + 8.5): 0.2 -> 8 -> 0.0 and 0.3 -> 8 -> 0.0; 3.9 -> 12 -> 4.0
    assert q[0, :4].tolist() == [-8.0, 4.0, 0.0, 0.0]
    w[0, 0] = 8.0  # the largest magnitude is positive: d = -1, +8 lands on code 0 -> (0 - 8) * -1 = 8
    grid = GGMLGrid("q4_0")
    params = grid.fit_all(w)
    assert params["scale"].tolist() == [[-1.0]] and grid.encode_all(w, params)[0, :2].tolist() == [0, 4]
    assert grid.project_all(w, params)[0, :2].tolist() == [8.0, 4.0]  # 3.9 * -1 + 8.5 -> code 4 -> 4.0


def test_fmt_option_parses_prints_and_names_the_right_spelling():
    stage = parse_recipe("gptq:w4,g32,sym,fmt=Q4_0").stages[0]
    assert stage.text == "gptq:w4,g32,sym,fmt=q4_0" and stage.config.weight_grid == GGMLGrid("q4_0")
    assert parse_recipe("rtn:w8a8,sym,fmt=ct").stages[0].config.act_grid.type_name == "uniform_ct"
    for bad, right in [("gptq:w8,g32,sym,fmt=q4_0", "write gptq:w4,g32,sym,fmt=q4_0"),
                       ("rtn:w4,g64,sym,fmt=q4_0", "write rtn:w4,g32,sym,fmt=q4_0"),
                       ("rtn:w4,g32,sym,fmt=q4_1", "write rtn:w4,g32,fmt=q4_1"),
                       ("rtn:w8,g32,fmt=q8_0", "write rtn:w8,g32,sym,fmt=q8_0"),
                       ("rtn:w8,fmt=ct", "needs activation bits"), ("rtn:w4,fmt=q5_0", "unknown fmt=q5_0")]:
        with pytest.raises(RecipeError, match=right):
            parse_recipe(bad)


@pytest.mark.parametrize("recipe", ["magnitude:0.5 > rtn:w4,g32,fmt=q4_1", "rtn:w4,g32,fmt=q4_1 > wanda:2:4",
                                    "magnitude:0.5,include=mlp > rtn:w4,g32,fmt=q4_1"])
def test_q4_1_refuses_pruned_layers_before_anything_changes(recipe, calibration):
    """Same targets: refused by the recipe parser (RecipeError); different ones: against the model (ConfigError)."""
    model = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CrescendoError, match="cannot represent 0"):
        compress(model, recipe, calibration, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not state_of(model).records


def test_q4_0_keeps_pruned_weights_zero_under_gptq(calibration):
    model = tiny_model("llama")
    compress(model, "magnitude:2:4 > gptq:w4,g32,sym,fmt=q4_0", calibration, progress=False)
    rec = state_of(model).records["model.layers.1.mlp.down_proj"]
    w = model.model.layers[1].mlp.down_proj.weight.detach()
    assert torch.equal(w[rec.mask], torch.zeros(int(rec.mask.sum())))
    assert torch.equal(rec.grid.project_all(w, rec.grid_params), w)
