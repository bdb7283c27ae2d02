"""Which weights of a block-wise model are in memory, and the contexts that load one group of them.

A block-wise model is an ordinary `nn.Module` whose parameters are empty (`meta`) except while a
context holds them: `resident_block(model, i)` loads decoder block i onto the compute device, from
the checkpoint or from the file its last rewrite left (`files.BlockFiles`), and puts it back on exit;
with `write=True` the block is saved first. The tensors outside the blocks form up to three groups:
the input embedding (`embed`), an untied output head (`head`), and the rest (`outside`: final norm,
position embeddings; small). `resident_inputs(model)` loads what runs before block 0 (embed and the
rest), `resident_head(model)` what runs after the last block (the rest and the head, or the embedding
it is tied to): a large vocabulary's two matrices are never held together. For a model held in
memory these contexts do nothing, so the engine, the evaluation, the summaries and the exporters
run one code path for both.

While a group is not loaded, the tensors of its linears' compression records (pruning masks, grid
parameters) live in its file too, and the records hold a `NotResident` marker that raises when it
is used. `copy.deepcopy` of a block-wise model shares the files (counted references) until a block
is rewritten. With `prefetch`, the next block is read (and on CUDA copied to the device on a side
stream) by a background thread while the current one works.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, ModelError
from ..state import state_of
from .files import BlockFiles
from .memory import MemoryPlan, format_bytes, memory_need, plan_pass, release_free_memory, resident_bytes
from .sources import WeightSource

log = logging.getLogger(__name__)

_ATTRIBUTE = "_crescendo_residency"
OUTSIDE = "outside"
EMBED = "embed"
HEAD = "head"
RECORD = "crescendo.record."  # record tensors inside a group file: RECORD + linear + ".mask" / ".param.NAME"


class NotResident:
    """A record tensor kept in its block's file while the block is not loaded; using it raises."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        raise ModelError(f"{self.name}: its block is not loaded (a block-wise model holds one block at a time; "
                         f"read it inside resident_block)")

    def __deepcopy__(self, memo: dict) -> NotResident:
        return self

    def __repr__(self) -> str:
        return f"NotResident({self.name!r})"


def group_of(name: str, blocks_path: str) -> str:
    """`block-I` for a parameter or linear name inside decoder block I, else `outside` (see
    `Residency.group_of` for the group outside the blocks)."""
    prefix = blocks_path + "."
    if name.startswith(prefix):
        return f"block-{name[len(prefix):].split('.', 1)[0]}"
    return OUTSIDE


class Residency:
    """Where a block-wise model's weights are (see the module docstring)."""

    def __init__(self, source: WeightSource, source_names: dict[str, str], files: BlockFiles, device: torch.device,
                 blocks_path: str, groups: dict[str, list[str]], aliases: dict[str, list[str]],
                 budget: int | None) -> None:
        self.source = source
        self.source_names = source_names  # parameter -> its name in the checkpoint (a tied alias, maybe)
        self.files = files
        self.device = torch.device(device)
        self.blocks_path = blocks_path
        self.groups = groups  # group -> its parameters (one name per tied set)
        self.aliases = aliases  # parameter -> every module attribute holding it
        self._outside = {alias: g for g, names in groups.items() if not g.startswith("block-") for n in names
                         for alias in aliases[n]}  # every name outside the blocks -> its group
        self.budget = budget  # bytes, or None
        self.prefetch = False  # read the next block while this one works (set by the run's memory plan)
        self.current: dict[str, Path] = {}  # group -> its latest file, once rewritten
        self._loaded: dict[str, bool] = {}  # loaded group -> whether it must be saved on leaving
        self._pending: tuple[str, Path | None, Future] | None = None
        self._pool: ThreadPoolExecutor | None = None
        weakref.finalize(self, _release_all, files, self.current)

    def __deepcopy__(self, memo: dict) -> Residency:
        if self._loaded:
            raise ModelError("a block-wise model cannot be copied while one of its blocks is loaded")
        new = Residency(self.source, self.source_names, self.files, self.device, self.blocks_path, self.groups,
                        self.aliases, self.budget)
        new.prefetch = self.prefetch
        for group, path in self.current.items():
            self.files.hold(path)
            new.current[group] = path
        return new

    def group_of(self, name: str) -> str:
        """The group of a parameter or linear (module) name."""
        inside = group_of(name, self.blocks_path)
        if inside != OUTSIDE:
            return inside
        return self._outside.get(name) or self._outside.get(f"{name}.weight") or OUTSIDE

    def input_groups(self) -> list[str]:
        """The groups that run before the first block."""
        return [g for g in (OUTSIDE, EMBED) if self.groups.get(g)]

    def head_groups(self) -> list[str]:
        """The groups that run after the last block: the rest and the head (or the embedding tied to it)."""
        head = HEAD if self.groups.get(HEAD) else EMBED
        return [g for g in (OUTSIDE, head) if self.groups.get(g)]

    def plan(self, model: nn.Module, adapter, windows: int, seqlen: int, calibrated: bool,
             requested: int | None = None, what: str = "the calibration") -> MemoryPlan:
        """The memory plan of a pass over `windows` windows of `seqlen` tokens (`memory.plan_pass`):
        refuses a budget that one window cannot fit in, before anything is read, and turns
        prefetching on when a second block fits. On CUDA the budget is the device's memory."""
        if self.device.type == "cuda":
            process = torch.cuda.memory_allocated(self.device)
        else:
            process = resident_bytes()
        need = memory_need(model, adapter, seqlen, process)
        plan = plan_pass(need, self.budget, windows, calibrated, requested, what)
        self.prefetch = plan.prefetch
        log.info("block-wise pass: %d windows per block call, prefetch %s, estimated peak %.0f MB", plan.batch_size,
                 plan.prefetch, plan.peak / 1e6)
        return plan

    def check_space(self, model: nn.Module) -> None:
        """ConfigError, before a compression writes anything, when the offload folder cannot hold every
        block rewritten: float32 weights plus a pruning mask (one byte per weight) for each block not
        yet on disk, and one more block while a rewrite replaces its earlier file."""
        sizes = {g: 5 * sum(model.get_parameter(n).numel() for n in names) for g, names in self.groups.items()}
        needed = (sum(size for g, size in sizes.items() if g.startswith("block-") and g not in self.current)
                  + max(sizes.values()))
        free = self.files.free_bytes()
        if free < needed:
            raise ConfigError(f"the offload folder {self.files.directory.parent} has {format_bytes(free)} free; "
                              f"compressing this model block by block keeps up to {format_bytes(needed)} of "
                              f"blocks there (give --offload-dir a folder on a larger disk)")

    @contextmanager
    def group(self, model: nn.Module, key: str, write: bool = False) -> Iterator[None]:
        """Hold group `key` on the device for the duration; save it on leaving if `write` (or an
        inner context wrote), unless the body raised."""
        if key in self._loaded:  # nested: the outer context loads, saves and evicts
            self._loaded[key] = self._loaded[key] or write
            yield
            return
        tensors, event = self._take(key)
        self._install(model, key, tensors, event)
        del tensors
        self._loaded[key] = write
        ok = False
        try:
            if self.prefetch:
                self._start_prefetch(self._next(key))
            yield
            ok = True
        finally:
            try:
                if ok and self._loaded[key]:
                    self._save(model, key)
            finally:
                self._evict(model, key)
                del self._loaded[key]
                release_free_memory()

    # -- reading -----------------------------------------------------------------------------
    def _next(self, key: str) -> str | None:
        if not key.startswith("block-"):
            return None
        following = f"block-{int(key.split('-')[1]) + 1}"
        return following if following in self.groups else None

    def _read(self, key: str) -> dict[str, torch.Tensor]:
        path = self.current.get(key)
        if path is not None:
            return self.files.read(path)
        by_source = self.source.read(self.source_names[n] for n in self.groups[key])
        return {n: by_source[self.source_names[n]] for n in self.groups[key]}

    def _load(self, key: str) -> tuple[dict[str, torch.Tensor], Any]:
        tensors = self._read(key)
        if self.device.type != "cuda":
            return tensors, None
        stream = torch.cuda.Stream(self.device)  # the copy overlaps the work on the current stream
        with torch.cuda.stream(stream):
            moved = {k: v.pin_memory().to(self.device, non_blocking=True) for k, v in tensors.items()}
        event = torch.cuda.Event()
        event.record(stream)
        return moved, event

    def _start_prefetch(self, key: str | None) -> None:
        if key is None or key in self._loaded:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crescendo-prefetch")
        self._pending = (key, self.current.get(key), self._pool.submit(self._load, key))

    def _take(self, key: str) -> tuple[dict[str, torch.Tensor], Any]:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending_key, path, future = pending
            if pending_key == key and path == self.current.get(key):
                return future.result()
            future.cancel()
        return self._load(key)

    # -- installing and evicting ---------------------------------------------------------------
    def _set(self, model: nn.Module, name: str, param: nn.Parameter) -> None:
        for alias in self.aliases[name]:
            owner, _, leaf = alias.rpartition(".")
            model.get_submodule(owner)._parameters[leaf] = param

    def _records(self, model: nn.Module, key: str):
        return [r for r in state_of(model).records.values() if self.group_of(r.name) == key]

    def _install(self, model: nn.Module, key: str, tensors: dict[str, torch.Tensor], event: Any) -> None:
        if event is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(event)
            for t in tensors.values():
                t.record_stream(current)
        for name in self.groups[key]:
            self._set(model, name, nn.Parameter(tensors[name].to(self.device), requires_grad=False))
        for rec in self._records(model, key):
            if isinstance(rec.mask, NotResident):
                rec.mask = self._record_tensor(tensors, f"{RECORD}{rec.name}.mask").to(self.device)
            if isinstance(rec.grid_params, NotResident):
                head = f"{RECORD}{rec.name}.param."
                rec.grid_params = {k[len(head):]: v.to(self.device) for k, v in tensors.items() if k.startswith(head)}

    def _record_tensor(self, tensors: dict[str, torch.Tensor], name: str) -> torch.Tensor:
        if name not in tensors:
            raise ModelError(f"block file lacks record tensor {name}")
        return tensors[name]

    def _save(self, model: nn.Module, key: str) -> None:
        tensors = {name: model.get_parameter(self.aliases[name][0]).detach() for name in self.groups[key]}
        for rec in self._records(model, key):
            if isinstance(rec.mask, torch.Tensor):
                tensors[f"{RECORD}{rec.name}.mask"] = rec.mask
            for k, v in (rec.grid_params or {}).items():
                tensors[f"{RECORD}{rec.name}.param.{k}"] = v
        path = self.files.write(key, tensors)
        old = self.current.get(key)
        self.current[key] = path
        if old is not None:
            self.files.release(old)

    def _evict(self, model: nn.Module, key: str) -> None:
        for name in self.groups[key]:
            shape = model.get_parameter(self.aliases[name][0]).shape
            self._set(model, name, nn.Parameter(torch.empty(shape, device="meta"), requires_grad=False))
        for rec in self._records(model, key):
            if isinstance(rec.mask, torch.Tensor):
                rec.mask = NotResident(f"{rec.name} pruning mask")
            if rec.grid_params is not None and not isinstance(rec.grid_params, NotResident):
                rec.grid_params = NotResident(f"{rec.name} grid parameters")


def _release_all(files: BlockFiles, current: dict[str, Path]) -> None:
    for path in current.values():
        files.release(path)
    current.clear()


# -- the accessors everything else uses ------------------------------------------------------------
def residency_of(model: nn.Module) -> Residency | None:
    """The residency of a block-wise model, None for a model held in memory."""
    return model.__dict__.get(_ATTRIBUTE)


def attach_residency_(model: nn.Module, residency: Residency) -> None:
    model.__dict__[_ATTRIBUTE] = residency


def is_blockwise(model: nn.Module) -> bool:
    return residency_of(model) is not None


def resident_block(model: nn.Module, index: int, *, write: bool = False):
    """Context: decoder block `index` of `model` loaded (a no-op for a model in memory)."""
    residency = residency_of(model)
    return nullcontext() if residency is None else residency.group(model, f"block-{index}", write)


@contextmanager
def _groups(model: nn.Module, residency: Residency, keys: list[str], write: bool) -> Iterator[None]:
    with ExitStack() as stack:
        for key in keys:
            stack.enter_context(residency.group(model, key, write))
        yield


def resident_inputs(model: nn.Module, *, write: bool = False):
    """Context: what runs before the first decoder block loaded (the input embedding and the small
    tensors outside the blocks; a no-op for a model in memory)."""
    residency = residency_of(model)
    return nullcontext() if residency is None else _groups(model, residency, residency.input_groups(), write)


def resident_head(model: nn.Module, *, write: bool = False):
    """Context: what runs after the last decoder block loaded (the small tensors outside the blocks
    and the output head, or the embedding tied to it; a no-op for a model in memory)."""
    residency = residency_of(model)
    return nullcontext() if residency is None else _groups(model, residency, residency.head_groups(), write)


def resident_group(model: nn.Module, name: str, *, write: bool = False):
    """Context: the group holding parameter or linear `name` loaded (a no-op for a model in memory)."""
    residency = residency_of(model)
    if residency is None:
        return nullcontext()
    return residency.group(model, residency.group_of(name), write)


def group_name(model: nn.Module, name: str, blocks_path: str) -> str:
    """The residency group of parameter or linear `name` (`block-I` or `outside` for a model in memory)."""
    residency = residency_of(model)
    return residency.group_of(name) if residency is not None else group_of(name, blocks_path)
