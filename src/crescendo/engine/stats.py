"""Calibration statistics of linear inputs, collected with hooks the collector owns and removes."""

from __future__ import annotations

import torch
from torch import nn

from ..models.adapters import in_features
from .wrappers import input_transforms


def accumulate_hessian(x: torch.Tensor, H: torch.Tensor) -> None:
    """H += X^T X for inputs x (..., in), in float32. H: (in, in)."""
    x = x.reshape(-1, x.shape[-1]).float()
    H.addmm_(x.t(), x)


def accumulate_sq_norm(x: torch.Tensor, norms: torch.Tensor) -> None:
    """norms += sum over tokens of x^2 per input feature (Wanda's ||X_j||_2^2). norms: (in,)."""
    x = x.reshape(-1, x.shape[-1]).float()
    norms.add_((x * x).sum(dim=0))


class InputStatistics:
    """Context manager: hook `linears`, accumulate a statistic of their inputs, remove hooks on exit.

    kind "hessian" gives the mean X^T X over tokens (in, in); "input_sq_norm" the per-feature sum of
    squares (in,). The statistic is of what the weight actually multiplies: a layer's input transforms
    (online Hadamard, activation quantizer) are applied first. Linears without transforms fed the very
    same input tensor (q/k/v, gate/up) share one accumulation.
    """

    def __init__(self, linears: dict[str, nn.Module], kind: str) -> None:
        self.linears = linears
        self.kind = kind
        self.values: dict[str, torch.Tensor] = {}
        self.tokens: dict[str, int] = {}
        self._alias: dict[str, str] = {}
        self._last: tuple[torch.Tensor, str] | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> InputStatistics:
        for name, module in self.linears.items():
            self._handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._last = None

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            x = args[0].detach()
            transforms = input_transforms(module)
            if transforms:
                for t in transforms:
                    x = t(x)
            elif self._last is not None and self._last[0] is x:
                self._alias.setdefault(name, self._last[1])
                if self._alias[name] != name:
                    return
            if not transforms:
                self._last = (x, self._alias.get(name, name))
            if name not in self.values:
                n_in = in_features(module)
                shape = (n_in, n_in) if self.kind == "hessian" else (n_in,)
                self.values[name] = torch.zeros(shape, dtype=torch.float32, device=x.device)
                self.tokens[name] = 0
            if self.kind == "hessian":
                accumulate_hessian(x, self.values[name])
            else:
                accumulate_sq_norm(x, self.values[name])
            self.tokens[name] += x.numel() // x.shape[-1]

        return hook

    def result(self, name: str) -> torch.Tensor:
        leader = self._alias.get(name, name)
        value = self.values[leader]
        return value / max(self.tokens[leader], 1) if self.kind == "hessian" else value
