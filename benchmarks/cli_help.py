"""How long `crescendo --help` and every subcommand's `--help` take, each in a fresh process (issue 28's
target: under one second). Prints the median and the slowest of `--runs` runs per command, and the load
average; run it with nothing else on the cores.

    python benchmarks/cli_help.py [--runs 5] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from crescendo.cli import build_parser
from crescendo.store import code_commit


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    exe = shutil.which("crescendo") or str(Path(sys.executable).with_name("crescendo"))
    commands = [[]] + [[c] for c in sorted(build_parser()._subparsers._group_actions[0].choices)]  # noqa: SLF001
    lines = [f"# crescendo --help timings (code {code_commit()}, {os.cpu_count()} CPUs, load "
             f"{os.getloadavg()[0]:.2f}), {args.runs} fresh processes each", "",
             "| command | median s | slowest s |", "|---|---|---|"]
    worst = 0.0
    for command in commands:
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            subprocess.run([exe, *command, "--help"], capture_output=True, check=True)
            times.append(time.perf_counter() - start)
        worst = max(worst, max(times))
        lines.append(f"| crescendo {' '.join(command + ['--help'])} | {statistics.median(times):.3f} | {max(times):.3f} |")
    lines += ["", f"slowest of all: {worst:.3f} s (target < 1 s); load average after {os.getloadavg()[0]:.2f}"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
