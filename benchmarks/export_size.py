"""Size on disk of packed exports of the embedded model, against its float16 size, and the
round-trip check: the reloaded packed model's perplexity equals the in-memory compressed model's.

Data-free recipes (magnitude pruning + RTN), since the size depends only on the sparsity pattern and
the grids, not on how the weights were chosen:  python benchmarks/export_size.py [--windows 4]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import crescendo
from crescendo.eval.perplexity import perplexity
from crescendo.export import save_packed, verify
from crescendo.models.adapters import get_adapter
from crescendo.workflow import Workbench

RECIPES = ["magnitude:0.5 > rtn:w4", "magnitude:2:4 > rtn:w8", "rtn:w4"]


def _bytes_of(path: Path, prefixes: tuple[str, ...]) -> int:
    """Bytes of the stored tensors whose names start with one of `prefixes` (codes, masks, scales)."""
    from safetensors import safe_open

    total = 0
    with safe_open(str(path), "pt") as f:
        for key in f.keys():
            if key.startswith(prefixes):
                t = f.get_tensor(key)
                total += t.numel() * t.element_size()
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=4, help="eval windows for the round-trip check")
    args = parser.parse_args()
    bench = Workbench.load("smollm2-135m", "sotu-v1-quick", progress=False)
    linears = get_adapter(bench.model).all_block_linears(bench.model)
    linear_params = sum(m.weight.numel() for m in linears.values())
    all_params = sum(p.numel() for p in bench.model.parameters())  # tied head counted once
    print(f"# export sizes: smollm2-135m, {len(linears)} block linears ({linear_params / 1e6:.1f} M weights), "
          f"{all_params / 1e6:.1f} M parameters in all")
    print("Whole file: embeddings and norms are stored as the model holds them (float32 here, tied head once).")
    print("| recipe | packed file MiB | float16 model MiB | file / float16 | block linears: packed / float16 | round trip |")
    print("|---|---|---|---|---|---|")
    windows = bench.data.eval_windows[: args.windows]
    for recipe in RECIPES:
        model, _ = bench.compress(recipe)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "packed"
            save_packed(model, bench.tokenizer, out, {"recipe": recipe, "protocol": bench.protocol.name})
            report = verify(out)
            weights = out / "crescendo-packed.safetensors"
            size = weights.stat().st_size
            fp16 = all_params * 2
            linear_bytes = _bytes_of(weights, tuple(f"{name}." for name in linears))
            linear_ratio = linear_bytes / (linear_params * 2)
            reloaded, _, _ = crescendo.load(out)
            a = perplexity(model, windows, progress=False).perplexity
            b = perplexity(reloaded, windows, progress=False).perplexity
        same = "identical" if a == b else f"DIFFERS {a} vs {b}"
        print(f"| {recipe} | {size / 2**20:.1f} | {fp16 / 2**20:.1f} | {size / fp16:.3f} | {linear_ratio:.3f} | "
              f"{same} (ppl {a:.4f} on {args.windows} windows), verify {'OK' if report.ok else report.failure} |",
              flush=True)


if __name__ == "__main__":
    main()
