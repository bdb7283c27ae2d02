"""The hub corpora of the GPTQ/SparseGPT papers (WikiText-2, C4) and fast Hugging Face Hub checks.

Both corpora follow IST-DASLab's `datautils.py` (sparsegpt; gptq's is the same):

- `get_wikitext2`: `load_dataset('wikitext', 'wikitext-2-raw-v1')`; test = the test split's "text"
  joined with "\\n\\n"; calibration = the train split's "text" joined with " " (a space, as the
  reference does; windows are then cut anywhere in its ids).
- `get_c4`: `allenai/c4` with data_files `en/c4-validation.00000-of-00008.json.gz` and
  `en/c4-train.00000-of-01024.json.gz`; test = the first 1100 validation documents joined with " ",
  of which the protocol keeps 256 windows (the reference's `valenc[:, :256 * seqlen]`); calibration
  draws a document at random until one is long enough, then a window inside it
  (`Corpus.calibration_documents`).

Each loader also reads a local copy, `wikitext2:DIR` / `c4:DIR`, in any of these layouts:
a `DatasetDict.save_to_disk` folder; hub parquet files (`**/test-*.parquet`, `**/train-*.parquet`,
the `wikitext-2-raw-v1` ones preferred); `datasets` cache arrow files (`*-test.arrow`, ...); the
original WikiText archive (`wiki.test.raw`, `wiki.train.raw`); C4's json.gz shards under their hub
names. Without network the hub path fails in seconds with a `DataError` naming the local option,
instead of letting `datasets` retry for minutes.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import DataError, one_line
from .corpus import Corpus

log = logging.getLogger(__name__)

WIKITEXT_REPO = "Salesforce/wikitext"  # the hub's current home of the "wikitext" dataset
WIKITEXT_CONFIG = "wikitext-2-raw-v1"
C4_REPO = "allenai/c4"
C4_VALIDATION_FILE = "en/c4-validation.00000-of-00008.json.gz"
C4_TRAIN_FILE = "en/c4-train.00000-of-01024.json.gz"
C4_EVAL_DOCUMENTS = 1100  # GPTQ/SparseGPT: ' '.join(valdata[:1100]['text'])
PROBE_TIMEOUT_S = 5.0
DATASETS_HINT = "pip install 'crescendo[datasets]'"
_TRUE = {"1", "true", "yes", "on"}


# -- hub reachability -------------------------------------------------------------------------
def hub_offline(*variables: str) -> bool:
    """True when the user asked for offline mode (HF_HUB_OFFLINE or any of `variables`).

    Read from the environment at call time: the libraries read it once, at their import.
    """
    names = ("HF_HUB_OFFLINE", *variables)
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in names)


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {one_line(exc)}"


def probe_hub(repo_id: str, repo_type: str = "model", timeout: float = PROBE_TIMEOUT_S) -> tuple[str, str]:
    """Ask the hub about one repository, once, with a short timeout.

    Returns ("ok", ""), ("missing", why) when the hub answered that no such repository exists
    (or it is private), or ("unreachable", why). The download libraries retry a dead connection with
    back-off for tens of seconds; this single request is what lets callers fail fast.
    """
    from huggingface_hub import HfApi

    try:
        from huggingface_hub.errors import RepositoryNotFoundError
    except ImportError:  # huggingface_hub < 0.22 kept its errors in utils
        from huggingface_hub.utils import RepositoryNotFoundError  # type: ignore[no-redef]
    try:
        HfApi().repo_info(repo_id, repo_type=repo_type, timeout=timeout)
    except RepositoryNotFoundError as exc:
        return "missing", _one_line(exc)
    # the HTTP client's exception types differ across huggingface_hub versions (requests, httpx)
    except Exception as exc:  # noqa: BLE001
        return "unreachable", _one_line(exc)
    return "ok", ""


# -- the datasets package ----------------------------------------------------------------------
def _require(module: str, what: str, hint: str) -> Any:
    try:
        return __import__(module)
    except ImportError as exc:
        raise DataError(f"{what} needs the optional {module!r} package: {hint}") from exc


def _hub_dataset(spec: str, repo_id: str, name: str | None, split: str, **kwargs: Any) -> Any:
    """`datasets.load_dataset(repo_id, name, split=split)`, failing fast when the hub is unreachable."""
    local_hint = f"pass a local copy with --corpus {spec}:/path/to/dir"
    datasets = _require("datasets", f"downloading {repo_id}", f"{DATASETS_HINT}, or {local_hint}")
    if not hub_offline("HF_DATASETS_OFFLINE"):
        status, why = probe_hub(repo_id, "dataset")
        if status != "ok":
            raise DataError(f"cannot download dataset {repo_id} ({why}); {local_hint}, or set "
                            f"HF_DATASETS_OFFLINE=1 to use a copy in the datasets cache")
    try:
        return datasets.load_dataset(repo_id, name, split=split, **kwargs)
    except Exception as exc:  # noqa: BLE001 - datasets raises many types; all mean "not available"
        raise DataError(f"cannot load dataset {repo_id} split {split!r} ({_one_line(exc)}); "
                        f"{local_hint}") from exc


class _Column(Sequence[str]):
    """One text column of a `datasets.Dataset`, read row by row (C4's train shard is 356k rows)."""

    def __init__(self, dataset: Any, column: str = "text") -> None:
        self._dataset, self._column = dataset, column

    def __len__(self) -> int:
        return len(self._dataset)

    def __getitem__(self, index: Any) -> Any:
        # a Dataset indexed by an int gives a row dict, by a slice a dict of columns
        return self._dataset[index][self._column]


# -- local copies ------------------------------------------------------------------------------
def _local_dir(spec: str, argument: str) -> Path:
    directory = Path(argument).expanduser()
    if not directory.is_dir():
        raise DataError(f"corpus {spec!r}: no such directory: {directory}")
    return directory


def _saved_dataset_dict(directory: Path, splits: Sequence[str]) -> list[Sequence[str]] | None:
    """The text columns of a `DatasetDict.save_to_disk` folder, or None for another layout."""
    if not (directory / "dataset_dict.json").is_file():
        return None
    datasets = _require("datasets", f"reading the saved DatasetDict in {directory}", DATASETS_HINT)
    saved = datasets.load_from_disk(str(directory))
    missing = [s for s in splits if s not in saved]
    if missing:
        raise DataError(f"the DatasetDict in {directory} has no split {missing[0]!r} "
                        f"(has {', '.join(saved)})")
    return [_Column(saved[s]) for s in splits]


def _find(directory: Path, patterns: Sequence[str], prefer: str | None = None) -> list[Path]:
    """Files under `directory` matching the first pattern that matches anything, sorted by name."""
    for pattern in patterns:
        found = sorted(directory.rglob(pattern), key=lambda p: (str(p.parent), p.name))
        if prefer is not None and any(prefer in p.parts for p in found):
            found = [p for p in found if prefer in p.parts]  # a full clone holds other configs too
        if found:
            return found
    return []


def _arrow_texts(files: Sequence[Path]) -> list[str]:
    pa = _require("pyarrow", "reading parquet/arrow files", "pip install pyarrow")
    texts: list[str] = []
    for path in files:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path, columns=["text"])
        else:  # datasets writes its arrow cache files in the IPC stream format
            with pa.memory_map(str(path)) as source:
                table = pa.ipc.open_stream(source).read_all()
        texts.extend(table.column("text").to_pylist())
    return texts


def _wikitext_raw_lines(path: Path) -> list[str]:
    # the hub's wikitext builder: one row per line, newline kept, blank lines as ""
    with path.open(encoding="utf-8") as handle:
        return [row if row.strip() else "" for row in handle]


def _wikitext_local(spec: str, directory: Path) -> tuple[Sequence[str], Sequence[str]]:
    saved = _saved_dataset_dict(directory, ("test", "train"))
    if saved is not None:
        return saved[0], saved[1]
    splits = []
    for split in ("test", "train"):
        files = _find(directory, (f"{split}-*.parquet", f"*-{split}.arrow", f"*-{split}-*.arrow"),
                      prefer=WIKITEXT_CONFIG)
        others = {part for f in files for part in f.relative_to(directory).parts[:-1]
                  if part.startswith("wikitext-") and part != WIKITEXT_CONFIG}
        if others:  # e.g. a copy holding only wikitext-103 must not pass for wikitext-2
            raise DataError(f"corpus {spec!r}: found {split} files of {', '.join(sorted(others))}, "
                            f"not {WIKITEXT_CONFIG}, in {directory}")
        if files:
            splits.append(_arrow_texts(files))
            continue
        raw = _find(directory, (f"wiki.{split}.raw",))
        if not raw:
            raise DataError(f"corpus {spec!r}: no {split} split in {directory} (expected a "
                            f"save_to_disk DatasetDict, {split}-*.parquet, *-{split}.arrow or "
                            f"wiki.{split}.raw)")
        splits.append(_wikitext_raw_lines(raw[0]))
    return splits[0], splits[1]


def _json_texts(path: Path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:  # type: ignore[operator]
        return [json.loads(line)["text"] for line in handle if line.strip()]


def _c4_local(spec: str, directory: Path) -> tuple[Sequence[str], Sequence[str]]:
    saved = _saved_dataset_dict(directory, ("validation", "train"))
    if saved is not None:
        return saved[0], saved[1]
    splits = []
    for hub_path in (C4_VALIDATION_FILE, C4_TRAIN_FILE):
        file_name = Path(hub_path).name
        files = _find(directory, (file_name, file_name.removesuffix(".gz")))
        if not files:
            raise DataError(f"corpus {spec!r}: no {file_name} under {directory} (expected the "
                            f"allenai/c4 shards {C4_VALIDATION_FILE} and {C4_TRAIN_FILE}, or a "
                            f"save_to_disk DatasetDict)")
        splits.append(_json_texts(files[0]))
    return splits[0], splits[1]


# -- the corpora -------------------------------------------------------------------------------
def load_wikitext2(argument: str | None = None) -> Corpus:
    """WikiText-2 (raw, v1) as GPTQ's `get_wikitext2`: from the hub, or from a local DIR."""
    spec = "wikitext2" if argument is None else f"wikitext2:{argument}"
    if argument:
        test, train = _wikitext_local(spec, _local_dir(spec, argument))
    else:
        test = _Column(_hub_dataset("wikitext2", WIKITEXT_REPO, WIKITEXT_CONFIG, "test"))
        train = _Column(_hub_dataset("wikitext2", WIKITEXT_REPO, WIKITEXT_CONFIG, "train"))
    return Corpus(spec, "\n\n".join(test[:]), calibration_text=" ".join(train[:]))


def load_c4(argument: str | None = None) -> Corpus:
    """C4 (en, validation shard 0 / train shard 0) as SparseGPT's `get_c4`: hub or local DIR."""
    spec = "c4" if argument is None else f"c4:{argument}"
    if argument:
        validation, train = _c4_local(spec, _local_dir(spec, argument))
    else:
        validation = _Column(_hub_dataset("c4", C4_REPO, None, "validation",
                                          data_files={"validation": C4_VALIDATION_FILE}))
        train = _Column(_hub_dataset("c4", C4_REPO, None, "train", data_files={"train": C4_TRAIN_FILE}))
    if len(validation) < C4_EVAL_DOCUMENTS:
        log.warning("corpus %s: %d validation documents, fewer than the reference's %d",
                    spec, len(validation), C4_EVAL_DOCUMENTS)
    test_text = " ".join(validation[:C4_EVAL_DOCUMENTS])
    return Corpus(spec, test_text, calibration_documents=train)
