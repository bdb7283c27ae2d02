"""Size on disk of the embedded model's exports in every format, against its float16 size, and the
round-trip check: each export reloaded by its reader gives the perplexity of the in-memory compressed model.

Data-free recipes (magnitude pruning + RTN, MX), since the size depends only on the sparsity pattern
and the grids, not on how the weights were chosen:

    python benchmarks/export_size.py [--windows 4] [--formats packed,gguf,compressed-tensors]

Readers: packed -> crescendo.load; gguf -> transformers' GGUF loader; compressed-tensors -> transformers
with compressed-tensors (MX with dequantize=True). GGUF stores the tensors outside the compressed
linears as Q8_0 here (the embedded model's embedding already is Q8_0, so nothing is rounded).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch

import crescendo
from crescendo.errors import ConfigError
from crescendo.eval.perplexity import perplexity
from crescendo.export import save_compressed_tensors, save_gguf, save_packed, verify
from crescendo.export.fit import check_model_fits, check_recipe_fits
from crescendo.recipe import parse_recipe
from crescendo.workflow import Workbench

RECIPES = [
    "rtn:w4,g32,sym,fmt=q4_0",
    "rtn:w8,g32,sym,fmt=q8_0",
    "magnitude:2:4 > rtn:w4,g32,sym,fmt=q4_0",
    "rtn:w4,g32,fmt=q4_1",
    "rtn:w4,g128,sym",
    "magnitude:0.5 > rtn:w4",
    "mxfp4",
    "hbfp8",
]
FORMATS = ("packed", "gguf", "compressed-tensors")


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.iterdir() if p.suffix in (".safetensors", ".gguf"))


def _save(fmt: str, model, bench, out: Path, recipe: str) -> Path:
    meta = {"recipe": recipe, "protocol": bench.protocol.name}
    if fmt == "packed":
        return save_packed(model, bench.tokenizer, out, meta)
    if fmt == "gguf":
        return save_gguf(model, bench.tokenizer, out.with_suffix(".gguf"), meta, other="q8_0",
                         source_gguf=bench.info.path).path
    return save_compressed_tensors(model, bench.tokenizer, out, meta)


def _reload(fmt: str, path: Path, recipe: str):
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    if fmt == "packed":
        return crescendo.load(path)[0]
    if fmt == "gguf":
        return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    extra = {"quantization_config": CompressedTensorsConfig(dequantize=True)} if "mx" in recipe else {}
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, **extra)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=4, help="eval windows for the round-trip check")
    parser.add_argument("--formats", default=",".join(FORMATS))
    args = parser.parse_args()
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    bench = Workbench.load("smollm2-135m", "sotu-v1-quick", progress=False)
    all_params = sum(p.numel() for p in bench.model.parameters())  # tied head counted once
    fp16 = all_params * 2
    windows = bench.data.eval_windows[: args.windows]
    print(f"# export sizes: smollm2-135m, {all_params / 1e6:.1f} M parameters (tied head once); float16 "
          f"{fp16 / 2**20:.1f} MiB")
    print(f"Round trip: perplexity of the reloaded file on the first {args.windows} sotu-v1-quick windows "
          f"vs the in-memory compressed model (float32).")
    print("| recipe | format | file MiB | file / float16 | round trip | verify |")
    print("|---|---|---|---|---|---|")
    for recipe in RECIPES:
        model = None
        for fmt in formats:
            if fmt != "packed":
                try:
                    check_recipe_fits(parse_recipe(recipe), fmt)
                    check_model_fits(bench.model, parse_recipe(recipe), fmt)
                except ConfigError as e:
                    reason = str(e).rsplit("; ", 1)[-1].replace("the nearest recipe that fits is ", "nearest ")
                    print(f"| {recipe} | {fmt} | - | - | refused: {reason} | - |", flush=True)
                    continue
            if model is None:
                model, _ = bench.compress(recipe)
                ppl = perplexity(model, windows, progress=False).perplexity
            with tempfile.TemporaryDirectory() as tmp:
                path = _save(fmt, model, bench, Path(tmp) / "out", recipe)
                size, report = _size(path), verify(path)
                reloaded = _reload(fmt, path, recipe).eval()
                again = perplexity(reloaded, windows, progress=False).perplexity
                del reloaded
            same = "identical" if again == ppl else f"DIFFERS {again} vs {ppl}"
            print(f"| {recipe} | {fmt} | {size / 2**20:.1f} | {size / fp16:.3f} | {same} (ppl {ppl:.4f}) | "
                  f"{'OK' if report.ok else report.failure} |", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
