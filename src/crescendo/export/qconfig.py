"""The `quantization_config` written into config.json, in the compressed-tensors layout.

Uniform integer weights (RTN/GPTQ), per-token integer activations, MXFP4 / MXFP6 (E2M3) / MXFP8 (E4M3)
in blocks of 32 and bitmask sparsity have counterparts in compressed-tensors' vocabulary
(`config_groups` of `QuantizationScheme`s, `sparsity_config`); they are described there. Formats
without one (HBFP, INT-k block, other MX element types or block sizes, crescendo's pre-RoPE KV
fake-quantization) are described under the `crescendo` key of the same dict.

The dict is built by hand and, when the optional `compressed-tensors` package imports, validated
by its own pydantic models (its version is then recorded). It describes *what* the weights are;
the tensors themselves are in crescendo's packed layout (see `layout.py`), so the directory is
loaded with `crescendo.load`, not with transformers' `from_pretrained` or a compressed-tensors
runtime.
"""

from __future__ import annotations

import logging
from typing import Any

from ..grids import Grid, MXGrid, UniformGrid

log = logging.getLogger(__name__)

LAYOUT = "crescendo-packed/1"
_MX_FORMATS = {"e2m1": "mxfp4-pack-quantized", "e2m3": "mxfp6-pack-quantized", "e4m3": "mxfp8-quantized"}


def _weight_args(grid: Grid) -> tuple[dict | None, str | None]:
    """compressed-tensors QuantizationArgs (as a dict) and storage format of a weight grid, if any."""
    if isinstance(grid, UniformGrid):
        strategy = "channel" if grid.group_size is None else "group"
        return ({"num_bits": grid.bits, "type": "int", "symmetric": grid.symmetric, "strategy": strategy,
                 "group_size": grid.group_size, "dynamic": False}, "pack-quantized")
    if isinstance(grid, MXGrid) and grid.element in _MX_FORMATS and grid.block_size == 32:
        return (_mx_args(grid, dynamic=False), _MX_FORMATS[grid.element])
    return None, None


def _mx_args(grid: MXGrid, dynamic: bool) -> dict:
    return {"num_bits": grid.spec.bits, "type": "float", "symmetric": True, "strategy": "group",
            "group_size": 32, "dynamic": dynamic, "scale_dtype": "torch.uint8", "zp_dtype": "torch.uint8"}


def _act_args(grid: Grid | None) -> dict | None:
    if grid is None:
        return None
    if isinstance(grid, UniformGrid) and grid.symmetric and grid.group_size is None:
        return {"num_bits": grid.bits, "type": "int", "symmetric": True, "strategy": "token", "dynamic": True}
    if isinstance(grid, MXGrid) and grid.element in _MX_FORMATS and grid.block_size == 32:
        return _mx_args(grid, dynamic=True)
    return None


def build_quantization_config(layers: dict[str, dict[str, Any]], grids: dict[str, tuple[Grid | None, Grid | None]],
                              sparsity: dict[str, Any]) -> dict:
    """The `quantization_config` dict of a packed export.

    layers: linear name -> manifest entry (with "kv_bits"); grids: name -> (weight grid, activation grid);
    sparsity: {"global_sparsity": float, "structure": "2:4" | "unstructured" | None, "targets": [names]}.
    """
    groups: dict[tuple, dict] = {}
    own: dict[tuple, dict] = {}
    for name, (wgrid, agrid) in grids.items():
        wargs, wfmt = _weight_args(wgrid) if wgrid is not None else (None, None)
        aargs = _act_args(agrid)
        if (wgrid is None or wargs is not None) and (agrid is None or aargs is not None):
            if wargs is None and aargs is None:
                continue
            key = (repr(wargs), repr(aargs), wfmt)
            groups.setdefault(key, {"targets": [], "weights": wargs, "input_activations": aargs,
                                    "format": wfmt or "dense"})["targets"].append(name)
        else:
            key = (repr(wgrid), repr(agrid))
            own.setdefault(key, {"targets": [], "weights": wgrid.to_dict() if wgrid is not None else None,
                                 "input_activations": agrid.to_dict() if agrid is not None else None})["targets"].append(name)
    config_groups = {f"group_{i}": g for i, g in enumerate(groups.values())}
    formats = {g["format"] for g in config_groups.values()}
    kv = {n: e["kv_bits"] for n, e in layers.items() if e.get("kv_bits") is not None}
    qc: dict[str, Any] = {
        "quant_method": "compressed-tensors",
        "format": formats.pop() if len(formats) == 1 else ("mixed-precision" if formats else "dense"),
        "quantization_status": "compressed",
        "config_groups": config_groups,
        "ignore": [],
        "kv_cache_scheme": None,
    }
    version = validate_with_compressed_tensors(qc)
    structure = sparsity.get("structure")
    qc["sparsity_config"] = {} if structure is None else {
        "format": "sparse-bitmask", "global_sparsity": sparsity["global_sparsity"],
        "sparsity_structure": structure, "targets": sparsity["targets"], "ignore": [],
    }
    qc["version"] = version
    qc["crescendo"] = {
        "layout": LAYOUT,
        "note": "tensors are in crescendo's packed layout; load with crescendo.load(DIR)",
        "validated_by": f"compressed-tensors {version}" if version else None,
        "groups": {f"group_{i}": g for i, g in enumerate(own.values())},
        # pre-RoPE, per token and head, asymmetric min-max on the k_proj / v_proj outputs
        "kv_cache": {"targets": sorted(kv), "num_bits": sorted(set(kv.values()))} if kv else None,
    }
    return qc


def validate_with_compressed_tensors(qc: dict) -> str | None:
    """Check `qc` against compressed-tensors' own models; return its version, or None if unavailable."""
    try:
        import compressed_tensors
        from compressed_tensors.quantization import QuantizationConfig
    except Exception:  # not installed, or a version that does not fit this torch / transformers
        log.info("compressed-tensors is not usable; quantization_config written by hand, not validated")
        return None
    try:
        QuantizationConfig.model_validate(qc)
    except Exception as e:  # pydantic.ValidationError: a scheme this version does not accept
        log.warning("compressed-tensors %s rejects the quantization_config: %s", compressed_tensors.__version__, e)
        return None
    return str(compressed_tensors.__version__)
