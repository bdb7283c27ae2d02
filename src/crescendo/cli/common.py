"""Shared pieces of the command line: the parser class, common options, protocol and workbench."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit code 2 (argparse prints usage too)
        self.exit(2, f"crescendo: error: {message}\n")


def _common(p: argparse.ArgumentParser, recipe: bool = False) -> None:
    from ..options import add_bench_options

    add_bench_options(p, mode=False)  # commands that compose recipes define --mode themselves
    p.add_argument("--data-dir", default=None,
                   help="vision protocols: directory of the Fashion-MNIST idx.gz files (default /usr/share/datasets/fashion-mnist)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    if recipe:
        p.add_argument("--recipe", required=True, help="e.g. 'sparsegpt:0.5 > gptq:w4,g128' or a YAML file")


def _protocol(args):
    from ..workflow import resolve_protocol

    return resolve_protocol(args.protocol, args.seqlen, args.eval_windows, args.nsamples)


def _is_vision(args) -> bool:
    """Whether the command runs a vision protocol; a vision model with a language protocol (or the
    reverse) is a ConfigError, raised before anything loads."""
    from ..data.vision_protocols import list_vision_protocols
    from ..errors import ConfigError
    from ..vision.bench import is_vision_model_dir

    vision_protocol = args.protocol in list_vision_protocols()
    vision_model = is_vision_model_dir(args.model)
    if vision_protocol and not vision_model:
        raise ConfigError(f"protocol {args.protocol} measures image classifiers; {args.model} is not a crescendo "
                          f"vision model directory (config.json with format crescendo-vision)")
    if vision_model and not vision_protocol:
        raise ConfigError(f"{args.model} is a vision model; give a vision protocol "
                          f"(--protocol {' or '.join(list_vision_protocols())})")
    if not vision_protocol and getattr(args, "data_dir", None) is not None:
        raise ConfigError("--data-dir applies to vision protocols only")
    if vision_protocol:
        given = [o for o in ("seqlen", "eval_windows", "nsamples") if getattr(args, o, None) is not None]
        if given:
            raise ConfigError(f"--{given[0].replace('_', '-')} does not apply to vision protocol {args.protocol}")
        if args.dtype != "float32" or args.eval_weights != "float32":
            raise ConfigError(f"vision protocols run in float32 (--dtype / --eval-weights {args.dtype} given)")
    return vision_protocol


def _vision_options(args) -> dict:
    from ..errors import ConfigError
    from ..workflow import check_device

    check_device(getattr(args, "device", None))
    if args.calib_batch_size is not None and args.calib_batch_size < 1:
        raise ConfigError(f"--calib-batch-size must be >= 1, got {args.calib_batch_size}")
    if args.max_memory is not None or args.offload_dir is not None:
        raise ConfigError("--max-memory and --offload-dir load language models block by block; vision models are "
                          "loaded whole")
    return {"calibration_batch_size": args.calib_batch_size, "data_dir": args.data_dir}


def progress_wanted(args) -> bool:
    """Progress bars only on a terminal (a log file or a CI capture gets no tqdm lines), never under --quiet."""
    return not args.quiet and sys.stderr.isatty()


def _workbench(args):
    from ..workflow import Workbench

    progress = progress_wanted(args)
    if _is_vision(args):
        from ..vision.bench import VisionWorkbench

        return VisionWorkbench.load(args.model, args.protocol, device=args.device, progress=progress,
                                    **_vision_options(args))
    if not progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    return Workbench.load(args.model, _protocol(args), dtype=args.dtype, device=args.device, progress=progress,
                          **_bench_options(args))


def _bench_options(args) -> dict:
    """Workbench options given on the command line (checked before any model is loaded)."""
    from ..errors import ConfigError
    from ..workflow import check_device

    check_device(getattr(args, "device", None))
    if args.calib_batch_size is not None and args.calib_batch_size < 1:
        raise ConfigError(f"--calib-batch-size must be >= 1, got {args.calib_batch_size}")
    from ..workflow import memory_option

    return {"eval_weights": args.eval_weights, "calibration_batch_size": args.calib_batch_size,
            "mode": getattr(args, "mode", "stagewise"), "max_memory": memory_option(args),
            "offload_dir": args.offload_dir}


def _ints(text: str, what: str) -> list[int]:
    from ..errors import ConfigError

    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated integers, got {text!r}") from None


def _floats(text: str, what: str) -> list[float]:
    from ..errors import ConfigError
    from ..types import check_ratio

    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated numbers, got {text!r}") from None
    return [check_ratio(v) for v in values]


def _model_name(spec: str) -> str:
    from ..models.loading import resolve_model_spec
    from ..vision.bench import is_vision_model_dir

    if is_vision_model_dir(spec):  # as VisionWorkbench names it: the directory's name
        return Path(spec).expanduser().resolve().name

    info = resolve_model_spec(spec).info
    return str(Path(info.path).resolve()) if info.source == "local" and info.path else info.name


