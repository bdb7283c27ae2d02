"""Which recipes a runtime format can hold exactly, decided from the recipe alone (before any model is loaded).

A format holds a recipe when every grid the recipe leaves on a weight is one of the format's own
(GGUF: a llama.cpp block type, `Grid.ggml_type`; compressed-tensors: an integer grid,
`Grid.integer_form`, or with activations the grid its runtime quantizes them on), and nothing else the
recipe attaches needs run-time code the format cannot express (online Hadamard of a rotation, KV-cache
fake-quantization, activation quantizers in GGUF). compressed-tensors also stores MXFP4 / MXFP6 (E2M3) /
MXFP8 (E4M3) weights in blocks of 32 (`Grid.microscaling_form`), but not MX activations: its dynamic
MX scale rounds the block maximum before taking its exponent, which is not OCP's floor(log2 amax).

A recipe that does not fit is refused with the nearest recipe that does: the same stages with each
quantizer moved onto the format's grid.
"""

from __future__ import annotations

from dataclasses import replace

from ..errors import ConfigError
from ..grids import Grid
from ..methods.quantization import QuantConfig

GGUF, CT = "gguf", "compressed-tensors"
FORMATS = (GGUF, CT)


# OCP MX element types compressed-tensors stores (mxfp4 / mxfp6 / mxfp8 pack formats), in blocks of 32
CT_MX_ELEMENTS = {"e2m1": 4, "e2m3": 6, "e4m3": 8}


def weight_fits(fmt: str, grid: Grid) -> bool:
    if fmt == GGUF:
        return grid.ggml_type is not None
    mx = grid.microscaling_form()
    return grid.integer_form() is not None or (mx is not None and mx[0] in CT_MX_ELEMENTS and mx[1] == 32)


def act_fits(fmt: str, grid: Grid) -> bool:
    """compressed-tensors' runtime quantizes activations dynamically per token with its own scale rule."""
    return fmt == CT and grid.type_name == "uniform_ct" and grid.group_size is None


def _problems(fmt: str, stage) -> list[str]:
    config, spec = stage.config, stage.spec
    out = []
    if spec.kind == "rotate":
        out.append("a rotated model needs an online Hadamard transform before every down_proj at run time, "
                   f"which {fmt} cannot express")
    if spec.kind == "share":
        out.append(f"layers sharing a basis are factored (two matrices each), which {fmt} cannot express")
    if spec.name == "lora" and not config.merge:
        out.append(f"unmerged LoRA adapters are not written into {fmt}; add 'merge' to the lora stage")
    if config.kv_bits is not None:
        out.append(f"KV-cache fake-quantization (pre-RoPE, per token and head) has no {fmt} counterpart")
    if config.act_grid is not None and not act_fits(fmt, config.act_grid):
        out.append(f"activation quantizer {config.act_grid!r} is not one {fmt} runs"
                   + (" (use fmt=ct: compressed-tensors' per-token scale)" if fmt == CT else ""))
    grid = config.weight_grid if spec.compress_linear is not None else None
    if grid is not None and not weight_fits(fmt, grid):
        out.append(f"weights on {grid!r} are not stored exactly by {fmt}")
    return out


def _prunes(recipe) -> bool:
    return any(s.config.sparsity is not None for s in recipe.stages)


def _nearest_stage(fmt: str, stage, prunes: bool) -> str | None:
    """The stage moved onto `fmt`'s grids (None: drop it), or its own text when it already fits."""
    if not _problems(fmt, stage):
        return stage.text
    config, spec = stage.config, stage.spec
    if spec.kind in ("rotate", "share"):
        return None
    if spec.name == "lora":
        return replace(config, merge=True).text()
    grid = config.weight_grid if spec.compress_linear is not None else None
    targets = ",".join(config.targets.args()) if config.targets is not None else ""
    if isinstance(config, QuantConfig):  # the stages that take fmt=
        changes: dict = {"kv_bits": None}
        if fmt == GGUF and config.weight_bits is None:
            return None
        if fmt == GGUF:
            bits = config.weight_bits
            ggml = "q8_0" if bits >= 6 else ("q4_1" if not config.symmetric and not prunes else "q4_0")
            changes.update(act_bits=None, fmt=ggml, weight_bits=8 if ggml == "q8_0" else 4, group_size=32,
                           symmetric=ggml != "q4_1")
        else:
            changes.update(fmt="ct" if config.act_bits is not None else None)
        return replace(config, **changes).text()
    if grid is None:  # an activation-only stage
        return None
    bits = grid.bits_per_element
    if fmt == GGUF:
        text = "rtn:w8,g32,sym,fmt=q8_0" if bits >= 6 else "rtn:w4,g32,sym,fmt=q4_0"
    else:
        text = f"rtn:w{min(8, max(2, round(bits)))},g{grid.group_size or 128},sym"
    return text + (f",{targets}" if targets else "")


def require_reader(fmt: str, purpose: str | None = None) -> None:
    """ConfigError naming the install command when the package reading and writing `fmt` is missing
    (`purpose`: what needs it, default `--format FMT`)."""
    import importlib.util

    module = {GGUF: "gguf", CT: "compressed_tensors"}[fmt]
    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"{purpose or '--format ' + fmt} needs the {module.replace('_', '-')} package: "
                          f"pip install 'crescendo[export]'")


def check_model_fits(model, recipe, fmt: str) -> None:
    """Before compressing: every layer a stage quantizes in groups has an input width that splits into
    them (compressed-tensors stores whole groups; GGUF's blocks are 32 wide). ConfigError naming the
    first layer that does not and, when one exists, the nearest group size that fits every layer."""
    from ..models.adapters import get_adapter, in_features, select_targets

    adapter = get_adapter(model)
    for stage in recipe.stages:
        config, spec = stage.config, stage.spec
        grid = config.weight_grid if spec.compress_linear is not None else None
        if grid is None or grid.group_size is None:
            continue
        group = grid.group_size
        widths = {n: in_features(m) for n, m in select_targets(model, adapter, config.targets).items()}
        bad = [(n, w) for n, w in widths.items() if w % group]
        if not bad:
            continue
        name, width = bad[0]
        smaller = [group >> k for k in range(1, 8) if group >> k >= 8]
        fits = next((g for g in smaller if all(w % g == 0 for w in widths.values())), None)
        if fmt == GGUF or fits is None or not isinstance(config, QuantConfig):
            hint = f"{fmt} cannot hold this layer quantized in groups (use --format packed)"
        else:
            hint = f"the nearest recipe stage that fits is {replace(config, group_size=fits).text()!r}"
        raise ConfigError(f"recipe stage {stage} does not fit --format {fmt}: {name} has {width} input features, "
                          f"not a multiple of its groups of {group}"
                          + (f" ({len(bad) - 1} more layers alike)" if len(bad) > 1 else "") + f"; {hint}")


def check_recipe_fits(recipe, fmt: str) -> None:
    """ConfigError naming what does not fit and the nearest recipe that does, or None when it fits."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")
    problems = [f"{stage}: {p}" for stage in recipe.stages for p in _problems(fmt, stage)]
    if not problems:
        return
    prunes = _prunes(recipe)
    stages = [t for t in (_nearest_stage(fmt, s, prunes) for s in recipe.stages) if t is not None]
    nearest = " > ".join(stages) if stages else "dense"
    raise ConfigError(f"recipe {recipe} does not fit --format {fmt}: {problems[0]}"
                      + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
                      + f"; the nearest recipe that fits is {nearest!r}")
