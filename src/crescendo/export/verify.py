"""`verify`: check a packed export against itself and against its recipe, stopping at the first failure.

Checks, in order: the manifest and the weights file can be read (a truncated or damaged file is named);
the file holds exactly the tensors the manifest lists, with the dtypes and byte lengths it implies;
no floating tensor holds NaN or Inf; integer grid parameters are in range; every layer's sparsity
pattern holds (each group of M has at least N pruned weights for an N:M stage; the pruned fraction is
within 0.5 points, plus rounding, of the recipe's ratios otherwise); every stored code decodes onto
its recorded grid (re-projecting with the recorded parameters changes nothing); and the recipe agrees
with what is stored (which layers are pruned, which grid, activation and KV quantizers they carry).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import CrescendoError, VerifyError
from ..grids import grid_from_dict
from ..state import CompressionState
from .adapters import read_adapters
from .fit import require_reader
from .layout import dtype_of, linear_tensor_names, read_kept, unpack_linear
from .load import read_json, read_manifest, read_tensors
from .recipe_check import Expectation, recipe_expectations
from .save import METADATA
from .verify_runtime import verify_ct, verify_gguf


@dataclass
class VerifyReport:
    """Outcome of `verify`: ok, a summary of what was checked, and the first failure (or None)."""

    ok: bool
    summary: dict[str, Any] = field(default_factory=dict)
    failure: str | None = None

    def raise_if_failed(self) -> None:
        if not self.ok:
            raise VerifyError(self.failure or "verification failed")


def _where(key: str, index: int, shape: tuple[int, ...]) -> str:
    if len(shape) == 2:
        return f"tensor {key} index {index} (row {index // shape[1]}, column {index % shape[1]})"
    return f"tensor {key} index {index}"


def _check_finite(tensors: dict[str, torch.Tensor]) -> None:
    for key in sorted(tensors):
        t = tensors[key]
        if t.is_floating_point():
            bad = (~torch.isfinite(t)).reshape(-1).nonzero()
            if len(bad):
                i = int(bad[0])
                raise VerifyError(f"{_where(key, i, tuple(t.shape))}: {t.reshape(-1)[i].item()} is not finite")


def _check_params(key: str, entry: dict, tensors: dict[str, torch.Tensor]) -> None:
    grid = grid_from_dict(entry.get("grid"))
    if grid is None:
        return
    for name, storage in grid.param_storage().items():
        t = tensors.get(f"{key}.{name}")
        if t is not None and t.is_floating_point() and not storage.signed:
            bad = (t < 0).reshape(-1).nonzero()
            if len(bad):
                i = int(bad[0])
                raise VerifyError(f"{_where(f'{key}.{name}', i, tuple(t.shape))}: negative {name}")
        if t is None or storage.low is None or storage.high is None:
            continue  # a missing tensor is reported by unpack_linear
        lo, hi = storage.low, storage.high
        bad = ((t.to(torch.int64) < lo) | (t.to(torch.int64) > hi)).reshape(-1).nonzero()
        if len(bad):
            i = int(bad[0])
            raise VerifyError(f"{_where(f'{key}.{name}', i, tuple(t.shape))}: {t.reshape(-1)[i].item()} "
                              f"is outside [{lo}, {hi}]")


def _check_pattern(key: str, kept: torch.Tensor, expect: Expectation | None) -> None:
    if expect is None or not expect.pruned:
        return
    pruned = ~kept
    out_f, in_f = pruned.shape
    for nm in expect.nm:
        if in_f % nm.m:
            raise VerifyError(f"tensor {key}.bitmask: {in_f} columns do not split into groups of {nm.m}")
        counts = pruned.reshape(out_f, in_f // nm.m, nm.m).sum(dim=2)  # (out, groups)
        bad = (counts < nm.n).reshape(-1).nonzero()
        if len(bad):
            g = int(bad[0])
            row, col = divmod(g, in_f // nm.m)
            flat = row * in_f + col * nm.m
            raise VerifyError(f"tensor {key}.bitmask index {flat} (row {row}, columns {col * nm.m}.."
                              f"{col * nm.m + nm.m - 1}): {int(counts.reshape(-1)[g])} of {nm.m} weights pruned, "
                              f"the recipe's {nm} needs at least {nm.n}")
    if not expect.nm and expect.ratio_stages and not expect.coarse_stages:
        achieved = float(pruned.float().mean())
        target = min(expect.ratio_sum, 1.0)
        tol = 0.005 + expect.ratio_stages * 0.5 / in_f  # 0.5 points, plus per-row rounding of each stage
        if abs(achieved - target) > tol:
            raise VerifyError(f"tensor {key}.bitmask: {achieved:.4f} of the weights are pruned, the recipe "
                              f"states {target:.4f}")


def _check_on_grid(key: str, weight: torch.Tensor, grid, params) -> None:
    again = grid.project_all(weight, params)
    same = (again == weight) | (torch.isnan(again) & torch.isnan(weight))
    bad = (~same).reshape(-1).nonzero()
    if len(bad):
        i = int(bad[0])
        raise VerifyError(f"{_where(key, i, tuple(weight.shape))}: {weight.reshape(-1)[i].item()!r} is off its "
                          f"recorded grid {grid!r} (re-projects to {again.reshape(-1)[i].item()!r})")


def _check_recipe(manifest: dict, expectations: dict[str, Expectation]) -> None:
    linears, records, transforms = manifest["linears"], manifest.get("records", {}), manifest.get("transforms", {})
    for name in manifest.get("all_linears", []):
        exp = expectations.get(name, Expectation())
        entry, rec = linears.get(name), records.get(name, {})
        grid = grid_from_dict(entry.get("grid")) if entry else None
        masked = bool(entry and entry.get("masked"))
        if exp.grid != grid:
            raise VerifyError(f"layer {name}: the recipe puts its weights on {exp.grid!r}, the saved layer has {grid!r}")
        if exp.pruned != masked:
            said = "prunes" if exp.pruned else "does not prune"
            raise VerifyError(f"layer {name}: the recipe {said} it, the saved layer is {'' if masked else 'not '}masked")
        act = grid_from_dict(rec.get("act_grid"))
        if exp.act_grid != act:
            raise VerifyError(f"layer {name}: the recipe quantizes its input with {exp.act_grid!r}, the record says {act!r}")
        if exp.kv_bits != rec.get("kv_bits"):
            raise VerifyError(f"layer {name}: the recipe's KV bits {exp.kv_bits}, the record says {rec.get('kv_bits')}")
        attached = transforms.get(name, {"input": [], "output": []})
        acts = [grid_from_dict(t.get("grid")) for t in attached.get("input", []) if t.get("type") == "activation"]
        kvs = [t.get("bits") for t in attached.get("output", []) if t.get("type") == "kv"]
        if acts != ([act] if act is not None else []) or kvs != ([exp.kv_bits] if exp.kv_bits is not None else []):
            raise VerifyError(f"layer {name}: its attached quantizers {attached} disagree with its record")


def _verify(directory: Path, summary: dict[str, Any]) -> None:
    try:
        manifest = read_manifest(directory)
        metadata = read_json(directory / METADATA) if (directory / METADATA).exists() else {}
        tensors = read_tensors(directory, manifest)
    except CrescendoError as e:
        raise VerifyError(str(e)) from None
    recipe = manifest.get("recipe")
    summary.update(recipe=recipe, tensors=len(tensors), linears=len(manifest["linears"]),
                   bytes=os.path.getsize(directory / manifest["weights"]))
    if metadata.get("recipe") not in (None, recipe):
        raise VerifyError(f"{METADATA} names recipe {metadata['recipe']!r}, the manifest {recipe!r}")
    expected = set(manifest.get("plain", []))
    for name, entry in manifest["linears"].items():
        expected.update(linear_tensor_names(f"{name}.weight", entry))
    for key in sorted(expected - set(tensors)):
        raise VerifyError(f"tensor {key} is listed in the manifest but missing from {manifest['weights']}")
    for key in sorted(set(tensors) - expected):
        raise VerifyError(f"tensor {key} in {manifest['weights']} is not in the manifest")
    _check_finite(tensors)
    lora = CompressionState.from_dict(manifest.get("state")).lora
    if lora is not None:  # unmerged LoRA adapters: peft's files beside the model
        try:
            read_adapters(directory, lora)
        except CrescendoError as e:
            raise VerifyError(str(e)) from None
    expectations = recipe_expectations(recipe, manifest.get("all_linears", []), manifest.get("block_linears", []),
                                       manifest.get("kv_projections", []))
    pruned = total = 0
    bits = 0.0
    for name, entry in manifest["linears"].items():
        key = f"{name}.weight"
        _check_params(key, entry, tensors)
        kept = read_kept(key, entry, tensors.__getitem__)
        _check_pattern(key, kept, expectations.get(name) if recipe else None)
        weight, _, grid, params, _ = unpack_linear(key, entry, tensors.__getitem__)
        if grid is not None:
            _check_on_grid(key, weight, grid, params)
        total += kept.numel()
        pruned += int((~kept).sum())
        bits += kept.numel() * float(entry.get("bits", torch.finfo(dtype_of(str(entry.get("dtype")))).bits))
    if recipe:
        _check_recipe(manifest, expectations)
    summary.update(sparsity=pruned / total if total else 0.0, avg_element_bits=bits / total if total else None)


def _is_compressed_tensors(path: Path) -> bool:
    """config.json declares compressed-tensors, or crescendo wrote the directory as such (a recipe that
    only prunes leaves no quantization_config)."""
    found = []
    for name in ("config.json", METADATA):
        try:
            found.append(json.loads((path / name).read_text()))
        except (OSError, ValueError):
            found.append({})
    config, metadata = (d if isinstance(d, dict) else {} for d in found)
    return ((config.get("quantization_config") or {}).get("quant_method") == "compressed-tensors"
            or metadata.get("format") == "compressed-tensors")


def verify(directory: str | os.PathLike) -> VerifyReport:
    """Check an export against itself and its recipe; the report names the first tensor and index that fails.

    A .gguf file and a compressed-tensors directory (config.json declaring `quant_method:
    compressed-tensors`) are checked by `verify_runtime`; any other directory as a `save_packed` one.

    >>> import tempfile, transformers
    >>> from crescendo import compress
    >>> from crescendo.export import save_packed
    >>> config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    ...                                   num_attention_heads=2, num_key_value_heads=2)
    >>> model = transformers.LlamaForCausalLM(config)
    >>> _ = compress(model, "magnitude:0.5 > rtn:w4,g16", progress=False)
    >>> out = save_packed(model, None, tempfile.mkdtemp() + "/llama-w4-s50", {"recipe": "magnitude:0.5 > rtn:w4,g16"})
    >>> report = verify(out)
    >>> report.ok, report.summary["sparsity"]
    (True, 0.5)
    """
    summary: dict[str, Any] = {"directory": str(directory)}
    path = Path(directory)
    fmt = "gguf" if path.suffix == ".gguf" and path.is_file() else (
        "compressed-tensors" if _is_compressed_tensors(path) else "packed")
    if fmt != "packed":  # a missing reader is no failed verification: ConfigError (exit 2), with the install hint
        require_reader(fmt, f"verifying a {fmt} export")
    try:
        if fmt == "gguf":
            verify_gguf(path, summary)
        elif fmt == "compressed-tensors":
            verify_ct(path, summary)
        else:
            _verify(path, summary)
    except VerifyError as e:
        return VerifyReport(False, summary, str(e))
    except CrescendoError as e:  # e.g. a recipe in the manifest that no longer parses
        return VerifyReport(False, summary, f"recipe {summary.get('recipe')!r}: {e}")
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        what = {"gguf": f"GGUF file {path}", "compressed-tensors": f"compressed-tensors export {path}",
                "packed": str(path / "crescendo_export.json")}[fmt]
        return VerifyReport(False, summary, f"{what} is malformed: {e!r}")
    if summary.get("format") in ("gguf", "compressed-tensors"):
        summary["checks"] = ["files", "finite", "codes and block parameters in range", "zeros of pruned layers",
                             "sizes against the recipe", "recipe agreement"]
        return VerifyReport(True, summary, None)
    summary["checks"] = ["files", "tensor set and lengths", "finite", "grid parameters", "sparsity pattern",
                         "on grid", "recipe agreement"]
    return VerifyReport(True, summary, None)

