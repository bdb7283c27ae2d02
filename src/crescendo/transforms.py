"""Input and output transforms on linear layers: activation and KV fake-quantization, online Hadamard.

A linear that needs its input transformed (quantized per token, rotated) keeps its class's parameters
and state-dict keys; only its class is swapped for a subclass that applies an ordered list of
`input_transforms` before the original forward. Transforms hold no persistent state, so
`state_dict()` / `save_pretrained` see exactly the original keys, and `copy.deepcopy` copies them.

A linear may also carry `branches` (LoRA adapters): modules computed on the *transformed* input, whose
outputs are added to the linear's output before its output transforms,
y = out(W t(x) + sum_b b(t(x))), so an adapter sees exactly what the base weight sees.
"""

from __future__ import annotations

import torch
from torch import nn

_SUBCLASSES: dict[type, type] = {}


class _TransformedInput:
    """Mixin placed in front of the original linear class (nn.Linear, transformers' Conv1D)."""

    input_transforms: nn.ModuleList
    output_transforms: nn.ModuleList
    branches: nn.ModuleList

    def forward(self, x: torch.Tensor, *args, **kwargs):  # type: ignore[override]
        for transform in self.input_transforms:
            x = transform(x)
        y = super().forward(x, *args, **kwargs)  # type: ignore[misc]
        for branch in self.branches:
            y = y + branch(x)
        for transform in self.output_transforms:
            y = transform(y)
        return y


def _subclass_for(cls: type) -> type:
    if issubclass(cls, _TransformedInput):
        return cls
    if cls not in _SUBCLASSES:
        _SUBCLASSES[cls] = type(f"Transformed{cls.__name__}", (_TransformedInput, cls), {})
    return _SUBCLASSES[cls]


def add_input_transform_(module: nn.Module, transform: nn.Module, first: bool = False) -> nn.Module:
    """Apply `transform` to the input of `module` from now on (in place). Returns the module.

    `first=True` puts it before existing transforms (e.g. an online Hadamard must run before an
    activation quantizer that was attached earlier).
    """
    _ensure_(module)
    if first:
        module.input_transforms.insert(0, transform)
    else:
        module.input_transforms.append(transform)
    return module


def _ensure_(module: nn.Module) -> None:
    if not isinstance(module, _TransformedInput):
        module.__class__ = _subclass_for(type(module))
        module.input_transforms = nn.ModuleList()
        module.output_transforms = nn.ModuleList()
        module.branches = nn.ModuleList()


def add_output_transform_(module: nn.Module, transform: nn.Module) -> nn.Module:
    """Apply `transform` to the output of `module` from now on (in place), e.g. KV-cache quantization."""
    _ensure_(module)
    module.output_transforms.append(transform)
    return module


def add_branch_(module: nn.Module, branch: nn.Module) -> nn.Module:
    """Add `branch(t(x))` to the output of `module` from now on (in place), t = its input transforms."""
    _ensure_(module)
    module.branches.append(branch)
    return module


def branches(module: nn.Module) -> list[nn.Module]:
    """The branches added to the output of `module` (empty for a plain layer)."""
    return list(module.branches) if isinstance(module, _TransformedInput) else []


def remove_branches_(module: nn.Module) -> None:
    """Drop every branch; restores the original class when no transform remains."""
    if isinstance(module, _TransformedInput):
        module.branches = nn.ModuleList()
        _restore_class_if_bare(module)


def output_transforms(module: nn.Module) -> list[nn.Module]:
    return list(module.output_transforms) if isinstance(module, _TransformedInput) else []


def input_transforms(module: nn.Module) -> list[nn.Module]:
    """The transforms applied to the input of `module` (empty for a plain layer)."""
    return list(module.input_transforms) if isinstance(module, _TransformedInput) else []


def remove_transforms_(module: nn.Module, kind: type | None = None) -> None:
    """Drop input and output transforms (all, or those of one type); restores the original class when
    neither transforms nor branches remain (branches are kept: `remove_branches_` drops them)."""
    if not isinstance(module, _TransformedInput):
        return
    module.input_transforms = nn.ModuleList(
        [t for t in module.input_transforms if kind is not None and not isinstance(t, kind)]
    )
    module.output_transforms = nn.ModuleList(
        [t for t in module.output_transforms if kind is not None and not isinstance(t, kind)]
    )
    _restore_class_if_bare(module)


def _restore_class_if_bare(module: nn.Module) -> None:
    if len(module.input_transforms) or len(module.output_transforms) or len(module.branches):
        return
    del module.input_transforms
    del module.output_transforms
    del module.branches
    module.__class__ = next(c for c in type(module).__mro__[1:] if not issubclass(c, _TransformedInput))
