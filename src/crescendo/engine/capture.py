"""Capture the inputs of the first decoder block, and run one block on captured inputs.

The catcher records every positional and keyword argument the model passes to its first block
(hidden states, rotary embeddings, masks, position ids), so blocks can be run one at a time with
exactly what the full model would have given them, whatever the architecture.

Calibration windows are run in batches: consecutive windows of equal length are stacked into one
(B, L) call, so every block sees B windows per forward. The result equals running the windows one
by one up to float reassociation (a (B*L, d) matrix product sums in another order than B products
of (L, d)). The batch size is chosen from free memory unless given (`calibration_batch_size`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError

MEMORY_FRACTION = 0.25  # of the free memory, at most, for one batch's block activations


class _Stop(Exception):
    """Raised by the catcher to stop the forward pass at the first block."""


@dataclass
class BlockInputs:
    """Per calibration batch: (args, kwargs) of a block call; args[0] or kwargs['hidden_states'] is x.

    `ids[i]` holds the model input of batch i (token ids (B_i, L), or images), for losses computed
    from block outputs."""

    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = field(default_factory=list)
    ids: list[torch.Tensor] = field(default_factory=list)

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
        return BlockInputs(calls, self.ids)

    def __len__(self) -> int:
        return len(self.calls)

    @torch.no_grad()
    def run(self, block: nn.Module) -> None:
        """Run `block` on every call for what its hooks see; the outputs are dropped at once."""
        for args, kwargs in self.calls:
            block(*args, **kwargs)

    @torch.no_grad()
    def advance_(self, block: nn.Module) -> None:
        """Replace every call's hidden states by `block`'s output on them, one batch at a time: the
        same values as `with_hidden(run_block(block, self))`, while holding one batch beside the
        hidden states instead of a second copy of all of them."""
        for i, (args, kwargs) in enumerate(self.calls):
            out = block(*args, **kwargs)
            out = out[0] if isinstance(out, (tuple, list)) else out
            if args:
                self.calls[i] = ((out,) + tuple(args[1:]), kwargs)
            else:
                self.calls[i] = (args, {**kwargs, "hidden_states": out})
            del args, kwargs, out


def _free_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    pages = os.sysconf("SC_AVPHYS_PAGES") if hasattr(os, "sysconf") else 0
    return int(pages * os.sysconf("SC_PAGE_SIZE")) if pages else 4 << 30


def _bytes_per_window(model: nn.Module, seqlen: int) -> int:
    """A generous bound on one window's activations inside one decoder block (float32)."""
    config = getattr(model, "config", None)
    hidden = int(getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0) or 1024)
    inter = int(getattr(config, "intermediate_size", 0) or getattr(config, "ffn_dim", 0) or 4 * hidden)
    heads = int(getattr(config, "num_attention_heads", 0) or getattr(config, "n_head", 0) or 1)
    per_token = 8 * hidden + 4 * inter + heads * seqlen  # streams, q/k/v/o, MLP, attention scores
    return 4 * seqlen * per_token * 2


def calibration_batch_size(model: nn.Module, windows: list[torch.Tensor], requested: int | None = None) -> int:
    """The number of calibration windows per block call: `requested` (checked), else as many as fit
    in MEMORY_FRACTION of the free memory, at most all of them."""
    n = len(windows)
    if requested is not None:
        if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
            raise ConfigError(f"calibration batch size must be an integer >= 1, got {requested!r}")
        if requested > n:
            raise ConfigError(f"calibration batch size {requested} is larger than the {n} calibration windows")
        return requested
    if n == 0:
        return 1
    seqlen = int(windows[0].shape[-1])
    device = windows[0].device
    fit = int(MEMORY_FRACTION * _free_memory(device) // max(_bytes_per_window(model, seqlen), 1))
    return max(1, min(n, fit))


def _batches(windows: list[torch.Tensor], batch_size: int) -> list[torch.Tensor]:
    """Consecutive windows stacked into (B, L) batches; a change of length starts a new batch."""
    out: list[torch.Tensor] = []
    group: list[torch.Tensor] = []
    for w in windows:
        if group and (len(group) == batch_size or w.shape[1:] != group[0].shape[1:]):
            out.append(torch.cat(group))
            group = []
        group.append(w)
    if group:
        out.append(torch.cat(group))
    return out


@torch.no_grad()
def capture_first_block_inputs(model: nn.Module, first_block: nn.Module, windows: list[torch.Tensor],
                               batch_size: int | None = 1, adapter=None) -> BlockInputs:
    """Run `model` on the calibration windows, `batch_size` at a time (None: chosen from free
    memory), until its first block, and record the block's inputs. The adapter (default: the
    model's) says how a batch runs: token ids through a causal LM, images through a classifier."""
    if adapter is None:
        from ..models.adapters import get_adapter

        adapter = get_adapter(model)
    captured = BlockInputs()

    def catch(module: nn.Module, args: tuple, kwargs: dict) -> None:
        captured.calls.append((args, dict(kwargs)))
        raise _Stop

    size = calibration_batch_size(model, windows, batch_size) if batch_size != 1 else 1
    handle = first_block.register_forward_pre_hook(catch, with_kwargs=True)
    try:
        for ids in _batches(windows, size):
            captured.ids.append(ids)
            try:
                adapter.run(model, ids)
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
