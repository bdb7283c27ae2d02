"""Uniform quantization: RTN and GPTQ weights, per-token activation fake-quantization.

`rtn:w4` / `gptq:w4,g128,sym,actorder` quantize weights; `aB` adds a per-token symmetric dynamic
activation quantizer on every target linear's input (`rtn:w8a8`, `gptq:w4a4`); `act:a8` quantizes
activations alone. Defaults follow the reference implementations (PROTOCOL.md): asymmetric min-max
with an integer zero point, per output channel, no clipping search; GPTQ block 128, dampening 0.01.

`fmt=` makes a stage land exactly on a deployment format, so the export needs no second rounding:
`fmt=q8_0` / `fmt=q4_0` / `fmt=q4_1` put weights on llama.cpp's block types (`rtn:w4,g32,sym,fmt=q4_0`
writes the bytes llama.cpp's own quantizer writes; GPTQ fits the same block parameters), and
`fmt=ct` gives activations compressed-tensors' dynamic per-token scale, amax / ((2^b - 1) / 2)
(`rtn:w8a8,sym,fmt=ct`), which is what transformers computes when it runs a compressed-tensors
W8A8 checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..grids import GGMLGrid, Grid, UniformGrid
from ..grids.uniform import CTActivationGrid
from ..kernels.obs import obs_sweep
from ..state import LinearRecord
from ..transforms import add_input_transform_, add_output_transform_, input_transforms, remove_transforms_
from ..types import Targets, check_bits
from . import args as A
from .base import MethodConfig, MethodSpec, register_method
from .pruning import obs_args, parse_obs_args


class _StraightThrough(torch.autograd.Function):
    """Forward: the quantized tensor, exactly. Backward: the gradient passes unchanged (STE)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return quantized.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return grad, None


def straight_through(x: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
    """`quantized` in the forward pass, identity in the backward pass when `x` needs a gradient
    (fine-tuning through fake quantizers: rounding has zero gradient almost everywhere)."""
    return _StraightThrough.apply(x, quantized) if x.requires_grad else quantized


class ActivationQuantizer(nn.Module):
    """Fake-quantizes a layer's input per token along its feature axis (dynamic, no state).

    axis -1 for a linear (features last); 1 for a conv's (B, C, H, W) input, where a "token" is one
    spatial position and its features are the C channels (blocks of a block format run along C).
    """

    def __init__(self, grid: Grid, axis: int = -1) -> None:
        super().__init__()
        if axis not in (-1, 1):
            raise ConfigError(f"activation quantizer axis must be -1 (linear) or 1 (conv channels), got {axis}")
        self.grid = grid
        self.axis = axis

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        moved = x.detach() if self.axis == -1 else x.detach().movedim(self.axis, -1)  # (..., features)
        flat = moved.reshape(-1, moved.shape[-1]).float()  # (tokens, features)
        q = self.grid.quantize(flat).reshape(moved.shape)
        return straight_through(x, (q if self.axis == -1 else q.movedim(-1, self.axis)).to(x.dtype))

    def extra_repr(self) -> str:
        return repr(self.grid) + ("" if self.axis == -1 else f", axis={self.axis}")


def activation_quantizer_for(module: nn.Module, grid: Grid) -> ActivationQuantizer:
    """The per-token activation quantizer of `module`'s input: along channels for a Conv2d."""
    return ActivationQuantizer(grid, axis=1 if isinstance(module, nn.Conv2d) else -1)


class KVQuantizer(nn.Module):
    """Fake-quantizes a key/value projection's output per token and head (asymmetric min-max).

    Applied to the k_proj / v_proj outputs, i.e. before rotary embeddings for keys: a KV cache holding
    pre-RoPE keys (as KV-cache quantizers such as KIVI's per-channel variant do) sees exactly this.
    """

    def __init__(self, bits: int, head_dim: int) -> None:
        super().__init__()
        self.grid = UniformGrid(bits, symmetric=False, group_size=head_dim)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        flat = y.detach().reshape(-1, y.shape[-1]).float()  # (tokens, heads * head_dim)
        return straight_through(y, self.grid.quantize(flat).reshape(y.shape).to(y.dtype))

    def extra_repr(self) -> str:
        return repr(self.grid)


# fmt= values: llama.cpp block types fix (weight bits, group size, symmetric); "ct" only changes the
# activation grid
GGML_FORMATS = {"q8_0": (8, 32, True), "q4_0": (4, 32, True), "q4_1": (4, 32, False)}
FORMATS = (*GGML_FORMATS, "ct")


@dataclass(frozen=True)
class QuantConfig(MethodConfig):
    """Bit-widths for weights (None = leave weights), activations and the KV cache (None = off)."""

    weight_bits: int | None = None
    act_bits: int | None = None
    kv_bits: int | None = None
    group_size: int | None = None  # weight columns sharing a scale; None = per output channel
    symmetric: bool = False
    target: Targets = field(default_factory=Targets)
    fmt: str | None = None  # a deployment format the grids land on exactly (FORMATS), or None

    method = "quant"  # the registered name, set per subclass

    def __post_init__(self) -> None:
        if self.weight_bits is None and self.act_bits is None and self.kv_bits is None:
            raise ConfigError("a quantization stage needs at least one bit-width (wB, aB or kvB)")
        for what, bits in (("weight bits", self.weight_bits), ("activation bits", self.act_bits), ("KV bits", self.kv_bits)):
            if bits is not None:
                check_bits(bits, what)
        if self.group_size is not None and self.group_size < 1:
            raise ConfigError(f"group size must be >= 1, got {self.group_size}")
        self._check_fmt()

    def _check_fmt(self) -> None:
        if self.fmt is None:
            return
        if self.fmt not in FORMATS:
            raise ConfigError(f"unknown fmt={self.fmt}; expected one of {', '.join(FORMATS)}")
        if self.fmt == "ct":
            if self.act_bits is None:
                raise ConfigError("fmt=ct sets the activation quantizer's scale; it needs activation bits (aB)")
            return
        bits, group, symmetric = GGML_FORMATS[self.fmt]
        if (self.weight_bits, self.group_size, self.symmetric) != (bits, group, symmetric):
            right = replace(self, weight_bits=bits, group_size=group, symmetric=symmetric).text()
            raise ConfigError(f"fmt={self.fmt} is {bits}-bit {'symmetric' if symmetric else 'asymmetric'} weights "
                              f"in groups of {group}: write {right}")

    @property
    def targets(self) -> Targets:
        return self.target

    @property
    def weight_grid(self) -> Grid | None:
        if self.weight_bits is None:
            return None
        if self.fmt in GGML_FORMATS:
            return GGMLGrid(self.fmt)
        return UniformGrid(self.weight_bits, symmetric=self.symmetric, group_size=self.group_size)

    @property
    def act_grid(self) -> Grid | None:
        if self.act_bits is None:
            return None
        return CTActivationGrid(self.act_bits) if self.fmt == "ct" else UniformGrid(self.act_bits, symmetric=True)

    def text(self) -> str:
        bits = "".join(
            f"{p}{b}" for p, b in (("w", self.weight_bits), ("a", self.act_bits), ("kv", self.kv_bits)) if b is not None
        )
        args = [bits] + ([f"g{self.group_size}"] if self.group_size is not None else [])
        args += ["sym"] if self.symmetric else []
        fmt = [f"fmt={self.fmt}"] if self.fmt is not None else []
        return f"{self.method}:" + ",".join(args + self._own_args() + fmt + self.target.args())

    def _own_args(self) -> list[str]:
        return []

    @classmethod
    def _parse_own(cls, positional: list[str], keyword: dict[str, str]) -> dict[str, Any]:
        return {}

    @classmethod
    def parse(cls, name: str, positional: list[str], keyword: dict[str, str]) -> QuantConfig:
        fields: dict[str, Any] = {"target": A.pop_targets(keyword)}
        fields.update(cls._parse_own(positional, keyword))
        rest = []
        for token in positional:
            t = token.lower()
            bits = A.parse_bits_token(t)
            group = A.parse_group(t)
            if bits is not None:
                for key, b in zip(("weight_bits", "act_bits", "kv_bits"), bits):
                    if b is not None:
                        if key in fields:
                            raise ConfigError(f"{key.replace('_', ' ')} given twice in {name}")
                        fields[key] = b
            elif group is not None:
                _set_once(fields, "group_size", group, name)
            elif t in ("sym", "asym"):
                _set_once(fields, "symmetric", t == "sym", name)
            else:
                rest.append(token)
        for key, field_name in (("bits", "weight_bits"), ("group", "group_size")):
            if key in keyword:
                _set_once(fields, field_name, A.parse_int(keyword.pop(key), key), name)
        if "fmt" in keyword:
            fields["fmt"] = keyword.pop("fmt").strip().lower()
        A.reject_leftovers(name, rest, keyword)
        return cls(**fields)


def _set_once(fields: dict[str, Any], key: str, value: Any, name: str) -> None:
    if key in fields:
        raise ConfigError(f"{key.replace('_', ' ')} given twice in {name}")
    fields[key] = value


@dataclass(frozen=True)
class RTNConfig(QuantConfig):
    """Round-to-nearest onto a min-max grid."""

    method = "rtn"


@dataclass(frozen=True)
class GPTQConfig(QuantConfig):
    """GPTQ (Frantar et al., 2023): OBS error feedback while quantizing column by column."""

    act_order: bool = False  # visit columns by decreasing Hessian diagonal
    block_size: int = 128
    dampening_fraction: float = 0.01

    method = "gptq"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.weight_bits is None:
            raise ConfigError("gptq needs a weight bit-width (wB); use act:aB for activations alone")
        if self.block_size < 1:
            raise ConfigError(f"block size must be >= 1, got {self.block_size}")
        if not 0 <= self.dampening_fraction < 1:
            raise ConfigError(f"dampening must be in [0, 1), got {self.dampening_fraction}")

    def _own_args(self) -> list[str]:
        return (["actorder"] if self.act_order else []) + obs_args(self.block_size, self.dampening_fraction)

    @classmethod
    def _parse_own(cls, positional: list[str], keyword: dict[str, str]) -> dict[str, Any]:
        own = parse_obs_args(keyword)
        if A.pop_flag(positional, "actorder", "act_order"):
            own["act_order"] = True
        return own


@dataclass(frozen=True)
class ActConfig(QuantConfig):
    """Activation fake-quantization alone."""

    method = "act"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.weight_bits is not None:
            raise ConfigError("act quantizes activations only; use rtn or gptq for weights")


def rtn_linear(weight, stats, record: LinearRecord, config: QuantConfig) -> torch.Tensor:
    grid = config.weight_grid
    if grid is None:
        return weight
    params = grid.fit_all(weight)
    q = grid.project_all(weight, params)
    if record.mask is not None:
        q = q.masked_fill(record.mask, 0.0)  # already exact (0 is on the grid); kept explicit
    record.grid, record.grid_params = grid, params
    return q


def gptq_linear(weight, hessian, record: LinearRecord, config: GPTQConfig) -> torch.Tensor:
    result = obs_sweep(
        weight,
        hessian.prepared(config.dampening_fraction, config.act_order),
        prior_mask=record.mask,  # pruned weights stay exactly zero; their error is compensated
        grid=config.weight_grid,
        block_size=config.block_size,
    )
    record.grid, record.grid_params = config.weight_grid, result.grid_params
    return result.weight


def attach_activation_quantizer(module: nn.Module, record: LinearRecord, config: QuantConfig, adapter, model) -> None:
    grid = config.act_grid
    if grid is not None:
        remove_transforms_(module, ActivationQuantizer)  # a later activation quantizer replaces an earlier one
        add_input_transform_(module, activation_quantizer_for(module, grid))
        record.act_grid = grid
    if config.kv_bits is not None and adapter.is_kv_projection(record.name):
        remove_transforms_(module, KVQuantizer)
        add_output_transform_(module, KVQuantizer(config.kv_bits, adapter.head_dim(model)))
        record.kv_bits = config.kv_bits


register_method(MethodSpec("rtn", "quantize", RTNConfig, None, rtn_linear, attach_activation_quantizer))
register_method(MethodSpec("gptq", "quantize", GPTQConfig, "hessian", gptq_linear, attach_activation_quantizer))
register_method(MethodSpec("act", "quantize", ActConfig, None, None, attach_activation_quantizer))

__all__ = ["ActivationQuantizer", "GPTQConfig", "RTNConfig", "ActConfig", "activation_quantizer_for",
           "input_transforms"]
