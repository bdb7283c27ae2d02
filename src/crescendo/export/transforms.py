"""Input/output transforms of linears (activation and KV quantizers, online Hadamard) as JSON and back.

Transforms hold no saved state: each is rebuilt from a small description, in its original order, so
that the reloaded model computes exactly what the compressed one did. A transform crescendo does not
know how to rebuild is refused at save time instead of being silently dropped.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError, VerifyError
from ..grids import grid_from_dict
from ..methods.quantization import ActivationQuantizer, KVQuantizer
from ..models.adapters import in_features
from ..transforms import add_input_transform_, add_output_transform_, input_transforms, output_transforms


def describe_transform(t: nn.Module, where: str) -> dict:
    """A JSON description of one transform; ConfigError for one that cannot be rebuilt exactly."""
    if isinstance(t, ActivationQuantizer):
        return {"type": "activation", "grid": t.grid.to_dict(), **({"axis": t.axis} if t.axis != -1 else {})}
    if isinstance(t, KVQuantizer):
        return {"type": "kv", "bits": t.grid.bits, "head_dim": t.grid.group_size}
    from ..models.rotation import OnlineHadamard

    if isinstance(t, OnlineHadamard):
        if not torch.equal(t.unscaled_H.cpu(), _online_hadamard(t.n).unscaled_H):
            raise ConfigError(f"{where}: its online Hadamard is not the standard one of order {t.n}; cannot save it")
        return {"type": "online_hadamard", "n": t.n}
    raise ConfigError(f"{where}: cannot save transform {type(t).__name__} in the packed format")


def describe_transforms(model: nn.Module) -> dict[str, dict[str, list[dict]]]:
    """{module name: {"input": [...], "output": [...]}} for every module that has transforms."""
    out: dict[str, dict[str, list[dict]]] = {}
    for name, module in model.named_modules():
        ins, outs = input_transforms(module), output_transforms(module)
        if ins or outs:
            out[name] = {"input": [describe_transform(t, name) for t in ins],
                         "output": [describe_transform(t, name) for t in outs]}
    return out


def _online_hadamard(n: int) -> nn.Module:
    from ..kernels.hadamard import hadamard_matrix
    from ..models.rotation import OnlineHadamard

    return OnlineHadamard(hadamard_matrix(n))


def build_transform(spec: dict, width: int | None = None) -> nn.Module:
    """Inverse of `describe_transform`. `width`: the size of the last dimension the transform sees (an
    online Hadamard larger than it is refused before its n x n matrix is built)."""
    try:
        kind = spec["type"]
        if kind == "online_hadamard" and width is not None and not 1 <= int(spec["n"]) <= width:
            raise VerifyError(f"online Hadamard of order {str(spec['n'])[:20]} on inputs of width {width}")
        if kind == "activation":
            return ActivationQuantizer(grid_from_dict(spec["grid"]), int(spec.get("axis", -1)))
        if kind == "kv":
            return KVQuantizer(int(spec["bits"]), int(spec["head_dim"]))
        if kind == "online_hadamard":
            return _online_hadamard(int(spec["n"]))
    except (KeyError, TypeError, ValueError) as e:
        raise VerifyError(f"malformed transform entry {spec!r}: {e}") from None
    raise VerifyError(f"unknown transform type in {spec!r}")


def attach_transforms_(model: nn.Module, described: dict[str, dict[str, list[dict]]]) -> None:
    """Re-attach described transforms to the modules of a freshly built model, in order."""
    modules = dict(model.named_modules())
    for name, spec in described.items():
        if name not in modules:
            raise VerifyError(f"the manifest has transforms for {name!r}, which the model does not have")
        width = in_features(modules[name]) if hasattr(modules[name], "weight") else None
        for t in spec.get("input", []):
            add_input_transform_(modules[name], build_transform(t, width))
        for t in spec.get("output", []):
            add_output_transform_(modules[name], build_transform(t))
