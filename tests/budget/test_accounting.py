"""Hand-computed BOPs, storage, reductions and equivalent bits (crescendo.budget.accounting)."""

import pytest

from crescendo.budget.accounting import (
    LayerCost,
    bop_reduction,
    compression_ratio_from_bits,
    compression_ratio_from_sparsity,
    equivalent_bits,
    layer_bops,
    layer_size_bits,
    model_bops,
    model_size_bits,
    size_reduction,
    sparsity_metadata_bits,
)
from crescendo.errors import ConfigError
from crescendo.types import NM

SWIN_TINY_GMACS = [13.3, 13.56, 14.16, 14.16, 14.16, 14.02]  # seed 004, App. 6.2, eq. (1)
SWIN_TINY_FIXED = 3.0  # eq. (2): downsampling layers


def fc(**kwargs) -> LayerCost:
    return LayerCost.linear("fc", 4, 8, **kwargs)  # 32 MACs per token, 32 weights


# --- BOPs ------------------------------------------------------------------------------------------
def test_linear_macs_and_params():
    layer = fc()
    assert layer.macs_per_token == 32 and layer.params == 32
    assert layer.sparsity == 0.0 and layer.density == 1.0


def test_bops_w4a8():
    assert layer_bops(fc(weight_bits=4, act_bits=8)) == 32 * 4 * 8  # 1024


def test_bops_dense_16bit():
    assert layer_bops(fc()) == 32 * 16 * 16  # 8192


def test_two_four_halves_macs():
    layer = fc(weight_bits=4, act_bits=8, nm=NM(2, 4))
    assert layer.sparsity == 0.5  # filled in from the pattern
    assert layer_bops(layer) == 16 * 4 * 8  # 512
    # counting unstructured sparsity changes nothing for an N:M layer
    assert layer_bops(layer, count_unstructured=True) == 512


def test_unstructured_gives_no_compute_reduction_by_default():
    layer = fc(weight_bits=4, act_bits=8, sparsity=0.5)
    assert layer_bops(layer) == 1024
    assert layer_bops(layer, count_unstructured=True) == 512
    assert layer_bops(fc(weight_bits=4, act_bits=8, sparsity=0.75), count_unstructured=True) == 256


def test_conv_with_explicit_macs():
    # 3x3 conv, 16 -> 32 channels, 28x28 output: MACs per image = 9 * 16 * 32 * 784
    conv = LayerCost("conv", macs_per_token=9 * 16 * 32 * 784, params=9 * 16 * 32, weight_bits=8, act_bits=8)
    assert layer_bops(conv) == 3_612_672 * 64
    assert layer_size_bits(conv) == 4608 * 8


def test_fractional_weight_bits():
    # 4-bit weights, group 128 with a 16-bit scale and 4-bit zero point: 4 + 20/128 = 4.15625 bits
    layer = fc(weight_bits=4.15625, act_bits=16)
    assert layer_bops(layer) == pytest.approx(32 * 4.15625 * 16)
    assert layer_size_bits(layer) == pytest.approx(32 * 4.15625)


# --- storage ---------------------------------------------------------------------------------------
def test_size_dense():
    assert layer_size_bits(fc(weight_bits=4, act_bits=8)) == 32 * 4  # 128, no metadata
    assert sparsity_metadata_bits(fc()) == 0.0


def test_size_unstructured_bitmask():
    layer = fc(weight_bits=4, sparsity=0.5)
    # 16 kept weights * 4 bits + 1-bit mask over all 32 elements = 64 + 32
    assert sparsity_metadata_bits(layer) == 32
    assert layer_size_bits(layer) == 96
    assert layer_size_bits(layer, dense_storage=True) == 128


def test_size_two_four_index():
    layer = fc(weight_bits=4, nm=NM(2, 4))
    # 16 kept weights * (4 value bits + 2 index bits), NVIDIA's 2:4 layout
    assert sparsity_metadata_bits(layer) == 32
    assert layer_size_bits(layer) == 16 * 4 + 16 * 2
    assert layer_size_bits(layer, dense_storage=True) == 128


def test_size_four_eight_index():
    layer = fc(weight_bits=8, nm=NM(4, 8))
    # 16 kept * (8 value bits + ceil(log2 8) = 3 index bits)
    assert layer_size_bits(layer) == 16 * 8 + 16 * 3


# --- whole model and reductions --------------------------------------------------------------------
def test_model_totals_and_reductions():
    layers = [
        fc(weight_bits=4, act_bits=8, nm=NM(2, 4)),  # 512 BOPs, 96 bits
        LayerCost.linear("fc2", 8, 4, weight_bits=8, act_bits=8),  # 32 * 64 = 2048 BOPs, 256 bits
    ]
    assert model_bops(layers) == 2560
    assert model_size_bits(layers) == 352
    # dense baseline: 64 MACs * 16 * 16 = 16384 BOPs, 64 weights * 16 = 1024 bits
    assert bop_reduction(layers) == pytest.approx(16384 / 2560)  # 6.4
    assert size_reduction(layers) == pytest.approx(1024 / 352)


def test_reductions_single_layer():
    assert bop_reduction([fc(weight_bits=4, act_bits=8)]) == 8.0  # 256 / 32
    assert bop_reduction([fc(weight_bits=4, act_bits=16, nm=NM(2, 4))]) == 8.0  # 4x bits, 2x MACs
    assert size_reduction([fc(weight_bits=4)]) == 4.0
    assert size_reduction([fc(weight_bits=4, sparsity=0.5)]) == pytest.approx(512 / 96)
    assert size_reduction([fc(weight_bits=4, sparsity=0.5)], dense_storage=True) == 4.0
    assert bop_reduction([fc(weight_bits=8, act_bits=8)], baseline_bits=32) == 16.0


def test_dense_16bit_has_no_reduction():
    layers = [fc(), LayerCost.linear("b", 3, 5)]
    assert bop_reduction(layers) == 1.0 and size_reduction(layers) == 1.0


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(params=-1),
        dict(macs_per_token=2.5),
        dict(weight_bits=0),
        dict(act_bits=float("nan")),
        dict(sparsity=1.0),
        dict(sparsity=-0.1),
        dict(sparsity=0.25, nm=NM(2, 4)),  # disagrees with the pattern
        dict(nm=(2, 4)),
    ],
)
def test_layer_validation(kwargs):
    base = dict(name="x", macs_per_token=32, params=32)
    with pytest.raises(ConfigError):
        LayerCost(**{**base, **kwargs})


def test_model_validation():
    with pytest.raises(ConfigError):
        model_bops([])
    with pytest.raises(ConfigError):
        bop_reduction([LayerCost("embed", macs_per_token=0, params=100)])
    with pytest.raises(ConfigError):
        size_reduction([LayerCost("act", macs_per_token=10, params=0)])


# --- equivalent activation bits (seed 004, eqs. 3-5) -----------------------------------------------
def test_equivalent_bits_swin_tiny_mixaq():
    rc = [0.8, 0.8, 0.4, 0.4, 0.0, 0.0]
    # eq. 3: ratios = 1 - r/2 = [0.6, 0.6, 0.8, 0.8, 1, 1]
    # sum ratios*GMACs = 0.6*13.3 + 0.6*13.56 + 0.8*14.16 + 0.8*14.16 + 14.16 + 14.02
    #                  = 7.98 + 8.136 + 11.328 + 11.328 + 14.16 + 14.02 = 66.952;  + C = 69.952
    # sum GMACs + C = 13.3 + 13.56 + 3 * 14.16 + 14.02 + 3 = 86.36
    # eq. 5 with ActBit_base = 4: 4 * 69.952 / 86.36 = 279.808 / 86.36 = 3.24002 (to 5 d.p.)
    got = equivalent_bits(rc, SWIN_TINY_GMACS, SWIN_TINY_FIXED, 4, method="mixa-q")
    assert got == pytest.approx(279.808 / 86.36, rel=1e-12)
    assert round(got, 5) == 3.24002


def test_equivalent_bits_swin_tiny_sparsevit():
    rc = [0.8, 0.8, 0.4, 0.4, 0.0, 0.0]
    # eq. 4: ratios = 1 - r = [0.2, 0.2, 0.6, 0.6, 1, 1]
    # 0.2*13.3 + 0.2*13.56 + 0.6*14.16*2 + 14.16 + 14.02 = 2.66 + 2.712 + 16.992 + 28.18 = 50.544; + 3
    # 4 * 53.544 / 86.36 = 214.176 / 86.36 = 2.48004 (to 5 d.p.)
    got = equivalent_bits(rc, SWIN_TINY_GMACS, SWIN_TINY_FIXED, 4, method="sparsevit")
    assert got == pytest.approx(214.176 / 86.36, rel=1e-12)
    assert round(got, 5) == 2.48004


def test_equivalent_bits_limits():
    assert equivalent_bits([0.0] * 6, SWIN_TINY_GMACS, SWIN_TINY_FIXED, 4) == pytest.approx(4.0)
    # everything compressed: MixA-Q saves half of every block, never the fixed part
    assert equivalent_bits([1.0] * 6, SWIN_TINY_GMACS, SWIN_TINY_FIXED, 4) == pytest.approx(
        4 * (83.36 / 2 + 3) / 86.36
    )
    assert equivalent_bits([1.0] * 6, SWIN_TINY_GMACS, 0.0, 4, method="sparsevit") == 0.0


def test_seed_004_sum_range_derivation():
    # App. 6.1: equal-cost blocks, relative cost 0.65 <=> sum of MixA-Q ratios (1 - 0.65) * 6 * 2 = 4.2
    rc = [0.7] * 6
    assert equivalent_bits(rc, [1.0] * 6, 0.0, 1.0) == pytest.approx(0.65)
    assert equivalent_bits([0.1] * 6, [1.0] * 6, 0.0, 1.0) == pytest.approx(0.95)  # sum 0.6


@pytest.mark.parametrize(
    "args, kwargs",
    [
        (([1.2], [1.0], 0.0, 4), {}),
        (([-0.1], [1.0], 0.0, 4), {}),
        (([0.5, 0.5], [1.0], 0.0, 4), {}),
        (([], [], 1.0, 4), {}),
        (([0.5], [-1.0], 0.0, 4), {}),
        (([0.5], [1.0], -1.0, 4), {}),
        (([0.5], [1.0], 0.0, 0), {}),
        (([0.5], [0.0], 0.0, 4), {}),
        (([0.5], [1.0], 0.0, 4), {"method": "pruning"}),
    ],
)
def test_equivalent_bits_validation(args, kwargs):
    with pytest.raises(ConfigError):
        equivalent_bits(*args, **kwargs)


# --- compression ratios ----------------------------------------------------------------------------
def test_compression_ratios():
    assert compression_ratio_from_bits(4) == 4.0
    assert compression_ratio_from_bits(3) == pytest.approx(16 / 3)
    assert compression_ratio_from_bits(8, baseline_bits=32) == 4.0
    assert compression_ratio_from_sparsity(0.0) == 1.0
    assert compression_ratio_from_sparsity(0.5) == 2.0
    assert compression_ratio_from_sparsity(0.75) == 4.0
    for bad in (0, -4, float("inf")):
        with pytest.raises(ConfigError):
            compression_ratio_from_bits(bad)
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ConfigError):
            compression_ratio_from_sparsity(bad)
