"""Perplexity of a causal language model over fixed windows of token ids.

The loss of one window is Hugging Face's causal-LM loss with labels = inputs: the mean cross-entropy
of the seqlen - 1 predicted tokens. Perplexity = exp(mean of the window losses), the GPTQ/SparseGPT
evaluation (`opt_eval`: `nlls` of equal windows, `exp(sum / (n * seqlen))`). The loss is computed here
from the logits, in float32, so any module returning logits works, and batching cannot change it.

A block-wise model (`crescendo.blockwise`) is evaluated block by block instead: every window's
inputs of block 0 are captured, all windows go through block i before block i + 1 is loaded, and the
head turns the last block's outputs into logits. The batches and the operations are those of the
whole-model forward, so the losses are the same numbers.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..blockwise.residency import residency_of, resident_block, resident_head, resident_inputs
from ..data.tokenized import ProtocolData
from ..errors import ConfigError, DataError

log = logging.getLogger(__name__)

Windows = ProtocolData | torch.Tensor | Sequence[torch.Tensor]


@dataclass(frozen=True)
class PerplexityResult:
    """Perplexity and what it cost to measure."""

    perplexity: float  # exp(mean_loss)
    mean_loss: float  # mean of the per-window losses (nats per predicted token)
    n_windows: int
    tokens: int  # tokens fed to the model (n_windows * seqlen for equal windows)
    seconds: float  # wall time of the forward passes
    tokens_per_second: float
    dtype: str  # dtype of the model's parameters, e.g. "float32"
    window_losses: tuple[float, ...] = ()  # one loss per window, in order


def causal_lm_window_losses(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Per-window causal-LM loss: logits (B, L, V), input_ids (B, L) -> (B,) float32.

    Position t predicts token t + 1; each window's loss is the mean over its L - 1 predictions,
    as `model(input_ids, labels=input_ids).loss` for a single window.
    """
    batch, length, vocab = logits.shape
    shifted = logits[:, :-1, :].float().reshape(-1, vocab)  # (B * (L-1), V)
    targets = input_ids[:, 1:].to(logits.device).reshape(-1)  # (B * (L-1),)
    nll = F.cross_entropy(shifted, targets, reduction="none")
    return nll.view(batch, length - 1).mean(dim=1)


def _as_window_list(windows: Windows) -> list[torch.Tensor]:
    if isinstance(windows, ProtocolData):
        windows = windows.eval_windows
    if isinstance(windows, torch.Tensor):
        if windows.dim() == 1:
            windows = windows.unsqueeze(0)
        if windows.dim() != 2:
            raise DataError(f"eval windows must be a (n, seqlen) tensor, got shape {tuple(windows.shape)}")
        return list(windows)
    out = []
    for window in windows:
        if window.dim() == 2 and window.shape[0] == 1:
            window = window[0]
        if window.dim() != 1:
            raise DataError(f"each eval window must have shape (seqlen,) or (1, seqlen), "
                            f"got {tuple(window.shape)}")
        out.append(window)
    return out


def _batches(windows: list[torch.Tensor], batch_size: int) -> Iterator[list[torch.Tensor]]:
    """Consecutive groups of up to batch_size windows of equal length (a length change splits)."""
    group: list[torch.Tensor] = []
    for window in windows:
        if group and (len(group) == batch_size or window.numel() != group[0].numel()):
            yield group
            group = []
        group.append(window)
    if group:
        yield group


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def perplexity(
    model: nn.Module,
    windows: Windows,
    *,
    batch_size: int = 1,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    progress: bool = True,
) -> PerplexityResult:
    """Perplexity of `model` on `windows` (a ProtocolData's eval windows, a (n, seqlen) tensor or a
    list of (seqlen,) / (1, seqlen) tensors).

    The model runs as it is (its dtype, its device unless `device` says where inputs go); `dtype`,
    if given, is the dtype the caller expects the model to be in: a mismatch raises ConfigError
    instead of silently reporting a number under another dtype. Windows are batched `batch_size`
    at a time; each window's loss is its own mean, so batching does not change the result.

    Example:
            data = prepare(get_protocol("sotu-v1-quick"), tokenizer)
            perplexity(model, data).perplexity  # the dense embedded model, float32  # -> 21.579...
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    window_list = _as_window_list(windows)
    if not window_list:
        raise DataError("no eval windows to measure perplexity on")
    if min(w.numel() for w in window_list) < 2:
        raise DataError("eval windows need at least 2 tokens (one to predict)")
    first = next(model.parameters(), None)
    model_dtype = first.dtype if first is not None else torch.float32
    if dtype is not None:
        expected = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
        if not isinstance(expected, torch.dtype):
            raise ConfigError(f"unknown dtype {dtype!r}; use e.g. 'float32' or 'bfloat16'")
        if expected != model_dtype:
            raise ConfigError(f"the model runs in {_dtype_name(model_dtype)}, not "
                              f"{_dtype_name(expected)}: cast it first (model.to({_dtype_name(expected)}))")
    if isinstance(windows, ProtocolData) and _dtype_name(model_dtype) != windows.protocol.dtype:
        log.warning("protocol %s is specified in %s but the model runs in %s: the result is not "
                    "comparable with the protocol's reference figures", windows.protocol.name,
                    windows.protocol.dtype, _dtype_name(model_dtype))
    residency = residency_of(model)
    run_device = torch.device(device) if device is not None else (
        residency.device if residency is not None else first.device if first is not None else torch.device("cpu"))

    was_training = model.training
    model.eval()
    show = progress and sys.stderr.isatty()
    start = time.perf_counter()
    try:
        if residency is not None:
            losses = _blockwise_losses(model, window_list, batch_size, run_device, show)
        else:
            losses = _losses(model, window_list, batch_size, run_device, show)
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - start

    mean_loss = math.fsum(losses) / len(losses)
    tokens = sum(w.numel() for w in window_list)
    result = PerplexityResult(  # a collapsed model's mean loss can exceed exp's range: its perplexity is inf
        perplexity=math.exp(mean_loss) if mean_loss < 709.0 else math.inf, mean_loss=mean_loss,
        n_windows=len(losses), tokens=tokens,
        seconds=seconds, tokens_per_second=tokens / seconds if seconds > 0 else float("inf"),
        dtype=_dtype_name(model_dtype), window_losses=tuple(losses),
    )
    log.info("perplexity %.4f over %d windows (%d tokens, %.1f s, %.0f tokens/s, %s)", result.perplexity,
             result.n_windows, tokens, seconds, result.tokens_per_second, result.dtype)
    return result


def _losses(model: nn.Module, windows: list[torch.Tensor], batch_size: int, device: torch.device,
            show: bool) -> list[float]:
    losses: list[float] = []
    with torch.inference_mode(), tqdm(total=len(windows), unit="window", desc="perplexity", disable=not show,
                                       leave=False) as bar:
        for group in _batches(windows, batch_size):
            input_ids = torch.stack(group).to(device)  # (B, L)
            output = model(input_ids=input_ids, use_cache=False)
            logits = output.logits if hasattr(output, "logits") else output[0]  # (B, L, V)
            losses.extend(causal_lm_window_losses(logits, input_ids).tolist())
            bar.update(len(group))
    return losses


def _blockwise_losses(model: nn.Module, windows: list[torch.Tensor], batch_size: int, device: torch.device,
                      show: bool) -> list[float]:
    """The window losses of a block-wise model: the batches `_losses` would run, through one block
    at a time (see the module docstring)."""
    from ..engine.capture import capture_first_block_inputs
    from ..models.adapters import get_adapter

    adapter = get_adapter(model)
    blocks = adapter.blocks(model)
    batch_size = min(batch_size, len(windows))
    residency_of(model).plan(model, adapter, len(windows), max(w.numel() for w in windows), calibrated=False,
                             requested=batch_size, what="the evaluation windows")
    rows = [w.reshape(1, -1).to(device) for w in windows]  # capture stacks them as _batches does
    losses: list[float] = []
    with torch.inference_mode(), tqdm(total=len(blocks) + 2, unit="step", desc="perplexity (block-wise)",
                                       disable=not show, leave=False) as bar:
        with resident_inputs(model):
            inputs = capture_first_block_inputs(model, blocks[0], rows, batch_size, adapter)
        bar.update(1)
        for index, block in enumerate(blocks):
            with resident_block(model, index):
                inputs.advance_(block)
            bar.update(1)
        with resident_head(model):
            for i, input_ids in enumerate(inputs.ids):
                logits = adapter.logits(model, inputs.hidden(i))  # (B, L, V)
                losses.extend(causal_lm_window_losses(logits, input_ids).tolist())
        bar.update(1)
    return losses
