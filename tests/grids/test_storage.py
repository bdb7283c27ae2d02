"""Every registered grid owns its storage: codes, stored parameters and JSON round-trip exactly."""

from __future__ import annotations

import pytest
import torch

from crescendo.errors import VerifyError
from crescendo.grids import GRIDS, GGMLGrid, Grid, UniformGrid, grid_from_dict, make_format_grid
from crescendo.grids.uniform import CTActivationGrid

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
GRIDS_UNDER_TEST = [
    UniformGrid(4), UniformGrid(3, symmetric=True), UniformGrid(8, group_size=16), UniformGrid(2, True, 8),
    make_format_grid("mxfp4"), make_format_grid("mxfp8_e5m2", 16), make_format_grid("mxint8"),
    make_format_grid("hbfp8"), make_format_grid("hbfp4", 16), make_format_grid("int4b"), make_format_grid("int8b", 8),
    GGMLGrid("q8_0"), GGMLGrid("q4_0"), GGMLGrid("q4_1"), CTActivationGrid(8), CTActivationGrid(4, group_size=16),
]


def _weights(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(5, 48, generator=g) * torch.logspace(-3, 1, 5)[:, None]
    w[:, ::7] = 0
    return w


def test_every_registered_type_is_covered():
    assert {g.type_name for g in GRIDS_UNDER_TEST} == set(GRIDS)


@pytest.mark.parametrize("grid", GRIDS_UNDER_TEST, ids=repr)
def test_codes_and_params_round_trip_bit_for_bit(grid: Grid):
    w = _weights()
    params = grid.fit_all(w)
    q = grid.project_all(w, params)
    codes = grid.encode_all(q, params)
    assert codes.dtype == torch.int64
    assert int(codes.min()) >= 0 and int(codes.max()) < 2**grid.code_bits  # unsigned, code_bits wide
    assert torch.equal(grid.encode_all(w, params), codes)  # encoding rounds exactly like project
    stored = grid.store_params(params)
    assert set(stored) == set(grid.param_storage())
    for name, storage in grid.param_storage().items():
        assert stored[name].dtype == storage.dtype
        if storage.low is not None:
            assert int(stored[name].min()) >= storage.low and int(stored[name].max()) <= storage.high
    again = grid.load_params(stored)
    assert torch.equal(grid.decode_all(codes, again), q.float())


@pytest.mark.parametrize("grid", GRIDS_UNDER_TEST, ids=repr)
def test_column_projector_equals_project_bit_for_bit(grid: Grid):
    """The GPTQ sweep projects column by column through `column_projector`; it must give exactly
    what `project` gives on the same column (off-grid values, zeros, values beyond the range)."""
    w = _weights(1)
    params = grid.fit_all(w)
    g = torch.Generator().manual_seed(2)
    column = torch.randn(5, generator=g) * torch.logspace(-3, 1, 5) * 3  # beyond the fitted range too
    column[2] = 0.0
    for gi, (s, e) in enumerate(grid.groups(w.shape[1])):
        group_params = {k: v[:, gi] for k, v in params.items()}
        expected = grid.project(column[:, None].expand(-1, e - s).contiguous(), group_params)[:, 0]
        assert torch.equal(grid.column_projector(group_params)(column.clone()), expected)


@pytest.mark.parametrize("grid", GRIDS_UNDER_TEST, ids=repr)
def test_json_description_round_trips(grid: Grid):
    assert grid_from_dict(grid.to_dict()) == grid


@pytest.mark.parametrize("bad", [
    {"type": "uniform"}, {"type": "nope", "bits": 4}, {"type": "uniform", "bits": 4, "evil": 1},
    {"type": "uniform", "bits": 99}, {"type": "mx", "element": "e9m9"}, {"bits": 4}, "uniform", [1],
    {"type": "intblock", "bits": 4, "block_size": -3}, {"type": "uniform", "bits": 4, "symmetric": "yes"},
])
def test_malformed_descriptions_raise_verify_error(bad):
    with pytest.raises(VerifyError):
        grid_from_dict(bad)


def test_uniform_codes_are_hand_computed():
    grid = UniformGrid(2)  # asymmetric: scale = (2 - -1) / 3 = 1, zero = 1
    w = torch.tensor([[-1.0, 0.0, 1.0, 2.0]])
    params = grid.fit_all(w)
    assert grid.encode_all(w, params).tolist() == [[0, 1, 2, 3]]
    sym = UniformGrid(3, symmetric=True)  # scale = 3 / 3 = 1, codes q + 4
    assert sym.encode_all(torch.tensor([[-3.0, 0.0, 3.0]]), sym.fit_all(torch.tensor([[-3.0, 0.0, 3.0]]))).tolist() == [[1, 4, 7]]


def test_uniform_scale_is_exact_division():
    # the fitted scale must be the correctly rounded quotient (what a CUDA reciprocal-multiply would miss)
    w = torch.tensor([[0.0, 0.8228822350502014]])  # x / 15 != x * (1 / 15) in float32 for this x
    scale = UniformGrid(4).fit(w)["scale"]
    assert torch.equal(scale, torch.tensor([0.8228822350502014]) / torch.tensor([15.0]))
    assert not torch.equal(scale, torch.tensor([0.8228822350502014]) * (torch.tensor(1.0) / 15.0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("grid", GRIDS_UNDER_TEST, ids=repr)
def test_fit_and_codes_identical_on_cpu_and_cuda(grid: Grid):
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(3)) * 0.02
    p_cpu = grid.fit_all(w)
    p_gpu = grid.fit_all(w.cuda())
    for k in p_cpu:
        assert torch.equal(p_cpu[k], p_gpu[k].cpu()), k
    assert torch.equal(grid.encode_all(w, p_cpu), grid.encode_all(w.cuda(), p_gpu).cpu())
