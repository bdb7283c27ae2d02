"""Command-line options shared by the CLI and the benchmark scripts (argparse), and the settings they
build. Nothing here imports torch: `crescendo --help` and a refused option answer before any model code
loads (issue 28: the CLI's help within a second).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from .errors import ConfigError, CrescendoError, one_line

COMPUTE_DTYPES = ("float32", "bfloat16")
EVAL_WEIGHTS = ("float32", "bfloat16")


def add_bench_options(parser, mode: bool = True) -> None:
    """The model, protocol and compute options of every command and benchmark script (argparse);
    `mode`: also --mode (commands that define their own leave it out)."""
    parser.add_argument("--model", default="smollm2-135m", help="hub id, local directory, .gguf file or smollm2-135m")
    parser.add_argument("--protocol", default="sotu-v1-quick",
                        help="sotu-v1-quick (default), sotu-v1-full, wikitext2, c4, or a corpus: text:TEST[,CALIB], "
                             "wikitext2:DIR; for vision models fmnist-v1 or digits-v1 (M = top-1 accuracy)")
    parser.add_argument("--seqlen", type=int, default=None, help="override the protocol's window length")
    parser.add_argument("--eval-windows", type=int, default=None, help="override the number of eval windows")
    parser.add_argument("--nsamples", type=int, default=None, help="override the number of calibration windows")
    parser.add_argument("--dtype", default="float32", choices=list(COMPUTE_DTYPES),
                        help="compute dtype: float32 (the protocols' reference) or bfloat16 autocast (about 2x faster "
                             "on CPUs with AMX; weights stay float32 so quantized weights stay exactly on their grids)")
    parser.add_argument("--eval-weights", default="float32", choices=list(EVAL_WEIGHTS),
                        help="bfloat16: measure perplexity on a bfloat16 copy of the weights (about 3x faster on CPUs "
                             "with AMX; compression keeps the float32 master; the protocol name gains +bf16-eval)")
    parser.add_argument("--calib-batch-size", type=int, default=None, metavar="B",
                        help="calibration windows per block call (default: as many as fit in a quarter of free memory)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--max-memory", default=None, metavar="SIZE",
                        help="load the model block by block and stay within SIZE (e.g. 1.5GB, 800MiB; of the GPU "
                             "on cuda): weights stay in their safetensors shards or .gguf file, one decoder block "
                             "is loaded while it is calibrated, compressed or evaluated; same results as in memory")
    parser.add_argument("--offload-dir", default=None, metavar="DIR",
                        help="with --max-memory: folder for the compressed blocks between stages (default: the "
                             "system's temporary folder; needs about the model's float32 size)")
    if mode:
        parser.add_argument("--mode", default="stagewise", choices=["stagewise", "interleaved"],
                            help="how recipes compose: stage by stage (default) or block by block in one pass")


@contextlib.contextmanager
def refused_in_one_line(parser) -> Iterator[None]:
    """A benchmark script's input check: a CrescendoError raised inside the block (a bad recipe, ratio
    or file) is `PROG: error: <one line>` on stderr and exit 2. Scripts check their recipes inside it
    before the model loads, so bad input costs nothing and writes nothing."""
    try:
        yield
    except CrescendoError as exc:
        parser.exit(2, f"{parser.prog}: error: {one_line(exc)}\n")

def add_cer_options(parser) -> None:
    """How CERs read the reference quantizer curve (argparse): 003's reading unless asked otherwise."""
    parser.add_argument("--cer-anchor", default="none", choices=["none", "dense"],
                        help="none (default, 003): the quantizer's measured points only; dense: add the dense "
                             "model at C = 1, so a method better than the highest bit-width gets a value, not a bound")
    parser.add_argument("--cer-scale", default="linear", choices=["linear", "log"],
                        help="interpolate the reference curve linearly in perplexity (default, 003) or in "
                             "log-perplexity")
    parser.add_argument("--cer-envelope", action="store_true",
                        help="read a reference curve that is not monotone off its monotone envelope (running "
                             "minimum of M); without it such a curve is flagged and gives no CER")


def add_race_options(parser, race: bool = True) -> None:
    """The comparison options (argparse): the equivalence margin, and racing evaluation (`race=False`:
    the margin only)."""
    parser.add_argument("--margin", type=float, default=None, metavar="DELTA",
                        help="equivalence margin of verdicts: a fraction of perplexity (protocol default 0.005) or "
                             "accuracy points (default 0.1); differences whose interval lies inside +-DELTA are "
                             "'equivalent'")
    if not race:
        return
    parser.add_argument("--race", action="store_true",
                        help="racing evaluation: evaluate the candidates in rounds of units in one seeded order and "
                             "stop when an anytime-valid confidence sequence settles the verdict (raced rows are "
                             "stored under the protocol id + '+race' with the units they used)")
    parser.add_argument("--race-confidence", type=float, default=0.95, metavar="C",
                        help="confidence of a race's verdict, in (0.5, 1) (default 0.95)")
    parser.add_argument("--race-round", type=int, default=None, metavar="N",
                        help="units per racing round (default: a sixteenth of the protocol's units, at least 2)")
    parser.add_argument("--race-seed", type=int, default=0, help="seed of the racing unit order (default 0)")


def margin_setting(args, relative: bool):
    """`--margin` as a Margin (relative: a fraction of perplexity), or None for the protocol's; checked now."""
    from .analysis.uncertainty import Margin

    return None if args.margin is None else Margin(args.margin, relative=relative)


def race_settings(args, relative: bool, implied: bool = False):
    """RaceSettings of `add_race_options`' options, or None without --race (`implied`: as if --race were
    given); checked before any model loads. Racing options given without --race are refused rather than
    ignored."""
    from .analysis.sequential import RaceSettings

    margin = margin_setting(args, relative)
    if not (args.race or implied):
        given = [f"--{o.replace('_', '-')}" for o, default in (("race_confidence", 0.95), ("race_round", None),
                                                                ("race_seed", 0)) if getattr(args, o) != default]
        if given:
            raise ConfigError(f"{', '.join(given)} only apply with --race")
        return None
    return RaceSettings(confidence=args.race_confidence, round_size=args.race_round, seed=args.race_seed,
                        margin=margin)


def with_margin(bench, margin) -> None:
    """Give `bench` the margin `--margin` asked for (its protocol's otherwise)."""
    from dataclasses import replace

    if margin is not None:
        bench.protocol = replace(bench.protocol, margin=margin.value)


def cer_settings(args):
    """The CERSettings of `add_cer_options`' options."""
    from .analysis.cer import CERSettings

    return CERSettings(anchor=args.cer_anchor, scale=args.cer_scale, envelope=args.cer_envelope)
