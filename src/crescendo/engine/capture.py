"""Capture the inputs of the first decoder block, and run one block on captured inputs.

The catcher records every positional and keyword argument the model passes to its first block
(hidden states, rotary embeddings, masks, position ids), so blocks can be run one at a time with
exactly what the full model would have given them, whatever the architecture.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


class _Stop(Exception):
    """Raised by the catcher to stop the forward pass at the first block."""


@dataclass
class BlockInputs:
    """Per calibration batch: (args, kwargs) of a block call; args[0] or kwargs['hidden_states'] is x."""

    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = field(default_factory=list)

    def hidden(self, i: int) -> torch.Tensor:
        args, kwargs = self.calls[i]
        return args[0] if args else kwargs["hidden_states"]

    def with_hidden(self, hidden: list[torch.Tensor]) -> BlockInputs:
        calls = []
        for (args, kwargs), h in zip(self.calls, hidden):
            if args:
                calls.append(((h,) + tuple(args[1:]), kwargs))
            else:
                calls.append((args, {**kwargs, "hidden_states": h}))
        return BlockInputs(calls)

    def __len__(self) -> int:
        return len(self.calls)


@torch.no_grad()
def capture_first_block_inputs(model: nn.Module, first_block: nn.Module, batches: list[torch.Tensor]) -> BlockInputs:
    """Run `model` on each batch of input ids until its first decoder block and record the block's inputs."""
    captured = BlockInputs()

    def catch(module: nn.Module, args: tuple, kwargs: dict) -> None:
        captured.calls.append((args, dict(kwargs)))
        raise _Stop

    handle = first_block.register_forward_pre_hook(catch, with_kwargs=True)
    try:
        for ids in batches:
            try:
                model(ids, use_cache=False)
            except _Stop:
                pass
    finally:
        handle.remove()
    return captured


@torch.no_grad()
def run_block(block: nn.Module, inputs: BlockInputs) -> list[torch.Tensor]:
    """Outputs (hidden states) of `block` for every captured call."""
    outs = []
    for args, kwargs in inputs.calls:
        out = block(*args, **kwargs)
        outs.append(out[0] if isinstance(out, (tuple, list)) else out)
    return outs
