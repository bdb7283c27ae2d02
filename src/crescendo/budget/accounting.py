"""Cost accounting for compressed models: bit-operations (BOPs), storage bits and compression ratios.

Conventions (all documented where they are used):

- BOPs of a layer = MACs x weight bits x activation bits (OBC, Frantar & Alistarh 2022, Sec. 6 and
  App. A.10: "mixed quantization and 2:4 pruning for various BOP reduction targets"). N:M sparsity
  scales the MACs by its density because sparse tensor cores skip the pruned products (2:4 halves
  them); unstructured sparsity does not, unless the caller asks for it (`count_unstructured=True`).
- Storage of a layer = kept weights x weight bits + sparsity metadata (see `layer_size_bits`).
- Reductions are against the dense 16-bit model: 16-bit weights, 16-bit activations, no sparsity.
  A reduction is dense / compressed, so a value above 1 means cheaper.
- Equivalent activation bits of MixA-Q / SparseViT follow seed 004, App. 6.2, equations (3)-(5).

The unit of `macs_per_token` is whatever the caller uses consistently (per token for a linear, per
image for a conv); reductions are ratios, so the unit cancels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import ConfigError
from ..types import NM, check_ratio

BASELINE_BITS = 16.0  # weights and activations of the reference dense model (fp16 / bf16)


@dataclass(frozen=True)
class LayerCost:
    """Compute and storage description of one compressible layer.

    `sparsity` is the fraction of zero weights. With `nm` set it defaults to the N:M ratio (0.0 is
    read as "not given"); any other value that disagrees with the pattern is an error.

    Example:
        >>> LayerCost.linear("fc", 4, 8, weight_bits=4, act_bits=8).macs_per_token
        32
    """

    name: str
    macs_per_token: int  # multiply-accumulates per token (in * out for a linear; explicit for a conv)
    params: int  # number of weight elements
    weight_bits: float = BASELINE_BITS  # per stored element; may be fractional (group scales amortised)
    act_bits: float = BASELINE_BITS  # 16 when activations are not quantized
    sparsity: float = 0.0  # fraction of zero weights
    nm: NM | None = None  # semi-structured pattern; the only sparsity that reduces MACs by default

    def __post_init__(self) -> None:
        for field in ("macs_per_token", "params"):
            value = getattr(self, field)
            if isinstance(value, bool) or int(value) != value or value < 0:
                raise ConfigError(
                    f"layer {self.name!r}: {field} must be a non-negative integer, got {value!r}"
                )
        for field in ("weight_bits", "act_bits"):
            value = float(getattr(self, field))
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"layer {self.name!r}: {field} must be a positive number, got {value!r}")
        check_ratio(self.sparsity, f"layer {self.name!r}: sparsity")
        if self.nm is not None:
            if not isinstance(self.nm, NM):
                raise ConfigError(f"layer {self.name!r}: nm must be an NM value, got {self.nm!r}")
            if self.sparsity == 0.0:
                # frozen dataclass: fill the derived default once, at construction
                object.__setattr__(self, "sparsity", self.nm.ratio)
            elif not math.isclose(self.sparsity, self.nm.ratio, abs_tol=1e-9):
                raise ConfigError(
                    f"layer {self.name!r}: sparsity {self.sparsity} disagrees with N:M pattern {self.nm} "
                    f"({self.nm.ratio})"
                )

    @classmethod
    def linear(cls, name: str, in_features: int, out_features: int, **kwargs) -> LayerCost:
        """A linear layer: in_features * out_features MACs per token and as many weights."""
        n = in_features * out_features
        return cls(name=name, macs_per_token=n, params=n, **kwargs)

    @property
    def density(self) -> float:
        """Fraction of weights kept (1 - sparsity)."""
        return 1.0 - self.sparsity

    def dense_baseline(self, baseline_bits: float = BASELINE_BITS) -> LayerCost:
        """The same layer uncompressed: `baseline_bits` weights and activations, no sparsity."""
        return LayerCost(self.name, self.macs_per_token, self.params, baseline_bits, baseline_bits)


def layer_cost(name: str, n_in: int, n_out: int, positions: int = 1, **kwargs) -> LayerCost:
    """A layer whose (out, in) weight is applied at `positions` output positions per sample (a conv's
    H_out x W_out per image; 1 for a linear counted per token).

    Example:
        >>> layer_cost("conv", 9 * 16, 32, positions=49).macs_per_token
        225792
    """
    return LayerCost(name=name, macs_per_token=n_in * n_out * positions, params=n_in * n_out, **kwargs)


def effective_macs(layer: LayerCost, *, count_unstructured: bool = False) -> float:
    """MACs that hardware actually executes.

    N:M sparsity scales MACs by its density (OBC's convention: 2:4 halves them, sparse tensor cores
    skip the pruned products). Unstructured sparsity gives no compute reduction on dense hardware, so
    it is ignored unless `count_unstructured=True`, which scales MACs by (1 - sparsity).
    """
    if layer.nm is not None:
        return layer.macs_per_token * (1.0 - layer.nm.ratio)
    if count_unstructured:
        return layer.macs_per_token * layer.density
    return float(layer.macs_per_token)


def layer_bops(layer: LayerCost, *, count_unstructured: bool = False) -> float:
    """Bit-operations of one layer: effective MACs x weight bits x activation bits (OBC, Sec. 6).

    Example: a 4x8 linear at w4a8 costs 32 * 4 * 8 = 1024 BOPs per token; with 2:4 sparsity, 512.
    """
    return effective_macs(layer, count_unstructured=count_unstructured) * layer.weight_bits * layer.act_bits


def sparsity_metadata_bits(layer: LayerCost) -> float:
    """Bits needed to locate the kept weights.

    - unstructured (sparsity > 0): a bitmask, 1 bit per weight element (kept or pruned);
    - N:M: an index of ceil(log2(M)) bits per kept element, its position inside its group of M.
      For 2:4 this is NVIDIA's sparse tensor-core format (2-bit index per kept value). The tighter
      ceil(log2(C(M, N))) bits per group is not what hardware stores, so it is not used here;
    - dense: nothing.
    """
    if layer.nm is not None:
        kept = layer.params * (1.0 - layer.nm.ratio)
        return kept * math.ceil(math.log2(layer.nm.m))
    if layer.sparsity > 0.0:
        return float(layer.params)
    return 0.0


def layer_size_bits(layer: LayerCost, *, dense_storage: bool = False) -> float:
    """Storage of one layer's weights in bits: params x weight bits x density + sparsity metadata.

    `weight_bits` is per stored element, so group-scale overhead folded into it is counted for kept
    weights only. `dense_storage=True` stores pruned weights as explicit zeros (params x weight bits,
    no metadata), as a plain quantized checkpoint does.
    """
    if dense_storage:
        return layer.params * layer.weight_bits
    return layer.params * layer.weight_bits * layer.density + sparsity_metadata_bits(layer)


def _check_layers(layers: Sequence[LayerCost]) -> Sequence[LayerCost]:
    if len(layers) == 0:
        raise ConfigError("need at least one layer to account for")
    for layer in layers:
        if not isinstance(layer, LayerCost):
            raise ConfigError(f"expected LayerCost values, got {type(layer).__name__}")
    return layers


def model_bops(layers: Sequence[LayerCost], *, count_unstructured: bool = False) -> float:
    """Total BOPs of the layers (see `layer_bops`)."""
    return sum(layer_bops(x, count_unstructured=count_unstructured) for x in _check_layers(layers))


def model_size_bits(layers: Sequence[LayerCost], *, dense_storage: bool = False) -> float:
    """Total weight storage of the layers in bits (see `layer_size_bits`)."""
    return sum(layer_size_bits(x, dense_storage=dense_storage) for x in _check_layers(layers))


def bop_reduction(
    layers: Sequence[LayerCost], *, count_unstructured: bool = False, baseline_bits: float = BASELINE_BITS
) -> float:
    """BOPs of the dense baseline (w16a16, no sparsity) divided by the compressed model's BOPs.

    This is OBC's "BOP reduction target" (e.g. 12-14x for ResNets with mixed bits + 2:4).

    Example:
        >>> bop_reduction([LayerCost.linear("fc", 4, 8, weight_bits=4, act_bits=8)])
        8.0
    """
    base = model_bops([x.dense_baseline(baseline_bits) for x in _check_layers(layers)])
    compressed = model_bops(layers, count_unstructured=count_unstructured)
    if base == 0 or compressed == 0:
        raise ConfigError("BOP reduction is undefined: the layers have no MACs")
    return base / compressed


def size_reduction(
    layers: Sequence[LayerCost], *, dense_storage: bool = False, baseline_bits: float = BASELINE_BITS
) -> float:
    """Storage of the dense baseline (16 bits per weight) divided by the compressed storage."""
    base = model_size_bits([x.dense_baseline(baseline_bits) for x in _check_layers(layers)])
    compressed = model_size_bits(layers, dense_storage=dense_storage)
    if base == 0 or compressed == 0:
        raise ConfigError("size reduction is undefined: the layers have no weights")
    return base / compressed


_SAVED_FRACTION = {"mixa-q": 0.5, "sparsevit": 1.0}  # computation saved per compressed / pruned window


def equivalent_bits(
    ratios: Sequence[float],
    gmacs: Sequence[float],
    fixed_gmacs: float,
    base_bits: float,
    method: str = "mixa-q",
) -> float:
    """Computation-weighted equivalent activation bits (seed 004, App. 6.2, equations 3-5).

    ratios_i = 1 - r_i / 2 for MixA-Q (eq. 3: compressed windows save half their computation) or
    1 - r_i for SparseViT (eq. 4: pruned windows save all of it); then (eq. 5)

        ActBit_eq = base_bits * (sum_i ratios_i * GMACs_i + C) / (sum_i GMACs_i + C),

    with C = `fixed_gmacs`, the computation no window ratio can save (e.g. downsampling layers).

    Example (Swin-Tiny, nothing compressed):
        >>> equivalent_bits([0.0] * 2, [13.3, 13.56], 3.0, 4.0)
        4.0
    """
    if method not in _SAVED_FRACTION:
        raise ConfigError(f"unknown method {method!r}; choose one of {sorted(_SAVED_FRACTION)}")
    if len(ratios) != len(gmacs):
        raise ConfigError(
            f"need one ratio per GMACs entry, got {len(ratios)} ratios and {len(gmacs)} GMACs"
        )
    if len(ratios) == 0:
        raise ConfigError("need at least one block")
    for r in ratios:
        if not 0.0 <= float(r) <= 1.0:
            raise ConfigError(f"compression ratios must be in [0, 1], got {r}")
    for g in [*gmacs, fixed_gmacs]:
        if not (math.isfinite(float(g)) and float(g) >= 0.0):
            raise ConfigError(f"GMACs must be non-negative, got {g}")
    if not (math.isfinite(float(base_bits)) and float(base_bits) > 0.0):
        raise ConfigError(f"base_bits must be positive, got {base_bits}")
    total = float(sum(gmacs)) + float(fixed_gmacs)
    if total == 0.0:
        raise ConfigError("equivalent bits are undefined when all GMACs are zero")
    saved = _SAVED_FRACTION[method]
    kept = sum((1.0 - saved * float(r)) * float(g) for r, g in zip(ratios, gmacs)) + float(fixed_gmacs)
    return float(base_bits) * kept / total


def compression_ratio_from_bits(bits: float, baseline_bits: float = BASELINE_BITS) -> float:
    """Quantization compression ratio C_Q = baseline_bits / bits (16 / B for a 16-bit baseline)."""
    for what, value in (("bits", bits), ("baseline_bits", baseline_bits)):
        if not (math.isfinite(float(value)) and float(value) > 0.0):
            raise ConfigError(f"{what} must be positive, got {value}")
    return float(baseline_bits) / float(bits)


def compression_ratio_from_sparsity(sparsity: float) -> float:
    """Pruning compression ratio C_P = 1 / (1 - p), for p in [0, 1) (metadata not counted)."""
    return 1.0 / (1.0 - check_ratio(sparsity))
