"""The command line: parse, build configs, call one library function, render. Bad input exits 2."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence

from .. import __version__
from ..errors import CrescendoError, one_line
from ..options import add_cer_options, add_race_options

log = logging.getLogger("crescendo")


from .commands import (
    _cmd_compress,
    _cmd_demo,
    _cmd_eval_tasks,
    _cmd_report,
    _cmd_verify,
)
from .common import _common, _Parser
from .studies import _cmd_cache, _cmd_compare, _cmd_order, _cmd_search, _cmd_sweep
from .vision import _cmd_train_reference


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="crescendo", description="Order-aware joint model compression.")
    parser.add_argument("--version", action="version", version=f"crescendo {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress messages")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("compress", help="compress a model with a recipe and measure it")
    _common(p, recipe=True)
    p.add_argument("--save", default=None,
                   help="write the compressed model to this new (or empty) directory, or .gguf file for --format gguf")
    p.add_argument("--format", default=None, choices=["hf", "packed", "gguf", "compressed-tensors"],
                   help="hf (default): float weights transformers loads as is; gguf: one file llama.cpp runs "
                        "(weights on fmt=q8_0/q4_0/q4_1 grids); compressed-tensors: packed integers "
                        "transformers / vLLM load; packed: crescendo's own layout, for formats with no runtime")
    p.add_argument("--gguf-other", default="f16", choices=["f16", "bf16", "f32", "q8_0"],
                   help="GGUF type of the tensors outside the compressed linears (default f16; f32 keeps them exact)")
    p.add_argument("--no-dense", action="store_true", help="skip the dense perplexity")
    p.add_argument("--mode", default="stagewise", choices=["stagewise", "interleaved"],
                   help="stagewise (default): each stage on the whole model, then the next; interleaved: all "
                        "per-layer stages block by block in one pass (faster, different calibration; the "
                        "protocol name gains +interleaved)")
    p.set_defaults(func=_cmd_compress)

    p = sub.add_parser("eval", help="perplexity of a model under a protocol, or lm-eval task metrics (--tasks)")
    _common(p)
    p.add_argument("--tasks", default=None, help="comma-separated lm-eval tasks instead of perplexity, e.g. "
                   "arc_easy,hellaswag (needs the lmeval extra)")
    p.add_argument("--tasks-include", default=None, metavar="DIR",
                   help="directory of task YAMLs in lm-eval's format (tasks with local data)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="at most N documents per task (smoke tests)")
    p.set_defaults(func=_cmd_eval_tasks)

    p = sub.add_parser("order", help="every order of n methods, CER, order advantage, PIH prediction")
    _common(p)
    p.add_argument("--methods", nargs="+", required=True, help="stage strings, e.g. sparsegpt:0.5 gptq:w4")
    p.add_argument("--reference", default="rtn:w{b}", help="reference quantizer template over {b} (default rtn:w{b})")
    p.add_argument("--bits", default="8,7,6,5,4,3", help="reference curve bit-widths (default 8..3)")
    p.add_argument("--no-layerwise", action="store_true", help="skip layer-wise errors (orthogonality, interference)")
    p.add_argument("--layerwise-samples", type=int, default=8, help="calibration windows for layer-wise errors")
    p.add_argument("--store", default=None, help="also record every measurement in this results store")
    p.add_argument("--choose", action="store_true",
                   help="run only what an order predictor needs and print its choice (or abstention) and cost")
    p.add_argument("--predictor", default=None,
                   help="with --choose: auto (default), pih, zeros, compensation, calib-error, prune-first, "
                        "quant-first or race")
    add_cer_options(p)
    add_race_options(p)
    p.set_defaults(func=_cmd_order)

    p = sub.add_parser("sweep", help="resumable (ratio x bits x order) grid into a results store")
    _common(p)
    p.add_argument("--prune", default="sparsegpt", help="pruning method or template, e.g. sparsegpt or wanda:{r},nm=2:4")
    p.add_argument("--ratios", default="0.1,0.2,0.3,0.5", help="pruning ratios")
    p.add_argument("--quant", nargs="+", default=["rtn"],
                   help="quantizer(s) or template(s) over {b}, e.g. rtn or rtn:w{b}a{b}; several share the pruning runs")
    p.add_argument("--bits", default="3,4,6,8", help="bit-widths")
    p.add_argument("--acts", action="store_true", help="activations at the weight bit-width (quant:w{b}a{b})")
    p.add_argument("--prefix", default="", help="stages every compressed recipe starts with, e.g. rotate")
    p.add_argument("--multistage", type=float, default=None, help="also P(p1) > Q > P(p2) with p1 + p2 = this")
    p.add_argument("--multistage-step", type=float, default=0.05)
    p.add_argument("--multistage-bits", default=None, help="bit-widths of the multi-stage rows (default: all --bits)")
    p.add_argument("--multistage-quant", nargs="+", default=None,
                   help="quantizer templates of the multi-stage rows (default: every --quant)")
    p.add_argument("--layerwise", action="store_true", help="store per-block error through depth for every row")
    p.add_argument("--layerwise-samples", type=int, default=4, help="calibration windows for --layerwise")
    p.add_argument("--store", default="crescendo-results.sqlite", help="results store (SQLite)")
    p.add_argument("--backend", default="local", choices=["local", "ray"])
    p.add_argument("--seeds", default=None,
                   help="comma-separated calibration seeds: every cell is measured once per seed (replicates; "
                        "reports show the spread). Default: --seed")
    p.add_argument("--lanes", type=int, default=None,
                   help="single-threaded processes sharing the sweep through the store (default: one per core)")
    p.add_argument("--cache", default=None, metavar="DIR",
                   help="prefix cache directory (default: $CRESCENDO_CACHE or ~/.cache/crescendo/prefixes)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the prefix cache")
    p.add_argument("--seed", type=int, default=0)
    add_race_options(p)
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("search", help="evolutionary search of per-block (pruning, bits) under a BOP/size target")
    _common(p)
    p.add_argument("--target-bops", type=float, default=None, help="minimum BOP reduction vs dense W16A16, e.g. 8")
    p.add_argument("--target-size", type=float, default=None, help="minimum size reduction vs dense 16-bit")
    p.add_argument("--sampler", default="uniform-sum", choices=["uniform-sum", "uniform"],
                   help="initial pruning ratios: uniform-sum (MixA-Q Algorithm 1) or naive uniform")
    p.add_argument("--generations", type=int, default=4)
    p.add_argument("--population", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bits", default="2,3,4,5,6,7,8", help="weight bit-width choices per block")
    p.add_argument("--prune", default="magnitude", help="pruning method or template over {r}")
    p.add_argument("--quant", default="rtn", help="quantizer or template over {b}, e.g. rtn or gptq:w{b}a{b}")
    p.add_argument("--acts", action="store_true", help="activations at the weight bit-width (quant:w{b}a{b})")
    p.add_argument("--count-unstructured", action="store_true", help="let unstructured sparsity reduce BOPs")
    p.add_argument("--store", default=None, help="also record every evaluated configuration in this results store")
    p.add_argument("--plot", default=None, help="write the Pareto front (perplexity vs BOP reduction) to this PNG")
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser("cache", help="list or clear the prefix cache sweeps reuse")
    p.add_argument("action", choices=["list", "clear"])
    p.add_argument("--dir", default=None, help="cache directory (default: the sweeps' default)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_cache)

    p = sub.add_parser("report", help="rebuild figures, tables and an HTML page from a results store")
    p.add_argument("--store", required=True, help="results store written by sweep/order")
    p.add_argument("--out", required=True, help="new or empty output directory")
    p.add_argument("--model", default=None, help="only rows of this model")
    p.add_argument("--protocol", default=None, help="only rows of this protocol")
    add_cer_options(p)
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("compare", help="two stored rows compared pairwise: A with its interval and verdict")
    p.add_argument("first", help="recipe of the first row (or dense)")
    p.add_argument("second", help="recipe of the second row (or dense)")
    p.add_argument("--store", required=True, help="results store holding both rows")
    p.add_argument("--model", default=None, help="the model, when the store holds several")
    p.add_argument("--protocol", default=None, help="the protocol id, when the store holds several")
    p.add_argument("--seeds", default=None, help="comma-separated calibration seeds (default: every seed both share)")
    p.add_argument("--confidence", type=float, default=0.95, help="confidence of the interval, in (0.5, 1)")
    add_race_options(p, race=False)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser("verify", help="check an export (packed or compressed-tensors directory, .gguf file) against "
                                      "its recipe (grids, sparsity, sizes, NaN/Inf)")
    p.add_argument("directory")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser("train-reference", help="train a small vision reference model (resnet-mini, vit-mini)")
    p.add_argument("--dataset", default="fashion-mnist", choices=["fashion-mnist", "digits"])
    p.add_argument("--arch", required=True, choices=["resnet-mini", "vit-mini"])
    p.add_argument("--seed", type=int, default=0, help="seeds the weights, shuffling and augmentation (default 0)")
    p.add_argument("--out", default=None, help="write the trained model to this new or empty directory")
    p.add_argument("--data-dir", default=None,
                   help="directory of the four Fashion-MNIST idx.gz files (default /usr/share/datasets/fashion-mnist)")
    p.add_argument("--epochs", type=int, default=None, help="override the reference recipe's number of epochs")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice; 1 is often faster on a busy shared machine)")
    p.add_argument("--device", default=None, help="cpu (default) or cuda; determinism is only promised on cpu")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train_reference)

    p = sub.add_parser("demo", help="both orders of a pruner and a quantizer on the embedded model, with the "
                                    "order advantage's interval (a few minutes; --full: the flagship comparison)")
    _common(p)
    p.add_argument("--full", action="store_true",
                   help="the flagship comparison, SparseGPT 50%% x GPTQ 4-bit under the full sotu-v1-quick (about 17 "
                        "minutes on two AVX2 cores); the default on CUDA or a CPU with fast bfloat16")
    add_race_options(p)
    p.set_defaults(dtype=None)  # None: bfloat16 where it is fast (AMX or CUDA), else the float32 reference
    p.set_defaults(func=_cmd_demo)
    return parser


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every `finally` (half-written outputs) runs."""


def _on_sigterm(signum, frame) -> None:
    raise _Terminated


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    func: Callable[[argparse.Namespace], int] = args.func
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return func(args)
    except CrescendoError as e:
        print(f"crescendo: error: {one_line(e)}", file=sys.stderr)
        return e.exit_code
    except _Terminated:
        print("crescendo: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("crescendo: interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)



if __name__ == "__main__":
    sys.exit(main())
