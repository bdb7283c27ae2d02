"""llama.cpp's perplexity of crescendo's GGUF exports of the embedded model, on crescendo's own windows.

For each recipe: compress the embedded model, write the GGUF file (tensors outside the compressed
linears as Q8_0, which the embedding already is), and evaluate the same sotu-v1-quick windows three
ways: crescendo's in-memory model, the file reloaded by transformers' GGUF loader, and the file run
by llama.cpp (llama-cpp-python, logits of every position; no BOS added, as the protocol adds none).
Loss of a window = mean next-token cross-entropy over its 511 predictions; perplexity = exp(mean).

Needs `pip install llama-cpp-python` (it builds llama.cpp from source); not a crescendo dependency.

    python benchmarks/llama_cpp_perplexity.py [--windows 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import numpy as np
import torch

from crescendo.eval.perplexity import perplexity
from crescendo.export import save_gguf
from crescendo.workflow import Workbench, resolve_protocol

RECIPES = ["rtn:w8,g32,sym,fmt=q8_0", "rtn:w4,g32,sym,fmt=q4_0", "rtn:w4,g32,fmt=q4_1",
           "magnitude:2:4 > rtn:w4,g32,sym,fmt=q4_0"]


def llama_cpp_perplexity(path: Path, windows: torch.Tensor, threads: int) -> float:
    from llama_cpp import Llama

    seqlen = windows.shape[1]
    llm = Llama(model_path=str(path), n_ctx=seqlen, n_batch=seqlen, n_ubatch=seqlen, logits_all=True,
                n_threads=threads, verbose=False)
    losses = []
    for window in windows.tolist():
        llm.reset()
        llm.eval(window)
        logits = np.asarray(llm.scores[: seqlen - 1], dtype=np.float64)  # (seqlen - 1, vocab)
        logits -= logits.max(axis=1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        losses.append(-logp[np.arange(seqlen - 1), window[1:]].mean())
    llm.close()
    return math.exp(float(np.mean(losses)))


def main() -> None:
    from transformers import AutoModelForCausalLM

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    bench = Workbench.load("smollm2-135m", resolve_protocol("sotu-v1-quick", None, args.windows, 4), progress=False)
    windows = bench.data.eval_windows
    print(f"# llama.cpp vs crescendo on smollm2-135m, the first {args.windows} sotu-v1-quick windows (512 tokens)")
    print("| recipe | crescendo (float32) | transformers GGUF reload | llama.cpp | llama.cpp / crescendo |")
    print("|---|---|---|---|---|")
    for recipe in RECIPES:
        model, _ = bench.compress(recipe)
        ours = perplexity(model, windows, progress=False).perplexity
        with tempfile.TemporaryDirectory() as tmp:
            path = save_gguf(model, bench.tokenizer, Path(tmp) / "m.gguf", {"recipe": recipe}, other="q8_0",
                             source_gguf=bench.info.path).path
            del model
            reloaded = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=path.name, dtype=torch.float32).eval()
            hf = perplexity(reloaded, windows, progress=False).perplexity
            del reloaded
            theirs = llama_cpp_perplexity(path, windows, args.threads)
        print(f"| {recipe} | {ours:.4f} | {hf:.4f}{' (identical)' if hf == ours else ''} | {theirs:.4f} | "
              f"{theirs / ours:.4f} |", flush=True)


if __name__ == "__main__":
    main()
