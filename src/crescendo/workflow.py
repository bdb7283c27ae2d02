"""Load once, evaluate under a protocol, compress copies: the runs the CLI and the studies are made of."""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__
from .api import CompressionResult, compress, summarize
from .blockwise.residency import is_blockwise, residency_of
from .data import Protocol, ProtocolData, get_protocol, prepare
from .engine.capture import calibration_batch_size as calibration_batch_size_for
from .engine.interleaved import check_mode
from .errors import ConfigError
from .eval.perplexity import PerplexityResult, perplexity
from .models.loading import ModelInfo, load_model
from .options import COMPUTE_DTYPES, EVAL_WEIGHTS
from .outcome import Measured, Outcome, stage_rows
from .outputs import atomic_output_dir, without_timings
from .recipe import Recipe, parse_recipe
from .state import CompressionState, state_of
from .store import RunMetrics
from .units import Evaluation, Units

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class RunOutcome(Outcome):
    """A language model measured by perplexity."""

    perplexity: float

    @property
    def metric(self) -> float:
        """M = -perplexity (higher is better), the metric of 003."""
        return -self.perplexity


@dataclass
class TreeRun:
    """One recipe of `Workbench.compress_tree`: the compressed model and every stage that built it."""

    recipe: Recipe
    model: nn.Module
    stages: list[dict[str, Any]]

    @property
    def compress_seconds(self) -> float:
        return sum(s["seconds"] for s in self.stages)


class Workbench:
    """A dense model, its tokenizer and a protocol's data, loaded once and never modified.

    Every compression runs on a deep copy, so the dense reference stays available for layer-wise
    comparisons and further recipes.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        info: ModelInfo,
        protocol: Protocol,
        data: ProtocolData,
        *,
        dtype: str = "float32",
        device: str = "cpu",
        progress: bool = True,
        eval_batch_size: int = 1,
        layerwise_samples: int = 8,
        eval_weights: str = "float32",
        calibration_batch_size: int | None = None,
        mode: str = "stagewise",
    ) -> None:
        check_mode(mode)
        if eval_weights not in EVAL_WEIGHTS:
            raise ConfigError(f"eval weights must be one of {', '.join(EVAL_WEIGHTS)}, got {eval_weights!r}")
        if dtype not in COMPUTE_DTYPES:
            raise ConfigError(f"compute dtype must be one of {', '.join(COMPUTE_DTYPES)}, got {dtype!r}")
        if isinstance(eval_batch_size, bool) or not isinstance(eval_batch_size, int) or eval_batch_size < 1:
            raise ConfigError(f"eval batch size must be an integer >= 1, got {eval_batch_size!r}")
        self.model, self.tokenizer, self.info = model, tokenizer, info
        self.protocol, self.data = protocol, data
        self.dtype, self.device = dtype, device
        self.progress = progress
        self.eval_batch_size = eval_batch_size
        self.eval_weights = eval_weights  # "bfloat16": evaluate a bfloat16 copy (compression stays float32)
        self.layerwise_samples = layerwise_samples  # layer-wise errors need 2 forward passes per model
        self.calibration_batch_size = calibration_batch_size  # windows per block call; None: from free memory
        self.mode = mode  # how recipes compose: stagewise (f2 ∘ f1) or interleaved (block by block)
        if calibration_batch_size is not None:
            calibration_batch_size_for(model, list(data.calibration), calibration_batch_size)  # checked now
        self._dense: PerplexityResult | None = None
        if is_blockwise(model):
            if eval_weights != "float32":
                raise ConfigError("--eval-weights bfloat16 evaluates a bfloat16 copy of the whole model; a block-wise "
                                  "run (--max-memory) evaluates its float32 blocks")
            self.check_memory()

    def check_memory(self, recipes: Sequence[str | Recipe] = ()) -> None:
        """A block-wise model (`crescendo.blockwise`): refuse now, with the amount needed, a memory
        budget that the evaluation, or the calibration of a calibrated stage among `recipes`, cannot
        fit in (the passes plan again when they run). Nothing for a model in memory."""
        residency = residency_of(self.model)
        if residency is None:
            return
        from .models.adapters import get_adapter

        adapter = get_adapter(self.model)
        windows = self.data.eval_windows
        residency.plan(self.model, adapter, len(windows), int(windows.shape[-1]), calibrated=False,
                       requested=min(self.eval_batch_size, len(windows)), what="the evaluation windows")
        if any(stage.calibrated for r in recipes for stage in parse_recipe(r).stages):
            calibration = self.data.calibration
            residency.plan(self.model, adapter, len(calibration), int(calibration[0].shape[-1]), calibrated=True,
                           requested=self.calibration_batch_size)

    @classmethod
    def load(
        cls,
        model: str,
        protocol: str | Protocol = "sotu-v1-quick",
        *,
        dtype: str = "float32",
        device: str | None = None,
        calibration_seed: int | None = None,
        max_memory: int | None = None,
        offload_dir: str | None = None,
        **kwargs: Any,
    ) -> Workbench:
        """Load a model by spec and prepare a protocol's data for it.

        calibration_seed: draw the calibration windows with this seed instead of the protocol's
        (a replicate of the protocol: its name stays, the results-store rows carry the seed).
        max_memory: load the model block-wise (`crescendo.blockwise`) and run within this many bytes;
        offload_dir: where its rewritten blocks are kept (default: the system's temporary folder)."""
        check_device(device)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        protocol = resolve_protocol(protocol) if isinstance(protocol, str) else protocol  # fail before loading
        if calibration_seed is not None:
            protocol = with_calibration_seed(protocol, calibration_seed)
        if max_memory is not None or offload_dir is not None:
            net, tokenizer, info = load_saved_blockwise(model, device=device, max_memory=max_memory,
                                                        offload_dir=offload_dir)
        else:
            net, tokenizer, info = load_any(model, dtype="float32", device=device)  # master weights stay float32
        limit = getattr(net.config, "max_position_embeddings", None) or getattr(net.config, "n_positions", None)
        if limit is not None and protocol.seqlen > int(limit):
            raise ConfigError(f"protocol {protocol.name} uses windows of {protocol.seqlen} tokens, but {info.name} "
                              f"takes at most {limit} positions (set --seqlen)")
        return cls(net, tokenizer, info, protocol, prepare(protocol, tokenizer), dtype=dtype, device=device, **kwargs)

    @property
    def protocol_id(self) -> str:
        """The protocol name plus the compute dtype, evaluation weights and composition mode when they
        are not the defaults: results measured differently never share a results-store key."""
        return protocol_id(self.protocol.name, self.dtype, self.eval_weights) + (
            f"+{self.mode}" if self.mode != "stagewise" else "")

    @property
    def model_name(self) -> str:
        return self.info.name

    @property
    def calibration(self) -> list[torch.Tensor]:
        return [ids.to(self.device) for ids in self.data.calibration]

    def compute(self) -> contextlib.AbstractContextManager:
        """bfloat16 runs matmuls under autocast while the weights stay float32, so every quantized
        weight stays exactly on its grid; float32 (the protocols' reference) changes nothing."""
        if self.dtype == "float32":
            return contextlib.nullcontext()
        # cache_enabled=False: autocast caches the low-precision copy of every parameter for the whole
        # region, so a calibrated stage that rewrites weights in place would keep running (and the
        # next stage would calibrate on) the stale pre-compression copies.
        return torch.autocast(device_type=torch.device(self.device).type, dtype=getattr(torch, self.dtype),
                              cache_enabled=False)

    def evaluate(self, model: nn.Module, windows: Sequence[int] | None = None) -> PerplexityResult:
        """Perplexity under the protocol (every evaluation window, or the windows `windows`, in that
        order). With bfloat16 evaluation weights a bfloat16 copy of the model runs (plain bfloat16
        matmuls, several times faster on CPUs with AMX than float32 or autocast); the float32 master
        the compression works on is never cast."""
        data = self.data.eval_windows if windows is None else [self.data.eval_windows[int(i)] for i in windows]
        if self.eval_weights == "bfloat16":
            fast = copy.deepcopy(model).to(torch.bfloat16)
            return perplexity(fast, data, batch_size=self.eval_batch_size, progress=self.progress)
        with self.compute():
            return perplexity(model, data, batch_size=self.eval_batch_size, progress=self.progress)

    def dense(self) -> PerplexityResult:
        if self._dense is None:
            self._dense = self.evaluate(self.model)
        return self._dense

    unit_kind = "window-loss"  # what `evaluation` keeps per unit (crescendo.units.KINDS)

    @property
    def n_units(self) -> int:
        """The protocol's evaluation units: its windows."""
        return len(self.data.eval_windows)

    @property
    def margin(self):
        """The protocol's equivalence margin (a fraction of perplexity)."""
        from .analysis.uncertainty import Margin

        return Margin(self.protocol.margin, relative=True)

    def evaluation(self, model: nn.Module, units: Sequence[int] | None = None) -> Evaluation:
        """M = -perplexity with the loss of every window (or of the windows `units`, in that order)."""
        result = self.dense() if units is None and model is self.model else self.evaluate(model, units)
        per_unit = Units("window-loss", result.window_losses, total=self.n_units, index=units)
        return Evaluation(-result.perplexity, per_unit, result.seconds)

    def measure(self, model: nn.Module, layerwise: bool = False) -> Measured:
        """The typed metrics of `model` (perplexity and compression summary; with `layerwise`, the
        relative output error by depth), the evaluation seconds and the per-window losses. The dense
        model is evaluated once."""
        found = self.evaluation(model)
        more: dict[str, Any] = {}
        if layerwise:
            errors = self.layer_errors(model, per_linear=False)  # error through depth, per block
            if errors is not None:
                more["per_block_error"] = errors["per_block"]
        return Measured(RunMetrics.from_perplexity(-found.metric, summarize(model).to_dict(), **more), found.seconds,
                        found.units)

    def fresh(self) -> nn.Module:
        return copy.deepcopy(self.model)

    def compress(self, recipe: str | Recipe, base: nn.Module | None = None) -> tuple[nn.Module, CompressionResult]:
        """A compressed copy of `base` (default: the dense model)."""
        model = copy.deepcopy(base if base is not None else self.model)
        return model, self.compress_inplace(model, recipe)

    def compress_inplace(self, model: nn.Module, recipe: str | Recipe) -> CompressionResult:
        with self.compute():
            return compress(model, recipe, self.calibration, progress=self.progress,
                            calibration_batch_size=self.calibration_batch_size, mode=self.mode)

    def run(self, recipe: str | Recipe) -> tuple[nn.Module, RunOutcome]:
        recipe = parse_recipe(recipe)
        start = time.perf_counter()
        model, result = self.compress(recipe)
        seconds = time.perf_counter() - start
        return model, self.outcome(str(recipe), result, seconds, self.evaluation(model))

    def outcome(self, recipe: str, result: CompressionResult, compress_seconds: float, found: Evaluation) -> RunOutcome:
        """The outcome of a compressed and evaluated recipe (its perplexity over the units `found` holds)."""
        return RunOutcome(recipe=recipe, perplexity=-found.metric, summary=result.summary.to_dict(),
                          stages=stage_rows(result), compress_seconds=compress_seconds, eval_seconds=found.seconds,
                          units=found.units)

    def compress_tree(self, recipes: Sequence[str | Recipe]) -> Iterator[TreeRun]:
        """Compress every recipe, in the order given, computing a prefix that several recipes share once.

        Stages run one at a time on a copy of the dense model; after each, the prefix is kept (a copy)
        if a later recipe starts with it, and dropped after its last use. Yields one `TreeRun` per
        recipe: the model is the caller's (evaluate it, change it), the stages are `stage_rows`
        entries (method, stage, seconds, details), prefix stages included. Interleaved mode composes
        a whole recipe block by block, which a prefix applied stage by stage would not be, so there
        every recipe is compressed whole and nothing is shared.
        """
        parsed = [parse_recipe(r) for r in recipes]
        texts = [tuple(s.text for s in r.stages) for r in parsed]
        share = self.mode == "stagewise"
        cache: dict[tuple[str, ...], tuple[nn.Module, list[dict[str, Any]]]] = {(): (self.model, [])}
        # the last recipe each prefix starts (later entries overwrite earlier ones): kept while a later one needs it
        last_use = {t[:k]: n for n, t in enumerate(texts) for k in range(1, len(t) + 1)} if share else {}
        for n, (recipe, key) in enumerate(zip(parsed, texts)):
            k = max(i for i in range(len(key) + 1) if key[:i] in cache)
            base, stages = cache[key[:k]]
            model, stages = copy.deepcopy(base), list(stages)
            if share:
                for i in range(k, len(key)):
                    stages += stage_rows(self.compress_inplace(model, Recipe(recipe.stages[i:i + 1])))
                    if last_use.get(key[:i + 1], -1) > n:
                        cache[key[:i + 1]] = (copy.deepcopy(model), list(stages))
            else:
                stages += stage_rows(self.compress_inplace(model, recipe))
            for prefix in [p for p in cache if p and last_use.get(p, -1) <= n]:
                del cache[prefix]
            yield TreeRun(recipe, model, stages)

    # -- the Evaluator protocol of analysis.order: M = -perplexity -----------------------------
    metric_name = "-perplexity"

    def metric(self, model: nn.Module) -> float:
        return self.evaluation(model).metric

    def apply(self, model: nn.Module, stage) -> None:
        self.compress_inplace(model, Recipe((stage,)))

    def layer_errors(self, model: nn.Module, per_linear: bool = True) -> dict[str, Any] | None:
        """Layer-wise error against the dense model on the first `layerwise_samples` calibration windows
        (per linear and per block; `per_linear=False` keeps only the cheaper per-block view)."""
        from .eval.layerwise import layerwise_error

        state = state_of(model)
        if state.removed is not None:
            return None  # blocks were removed: there is no block-by-block correspondence
        rotated = state.rotation is not None  # per-linear bases differ
        calib = self.calibration[: self.layerwise_samples]
        size = self.calibration_batch_size or (1 if is_blockwise(model) else None)  # block-wise: within the plan
        with self.compute():
            return layerwise_error(self.model, model, calib, per_linear=per_linear and not rotated,
                                   batch_size=size).to_dict()

    def describe(self) -> dict[str, Any]:
        out = {"model": self.model_name, "protocol": self.protocol_id, "dtype": self.dtype,
               "eval_weights": self.eval_weights, "device": self.device, "mode": self.mode}
        residency = residency_of(self.model)
        if residency is not None:  # block-wise (crescendo.blockwise): the same numbers, within this budget
            out["max_memory"] = residency.budget
        return out


def check_device(device: str | None) -> None:
    """`--device`: cpu, cuda or cuda:N, and CUDA only where a CUDA device is present."""
    if device is None:
        return
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device {device!r} is not a device (use cpu, cuda or cuda:N)") from None
    if parsed.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {device!r}: crescendo runs on cpu or cuda")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: no CUDA device is available here")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s)")


def bench_from_options(args, **kwargs: Any):
    """A Workbench from the options of `add_bench_options` (progress bars off)."""
    protocol = resolve_protocol(args.protocol, args.seqlen, args.eval_windows, args.nsamples)
    kwargs.setdefault("dtype", args.dtype)
    kwargs.setdefault("eval_weights", args.eval_weights)
    kwargs.setdefault("calibration_batch_size", args.calib_batch_size)
    kwargs.setdefault("mode", args.mode)
    kwargs.setdefault("max_memory", memory_option(args))
    kwargs.setdefault("offload_dir", args.offload_dir)
    return Workbench.load(args.model, protocol, device=args.device, progress=False, **kwargs)


def memory_option(args) -> int | None:
    """`--max-memory` in bytes (None when not given); ConfigError for a size that does not parse."""
    if getattr(args, "max_memory", None) is None:
        if getattr(args, "offload_dir", None) is not None:
            raise ConfigError("--offload-dir keeps the blocks of a block-wise run; it needs --max-memory")
        return None
    from .blockwise.memory import parse_memory

    return parse_memory(args.max_memory)


def fast_bfloat16(device: str | None = None, cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether bfloat16 compute is faster than float32 here: on CUDA, or on a CPU with AMX tiles
    (`amx_bf16` in /proc/cpuinfo). On AVX2/AVX-512 CPUs without AMX, bfloat16 matmuls are emulated
    and slower than float32, so the fast default falls back to the float32 reference."""
    if device == "cuda" or (device is None and torch.cuda.is_available()):
        return True
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            return any(line.startswith("flags") and " amx_bf16" in line for line in f)
    except OSError:
        return False
def with_calibration_seed(protocol: Protocol, seed: int) -> Protocol:
    """The protocol with its calibration windows drawn with `seed` (same name: a replicate)."""
    from dataclasses import replace

    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"calibration seed must be an integer >= 0, got {seed!r}")
    return replace(protocol, seed=seed)


def protocol_id(name: str, dtype: str, eval_weights: str = "float32") -> str:
    """`name`, `name@bfloat16` (compression and evaluation under bfloat16 autocast), and a
    `+bf16-eval` suffix when perplexity is measured on a bfloat16 copy of the weights."""
    out = name if dtype == "float32" else f"{name}@{dtype}"
    return out + ("+bf16-eval" if eval_weights == "bfloat16" else "")


def resolve_protocol(
    spec: str, seqlen: int | None = None, eval_windows: int | None = None, nsamples: int | None = None
) -> Protocol:
    """A named protocol, or one built on a corpus spec (`text:TEST[,CALIB]`, `wikitext2:DIR`).

    Overriding a named protocol's settings gives it a distinct name (`sotu-v1-quick[seqlen=256]`), so
    results measured under different settings never share a name or a results-store key.
    """
    from dataclasses import replace

    from .data import custom_protocol
    from .data.protocols import list_protocols

    if spec in list_protocols():
        base = get_protocol(spec)
        over = {k: v for k, v in (("seqlen", seqlen), ("n_eval_windows", eval_windows),
                                  ("n_calibration", nsamples)) if v is not None}
        if not over:
            return base
        suffix = ",".join(f"{k}={v}" for k, v in over.items())
        return replace(base, name=f"{base.name}[{suffix}]", **over)
    if ":" not in spec:
        get_protocol(spec)  # raises the unknown-protocol error listing the known names
    return custom_protocol(spec, 512 if seqlen is None else seqlen, eval_windows, 32 if nsamples is None else nsamples)


def load_any(spec: str, *, dtype: str = "float32", device: str = "cpu") -> tuple[nn.Module, Any, ModelInfo]:
    """`load_model`, plus crescendo's own saved directories: packed exports (crescendo_export.json) are
    rebuilt by `crescendo.export.load`; rotated models get their online Hadamards back."""
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "crescendo_export.json").is_file():
        from .export import load as load_packed

        net, tokenizer, _ = load_packed(path, device=device)
        if dtype != "float32":
            net = net.to(getattr(torch, dtype))
        return net, tokenizer, ModelInfo(path.resolve().name, "packed", str(path))
    net, tokenizer, info = load_model(spec, dtype=dtype, device=device)
    saved = path / "crescendo.json"
    if info.source == "local" and saved.is_file():  # a directory written by `save_hf`
        from .export.adapters import load_adapters_
        from .export.load import read_json
        from .models.file_checks import check_lora_fits, check_state_fits
        from .models.lora import adopt_peft_layers_
        from .models.rotation import restore_rotation_

        state = CompressionState.from_dict(read_json(saved).get("state"))
        check_state_fits(state, net, str(saved))  # before a Hadamard or adapter is built from it
        check_lora_fits(state.lora, net, str(saved))
        if state.lora is not None and not adopt_peft_layers_(net, state.lora.targets):
            load_adapters_(net, path, state.lora)  # transformers applies them itself when peft is installed
        if state.rotation is not None:
            restore_rotation_(net, state.rotation)
        state_of(net).removed = state.removed
        state_of(net).lora = state.lora
    return net, tokenizer, info


def load_saved_blockwise(spec: str, *, device: str = "cpu", max_memory: int | None = None,
                        offload_dir: str | None = None) -> tuple[nn.Module, Any, ModelInfo]:
    """`crescendo.workflow.load_any` for a block-wise model: `load_blockwise`, plus the state of a
    directory crescendo saved (--format hf). Packed exports (loaded whole), and saved models whose
    state needs the whole model (rotation, LoRA adapters), are refused with a ConfigError."""
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "crescendo_export.json").is_file():
        raise ConfigError(f"{spec} is a packed export, which is loaded whole; block-wise runs (--max-memory) read "
                          f"safetensors directories (--format hf) and .gguf files")
    saved = path / "crescendo.json"
    state = None
    if path.is_dir() and saved.is_file():
        from .export.load import read_json

        state = CompressionState.from_dict(read_json(saved).get("state"))
        if state.rotation is not None or state.lora is not None:
            raise ConfigError(f"{spec} was saved rotated or with LoRA adapters, which need the whole model: load it "
                              f"without --max-memory")
    from .blockwise import load_blockwise

    net, tokenizer, info = load_blockwise(spec, device=device, max_memory=max_memory, offload_dir=offload_dir)
    if state is not None:
        from .models.file_checks import check_state_fits

        check_state_fits(state, net, str(saved))  # as load_any checks it (shapes only: the skeleton suffices)
        state_of(net).removed = state.removed
    return net, tokenizer, info


def save_hf(model: nn.Module, tokenizer: Any, out: str | Path, metadata: dict[str, Any]) -> Path:
    """Write a directory transformers' from_pretrained loads (weights as they are after compression).

    Written into a temporary sibling and renamed at the end, so an interrupted save leaves nothing.
    A block-wise model is written one block at a time, as transformers' sharded layout.
    """
    from .export.adapters import save_adapters

    if state_of(model).sharing is not None:
        raise ConfigError("a shared model is saved with --format packed: transformers cannot build its factored layers")

    with atomic_output_dir(out) as tmp:
        if is_blockwise(model):  # one shard per block, written as each block is read (export.streaming)
            from .export.streaming import write_hf_weights

            model.config.save_pretrained(tmp)
            if getattr(model, "generation_config", None) is not None:
                model.generation_config.save_pretrained(tmp)
            write_hf_weights(model, tmp)
        else:
            model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        saved = {**without_timings(metadata), "crescendo_version": __version__, "state": state_of(model).to_dict()}
        (tmp / "crescendo.json").write_text(json.dumps(saved, indent=2))
        save_adapters(model, tmp)  # unmerged LoRA adapters, in peft's files: PeftModel.from_pretrained reads them
    return Path(out)


class BenchFactory:
    """A picklable recipe for a Workbench: sweep lanes and Ray tasks rebuild the bench in their own
    process. `bench_options` are Workbench keyword arguments (dtype, device, eval_weights, ...)."""

    def __init__(self, model: str, protocol: Protocol, *, progress: bool = False, layerwise: bool = False,
                 recipes: Sequence[str] = (), **bench_options: Any) -> None:
        self.model, self.protocol, self.progress, self.layerwise = model, protocol, progress, layerwise
        self.recipes = list(recipes)  # what the bench will compress: a block-wise budget is checked against them
        self.bench_options = bench_options

    def __call__(self) -> Workbench:
        from .data.vision_protocols import VisionProtocol

        if isinstance(self.protocol, VisionProtocol):  # M = accuracy (crescendo.vision.bench)
            from .vision.bench import VisionWorkbench

            bench = VisionWorkbench.load(self.model, self.protocol, progress=self.progress, **self.bench_options)
            bench.store_layerwise = self.layerwise
            return bench
        if not self.progress:  # transformers' own loading bars too (they are process-wide)
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        bench = Workbench.load(self.model, self.protocol, progress=self.progress, **self.bench_options)
        bench.store_layerwise = self.layerwise
        bench.check_memory(self.recipes)
        return bench
