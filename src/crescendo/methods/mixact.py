"""Mixed-precision token activations (MixA-Q, seed 004): a fraction of each image's tokens at low bits.

`mixact:a4,low=2,ratio=0.3` attaches to every target linear a per-token activation quantizer that
quantizes the `ratio` fraction of each sample's tokens with the smallest L2 norm at `low` bits and
the others at the base bits (symmetric, per token, dynamic, like `aB`). MixA-Q keeps the important
windows of a Swin block at the base bit-width and compresses the rest to half of it; here a token
of a ViT block plays the window's part, and its importance is its activation norm (SparseViT's
window score). With low = base / 2, the computation a block saves is r / 2 of its own (eq. 3 of
seed 004), which `crescendo.budget.act_search` turns into equivalent bits (eq. 5).

The quantizer has no weights and no state; export cannot save it (the packed format refuses it with
a one-line error rather than dropping it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import ConfigError
from ..grids import UniformGrid
from ..state import LinearRecord
from ..transforms import add_input_transform_, remove_transforms_
from ..types import Targets, check_bits
from . import args as A
from .base import MethodConfig, MethodSpec, register_method
from .quantization import ActivationQuantizer


class MixedTokenQuantizer(nn.Module):
    """Per-token fake quantization of (B, T, D) inputs: the round(ratio * T) lowest-norm tokens of each
    sample at `low` bits, the rest at `bits`."""

    def __init__(self, bits: int, low: int, ratio: float) -> None:
        super().__init__()
        self.high, self.low_grid = UniformGrid(bits, symmetric=True), UniformGrid(low, symmetric=True)
        self.ratio = ratio

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3:
            raise ConfigError(f"mixact quantizes (batch, tokens, features) inputs, got shape {tuple(x.shape)}")
        b, t, d = x.shape
        flat = x.reshape(-1, d).float()  # (B*T, D)
        high = self.high.quantize(flat).reshape(b, t, d)
        k = int(round(self.ratio * t))
        if k == 0:
            return high.to(x.dtype)
        low = self.low_grid.quantize(flat).reshape(b, t, d)
        weakest = torch.topk(x.float().norm(dim=-1), k, dim=1, largest=False).indices  # (B, k)
        chosen = torch.zeros(b, t, dtype=torch.bool, device=x.device).scatter_(1, weakest, True)
        return torch.where(chosen[..., None], low, high).to(x.dtype)

    def extra_repr(self) -> str:
        return f"a{self.high.bits}/a{self.low_grid.bits}, ratio={self.ratio:g}"


@dataclass(frozen=True)
class MixActConfig(MethodConfig):
    """Base activation bits, the low bits of the compressed tokens, and the compressed fraction."""

    bits: int
    low: int
    ratio: float = 0.0  # fraction of each sample's tokens at `low` bits
    target: Targets = field(default_factory=Targets)

    def __post_init__(self) -> None:
        check_bits(self.bits, "activation bits")
        check_bits(self.low, "low activation bits")
        if self.low >= self.bits:
            raise ConfigError(f"low bits {self.low} must be below the base bits {self.bits}")
        if not 0 <= self.ratio <= 1:
            raise ConfigError(f"compressed token ratio must be in [0, 1], got {self.ratio}")

    @property
    def targets(self) -> Targets:
        return self.target

    @property
    def act_grid(self) -> UniformGrid:
        """The base grid (what BOP accounting counts; the mixed share is accounted for by eq. 5)."""
        return UniformGrid(self.bits, symmetric=True)

    def text(self) -> str:
        return f"mixact:a{self.bits},low={self.low},ratio={self.ratio:g}" + "".join(
            "," + a for a in self.target.args())

    @classmethod
    def parse(cls, name: str, positional: list[str], keyword: dict[str, str]) -> MixActConfig:
        target = A.pop_targets(keyword)
        bits = [A.parse_bits_token(t.lower()) for t in positional]
        if len(positional) != 1 or bits[0] is None or bits[0][1] is None or bits[0][0] or bits[0][2]:
            raise ConfigError("mixact needs one activation bit-width, e.g. mixact:a4,low=2,ratio=0.3")
        if "low" not in keyword:
            raise ConfigError("mixact needs low=B, the bit-width of the compressed tokens")
        low = A.parse_int(keyword.pop("low"), "low bits")
        ratio = A.parse_float(keyword.pop("ratio"), "compressed token ratio") if "ratio" in keyword else 0.0
        A.reject_leftovers(name, [], keyword)
        return cls(bits[0][1], low, ratio, target)


def attach_mixed_tokens(module: nn.Module, record: LinearRecord, config: MixActConfig, adapter, model) -> None:
    if isinstance(module, nn.Conv2d):
        raise ConfigError(f"{record.name}: mixact quantizes token inputs of linears, not convolutions")
    remove_transforms_(module, ActivationQuantizer)
    remove_transforms_(module, MixedTokenQuantizer)
    add_input_transform_(module, MixedTokenQuantizer(config.bits, config.low, config.ratio))
    record.act_grid = config.act_grid


def _check_targets(model, adapter, config: MixActConfig, earlier=()) -> None:
    from ..models.adapters import select_targets

    convs = [n for n, m in select_targets(model, adapter, config.targets).items() if isinstance(m, nn.Conv2d)]
    if convs:
        raise ConfigError(f"mixact quantizes token inputs of linears, not convolutions ({convs[0]})")


register_method(MethodSpec("mixact", "quantize", MixActConfig, None, None, attach_mixed_tokens,
                           check=_check_targets))
