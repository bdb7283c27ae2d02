"""train-reference: train a vision reference model, report its test accuracy, save it."""

from __future__ import annotations

import json


def _cmd_train_reference(args) -> int:
    from ..errors import ConfigError
    from ..outputs import check_output_dir

    # every check before anything is loaded or trained: a bad input writes nothing
    if args.epochs is not None and args.epochs < 1:
        raise ConfigError(f"--epochs must be at least 1, got {args.epochs}")
    if args.seed < 0:
        raise ConfigError(f"--seed must be a non-negative integer, got {args.seed}")
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {args.threads}")
    if args.data_dir is not None and args.dataset != "fashion-mnist":
        raise ConfigError(f"--data-dir only applies to fashion-mnist; {args.dataset} is embedded")
    if args.out is not None:
        check_output_dir(args.out)
    from ..workflow import check_device

    check_device(args.device)

    import torch

    from ..data.images import load_image_dataset
    from ..vision import train_reference
    from .common import progress_wanted

    data = load_image_dataset(args.dataset, args.data_dir)  # a missing or malformed file fails before training
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    result = train_reference(data, args.arch, seed=args.seed, out=args.out, epochs=args.epochs,
                             device=args.device, progress=progress_wanted(args))
    training = result.metadata["training"]
    summary = {
        "dataset": result.metadata["dataset"],
        "arch": args.arch,
        "seed": args.seed,
        "epochs": training["epochs"],
        "test_accuracy": result.accuracy.accuracy,
        "test_correct": result.accuracy.correct,
        "test_total": result.accuracy.total,
        "train_seconds": training["train_seconds"],
        "threads": training["threads"],
        "parameters": result.metadata["parameters"],
        "final_train_loss": training["history"][-1]["loss"],
        "saved": str(result.directory) if result.directory else None,
    }
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"{summary['arch']} on {summary['dataset']} (seed {args.seed}, {summary['epochs']} epochs, "
          f"{summary['parameters']:,} parameters, {summary['threads']} threads)")
    print(f"  test accuracy {summary['test_accuracy']:.2f}% ({summary['test_correct']}/{summary['test_total']})  "
          f"train {summary['train_seconds']:.0f} s  final train loss {summary['final_train_loss']:.4f}")
    if result.directory:
        print(f"  saved to {result.directory}")
    return 0
