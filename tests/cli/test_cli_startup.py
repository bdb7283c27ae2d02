"""`crescendo --help` and every subcommand's help answer without importing torch (issue 28; the time is
measured by benchmarks/cli_help.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from crescendo.cli import build_parser

SUBCOMMANDS = sorted(build_parser()._subparsers._group_actions[0].choices)  # noqa: SLF001


@pytest.mark.parametrize("argv", [["--help"]] + [[c, "--help"] for c in SUBCOMMANDS])
def test_help_imports_no_model_code(argv):
    code = ("import sys\nfrom crescendo.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "heavy = sorted(m for m in ('torch', 'transformers', 'numpy', 'scipy', 'matplotlib') if m in sys.modules)\n"
            "print('HEAVY', heavy)")
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "HEAVY []" in done.stdout, done.stdout[-300:]
    assert "usage:" in done.stdout
