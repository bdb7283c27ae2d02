"""Install requirements with pip for `make demo` / `make test`, and when pip fails, say so in one line:
the package that failed, why (no network, a read-only folder, no such version), and the command to run.

    python tools/install.py [pip install arguments ...]

Runs `python -m pip install --quiet ARGS` with the interpreter that runs this script (the project's
virtual environment). pip's own output is kept in .venv/pip-install.log for whoever wants the detail.
Exit status: pip's 0, or 2 with one line on stderr.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

REASONS = (
    (r"(?i)read-only file system|permission denied|\[Errno 13\]|\[Errno 30\]", "the install folder is not writable"),
    (r"(?i)failed to establish a new connection|temporary failure in name resolution|network is unreachable|"
     r"connection (?:refused|reset|aborted)|max retries exceeded|timed out", "no network to the package index"),
    (r"(?i)no matching distribution found|could not find a version that satisfies", "no such version on the index"),
    (r"(?i)no space left on device", "the disk is full"),
)
PACKAGE = (r"(?i)no matching distribution found for ([^\s;]+)",
           r"(?i)could not find a version that satisfies the requirement ([^\s;]+)",
           r"(?i)(?:collecting|downloading|processing) ([A-Za-z0-9_.\-\[\],=<>!]+)")


def diagnose(output: str, args: list[str]) -> tuple[str, str]:
    """(the package pip failed on, the reason) read from pip's output."""
    reason = next((why for pattern, why in REASONS if re.search(pattern, output)), "pip failed")
    package = None
    for pattern in PACKAGE[:2]:
        found = re.findall(pattern, output)
        if found:
            package = found[-1]
            break
    if package is None:  # the last package pip was busy with, else what was asked for
        busy = re.findall(PACKAGE[2], output)
        asked = [a for a in args if not a.startswith("-")]
        package = busy[-1] if busy else (asked[-1] if asked else " ".join(args))
    return package.strip("'\""), reason


def main() -> int:
    args = sys.argv[1:]
    command = [sys.executable, "-m", "pip", "install", "--quiet", *args]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    log = Path(sys.prefix) / "pip-install.log"
    try:
        with log.open("a", encoding="utf-8") as f:
            f.write(f"$ {shlex.join(command)}\n{done.stdout}{done.stderr}\n")
    except OSError:
        log = None
    if done.returncode == 0:
        return 0
    package, reason = diagnose(done.stdout + done.stderr, args)
    rerun = shlex.join([str(Path(sys.executable)), "-m", "pip", "install", *args])
    where = f"; pip's output: {log}" if log else ""
    print(f"install: cannot install {package} ({reason}); run: {rerun}{where}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
