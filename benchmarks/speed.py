"""Speed, side by side in one process: crescendo's compression against the original sequential loop,
and evaluation from float32 weights, a bfloat16 copy and a plain loss loop.

Runs are interleaved (A, B, A, B, ...) for `--reps` repetitions, each on a fresh copy of the same
model and the same calibration windows; every ratio is printed with the machine's load average
beside it, because timings on shared cores mean little otherwise. On CUDA (`--device cuda`) it
builds a LLaMA-shaped random model whose size is a flag (`--random-llama 1b`).

    python benchmarks/speed.py --what compress --method sparsegpt       # embedded model, CPU
    python benchmarks/speed.py --what eval --windows 16
    python benchmarks/speed.py --what compress --method gptq --device cuda --random-llama 1b --nsamples 128 --seqlen 2048
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from original_loop import original_sequential  # noqa: E402

from crescendo.api import compress  # noqa: E402

SHAPES = {  # LLaMA-shaped random models (TinyLlama-1.1B's shape for "1b")
    "tiny": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
                 num_key_value_heads=4),
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
               num_key_value_heads=4),
}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device: str) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _load(args):
    if args.random_llama:
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=32000, max_position_embeddings=max(2048, args.seqlen),
                             **SHAPES[args.random_llama])
        model = LlamaForCausalLM(config).to(args.device).eval()
        g = torch.Generator().manual_seed(0)
        windows = [torch.randint(0, 32000, (1, args.seqlen), generator=g).to(args.device) for _ in range(args.nsamples)]
        evals = torch.randint(0, 32000, (args.windows, args.seqlen), generator=g)
        return model, windows, evals, f"random LLaMA {args.random_llama}"
    from crescendo.workflow import Workbench, resolve_protocol

    protocol = resolve_protocol("sotu-v1-quick", args.seqlen, args.windows, args.nsamples)
    bench = Workbench.load("smollm2-135m", protocol, device=args.device, progress=False)
    return bench.model, bench.calibration, bench.data.eval_windows, f"smollm2-135m, {protocol.name}"


def flop_floor(model, tokens: int, seqlen: int) -> dict:
    """Multiply-add work (GFLOP, 2 per MAC) one calibrated stage cannot avoid, for crescendo and for the
    original loop: two block forwards over the calibration tokens (statistics, then the next block's
    inputs) and the Hessians X^T X, one per distinct input for crescendo (q/k/v and gate/up share
    theirs) and one per linear for the original. Attention scores count the causal half."""
    c = model.config
    d, f, layers = c.hidden_size, c.intermediate_size, c.num_hidden_layers
    kv = d * c.num_key_value_heads // c.num_attention_heads
    linear_macs = d * d + 2 * d * kv + d * d + 3 * d * f  # q, k, v, o, gate, up, down per token
    attention_macs = 2 * d * seqlen // 2  # QK^T and AV over half the window on average (causal)
    forward = 2 * tokens * (linear_macs + attention_macs) * layers
    shared = 2 * tokens * (3 * d * d + f * f) * layers  # attention input, o input, MLP input, down input
    per_linear = 2 * tokens * (6 * d * d + f * f) * layers  # q, k, v, o, gate, up (d x d each), down
    ours, theirs = 2 * forward + shared, 2 * forward + per_linear
    return {"forward_gflop": forward / 1e9, "hessian_shared_gflop": shared / 1e9,
            "hessian_per_linear_gflop": per_linear / 1e9, "crescendo_gflop": ours / 1e9,
            "original_gflop": theirs / 1e9, "floor_ratio": ours / theirs}


def bench_compress(args, model, windows, label) -> dict:
    recipe = f"sparsegpt:{args.sparsity}" if args.method == "sparsegpt" else f"gptq:w{args.bits}"
    amount = args.sparsity if args.method == "sparsegpt" else args.bits
    runs = {
        "original loop": lambda m: original_sequential(m, windows, args.method, amount),
        "crescendo": lambda m: compress(m, recipe, windows, progress=False, calibration_batch_size=args.batch_size),
    }
    print(f"# compress {recipe}: {label}, {len(windows)} x {windows[0].shape[1]} calibration tokens, float32, "
          f"device {args.device}, torch threads {torch.get_num_threads()}, interleaved, {args.reps} reps", flush=True)
    times: dict[str, list[float]] = {k: [] for k in runs}
    for rep in range(args.reps):
        order = list(runs) if rep % 2 == 0 else list(reversed(runs))
        for name in order:
            fresh = copy.deepcopy(model)
            times[name].append(_timed(lambda: runs[name](fresh), args.device))
        ratio = times["crescendo"][-1] / times["original loop"][-1]
        load = os.getloadavg()
        print(f"rep {rep + 1}: original loop {times['original loop'][-1]:7.1f} s  crescendo {times['crescendo'][-1]:7.1f} s"
              f"  ratio {ratio:.3f}  (load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f})", flush=True)
    ratios = [c / o for c, o in zip(times["crescendo"], times["original loop"])]
    print(f"crescendo / original loop: median ratio {statistics.median(ratios):.3f} (target <= 0.5)")
    floor = flop_floor(model, sum(w.numel() for w in windows), windows[0].shape[1])
    rate = floor["crescendo_gflop"] / statistics.median(times["crescendo"])
    print(f"unavoidable work: crescendo {floor['crescendo_gflop']:.0f} GFLOP, original loop {floor['original_gflop']:.0f} "
          f"GFLOP (2 block forwards {2 * floor['forward_gflop']:.0f} + Hessians {floor['hessian_shared_gflop']:.0f} "
          f"shared / {floor['hessian_per_linear_gflop']:.0f} per linear): same-work floor of the ratio "
          f"{floor['floor_ratio']:.3f}; crescendo ran at {rate:.0f} GFLOP/s")
    return {"recipe": recipe, "times": times, "ratios": ratios, "flop_floor": floor}


def _plain_loss_loop(model, evals) -> float:
    with torch.inference_mode():
        losses = [float(model(w[None].to(model.device), labels=w[None].to(model.device)).loss) for w in evals]
    return sum(losses) / len(losses)


def bench_eval(args, model, evals, label) -> dict:
    from crescendo.eval.perplexity import perplexity

    tokens = evals.numel()
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    runs = {
        "plain loss loop (float32)": lambda: _plain_loss_loop(model, evals),
        "crescendo float32": lambda: perplexity(model, evals, progress=False, batch_size=args.eval_batch_size),
        "crescendo bfloat16 weights": lambda: perplexity(bf16, evals, progress=False, batch_size=args.eval_batch_size),
    }
    print(f"# eval: {label}, {len(evals)} windows x {evals.shape[1]} tokens, device {args.device}, "
          f"torch threads {torch.get_num_threads()}, eval batch {args.eval_batch_size}, interleaved, {args.reps} reps")
    perplexity(bf16, evals[:1], progress=False)  # warm-up of the bfloat16 kernels
    times: dict[str, list[float]] = {k: [] for k in runs}
    for rep in range(args.reps):
        for name in (list(runs) if rep % 2 == 0 else list(reversed(runs))):
            times[name].append(_timed(runs[name], args.device))
        load = os.getloadavg()
        tps = {k: tokens / v[-1] for k, v in times.items()}
        print(f"rep {rep + 1}: " + "  ".join(f"{k} {v:7.0f} tok/s" for k, v in tps.items())
              + f"  bf16/f32 {tps['crescendo bfloat16 weights'] / tps['crescendo float32']:.2f}x"
              + f"  f32/plain {tps['crescendo float32'] / tps['plain loss loop (float32)']:.2f}x"
              + f"  (load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f})", flush=True)
    med = {k: statistics.median(tokens / t for t in v) for k, v in times.items()}
    print(f"median: bfloat16 weights / float32 = {med['crescendo bfloat16 weights'] / med['crescendo float32']:.2f}x "
          f"(target >= 3); float32 / plain loop = {med['crescendo float32'] / med['plain loss loop (float32)']:.2f}x "
          f"(target >= 1)")
    return {"tokens": tokens, "times": times, "median_tokens_per_second": med}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--what", choices=["compress", "eval"], default="compress")
    parser.add_argument("--method", choices=["sparsegpt", "gptq"], default="sparsegpt")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--random-llama", choices=sorted(SHAPES), default=None,
                        help="a random LLaMA-shaped model instead of the embedded one")
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--windows", type=int, default=16, help="eval windows")
    parser.add_argument("--batch-size", type=int, default=None, help="crescendo's calibration batch (default: auto)")
    parser.add_argument("--eval-batch-size", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    model, windows, evals, label = _load(args)
    result = bench_compress(args, model, windows, label) if args.what == "compress" else bench_eval(args, model, evals, label)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "label": label, **result}, indent=1))


if __name__ == "__main__":
    main()
