"""Uniform quantization: RTN and GPTQ weights, per-token activation fake-quantization.

`rtn:w4` / `gptq:w4,g128,sym,actorder` quantize weights; `aB` adds a per-token symmetric dynamic
activation quantizer on every target linear's input (`rtn:w8a8`, `gptq:w4a4`); `act:a8` quantizes
activations alone. Defaults follow the reference implementations (PROTOCOL.md): asymmetric min-max
with an integer zero point, per output channel, no clipping search; GPTQ block 128, dampening 0.01.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..engine.wrappers import add_input_transform_, add_output_transform_, input_transforms, remove_transforms_
from ..errors import ConfigError
from ..kernels.obs import obs_sweep
from ..grids import Grid, UniformGrid
from ..types import check_bits
from . import args as A
from .base import LinearRecord, MethodSpec, register_method


class ActivationQuantizer(nn.Module):
    """Fake-quantizes a linear's input along its last dimension, per token (dynamic, no state)."""

    def __init__(self, grid: Grid) -> None:
        super().__init__()
        self.grid = grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1]).float()  # (tokens, features)
        return self.grid.quantize(flat).reshape(x.shape).to(x.dtype)

    def extra_repr(self) -> str:
        return repr(self.grid)


class KVQuantizer(nn.Module):
    """Fake-quantizes a key/value projection's output per token and head (asymmetric min-max).

    Applied to the k_proj / v_proj outputs, i.e. before rotary embeddings for keys: a KV cache holding
    pre-RoPE keys (as KV-cache quantizers such as KIVI's per-channel variant do) sees exactly this.
    """

    def __init__(self, bits: int, head_dim: int) -> None:
        super().__init__()
        self.grid = UniformGrid(bits, symmetric=False, group_size=head_dim)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        flat = y.reshape(-1, y.shape[-1]).float()  # (tokens, heads * head_dim)
        return self.grid.quantize(flat).reshape(y.shape).to(y.dtype)

    def extra_repr(self) -> str:
        return repr(self.grid)


_KV_SUFFIXES = ("k_proj", "v_proj")


@dataclass(frozen=True)
class QuantConfig:
    """Bit-widths for weights (None = leave weights), activations and the KV cache (None = off)."""

    weight_bits: int | None = None
    act_bits: int | None = None
    kv_bits: int | None = None
    group_size: int | None = None  # weight columns sharing a scale; None = per output channel
    symmetric: bool = False
    include: str | None = None
    exclude: str | None = None

    def __post_init__(self) -> None:
        if self.weight_bits is None and self.act_bits is None and self.kv_bits is None:
            raise ConfigError("a quantization stage needs at least one bit-width (wB, aB or kvB)")
        for what, bits in (("weight bits", self.weight_bits), ("activation bits", self.act_bits), ("KV bits", self.kv_bits)):
            if bits is not None:
                check_bits(bits, what)
        if self.group_size is not None and self.group_size < 1:
            raise ConfigError(f"group size must be >= 1, got {self.group_size}")

    @property
    def weight_grid(self) -> UniformGrid | None:
        if self.weight_bits is None:
            return None
        return UniformGrid(self.weight_bits, symmetric=self.symmetric, group_size=self.group_size)

    @property
    def act_grid(self) -> UniformGrid | None:
        return None if self.act_bits is None else UniformGrid(self.act_bits, symmetric=True)

    def _args(self) -> list[str]:
        bits = "".join(
            f"{p}{b}" for p, b in (("w", self.weight_bits), ("a", self.act_bits), ("kv", self.kv_bits)) if b is not None
        )
        out = [bits]
        if self.group_size is not None:
            out.append(f"g{self.group_size}")
        if self.symmetric:
            out.append("sym")
        return out + A.targets_suffix(self.include, self.exclude)


@dataclass(frozen=True)
class RTNConfig(QuantConfig):
    """Round-to-nearest onto a min-max grid."""

    def spec(self) -> str:
        return "rtn:" + ",".join(self._args())


@dataclass(frozen=True)
class GPTQConfig(QuantConfig):
    """GPTQ (Frantar et al., 2023): OBS error feedback while quantizing column by column."""

    act_order: bool = False  # visit columns by decreasing Hessian diagonal
    block_size: int = 128
    dampening_fraction: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.weight_bits is None:
            raise ConfigError("gptq needs a weight bit-width (wB); use act:aB for activations alone")
        if self.block_size < 1:
            raise ConfigError(f"block size must be >= 1, got {self.block_size}")
        if not 0 <= self.dampening_fraction < 1:
            raise ConfigError(f"dampening must be in [0, 1), got {self.dampening_fraction}")

    def spec(self) -> str:
        extra = ["actorder"] if self.act_order else []
        if self.block_size != 128:
            extra.append(f"bs={self.block_size}")
        if self.dampening_fraction != 0.01:
            extra.append(f"damp={self.dampening_fraction:g}")
        return "gptq:" + ",".join(self._args() + extra)


@dataclass(frozen=True)
class ActConfig(QuantConfig):
    """Activation fake-quantization alone."""

    def spec(self) -> str:
        return "act:" + ",".join(self._args())


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
        hessian,
        prior_mask=record.mask,  # pruned weights stay exactly zero; their error is compensated
        grid=config.weight_grid,
        block_size=config.block_size,
        dampening_fraction=config.dampening_fraction,
        act_order=config.act_order,
    )
    record.grid, record.grid_params = config.weight_grid, result.grid_params
    return result.weight


def attach_activation_quantizer(module: nn.Module, record: LinearRecord, config: QuantConfig, model_config=None) -> None:
    grid = config.act_grid
    if grid is not None:
        remove_transforms_(module, ActivationQuantizer)  # a later activation quantizer replaces an earlier one
        add_input_transform_(module, ActivationQuantizer(grid))
        record.act_grid = grid
    if config.kv_bits is not None and record.name.endswith(_KV_SUFFIXES):
        remove_transforms_(module, KVQuantizer)
        add_output_transform_(module, KVQuantizer(config.kv_bits, head_dim_of(model_config)))
        record.kv_bits = config.kv_bits


def head_dim_of(model_config) -> int:
    head_dim = getattr(model_config, "head_dim", None)
    if head_dim:
        return int(head_dim)
    return int(model_config.hidden_size // model_config.num_attention_heads)


def check_kv_supported(targets: dict[str, nn.Module]) -> None:
    """KV quantization needs separate k/v projections (LLaMA, Mistral, Qwen2, OPT); fused QKV is not split."""
    if not any(n.endswith(_KV_SUFFIXES) for n in targets):
        raise ConfigError("KV-cache quantization needs separate k_proj/v_proj layers; this model fuses them")


def _parser(cls):
    def parse(name: str, positional: list[str], keyword: dict[str, str]):
        include, exclude = A.pop_targets(keyword)
        fields: dict = {"include": include, "exclude": exclude}
        rest = []
        for token in positional:
            t = token.lower()
            bits = A.parse_bits_token(t)
            group = A.parse_group(t)
            if bits is not None:
                for key, b in zip(("weight_bits", "act_bits", "kv_bits"), bits):
                    if b is not None:
                        fields[key] = b
            elif group is not None:
                fields["group_size"] = group
            elif t in ("sym", "asym"):
                fields["symmetric"] = t == "sym"
            elif t in ("actorder", "act_order") and cls is GPTQConfig:
                fields["act_order"] = True
            else:
                rest.append(token)
        if cls is GPTQConfig:
            if "bs" in keyword:
                fields["block_size"] = A.parse_int(keyword.pop("bs"), "block size")
            if "damp" in keyword:
                fields["dampening_fraction"] = A.parse_float(keyword.pop("damp"), "dampening")
        for key, field_name in (("bits", "weight_bits"), ("group", "group_size")):
            if key in keyword:
                fields[field_name] = A.parse_int(keyword.pop(key), key)
        A.reject_leftovers(name, rest, keyword)
        if cls is ActConfig and fields.get("weight_bits") is not None:
            raise ConfigError("act quantizes activations only; use rtn or gptq for weights")
        return cls(**fields)

    return parse


register_method(
    MethodSpec("rtn", "quantize", RTNConfig, _parser(RTNConfig), None, rtn_linear, attach_activation_quantizer)
)
register_method(
    MethodSpec("gptq", "quantize", GPTQConfig, _parser(GPTQConfig), "hessian", gptq_linear, attach_activation_quantizer)
)
register_method(MethodSpec("act", "quantize", ActConfig, _parser(ActConfig), None, None, attach_activation_quantizer))

__all__ = ["ActivationQuantizer", "GPTQConfig", "RTNConfig", "ActConfig", "input_transforms"]
