"""Factored layers of a shared model: a basis linear shared by a group of blocks, coefficients per block.

After Basis Sharing a linear `L` of block i (say `model.layers.3.self_attn.q_proj`) becomes a
`FactoredLinear` under the same name, computing coefficient(basis(x)):

    L.basis         nn.Linear(in -> rank), no bias; held by the group's first block only (its owner)
    L.coefficient   nn.Linear(rank -> out), with L's bias

The other blocks of the group reach the owner's basis through it, without registering it, so each
weight has exactly one name: `named_modules`, `state_dict` and the engine's per-block linears see
the shared basis once, in its owner's block, and later stages (pruning, quantization, LoRA,
fine-tuning) compress and train it as one linear. Input and output transforms that `L` carried
(online Hadamard, activation / KV quantizers) stay on the FactoredLinear, around both factors.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ModelError
from ..state import SharingInfo, state_of
from ..transforms import (
    add_input_transform_,
    add_output_transform_,
    branches,
    input_transforms,
    output_transforms,
    remove_transforms_,
)
from .adapters import in_features

BASIS = "basis"
COEFFICIENT = "coefficient"
FACTOR_SUFFIXES = (f".{BASIS}", f".{COEFFICIENT}")


class FactoredLinear(nn.Module):
    """y = coefficient(basis(x)), the basis possibly shared with the FactoredLinears of other blocks."""

    def __init__(self, coefficient: nn.Linear, basis: nn.Linear | None = None, owner: FactoredLinear | None = None):
        super().__init__()
        if (basis is None) == (owner is None):
            raise ModelError("a factored linear holds its basis or names the owner that holds it, not both")
        self.coefficient = coefficient
        if basis is not None:
            self.basis = basis
        else:  # a plain attribute, not a submodule: the basis is registered in its owner's block only
            object.__setattr__(self, "_owner", owner)

    @property
    def shared_basis(self) -> nn.Module:
        return self._modules[BASIS] if BASIS in self._modules else self._owner.shared_basis

    @property
    def owns_basis(self) -> bool:
        return BASIS in self._modules

    @property
    def rank(self) -> int:
        return int(self.coefficient.in_features)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.coefficient(self.shared_basis(x))

    def extra_repr(self) -> str:
        return f"rank={self.rank}, owns_basis={self.owns_basis}"


def container_name(name: str) -> str:
    """`X.basis` / `X.coefficient` -> `X`; any other name unchanged."""
    for suffix in FACTOR_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _set_child(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, module)


def _carry_transforms(source: nn.Module, target: nn.Module) -> None:
    for t in input_transforms(source):
        add_input_transform_(target, t)
    for t in output_transforms(source):
        add_output_transform_(target, t)


@torch.no_grad()
def factor_group_(model: nn.Module, members: list[str], basis: torch.Tensor, coefficients: list[torch.Tensor]) -> None:
    """Replace the linears `members` (first = owner) by FactoredLinears sharing `basis` (rank, in);
    coefficients[i] (out, rank) is member i's. Each member's bias and transforms carry over."""
    owner: FactoredLinear | None = None
    for name, coefficient in zip(members, coefficients):
        old = model.get_submodule(name)
        if branches(old):
            raise ModelError(f"{name} carries LoRA adapters; merge them before sharing")
        device, dtype = old.weight.device, old.weight.dtype
        bias = getattr(old, "bias", None)
        coef = nn.Linear(coefficient.shape[1], coefficient.shape[0], bias=bias is not None, device=device, dtype=dtype)
        coef.weight.copy_(coefficient.to(coef.weight.dtype))
        if bias is not None:
            coef.bias.copy_(bias.detach().reshape(-1))
        if owner is None:
            lin = nn.Linear(basis.shape[1], basis.shape[0], bias=False, device=device, dtype=dtype)
            lin.weight.copy_(basis.to(lin.weight.dtype))
            new = FactoredLinear(coef, basis=lin)
            owner = new
        else:
            new = FactoredLinear(coef, owner=owner)
        _carry_transforms(old, new)
        remove_transforms_(old)
        _set_child(model, name, new)


def restore_sharing_(model: nn.Module, info: SharingInfo) -> None:
    """Give a freshly built model the factored layers `info` describes (weights left to the loader)."""
    for group in info.groups:
        basis = torch.zeros(group.rank, group.in_features)
        coefficients = [torch.zeros(group.out_features, group.rank) for _ in group.members]
        for name in group.members:
            old = model.get_submodule(name)
            if in_features(old) != group.in_features:
                raise ModelError(f"the saved sharing of {name} does not fit the model's layer")
        factor_group_(model, group.members, basis, coefficients)


def sharing_params(model: nn.Module) -> tuple[int, int]:
    """(dense parameters the shared linears replaced, parameters their factors hold), biases excluded."""
    info = state_of(model).sharing
    if info is None:
        return 0, 0
    dense = sum(len(g.members) * g.in_features * g.out_features for g in info.groups)
    factors = sum(g.rank * (g.in_features + len(g.members) * g.out_features) for g in info.groups)
    return dense, factors


__all__ = ["FactoredLinear", "container_name", "factor_group_", "restore_sharing_", "sharing_params"]
