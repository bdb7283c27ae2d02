"""Models larger than memory: one recipe run with the whole model in memory and block by block under
a memory limit, compared weight for weight, with peak resident memory and wall time of both.

The model is LLaMA-shaped with random weights (TinyLlama-1.1B's shape, the embedded SmolLM2
tokenizer's vocabulary), written shard by shard as float32 safetensors so that building it never
holds the whole model. Each run is a fresh `crescendo compress` process (dense and compressed
perplexity, then `--save` in the hf format); the block-wise run gets `--max-memory LIMIT` and is
started under RLIMIT_DATA = LIMIT, which the kernel enforces on every private writable mapping (the
heap, every tensor) while leaving the page cache of the files it reads out of the count. Peak
resident memory is the child's ru_maxrss (os.wait4; on Linux it starts from
this parent's size at the fork, a few hundred MB here, below both figures). Runs alternate (memory, blockwise, memory, ...)
for `--reps` pairs with the load average printed beside each; then every tensor of the two saved
models is compared bit for bit.

    python benchmarks/blockwise.py                                  # the issue's target: 22 layers, 1.5 GB
    python benchmarks/blockwise.py --layers 2 --nsamples 4 --limit 1GB --eval-windows 2   # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
SHAPE = dict(hidden_size=2048, intermediate_size=5632, num_attention_heads=32, num_key_value_heads=4)


def build_model(directory: Path, layers: int, seed: int = 0) -> int:
    """A random LLaMA written one block per shard (normal(0, 0.02) weights, unit norms); returns
    its parameter count. Never holds more than one block."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    from crescendo.models.loading import load_tokenizer, resolve_model_spec

    tokenizer = load_tokenizer(resolve_model_spec("smollm2-135m"))
    config = LlamaConfig(**SHAPE, num_hidden_layers=layers, vocab_size=len(tokenizer), max_position_embeddings=2048,
                         tie_word_embeddings=False, torch_dtype="float32")
    h, inter = SHAPE["hidden_size"], SHAPE["intermediate_size"]
    kv = h // SHAPE["num_attention_heads"] * SHAPE["num_key_value_heads"]
    g = torch.Generator().manual_seed(seed)
    normal = lambda *shape: torch.randn(*shape, generator=g) * 0.02  # noqa: E731
    directory.mkdir(parents=True, exist_ok=True)
    weight_map, count = {}, 0

    def shard(name: str, tensors: dict[str, torch.Tensor]) -> None:
        nonlocal count
        save_file(tensors, str(directory / name), metadata={"format": "pt"})
        for key, t in tensors.items():
            weight_map[key] = name
            count += t.numel()

    shard("outside.safetensors", {"model.embed_tokens.weight": normal(config.vocab_size, h),
                                  "model.norm.weight": torch.ones(h), "lm_head.weight": normal(config.vocab_size, h)})
    for i in range(layers):
        p = f"model.layers.{i}."
        shard(f"block-{i:03d}.safetensors", {
            p + "self_attn.q_proj.weight": normal(h, h), p + "self_attn.k_proj.weight": normal(kv, h),
            p + "self_attn.v_proj.weight": normal(kv, h), p + "self_attn.o_proj.weight": normal(h, h),
            p + "mlp.gate_proj.weight": normal(inter, h), p + "mlp.up_proj.weight": normal(inter, h),
            p + "mlp.down_proj.weight": normal(h, inter),
            p + "input_layernorm.weight": torch.ones(h), p + "post_attention_layernorm.weight": torch.ones(h)})
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 4 * count}, "weight_map": weight_map}, indent=1))
    config.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return count


def run(command: list[str], limit: int | None, log: Path) -> dict:
    """One child process: its JSON result, wall seconds and peak resident memory."""
    def limited() -> None:
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))

    start = time.perf_counter()
    with open(log, "w") as err:
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, preexec_fn=limited, text=True)
        out = child.stdout.read()
        _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{' '.join(command[:4])} ... exited {code}; see {log}")
    return {**json.loads(out.strip().splitlines()[-1]), "wall_seconds": seconds, "peak_rss_bytes": usage.ru_maxrss * 1024}


def compare_saved(a: Path, b: Path) -> tuple[int, int, list[str]]:
    """Tensors compared, elements compared, names that differ (bit for bit)."""
    from safetensors import safe_open

    def where(d: Path) -> dict[str, Path]:
        out = {}
        for f in sorted(d.glob("*.safetensors")):
            with safe_open(str(f), "pt") as s:
                out.update({k: f for k in s.keys()})
        return out

    wa, wb = where(a), where(b)
    differ = sorted(set(wa) ^ set(wb))
    tensors = elements = 0
    for name in sorted(set(wa) & set(wb)):
        with safe_open(str(wa[name]), "pt") as sa, safe_open(str(wb[name]), "pt") as sb:
            x, y = sa.get_tensor(name), sb.get_tensor(name)
        tensors += 1
        elements += x.numel()
        if x.dtype != y.dtype or x.shape != y.shape or not torch.equal(x, y):
            differ.append(name)
    return tensors, elements, differ


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default="/tmp/crescendo-blockwise", help="work folder (model, outputs, logs)")
    ap.add_argument("--layers", type=int, default=22)
    ap.add_argument("--limit", default="1.5GB", help="--max-memory and RLIMIT_DATA of the block-wise run")
    ap.add_argument("--recipe", default="sparsegpt:0.5 > gptq:w4")
    ap.add_argument("--nsamples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--eval-windows", type=int, default=16)
    ap.add_argument("--calib-batch-size", type=int, default=1, help="the same in both runs (float reassociation)")
    ap.add_argument("--reps", type=int, default=1, help="pairs of runs, alternating memory / blockwise")
    ap.add_argument("--out", default=None, help="write the figures here (a .json; a .md beside it)")
    args = ap.parse_args()

    from crescendo.blockwise import format_bytes, parse_memory

    limit = parse_memory(args.limit)
    work = Path(args.dir)
    model_dir = work / f"llama-{args.layers}"
    if not (model_dir / "config.json").is_file():
        shutil.rmtree(model_dir, ignore_errors=True)
        t = time.perf_counter()
        params = build_model(model_dir, args.layers)
        print(f"built {model_dir}: {params / 1e9:.3f}B parameters, float32, in {time.perf_counter() - t:.0f} s",
              flush=True)
    size = sum(f.stat().st_size for f in model_dir.glob("*.safetensors"))
    crescendo = str(Path(sys.executable).parent / "crescendo")
    base = [crescendo, "compress", "--model", str(model_dir), "--recipe", args.recipe, "--protocol", "sotu-v1-quick",
            "--nsamples", str(args.nsamples), "--seqlen", str(args.seqlen), "--eval-windows", str(args.eval_windows),
            "--calib-batch-size", str(args.calib_batch_size), "--dtype", "float32", "--device", "cpu", "--json",
            "--quiet"]
    runs: dict[str, list[dict]] = {"memory": [], "blockwise": []}
    for rep in range(args.reps):
        for kind in ("memory", "blockwise"):
            out = work / f"out-{kind}"
            shutil.rmtree(out, ignore_errors=True)
            offload = work / "offload"
            shutil.rmtree(offload, ignore_errors=True)
            offload.mkdir(parents=True)
            extra = ["--max-memory", args.limit, "--offload-dir", str(offload)] if kind == "blockwise" else []
            load = os.getloadavg()[0]
            r = run(base + extra + ["--save", str(out)], limit if kind == "blockwise" else None,
                    work / f"{kind}-{rep}.log")
            r["load_before"] = load
            runs[kind].append(r)
            print(f"rep {rep} {kind:9s} wall {r['wall_seconds']:7.1f} s  compress {r['compress_seconds']:7.1f} s  "
                  f"peak RSS {format_bytes(r['peak_rss_bytes'])}  dense ppl {r['dense_perplexity']!r}  "
                  f"ppl {r['perplexity']!r}  load {load:.2f}", flush=True)
    tensors, elements, differ = compare_saved(work / "out-memory", work / "out-blockwise")
    mem, blk = runs["memory"], runs["blockwise"]
    ratios = [b["wall_seconds"] / m["wall_seconds"] for m, b in zip(mem, blk)]
    same_ppl = all(m["perplexity"] == b["perplexity"] and m["dense_perplexity"] == b["dense_perplexity"]
                   for m, b in zip(mem, blk))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                capture_output=True, text=True).stdout.strip())
    summary = {
        "commit": commit + ("+dirty" if dirty else ""), "model": f"random LLaMA, {args.layers} layers, TinyLlama shape",
        "checkpoint_bytes": size, "recipe": args.recipe, "nsamples": args.nsamples, "seqlen": args.seqlen,
        "eval_windows": args.eval_windows, "limit": args.limit, "limit_enforced_by": "RLIMIT_DATA",
        "threads": torch.get_num_threads(), "runs": runs, "wall_ratio_blockwise_over_memory": ratios,
        "tensors_compared": tensors, "elements_compared": elements, "tensors_differing": differ,
        "identical_weights": not differ, "identical_perplexity": same_ppl,
    }
    print(f"checkpoint {format_bytes(size)}; limit {args.limit} (RLIMIT_DATA + --max-memory)")
    print(f"peak RSS: memory {format_bytes(max(r['peak_rss_bytes'] for r in mem))}, "
          f"blockwise {format_bytes(max(r['peak_rss_bytes'] for r in blk))}")
    print(f"wall blockwise / memory: {', '.join(f'{x:.3f}' for x in ratios)} (target <= 1.3)")
    print(f"weights: {tensors} tensors, {elements} elements compared, {len(differ)} differ "
          f"({'identical' if not differ else ', '.join(differ[:5])})")
    print(f"perplexity identical (dense and compressed): {same_ppl}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(summary, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
