"""Hand-computed blocks for the MX, HBFP and INT-block grids (crescendo.grids, crescendo.kernels.formats)."""

import pytest
import torch

from crescendo.errors import ConfigError
from crescendo.grids import HBFPGrid, IntBlockGrid, MXGrid, make_format_grid
from crescendo.grids.elements import element_values, exp2i

ALL_NAMES = [
    "mxfp8", "mxfp8_e5m2", "mxfp6", "mxfp6_e3m2", "mxfp4", "mxint8",
    "hbfp8", "hbfp6", "hbfp4", "int8b", "int4b", "int2b",
]  # fmt: skip
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def quantize_row(grid, values, dtype=torch.float32):
    """Fit + project one block given as a list; returns (values list, params)."""
    w = torch.tensor([values], dtype=dtype)
    params = grid.fit(w)
    return grid.project(w, params).tolist()[0], params


# -- element sets -------------------------------------------------------------------------------------
def test_e2m1_value_set_is_exact():
    assert element_values("e2m1").tolist() == [0, 0.5, 1, 1.5, 2, 3, 4, 6]


@pytest.mark.parametrize(
    "element, count, smallest, largest",
    [
        ("e4m3", 127, 2.0**-9, 448.0),  # 0x7F is NaN, 0x01 is the min subnormal 2^-9
        ("e5m2", 124, 2.0**-16, 57344.0),  # exponent field 31 is Inf/NaN
        ("e3m2", 32, 2.0**-4, 28.0),
        ("e2m3", 32, 0.125, 7.5),
        ("int8", 128, 1 / 64, 127 / 64),
    ],
)
def test_element_sets_sizes_and_extremes(element, count, smallest, largest):
    v = element_values(element)
    assert len(v) == count and v[0] == 0 and v[1] == smallest and v[-1] == largest


def test_exp2i_is_exact_including_subnormal_scales():
    e = torch.arange(-149, 128)
    assert torch.equal(exp2i(e), torch.tensor([2.0**k for k in range(-149, 128)], dtype=torch.float32))


# -- MX -----------------------------------------------------------------------------------------------
def test_mxfp4_rounds_ties_to_even():
    # amax 6 -> X = 2^(2 - 2) = 1. Every other value is a tie; ties-away would give 3, 0.5, 6, -3.
    out, params = quantize_row(MXGrid("e2m1"), [6, 2.5, 0.25, 0.75, 1.25, 1.75, 5, 3.5, -2.5])
    assert params["exponent"].tolist() == [0.0]
    assert out == [6, 2, 0, 1, 1, 2, 4, 4, -2]


def test_mx_shared_scale_is_floor_log2_amax_minus_emax():
    # amax 20 -> floor(log2) = 4 -> X = 2^(4 - 2) = 4 for E2M1: 20/4 = 5 -> tie -> 4 -> 16; 9/4 -> 2 -> 8
    out, params = quantize_row(MXGrid("e2m1"), [20, 9, -1.5])
    assert params["exponent"].tolist() == [2.0]
    assert out == [16, 8, -2]  # -1.5/4 = -0.375 -> nearest is -0.5 -> -2


def test_mx_saturates_at_max_normal():
    # E2M1: amax 7.9 -> X = 1, 7.9 would round to 8 -> clamped to 6 (no Inf)
    assert quantize_row(MXGrid("e2m1"), [7.9, 7.0, 1.0])[0] == [6, 6, 1]
    # E4M3: amax 500 -> X = 1; 500 -> 512 in the top binade -> 448; 470 -> 480 (the NaN code) -> 448
    assert quantize_row(MXGrid("e4m3"), [500, 470, -460])[0] == [448, 448, -448]
    # recorded params: a value far outside the block's range saturates too
    assert MXGrid("e5m2").project(torch.tensor([[1e9, -1e9]]), {"exponent": torch.zeros(1)}).tolist() == [
        [57344, -57344]
    ]


def test_e4m3_subnormals_are_kept_relative_to_the_shared_scale():
    # amax 1024 -> X = 2^(10 - 8) = 4, so the element min subnormal 2^-9 is 2^-7 absolute
    u = 2.0**-7
    out, params = quantize_row(MXGrid("e4m3"), [1024, u, u / 2, 1.5 * u, 7 * u, 8 * u, 0.4 * u])
    assert params["exponent"].tolist() == [2.0]
    # u/2 ties between 0 and u -> 0 (even); 1.5u ties between u and 2u -> 2u; 7u is the max subnormal,
    # 8u the min normal 2^-6 * 4
    assert out == [1024, u, 0, 2 * u, 7 * u, 8 * u, 0]


def test_mx_block_with_zeros_and_negatives_keeps_zeros_exactly():
    out, _ = quantize_row(MXGrid("e2m1"), [0, -6, 0, 1.25, -0.75, -0.0])
    assert out == [0, -6, 0, 1, -1, 0]
    assert torch.tensor(out)[[0, 2, 5]].signbit().tolist() == [False, False, False]


def test_mx_power_of_two_amax_is_exact():
    # amax 4 -> X = 1: 4 is an element (no saturation), 0.3 -> subnormal step 0.5 -> 0.5
    assert quantize_row(MXGrid("e2m1"), [4, -3, 0.3])[0] == [4, -3, 0.5]
    # MXINT8: amax 1 -> X = 1: 1 = 64/64, 1/128 ties to 0, 3/128 ties to 2/64
    assert quantize_row(MXGrid("int8"), [1, 1 / 128, 3 / 128, -0.5])[0] == [1, 0, 2 / 64, -0.5]


def test_mxint8_saturates_at_127_over_64():
    out, params = quantize_row(MXGrid("int8"), [1.999, -1.0])
    assert params["exponent"].tolist() == [0.0]
    assert out == [127 / 64, -1.0]


def test_all_zero_block_stays_zero_in_every_format():
    for name in ALL_NAMES:
        grid = make_format_grid(name)
        w = torch.zeros(3, 8)
        params = grid.fit(w)
        assert torch.equal(grid.project(w, params), w), name
        if "exponent" in params:
            assert params["exponent"].tolist() == [-127.0] * 3, name


def test_mx_projection_lands_on_element_set_times_scale():
    torch.manual_seed(0)
    for name, element in [("mxfp6", "e2m3"), ("mxfp8", "e4m3"), ("mxfp6_e3m2", "e3m2")]:
        grid = make_format_grid(name)
        w = torch.randn(8, 32) * 3
        params = grid.fit(w)
        elements = (grid.project(w, params) / exp2i(params["exponent"])[:, None]).abs()
        assert torch.isin(elements, element_values(element)).all(), name


# -- HBFP ---------------------------------------------------------------------------------------------
def test_hbfp8_step_rounding_and_clamp():
    # amax 0.75 -> e = ceil(log2 0.75) = 0 -> step 2^-7; 0.1/step = 12.8 -> 13; -0.3/step = -38.4 -> -38
    s = 2.0**-7
    out, params = quantize_row(HBFPGrid(8), [0.75, 0.1, -0.3, 2.5 * s, 3.5 * s, 0])
    assert params["exponent"].tolist() == [0.0]
    assert out == [96 * s, 13 * s, -38 * s, 2 * s, 4 * s, 0]  # ties to even: 2.5 -> 2, 3.5 -> 4
    # with the recorded exponent, anything beyond 2^e - step clamps there
    assert HBFPGrid(8).project(torch.tensor([[1.5, -7.0]]), params).tolist() == [[127 * s, -127 * s]]


def test_hbfp_power_of_two_amax_saturates_to_two_to_e_minus_step():
    # amax 0.5 -> e = -1 exactly, step 2^-8: 0.5 itself clamps to 127 * 2^-8 (documented behaviour)
    out, params = quantize_row(HBFPGrid(8), [0.5, -0.5, 0.25])
    assert params["exponent"].tolist() == [-1.0]
    assert out == [127 / 256, -127 / 256, 0.25]
    # hbfp4: amax 1 -> e = 0, step 2^-3, max 7/8
    assert quantize_row(HBFPGrid(4), [1.0, 0.3])[0] == [0.875, 0.25]  # 0.3*8 = 2.4 -> 2


def test_hbfp_refit_is_not_idempotent_when_amax_rounds_to_a_power_of_two():
    # 0.501 -> e = 0, step 2^-7: 64.1 steps -> 0.5. Refitting sees amax 0.5 -> e = -1 -> 127/256.
    # Recorded params must therefore be reused (project), never refitted, to keep a projected tensor.
    grid = HBFPGrid(8)
    once = grid.quantize(torch.tensor([[0.501, 0.1]]))
    assert once[0, 0].item() == 0.5
    assert grid.quantize(once)[0, 0].item() == 127 / 256


# -- INT block ----------------------------------------------------------------------------------------
def test_int8_block_symmetric_scale_and_ties_to_even():
    out, params = quantize_row(IntBlockGrid(8), [127, 2.5, -3.5, 0.5, -100.4, 0])
    assert params["scale"].tolist() == [1.0]
    assert out == [127, 2, -4, 0, -100, 0]
    out, params = quantize_row(IntBlockGrid(8), [254, 5, -7, 1])
    assert params["scale"].tolist() == [2.0]
    assert out == [254, 4, -8, 0]


def test_int4_block_and_recorded_scale_clamp():
    out, params = quantize_row(IntBlockGrid(4), [7, 2.5, -6.6])
    assert out == [7, 2, -7]
    assert IntBlockGrid(4).project(torch.tensor([[30.0, -30.0]]), params).tolist() == [[7, -7]]


# -- generic properties -------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", ALL_NAMES)
def test_idempotent_roundtrip_and_dtype(name, dtype, device):
    torch.manual_seed(1)
    grid = make_format_grid(name, block_size=16)
    w = (torch.randn(6, 40) * torch.logspace(-3, 2, 6)[:, None]).to(dtype=dtype, device=device)
    w[:, ::5] = 0  # pruned weights
    params = grid.fit_all(w)  # 3 groups, the last one partial
    q = grid.project_all(w, params)
    assert q.dtype == dtype and q.device == w.device
    assert torch.equal(grid.project_all(q, params), q)  # idempotent with the same params
    assert (q[:, ::5] == 0).all() and not q[:, ::5].signbit().any()  # pruned stay +0
    if name.startswith("mx"):  # refitting on the grid changes nothing either (not so for HBFP)
        assert torch.equal(grid.quantize(q), q)
    for gi, (s, e) in enumerate(grid.groups(w.shape[1])):
        p = {k: v[:, gi] for k, v in params.items()}
        codes = grid.encode(q[:, s:e], p)
        assert codes.shape == (6, e - s) and not codes.is_floating_point()
        assert torch.equal(grid.decode(codes, p).to(dtype), q[:, s:e])
        assert torch.equal(grid.encode(w[:, s:e], p), codes)  # encode rounds like project


def test_mx_codes_are_element_bit_patterns():
    one = {"exponent": torch.zeros(1)}
    codes = MXGrid("e2m1").encode(torch.tensor([[6.0, -0.5, 0.0, 1.0]]), one)
    assert codes.dtype == torch.int64 and codes.tolist() == [[0b0111, 0b1001, 0, 0b0010]]
    assert MXGrid("e4m3").encode(torch.tensor([[448.0, -2.0**-9]]), one).tolist() == [[0x7E, 0x81]]
    assert MXGrid("e5m2").encode(torch.tensor([[57344.0]]), one).tolist() == [[0x7B]]
    int8_codes = MXGrid("int8").encode(torch.tensor([[-1.0, 127 / 64]]), one)
    assert int8_codes.to(torch.uint8).view(torch.int8).tolist() == [[-64, 127]]


def test_bits_accounting():
    assert make_format_grid("mxfp4").avg_bits(64) == 4 + 8 / 32
    assert make_format_grid("mxfp6").bits_per_element == 6
    assert make_format_grid("hbfp8").avg_bits(128) == 8 + 8 / 64
    assert make_format_grid("int4b").avg_bits(64) == 4 + 16 / 32


def test_recipe_names_and_block_override():
    assert make_format_grid("mxfp8") == MXGrid("e4m3", 32)
    assert make_format_grid("MXFP6_E3M2", block_size=16) == MXGrid("e3m2", 16)
    assert make_format_grid("hbfp6") == HBFPGrid(6, 64)
    assert make_format_grid("int3b", 128) == IntBlockGrid(3, 128)
    assert make_format_grid("mxfp4").group_size == 32


@pytest.mark.parametrize("name", ["mxfp5", "int9b", "int1b", "hbfp", "fp8", "hbfp1", "int8"])
def test_bad_names_raise_config_error(name):
    with pytest.raises(ConfigError) as info:
        make_format_grid(name)
    assert "\n" not in str(info.value)


def test_bad_block_sizes_and_elements_raise_config_error():
    for bad in [lambda: make_format_grid("mxfp4", 0), lambda: MXGrid("e9m9"), lambda: HBFPGrid(8, -1),
                lambda: IntBlockGrid(8, 0), lambda: MXGrid("e2m1", 2.5)]:  # fmt: skip
        with pytest.raises(ConfigError):
            bad()
