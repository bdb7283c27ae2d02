"""Memory budgets of block-wise runs: parse `--max-memory`, and what one block's work needs.

A block-wise run holds, at any moment, the process itself (interpreter, torch, tokenizer, the
model skeleton), the hidden states of every calibration or evaluation window between two blocks,
and one group of weights with the work on it: a decoder block with one batch of windows running
through it and, for a calibrated stage, its layers' statistics (one X^T X per linear) and the
kernel's working copies; or the tensors outside the blocks (embeddings, head) with one batch's
logits. `MemoryNeed` adds these up from the model's shapes, before any weight is read, so a budget
that cannot hold even one batch of one window is refused at once, with the amount it would take.
The estimate is an upper bound by design (every linear counted with its own statistic, kernel
copies at their largest); the tests check it against the peak a run reaches.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import re
import resource
from dataclasses import dataclass

from torch import nn

from ..errors import ConfigError

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12,
          "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-zA-Z]*)\s*$")
FLOAT32 = 4
RUNTIME = 64 * 10**6
M_MMAP_THRESHOLD = -3  # mallopt parameter (malloc.h)


def parse_memory(text: str) -> int:
    """Bytes of a size such as `1.5GB`, `800MiB`, `2G` or `1500000000` (GB = 10^9, GiB = 2^30)."""
    match = _SIZE.match(str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ConfigError(f"--max-memory {text!r} is not a size (use e.g. 1.5GB, 800MiB or 2G)")
    value = float(match.group(1)) * _UNITS[unit]
    if value < 1:
        raise ConfigError(f"--max-memory {text!r} must be positive")
    return int(value)


def format_bytes(n: float) -> str:
    """`1.43 GB`, `176 MB`, `12 kB` (decimal units, like the sizes `parse_memory` reads)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}" if unit == "GB" else f"{n / scale:.0f} {unit}"
    return f"{int(n)} B"


def resident_bytes() -> int:
    """This process's resident memory now (Linux /proc; elsewhere its peak so far)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        return peak_resident_bytes()


def peak_resident_bytes() -> int:
    """The largest resident memory this process has had: Linux's VmHWM, else ru_maxrss. (On Linux
    ru_maxrss survives execve: a process started from a larger parent reports the parent's size.)"""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _libc(function: str):
    """glibc's `function`, or None where there is no C library to ask (or it lacks the function)."""
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), function, None) if name else None
    except OSError:
        return None


def return_large_blocks() -> None:
    """Make glibc serve every allocation of 1 MB or more with its own mapping, returned to the system
    when freed. By default the threshold grows to the largest block freed so far, after which blocks
    of hidden states (4 MB each for a 2048-wide model) come from the heap, whose holes stay resident:
    about 150 MB more at a block-wise run's peak. A no-op without glibc."""
    mallopt = _libc("mallopt")
    if mallopt is not None:
        mallopt(M_MMAP_THRESHOLD, 1 << 20)


def release_free_memory() -> None:
    """Hand freed heap memory back to the system (glibc keeps freed blocks below its mmap threshold
    in its arenas, where they still count as resident); a no-op without glibc."""
    trim = _libc("malloc_trim")
    if trim is not None:
        trim(0)


@dataclass(frozen=True)
class MemoryNeed:
    """The parts of a block-wise run's peak memory, in bytes (see the module docstring)."""

    process: int  # already resident when the run is planned
    outside: int  # the larger phase outside the blocks (embedding or head, with the small rest), float32
    block: int  # the largest decoder block, float32
    window: int  # one window's hidden states between blocks (and what a block call passes beside them)
    window_work: int  # one window's activations inside a block (attention scores, MLP)
    logits: int  # one window's logits and loss (evaluation)
    statistics: int  # one block's layer statistics and kernel working copies (calibrated stages)
    # what the math libraries' workspaces and the allocator's free lists add to the process once the
    # kernels have run (measured on CPUs: 30 to 40 MB beyond the tensors)
    runtime: int = RUNTIME

    def total(self, windows: int, batch: int, calibrated: bool, prefetch: bool = False) -> int:
        """The peak of a pass with `windows` windows run `batch` at a time."""
        carried = windows * self.window
        in_block = self.block + carried + batch * self.window_work + (self.statistics if calibrated else 0)
        if prefetch:
            in_block += self.block
        outside = self.outside + carried + batch * max(self.window_work, self.logits)
        return self.process + self.runtime + max(in_block, outside)

    def parts(self, windows: int, batch: int, calibrated: bool) -> str:
        """The largest phase's parts, for a refusal message."""
        carried = windows * self.window
        block = self.block + carried + batch * self.window_work + (self.statistics if calibrated else 0)
        outside = self.outside + carried + batch * max(self.window_work, self.logits)
        if block >= outside:
            items = [("the largest block", self.block), (f"hidden states of {_windows(windows)}", carried),
                     (f"{_windows(batch)} inside the block", batch * self.window_work)]
            if calibrated:
                items.append(("layer statistics and kernel copies", self.statistics))
        else:
            items = [("embeddings and head", self.outside), (f"hidden states of {_windows(windows)}", carried),
                     (f"logits of {_windows(batch)}", batch * max(self.window_work, self.logits))]
        items += [("math library workspaces", self.runtime), ("what the process holds already", self.process)]
        return " + ".join(f"{what} {format_bytes(n)}" for what, n in items)


def _windows(n: int) -> str:
    return "one window" if n == 1 else f"{n} windows"


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def memory_need(model: nn.Module, adapter, seqlen: int, process: int) -> MemoryNeed:
    """The parts of a block-wise run's peak for `model` (a skeleton: shapes only) and windows of
    `seqlen` tokens."""
    from ..models.adapters import in_features, weight_shape

    blocks = adapter.blocks(model)
    block_params = [_numel(b) for b in blocks]
    largest = max(range(len(blocks)), key=block_params.__getitem__)
    # outside the blocks: the small rest plus the larger of the embedding and an untied head (never
    # loaded together, `residency`)
    ends = [m for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None]
    end_sizes = {id(p): p.numel() for m in ends for p in m.parameters()}
    rest = _numel(model) - sum(block_params) - sum(end_sizes.values())
    embed = model.get_input_embeddings()
    embed_ids = {id(p) for p in embed.parameters()} if embed is not None else set()
    outside = rest + max(sum(n for i, n in end_sizes.items() if i in embed_ids),
                         sum(n for i, n in end_sizes.items() if i not in embed_ids))
    config = model.config
    hidden = int(getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0))
    inter = int(getattr(config, "intermediate_size", 0) or getattr(config, "ffn_dim", 0) or 4 * hidden)
    heads = int(getattr(config, "num_attention_heads", 0) or getattr(config, "n_head", 0) or 1)
    vocab = int(getattr(config, "vocab_size", 0))
    head_dim = hidden // heads
    window = seqlen * (hidden + 2 * head_dim) * FLOAT32  # hidden states, rotary cos / sin
    # inside a block: residual streams, q/k/v/o, attention scores and their softmax, MLP activations
    window_work = seqlen * (8 * hidden + 4 * inter + 2 * heads * seqlen) * FLOAT32
    logits = 3 * seqlen * vocab * FLOAT32  # logits, their float32 log-softmax, the gradient-free loss
    linears = adapter.block_linears(model, largest)
    shapes = [weight_shape(m) for m in linears.values()]
    widest = max((in_features(m) for m in linears.values()), default=0)
    biggest = max((o * i for o, i in shapes), default=0)
    # one X^T X per distinct input (linears of one parent with one input width share it: q/k/v, gate/up),
    # one more (in, in) for the factorization's workspace (the factor itself takes its Hessian's place,
    # `kernels.obs.prepare_hessian_`), and the sweep's two float copies of a weight plus its mask
    inputs = {(name.rpartition(".")[0], in_features(m)) for name, m in linears.items()}
    statistics = (sum(i * i for _, i in inputs) + widest * widest + 2 * biggest) * FLOAT32 + biggest
    return MemoryNeed(process=process, outside=outside * FLOAT32, block=block_params[largest] * FLOAT32,
                      window=window, window_work=window_work, logits=logits, statistics=statistics)


@dataclass(frozen=True)
class MemoryPlan:
    """How a pass runs within a budget: windows per block call, and whether the next block is read
    while this one works."""

    batch_size: int
    prefetch: bool
    peak: int  # the estimated peak, bytes


def plan_pass(need: MemoryNeed, budget: int | None, windows: int, calibrated: bool,
              requested: int | None = None, what: str = "the calibration") -> MemoryPlan:
    """The largest batch (at most `windows`, or `requested`) whose pass fits `budget`, and prefetch
    when a second block fits beside it; ConfigError, naming the amount needed, when one window does
    not fit. No budget: `requested` (or 1) windows per call, prefetching."""
    windows = max(windows, 1)
    if budget is None:
        batch = requested or 1
        return MemoryPlan(batch, True, need.total(windows, batch, calibrated, True))
    least = need.total(windows, requested or 1, calibrated)
    if least > budget:
        raise ConfigError(f"--max-memory {format_bytes(budget)} is too small: one decoder block with {what} "
                          f"({_windows(windows)}, {_windows(requested or 1)} per block call) needs "
                          f"{format_bytes(least)} ({need.parts(windows, requested or 1, calibrated)})")
    batch = requested or 1
    if requested is None:
        while batch < windows and need.total(windows, batch + 1, calibrated) <= budget:
            batch += 1
    prefetch = need.total(windows, batch, calibrated, True) <= budget
    return MemoryPlan(batch, prefetch, need.total(windows, batch, calibrated, prefetch))
