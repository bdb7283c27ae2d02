"""Zero-shot (or few-shot) task metrics of an in-memory model through EleutherAI's lm-evaluation-harness.

lm-eval is the optional `lmeval` extra. The model, dense or compressed, is wrapped as it is with
`HFLM(pretrained=model, tokenizer=...)` and run by `lm_eval.simple_evaluate`.

Fail fast instead of downloading: every requested task is first resolved to its leaf task configs.
A config is local when its `dataset_path` is a packaged builder (`json`, `csv`, ...) whose
`data_files` exist here, or an existing path; otherwise it names a hub dataset, and when
HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set or one short `probe_hub` request fails, a `DataError`
names the task and dataset within seconds (lm-eval would let `datasets` retry for minutes). Local
task YAMLs come from `include_path`; `datasets` reads their files without any network access.
lm-eval's full task index parses ~14k bundled YAMLs (seconds to tens of seconds), so the check reads
only the bundled files that mention a requested name, and evaluation skips the bundled index when
every task comes from `include_path`.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from ..data.hub import hub_offline, probe_hub
from ..errors import ConfigError, DataError, ModelError

log = logging.getLogger(__name__)

LMEVAL_HINT = "zero-shot tasks need lm-eval: pip install 'crescendo[lmeval]'"
LOCAL_BUILDERS = frozenset({"json", "csv", "text", "parquet", "arrow", "pandas"})  # datasets' packaged loaders
HUB_PROBE_TIMEOUT_S = 5.0
_NESTED = 4  # groups of groups of tags: mmlu -> mmlu_stem -> mmlu_stem_tasks -> tasks


@contextlib.contextmanager
def _quiet_lm_eval() -> Iterator[None]:
    """lm-eval logs every task, seed and config: raise its logger to ERROR unless we log at DEBUG."""
    logger, before = logging.getLogger("lm_eval"), logging.getLogger("lm_eval").level
    if not log.isEnabledFor(logging.DEBUG):
        logger.setLevel(max(logging.ERROR, before))
    try:
        yield
    finally:
        logger.setLevel(before)


def _lm_eval() -> Any:
    try:
        import lm_eval
    except ImportError as exc:
        raise ConfigError(LMEVAL_HINT) from exc
    return lm_eval


def _index(paths: Sequence[Path], names: set[str] | None = None) -> dict[str, Any]:
    """lm-eval's {name: Entry} index of the YAML files under `paths` (those mentioning `names`, if given)."""
    from lm_eval.tasks._index import TaskIndex  # lm-eval >= 0.4.12
    from lm_eval.tasks._yaml_loader import load_yaml

    with _quiet_lm_eval():  # it warns about every name duplicated across task variants
        if names is None:
            return TaskIndex.build(paths)
        mention = re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, sorted(names))) + r")(?![\w-])")
        index: dict[str, Any] = {}
        for path in (p for root in paths for p in sorted(root.glob("**/*.yaml"))):
            if mention.search(path.read_text(encoding="utf-8", errors="ignore")):
                try:
                    TaskIndex.process_cfg(load_yaml(path, resolve_func=False, recursive=True), path, index)
                except Exception as exc:  # noqa: BLE001 - a file lm-eval itself would skip
                    log.debug("skip %s (%s)", path, exc)
        return index


def _children(entry: Any) -> list[Any]:
    """The members of a group (names or inline task configs) or of a tag (names); none for a task."""
    if entry.kind.name == "TAG":
        return sorted(entry.tags)
    members = (entry.cfg or {}).get("task", []) if entry.kind.name == "GROUP" else []
    return [members] if isinstance(members, (str, dict)) else list(members)


def _leaf_configs(name: str, lookup: dict[str, Any], depth: int = 0) -> Iterator[tuple[str, dict[str, Any]]]:
    """(task name, config) of every leaf task under a task, group or tag name found in `lookup`."""
    entry = lookup.get(name)
    if entry is None or depth > _NESTED:
        return  # a member outside the scanned files: lm-eval resolves it when it loads the group
    if entry.kind.name in ("TASK", "PY_TASK"):
        yield name, entry.cfg or {}
    for member in _children(entry):
        if isinstance(member, dict):  # a group may define a task inline
            yield str(member.get("task", name)), member
        else:
            yield from _leaf_configs(str(member), lookup, depth + 1)


def _data_source(config: dict[str, Any]) -> tuple[str, str]:
    """("local" | "missing" | "hub" | "unknown", what): where a task config's dataset comes from."""
    path = config.get("dataset_path")
    if not path or config.get("custom_dataset"):
        return "unknown", str(path or "defined in Python")
    kwargs = config.get("dataset_kwargs") or {}
    if path in LOCAL_BUILDERS:
        files = kwargs.get("data_files") or kwargs.get("data_dir")
        flat = list(files.values()) if isinstance(files, dict) else [files]
        flat = [f for item in flat for f in (item if isinstance(item, list) else [item]) if f]
        if not flat or any("://" in str(f) for f in flat):
            return "unknown", f"{path} builder with data_files {files!r}"
        missing = [str(f) for f in flat if not Path(str(f)).expanduser().exists()]
        if missing:
            return "missing", missing[0]
        return "local", ", ".join(map(str, flat))
    if Path(str(path)).expanduser().exists():
        return "local", str(path)
    return "hub", str(path)


def check_tasks(tasks: Sequence[str], include_path: str | None = None) -> bool:
    """Resolve task names and fail fast on the ones that cannot run here.

    Raises DataError for an unknown name, a missing local data file, or a hub dataset while the hub
    is unreachable (offline variables or one short probe). Returns True when every task (and group
    member) is defined under `include_path`, so evaluation can skip lm-eval's bundled task index.
    """
    _lm_eval()
    import lm_eval.tasks

    bundled_root = Path(lm_eval.tasks.__file__).parent
    local_index: dict[str, Any] = {}
    if include_path is not None:
        root = Path(include_path).expanduser()
        if not root.is_dir():
            raise DataError(f"--tasks-include: no such directory: {root}")
        local_index = _index([root])
    lookup: dict[str, Any] = dict(local_index)
    scanned: set[str] = set()
    wanted = set(tasks) - set(lookup)
    for depth in range(_NESTED + 1):  # scan again for the members of groups and tags found so far
        if wanted:
            scanned |= wanted
            lookup = {**_index([bundled_root], wanted), **lookup}  # as in lm-eval, include_path wins
        unknown = [name for name in tasks if name not in lookup] if depth == 0 else []
        if unknown:
            where = f" nor in {include_path}" if include_path else "; pass a local task definition with --tasks-include DIR"
            raise DataError(f"unknown task {', '.join(map(repr, unknown))}: not one of lm-eval's tasks{where}")
        wanted = {m for e in lookup.values() for m in _children(e) if isinstance(m, str)} - set(lookup) - scanned
        if not wanted:
            break
    offline = hub_offline("HF_DATASETS_OFFLINE")
    probed: dict[str, tuple[str, str]] = {}
    for name in tasks:
        for task, config in _leaf_configs(name, lookup):
            kind, what = _data_source(config)
            member = "" if task == name else f" (member {task!r})"
            if kind == "missing":
                raise DataError(f"task {name!r}{member}: data file not found: {what}")
            if kind != "hub":
                log.debug("task %s: %s data (%s)", task, kind, what)
                continue
            if what not in probed:
                probed[what] = ("unreachable", "offline mode") if offline else probe_hub(
                    what, "dataset", timeout=HUB_PROBE_TIMEOUT_S)
            status, why = probed[what]
            if status != "ok":
                raise DataError(f"task {name!r}{member} needs the hub dataset {what}, which cannot be downloaded "
                                f"({why}); pass a local task definition with --tasks-include DIR")
    return not scanned


def _prefix_token_id(model: nn.Module, tokenizer: Any) -> int | None:
    """The token lm-eval puts before an empty context: its default (BOS, else EOS) when the tokenizer
    has one, else the model config's BOS/EOS, else UNK (word-level test tokenizers have neither)."""
    if getattr(tokenizer, "bos_token_id", None) is not None or getattr(tokenizer, "eos_token_id", None) is not None:
        return None
    for candidate in (getattr(model.config, "bos_token_id", None), getattr(model.config, "eos_token_id", None),
                      getattr(tokenizer, "unk_token_id", None)):
        if isinstance(candidate, int):
            return candidate
    return 0


def _metrics(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} from lm-eval's {"acc,none": 0.5, "acc_stderr,none": ...} rows."""
    out: dict[str, dict[str, float]] = {}
    samples = results.get("n-samples", {})
    for task, row in results.get("results", {}).items():
        metrics: dict[str, float] = {}
        for key, value in row.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue  # the alias, and stderr "N/A" where lm-eval has none
            metric, _, filter_name = key.partition(",")
            name = metric if filter_name in ("", "none") else f"{metric}/{filter_name}"
            metrics["samples" if metric == "sample_len" else name] = float(value)
        if "samples" not in metrics and task in samples:
            metrics["samples"] = float(samples[task].get("effective", samples[task].get("original", 0)))
        out[task] = metrics
    return out


def zero_shot(
    model: nn.Module,
    tokenizer: Any,
    tasks: Sequence[str],
    *,
    include_path: str | None = None,
    limit: int | None = None,
    batch_size: int = 1,
    device: Any = None,
    num_fewshot: int = 0,
) -> dict[str, dict[str, float]]:
    """Evaluate an in-memory causal LM (dense or compressed) on lm-eval tasks.

    Returns {task: {metric: value}}, e.g. {"arc_easy": {"acc": 0.43, "acc_norm": 0.40,
    "acc_stderr": 0.01, "samples": 2376.0}} (groups get their aggregate rows too).

    include_path: a directory of task YAMLs in lm-eval's format, for tasks with local data.
    limit: at most this many documents per task (for smoke tests; scores are then not comparable).
    device: move the model there first (in place); by default it is evaluated where it is.
    As lm-eval's own CLI does, this seeds Python's, NumPy's and torch's global generators (its defaults).

    Usage:

        zero_shot(model, tokenizer, ["tiny_mc"], include_path="my_tasks/")["tiny_mc"]["acc"]
    """
    lm_eval = _lm_eval()
    tasks = [t.strip() for t in tasks if t and t.strip()]
    if not tasks:
        raise ConfigError("no task names given")
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be a positive number of documents, got {limit}")
    if not hasattr(model, "config") or not hasattr(model, "device"):
        raise ModelError(f"lm-eval evaluates transformers models; got {type(model).__name__}")
    with _quiet_lm_eval():
        all_local = check_tasks(tasks, include_path)
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager

        if device is not None:
            model.to(device)
        manager = TaskManager(include_path=include_path, include_defaults=not all_local)
        was_training = model.training
        model.eval()
        try:
            # a copy: HFLM sets a pad token on the tokenizer it is given
            lm = HFLM(pretrained=model, tokenizer=copy.deepcopy(tokenizer), batch_size=batch_size,
                      prefix_token_id=_prefix_token_id(model, tokenizer))
            results = lm_eval.simple_evaluate(model=lm, tasks=tasks, num_fewshot=num_fewshot, limit=limit,
                                              task_manager=manager, log_samples=False)
        finally:
            model.train(was_training)
    if results is None:  # a non-zero rank under a distributed launcher
        return {}
    return _metrics(results)
