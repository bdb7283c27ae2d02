"""The compression state of a model: what every stage did to it, as one typed object.

`state_of(model)` is the only way to reach it. It holds, per compressed linear, a `LinearRecord`
(pruning mask, the grid its weights lie on and that grid's recorded parameters, the activation and
KV quantizers attached to it, the stages that touched it), the decoder blocks removed by block
pruning, the rotation applied to the model, and the batch norms folded into their convolutions. Later stages read it to keep earlier invariants;
summaries, exports and `verify` read it to describe what the model is.

The state travels with the model object (a deep copy of the model copies it) and is written to
disk by the exporters (`to_dict`); it is never stored on the model's config.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .errors import ModelError
from .grids import Grid, Params, grid_from_dict
from .types import NM

_ATTRIBUTE = "_crescendo_state"


@dataclass
class LinearRecord:
    """What earlier stages did to one linear layer (weights viewed as (out, in))."""

    name: str
    mask: torch.Tensor | None = None  # (out, in) bool, True = pruned (held at exactly zero)
    nm: NM | None = None  # the N:M pattern the mask follows, when a pruner imposed one
    grid: Grid | None = None  # the grid the weights lie on
    grid_params: Params | None = None  # {name: (out, n_groups)}
    act_grid: Grid | None = None  # per-token activation quantizer on the input
    kv_bits: int | None = None  # KV fake-quantization of this projection's output (k_proj / v_proj)
    history: list[str] = field(default_factory=list)  # canonical text of every stage that changed it

    @property
    def sparsity(self) -> float:
        return float(self.mask.float().mean()) if self.mask is not None else 0.0

    def weight_bits(self, in_features: int) -> float:
        """Average storage bits per weight element, scales included (16 when not quantized)."""
        return self.grid.avg_bits(in_features) if self.grid is not None else 16.0

    def describe(self) -> dict[str, Any]:
        """The JSON part of the record (masks and grid parameters are tensors, stored by exporters)."""
        return {"nm": str(self.nm) if self.nm else None, "act_grid": self.act_grid.to_dict() if self.act_grid else None,
                "kv_bits": self.kv_bits, "history": list(self.history)}


@dataclass(frozen=True)
class RotationInfo:
    """What a QuaRot rotation did (`crescendo.models.rotation.rotate_llama_`)."""

    hidden_size: int  # order of the residual-stream rotation Q
    intermediate_size: int  # order of the online Hadamard before every down_proj
    seed: int  # seed of Q's random signs
    untied: bool  # lm_head got its own weight (it was tied to the embedding and had to differ)
    value_hadamard: bool  # per-head Hadamard folded into v_proj / o_proj
    method: str = "quarot"


@dataclass
class RemovedBlocks:
    """Decoder blocks removed by block pruning (SLEB), in the original model's numbering."""

    original_layers: int
    removed: list[int] = field(default_factory=list)
    params: int = 0  # parameters the removed blocks held
    linears: list[tuple[int, int]] = field(default_factory=list)  # (in, out) of every removed linear

    def survivors(self) -> list[int]:
        return [i for i in range(self.original_layers) if i not in self.removed]


@dataclass
class LoRAInfo:
    """Unmerged LoRA adapters (`crescendo.models.lora.LoRABranch`) on the linears `targets`."""

    rank: int
    alpha: float
    targets: list[str]  # module names of the adapted linears
    stage: str  # canonical text of the stage that trained them
    peft_config: dict[str, Any] = field(default_factory=dict)  # peft's adapter_config.json object


@dataclass
class SharedGroup:
    """One basis shared by a module type across consecutive blocks (Basis Sharing)."""

    kind: str  # the module type, the linear's name inside its block (e.g. "self_attn.q_proj")
    members: list[str]  # the shared linears' names (each now a FactoredLinear), the basis owner first
    rank: int
    in_features: int
    out_features: int


@dataclass
class SharingInfo:
    """What a `share` stage did (`crescendo.models.sharing`)."""

    group_size: int
    stage: str  # canonical text of the stage
    groups: list[SharedGroup] = field(default_factory=list)
    absorbed: list[str] = field(default_factory=list)  # linears whose masks / grids the factors absorbed

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SharingInfo:
        """Every field type- and range-checked (ValueError); `CompressionState.from_dict` names the file."""
        groups = []
        for g in _list(data["groups"], "sharing groups"):
            g = _fields(g, "sharing group", ("kind", "members", "rank", "in_features", "out_features"))
            members = [_str(m, "sharing members") for m in _list(g["members"], "sharing members")]
            if not members:
                raise ValueError("a sharing group needs at least one member")
            groups.append(SharedGroup(_str(g["kind"], "sharing kind"), members, _int(g["rank"], "sharing rank", 1),
                                      _int(g["in_features"], "sharing in_features", 1),
                                      _int(g["out_features"], "sharing out_features", 1)))
        return cls(_int(data["group_size"], "sharing group_size", 1, 1 << 10), _str(data["stage"], "sharing stage"),
                   groups, [_str(a, "sharing absorbed") for a in _list(data.get("absorbed", []), "sharing absorbed")])


@dataclass
class CompressionState:
    """Everything crescendo did to one model. Reach it with `state_of(model)`."""

    records: dict[str, LinearRecord] = field(default_factory=dict)
    removed: RemovedBlocks | None = None
    rotation: RotationInfo | None = None
    lora: LoRAInfo | None = None
    sharing: SharingInfo | None = None
    # batch norms folded into the conv before them (`foldbn`), as (conv, batch norm) names; the
    # batch-norm modules are gone (nn.Identity) and each conv carries the folded bias
    folded_batchnorm: list[tuple[str, str]] = field(default_factory=list)

    def record(self, name: str) -> LinearRecord:
        """The record of linear `name`, created empty on first use."""
        if name not in self.records:
            self.records[name] = LinearRecord(name=name)
        return self.records[name]

    @property
    def compressed(self) -> bool:
        """Whether any stage changed a weight or removed a block (rotation alone does not count)."""
        return bool(self.records) or self.removed is not None or self.sharing is not None

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able part of the state: removed blocks, rotation, unmerged LoRA adapters, sharing
        (records are exported per layer; adapter tensors beside the model, `crescendo.export.adapters`)."""
        out = {"removed_blocks": asdict(self.removed) if self.removed else None,
               "rotation": asdict(self.rotation) if self.rotation else None}
        if self.lora is not None:
            out["lora"] = asdict(self.lora)
        if self.sharing is not None:
            out["sharing"] = asdict(self.sharing)
        if self.folded_batchnorm:
            out["folded_batchnorm"] = [list(p) for p in self.folded_batchnorm]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> CompressionState:
        """Inverse of `to_dict` (records start empty). Every field is type- and range-checked, since it
        comes from a file (`crescendo.json`, a manifest): malformed input raises ModelError. Whether the
        state fits the model it is attached to is `models.file_checks.check_state_fits`' question."""
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise ModelError(f"malformed crescendo state {str(data)[:80]!r}: not a JSON object")
        try:
            removed = data.get("removed_blocks")
            rotation = data.get("rotation")
            lora = data.get("lora")
            sharing = data.get("sharing")
            return cls(
                removed=None if removed is None else _removed_from(removed),
                rotation=None if rotation is None else _rotation_from(rotation),
                lora=None if lora is None else _lora_from(lora),
                sharing=None if sharing is None else SharingInfo.from_dict(_fields(sharing, "sharing", (
                    "group_size", "stage", "groups"), ("absorbed",))),
                folded_batchnorm=[(_str(c, "folded_batchnorm"), _str(b, "folded_batchnorm"))
                                  for c, b in _list(data.get("folded_batchnorm", []), "folded_batchnorm", pairs=True)],
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ModelError(f"malformed crescendo state {str(data)[:120]!r}: {e}") from None


# -- reading a saved state: every field checked (a file may say anything) ---------------------------------------
_MAX_SIZE = 1 << 18  # as models.loading's config bounds (intermediate_size)
_MAX_ITEMS = 1 << 16


def _int(value: Any, what: str, low: int = 0, high: int = _MAX_SIZE) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{what} must be an integer in {low}..{high}, got {repr(value)[:40]}")
    return value


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str) or len(value) > 10_000:
        raise ValueError(f"{what} must hold strings, got {repr(value)[:40]}")
    return value


def _bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{what} must be true or false, got {repr(value)[:40]}")
    return value


def _list(value: Any, what: str, pairs: bool = False) -> list:
    if not isinstance(value, list) or len(value) > _MAX_ITEMS:
        raise ValueError(f"{what} must be a list of at most {_MAX_ITEMS} items")
    if pairs and not all(isinstance(v, list) and len(v) == 2 for v in value):
        raise ValueError(f"{what} must be a list of pairs")
    return value


def _fields(value: Any, what: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a JSON object")
    missing, unknown = set(required) - set(value), set(value) - set(required) - set(optional)
    if missing or unknown:
        raise ValueError(f"{what} lacks {sorted(missing)} or has unknown fields {sorted(unknown)[:3]}")
    return value


def _rotation_from(data: Any) -> RotationInfo:
    d = _fields(data, "rotation", ("hidden_size", "intermediate_size", "seed", "untied", "value_hadamard"),
                ("method",))
    if d.get("method", "quarot") != "quarot":
        raise ValueError(f"rotation method {str(d['method'])[:40]!r} is not quarot")
    return RotationInfo(_int(d["hidden_size"], "rotation hidden_size", 1),
                        _int(d["intermediate_size"], "rotation intermediate_size", 1),
                        _int(d["seed"], "rotation seed", 0, 2**63 - 1), _bool(d["untied"], "rotation untied"),
                        _bool(d["value_hadamard"], "rotation value_hadamard"))


def _removed_from(data: Any) -> RemovedBlocks:
    d = _fields(data, "removed_blocks", ("original_layers", "removed", "params", "linears"))
    layers = _int(d["original_layers"], "removed_blocks original_layers", 1, 1 << 10)
    removed = [_int(i, "removed_blocks removed", 0, layers - 1) for i in _list(d["removed"], "removed_blocks removed")]
    if len(set(removed)) != len(removed) or len(removed) >= layers:
        raise ValueError("removed_blocks removed must name distinct blocks, leaving at least one")
    return RemovedBlocks(layers, removed, _int(d["params"], "removed_blocks params", 0, 2**53),
                         [(_int(a, "removed_blocks linears", 1), _int(b, "removed_blocks linears", 1))
                          for a, b in _list(d["linears"], "removed_blocks linears", pairs=True)])


def _lora_from(data: Any) -> LoRAInfo:
    import math

    d = _fields(data, "lora", ("rank", "alpha", "targets", "stage"), ("peft_config",))
    alpha = d["alpha"]
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise ValueError(f"lora alpha must be a finite number, got {str(alpha)[:40]!r}")
    peft = d.get("peft_config") or {}
    if not isinstance(peft, dict):
        raise ValueError("lora peft_config must be a JSON object")
    return LoRAInfo(_int(d["rank"], "lora rank", 1), float(alpha),
                    [_str(t, "lora targets") for t in _list(d["targets"], "lora targets")], _str(d["stage"], "lora stage"),
                    dict(peft))


def state_of(model: nn.Module) -> CompressionState:
    """The compression state of `model`, created empty on first use (the only accessor)."""
    state = model.__dict__.get(_ATTRIBUTE)
    if state is None:
        state = CompressionState()
        model.__dict__[_ATTRIBUTE] = state
    return state


def set_state_(model: nn.Module, state: CompressionState) -> None:
    """Attach `state` to `model` (loaders rebuilding a saved model)."""
    model.__dict__[_ATTRIBUTE] = state


def record_from_dict(name: str, described: dict[str, Any], mask: torch.Tensor | None, grid: Grid | None,
                     params: Params | None) -> LinearRecord:
    """A record rebuilt from `LinearRecord.describe()` plus the tensors an exporter stored."""
    nm = described.get("nm")
    return LinearRecord(name=name, mask=mask, nm=NM.parse(str(nm)) if nm else None, grid=grid, grid_params=params,
                        act_grid=grid_from_dict(described.get("act_grid")), kv_bits=described.get("kv_bits"),
                        history=[str(h) for h in described.get("history", [])])
