"""Layer-wise output error of a compressed model against the dense one, on calibration inputs.

Two views, both needed by the order analysis (003 Definition 6; Harma et al.'s orthogonality test and
error accumulation through depth):
- per linear: ||f(W) f_a(X) - W X||_F^2 with X the *dense* model's input to that linear, i.e. the error
  the compression of that one layer introduces in isolation (the δ_f(W_i, X_i) of 003, Section 2);
- per decoder block: ||h'_i - h_i||^2 / ||h_i||^2 where h' runs through the compressed model from the
  start, i.e. how error accumulates with depth.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..blockwise.residency import resident_block, resident_inputs
from ..engine.capture import calibration_batch_size, capture_first_block_inputs, run_block
from ..models.adapters import Adapter, get_adapter


@dataclass
class LayerwiseError:
    per_linear: dict[str, float] = field(default_factory=dict)  # squared error, summed over tokens
    per_linear_relative: dict[str, float] = field(default_factory=dict)  # divided by ||W X||^2
    per_block: list[float] = field(default_factory=list)  # relative error of block outputs, by depth

    @property
    def total(self) -> float:
        return float(sum(self.per_linear.values()))

    def to_dict(self) -> dict:
        return {"per_linear": self.per_linear, "per_linear_relative": self.per_linear_relative,
                "per_block": self.per_block, "total": self.total}


@torch.no_grad()
def layerwise_error(
    dense: nn.Module, compressed: nn.Module, calibration: list[torch.Tensor], adapter: Adapter | None = None,
    per_linear: bool = True, batch_size: int | None = 1,
) -> LayerwiseError:
    """Compare `compressed` with `dense` block by block on the calibration batches.

    Both models must share the architecture and block count (per-linear errors also need the same
    basis, so they are skipped when `per_linear` is False, e.g. for rotated models).
    """
    adapter = adapter or get_adapter(dense)
    d_blocks, c_blocks = adapter.blocks(dense), adapter.blocks(compressed)
    if len(d_blocks) != len(c_blocks):
        raise ValueError("layer-wise error needs models with the same number of decoder blocks")
    size = calibration_batch_size(dense, calibration, batch_size)
    with resident_inputs(dense):
        d_inputs = capture_first_block_inputs(dense, d_blocks[0], calibration, size, adapter)
    with resident_inputs(compressed):
        c_inputs = capture_first_block_inputs(compressed, c_blocks[0], calibration, size, adapter)
    result = LayerwiseError()
    for index in range(len(d_blocks)):
        with resident_block(dense, index), resident_block(compressed, index):  # block-wise models: block i of both
            if per_linear:
                # by the dense linear's name: a shared linear is a FactoredLinear under that same name
                c_linears = {n: compressed.get_submodule(n) for n in adapter.block_linears(dense, index)}
                _linear_errors(adapter.block_linears(dense, index), c_linears, d_blocks[index], d_inputs, result)
            d_out = run_block(d_blocks[index], d_inputs)
            c_out = run_block(c_blocks[index], c_inputs)
        num = sum(float((c.float() - d.float()).pow(2).sum()) for c, d in zip(c_out, d_out))
        den = sum(float(d.float().pow(2).sum()) for d in d_out)
        result.per_block.append(num / den if den > 0 else 0.0)
        d_inputs, c_inputs = d_inputs.with_hidden(d_out), c_inputs.with_hidden(c_out)
    return result


def _linear_errors(d_linears: dict, c_linears: dict, d_block: nn.Module, d_inputs, result: LayerwiseError) -> None:
    sq: dict[str, float] = {n: 0.0 for n in d_linears}
    ref: dict[str, float] = {n: 0.0 for n in d_linears}
    handles = []

    def hook_for(name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            y_c = c_linears[name](args[0])  # the compressed layer on the dense layer's input
            sq[name] += float((y_c.float() - output.float()).pow(2).sum())
            ref[name] += float(output.float().pow(2).sum())

        return hook

    try:
        for name, module in d_linears.items():
            handles.append(module.register_forward_hook(hook_for(name)))
        run_block(d_block, d_inputs)
    finally:
        for h in handles:
            h.remove()
    for name in d_linears:
        result.per_linear[name] = sq[name]
        result.per_linear_relative[name] = sq[name] / ref[name] if ref[name] > 0 else 0.0
