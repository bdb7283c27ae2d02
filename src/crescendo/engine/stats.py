"""Calibration statistics of layer inputs, collected with hooks the collector owns and removes.

The statistic is of the (rows, in) matrix the layer's (out, in) weight multiplies
(`adapters.input_rows`): every token of a linear's input, every unfolded patch of a conv's (OBC)."""

from __future__ import annotations

import torch
from torch import nn

from ..kernels.obs import PreparedHessian, prepare_hessian_
from ..models.adapters import in_features, input_rows
from ..transforms import input_transforms


def accumulate_hessian(x: torch.Tensor, H: torch.Tensor) -> None:
    """H += X^T X for inputs x (..., in), in float32. H: (in, in)."""
    x = x.reshape(-1, x.shape[-1]).float()
    H.addmm_(x.t(), x)


def accumulate_sq_norm(x: torch.Tensor, norms: torch.Tensor) -> None:
    """norms += sum over tokens of x^2 per input feature (Wanda's ||X_j||_2^2). norms: (in,)."""
    x = x.reshape(-1, x.shape[-1]).float()
    norms.add_((x * x).sum(dim=0))


class Hessian:
    """The mean X^T X (in, in) of one linear input, shared by every linear fed that input.

    `prepared(dampening, act_order)` factors it once per setting, so q/k/v (and gate/up) cost one
    Cholesky factorization between them, not three. The first preparation factors the matrix in its
    own memory (a stage prepares with one setting; `matrix` is None afterwards): the Hessians of a
    block and their factors never coexist, which is what a block's peak memory is made of.
    """

    def __init__(self, matrix: torch.Tensor) -> None:
        self.matrix: torch.Tensor | None = matrix  # (in, in) mean over calibration tokens, until prepared
        self._prepared: dict[tuple[float, bool], PreparedHessian] = {}
        self._dead = int((torch.diagonal(matrix) == 0).sum())

    def prepared(self, dampening_fraction: float, act_order: bool = False) -> PreparedHessian:
        key = (float(dampening_fraction), bool(act_order))
        if key not in self._prepared:
            if self.matrix is None:
                raise RuntimeError(f"this Hessian was factored for {next(iter(self._prepared))}; a second setting "
                                   f"{key} needs statistics collected again")
            matrix, self.matrix = self.matrix, None
            self._prepared[key] = prepare_hessian_(matrix.float().contiguous(), dampening_fraction, act_order)
        return self._prepared[key]

    @property
    def dead_inputs(self) -> int:
        """Inputs that were exactly zero on every calibration token."""
        return self._dead


def _input_signature(module: nn.Module) -> tuple:
    """What decides the (rows, in) matrix a layer makes of its input tensor: its input transforms
    and, for a convolution, its patch geometry. Two layers fed the very same tensor share a
    statistic only if these agree (a 3x3 conv and a 1x1 shortcut on the same input do not)."""
    geometry: tuple = (in_features(module),)
    if isinstance(module, nn.Conv2d):
        geometry += (module.kernel_size, module.stride, module.padding, module.dilation)
    return geometry + tuple(repr(t) for t in input_transforms(module))


class InputStatistics:
    """Context manager: hook `linears`, accumulate a statistic of their inputs, remove hooks on exit.

    kind "hessian" gives a `Hessian` (mean X^T X over tokens); "input_sq_norm" the per-feature sum of
    squares (in,). The statistic is of what the weight actually multiplies: a layer's input transforms
    (online Hadamard, activation quantizer) are applied first. Linears called one after another on the
    very same input tensor with the same input transforms and geometry (q/k/v, gate/up) share one accumulation:
    the first of them leads, the others alias it (`leader`).
    """

    def __init__(self, linears: dict[str, nn.Module], kind: str) -> None:
        self.linears = linears
        self.kind = kind
        self.values: dict[str, torch.Tensor] = {}
        self.tokens: dict[str, int] = {}
        self.accumulations = 0  # calls that added to a statistic (what sharing saves)
        self._leader: dict[str, str] = {}
        self._last: tuple[torch.Tensor, tuple[str, ...], str] | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._results: dict[str, Hessian | torch.Tensor] = {}

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
            raw = args[0]
            signature = _input_signature(module)
            same = self._last is not None and self._last[0] is raw and self._last[1] == signature
            leader = self._last[2] if same else name
            known = self._leader.setdefault(name, leader)
            if known != leader:  # the call pattern changed between calibration batches
                raise RuntimeError(f"linear {name} shared its input with {known} on one batch but not on another")
            self._last = (raw, signature, leader)  # holds `raw`, so its identity cannot be reused
            if leader != name:
                return
            x = raw.detach()
            for t in input_transforms(module):
                x = t(x)
            x = input_rows(module, x)  # (rows, in)
            if name not in self.values:
                n_in = in_features(module)
                shape = (n_in, n_in) if self.kind == "hessian" else (n_in,)
                self.values[name] = torch.zeros(shape, dtype=torch.float32, device=x.device)
                self.tokens[name] = 0
            if self.kind == "hessian":
                accumulate_hessian(x, self.values[name])
            else:
                accumulate_sq_norm(x, self.values[name])
            self.tokens[name] += x.shape[0]
            self.accumulations += 1

        return hook

    def leader(self, name: str) -> str:
        """The linear whose accumulation `name` shares (itself when it leads)."""
        return self._leader.get(name, name)

    def release(self, name: str) -> None:
        """Forget the statistic `name` shares (its users are done with it)."""
        leader = self.leader(name)
        self._results.pop(leader, None)
        self.values.pop(leader, None)

    def result(self, name: str) -> Hessian | torch.Tensor:
        """The statistic of `name`'s input: one shared object per distinct input."""
        leader = self.leader(name)
        if leader not in self._results:
            if self.kind == "hessian":  # the sum becomes the mean in place: one (in, in) matrix, not two
                self._results[leader] = Hessian(self.values.pop(leader).div_(max(self.tokens[leader], 1)))
            else:
                self._results[leader] = self.values[leader]
        return self._results[leader]
