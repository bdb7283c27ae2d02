"""Folding a BatchNorm2d into the convolution before it (inference-time batch norm, running statistics).

    BN(conv(x)) = gamma * (W x + b - mean) / sqrt(var + eps) + beta = (s W) x + (s (b - mean) + beta),
    s = gamma / sqrt(var + eps), per output channel.

`fold_batchnorm_` rewrites the conv's weight and bias in place and replaces the batch norm by
nn.Identity; `restore_folded_structure_` gives a freshly built model the same shape (Identity in
place of each folded batch norm, a bias on each conv) so a saved folded model can be reloaded.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ModelError


def folded_conv_parameters(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm2d
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of the conv that computes BN(conv(x)) in eval mode. weight (out, in, kh, kw)."""
    if bn.running_mean is None or bn.running_var is None:
        raise ModelError("cannot fold a batch norm without running statistics (track_running_stats=False)")
    var, mean = bn.running_var.double(), bn.running_mean.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
    scale = gamma / torch.sqrt(var + bn.eps)  # (out,)
    b = bias.double() if bias is not None else torch.zeros_like(var)
    new_weight = weight.double() * scale.view(-1, *([1] * (weight.dim() - 1)))
    return new_weight.to(weight.dtype), (scale * (b - mean) + beta).to(weight.dtype)


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, module)


@torch.no_grad()
def fold_batchnorm_(model: nn.Module, pairs: list[tuple[str, str]]) -> None:
    """Fold each (conv, batch norm) of `pairs` in place: the conv absorbs the batch norm, which
    becomes nn.Identity. Float64 arithmetic, cast back to the conv's dtype."""
    for conv_name, bn_name in pairs:
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d):
            raise ModelError(f"{conv_name} -> {bn_name} is not a Conv2d followed by a BatchNorm2d")
        weight, bias = folded_conv_parameters(conv.weight, conv.bias, bn)
        conv.weight.copy_(weight)
        if conv.bias is None:
            conv.bias = nn.Parameter(bias)
        else:
            conv.bias.copy_(bias)
        _set_module(model, bn_name, nn.Identity())


def restore_folded_structure_(model: nn.Module, pairs: list[tuple[str, str]]) -> None:
    """Give a freshly built model the structure of a folded one (values are loaded afterwards)."""
    for conv_name, bn_name in pairs:
        try:
            conv = model.get_submodule(conv_name)
            model.get_submodule(bn_name)
        except AttributeError:
            raise ModelError(f"the saved model folded {bn_name} into {conv_name}, which this model lacks") from None
        if not isinstance(conv, nn.Conv2d):
            raise ModelError(f"{conv_name} is not a Conv2d")
        if conv.bias is None:
            conv.bias = nn.Parameter(torch.zeros(conv.out_channels, dtype=conv.weight.dtype,
                                                 device=conv.weight.device))
        _set_module(model, bn_name, nn.Identity())
