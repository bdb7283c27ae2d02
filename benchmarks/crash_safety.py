"""kill -9 at random moments and at commit time, then rerun: no row lost or duplicated (issue 27).

Every command that writes a results store or an output is run on tiny random models built here (a run
takes about a second), killed with SIGKILL, inspected, and rerun to completion:

    sweep (one lane; two lanes)   order --store   search --store   chooser_holdout.py measure
    compress --save in hf, packed, gguf and compressed-tensors

A kill is either at a random moment (SIGKILL to the run's process group, lanes included, after a delay
drawn from the command's measured duration) or at commit time: the run kills its own process group
just before or just after a store transaction's COMMIT, or an output's rename into place. After the
kill the store must pass `PRAGMA integrity_check` and the output path must be absent or complete (a
packed, GGUF or compressed-tensors export passes `verify`; an hf save has every file, its weights
readable). The rerun must then end with every row committed before the kill unchanged, every row a
clean run writes present, no key stored twice and no temporary left beside the output.

    python benchmarks/crash_safety.py --kills 60 --seed 1 --json crash.json

Runs are forked from this process, which imports crescendo but computes nothing itself (forking is
only safe before torch starts its thread pools), so a run costs no interpreter start.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from crash_world import build_world, fork_run, kill_group, reap_group, run_cli, run_holdout, verify_output, wait  # noqa: E402

STORE_COMMANDS = ("sweep", "sweep-lanes", "order", "search", "holdout")
SAVE_FORMATS = ("hf", "packed", "gguf", "compressed-tensors")


# -- the orchestrator ---------------------------------------------------------------------------------------
class Campaign:
    def __init__(self, root: Path, rng: random.Random) -> None:
        self.root, self.rng = root, rng
        self.logs = root / "logs"
        self.logs.mkdir()
        if self._run(build_world, root) != 0:
            raise RuntimeError(f"building the tiny models failed: see {self.logs}")
        self.reference: dict[str, tuple[set, int, float]] = {}  # command -> (keys, commits, seconds)

    def _run(self, target, *args, kill_after: float | None = None) -> int:
        pid = fork_run(target, *args, log=self.logs / "runs.log")
        if kill_after is None:
            code = wait(pid)
        else:
            time.sleep(kill_after)
            kill_group(pid)
            code = wait(pid)
        reap_group(pid)
        return code

    def argv(self, command: str, store: Path, out: Path) -> tuple:
        r = self.root
        base = ["--model", str(r / ("bpe" if "gguf" in command else "model")), "--protocol",
                f"text:{r / 'test.txt'},{r / 'calib.txt'}", "--seqlen", "32", "--eval-windows", "2", "--nsamples",
                "2", "--quiet"]
        if command == "holdout":
            return run_holdout, str(r / "plan.json"), str(store)
        argv = {
            "sweep": ["sweep", *base, "--prune", "magnitude", "--ratios", "0.3,0.5", "--bits", "4,8", "--lanes", "1",
                      "--cache", str(r / "cache"), "--store", str(store), "--json"],
            "sweep-lanes": ["sweep", *base, "--prune", "magnitude", "--ratios", "0.3,0.5", "--bits", "4,8", "--lanes",
                            "2", "--no-cache", "--store", str(store), "--json"],
            "order": ["order", *base, "--methods", "magnitude:0.5", "rtn:w4", "--bits", "4,8", "--layerwise-samples",
                      "1", "--store", str(store), "--json"],
            "search": ["search", *base, "--target-bops", "4", "--generations", "2", "--population", "4", "--store",
                       str(store), "--json"],
        }.get(command)
        if argv is None:  # a save
            fmt = command.removeprefix("save-")
            recipe = "rtn:w4,g32,sym,fmt=q4_0" if fmt == "gguf" else "magnitude:0.5 > rtn:w4,g32"
            argv = ["compress", *base, "--no-dense", "--json", "--recipe", recipe, "--format", fmt, "--save", str(out)]
        return run_cli, argv

    def start(self, command: str, store: Path, out: Path, kill: dict | None, kill_after: float | None) -> int:
        target, *args = self.argv(command, store, out)
        return self._run(target, *args, kill, kill_after=kill_after)

    def measure_reference(self, command: str) -> None:
        work = Path(tempfile.mkdtemp(dir=self.root, prefix=f"ref-{command}-"))
        store, out = work / "s.sqlite", work / ("out.gguf" if command == "save-gguf" else "out")
        start = time.perf_counter()
        code = self.start(command, store, out, None, None)
        seconds = time.perf_counter() - start
        if code != 0:
            raise RuntimeError(f"a clean {command} run failed (exit {code}): see {self.logs}")
        keys = set(_rows(store)) if store.exists() else set()
        self.reference[command] = (keys, _commits(store), seconds)

    def kill_once(self, command: str, index: int) -> dict:
        keys, commits, seconds = self.reference[command]
        work = self.root / f"k{index:04d}-{command}"
        work.mkdir()
        store, out = work / "s.sqlite", work / ("out.gguf" if command == "save-gguf" else "out")
        saves = command.startswith("save-")
        mode = self.rng.choice(["random", "commit"])
        if mode == "commit":
            kill = {"mode": "rename" if saves else "commit", "when": self.rng.choice(["before", "after"]),
                    "n": self.rng.randint(1, max(1, commits))}
            after = None
        else:
            kill, after = {"mode": "random"}, self.rng.uniform(0.0, seconds * 1.2)
        code = self.start(command, store, out, kill, after)
        result = {"command": command, "kill": kill, "delay": after, "killed": code in (-9, 137),
                  "integrity": "ok", "partial_output": False, "lost": 0, "duplicated": 0}
        committed = {}
        if store.exists():
            result["integrity"] = _integrity(store)
            committed = _rows(store)
        if saves and out.exists():
            result["partial_output"] = self._run(verify_output, str(out), command.removeprefix("save-")) != 0
        if not (saves and out.exists()):
            if self.start(command, store, out, None, None) != 0:
                raise RuntimeError(f"the rerun of {command} failed: see {self.logs}")
        if saves:
            result["partial_output"] |= self._run(verify_output, str(out), command.removeprefix("save-")) != 0
            leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.tmp-")]
            result["temporaries_left"] = leftovers
            result["partial_output"] |= bool(leftovers)
            return result
        final = _rows(store)
        result["integrity"] = result["integrity"] if result["integrity"] != "ok" else _integrity(store)
        result["lost"] = len(keys - set(final)) + sum(1 for k, v in committed.items() if final.get(k) != v)
        result["duplicated"] = _duplicates(store)
        return result


def _rows(store: Path) -> dict[str, str]:
    """key -> (recipe, seed, metrics) of every committed row (read as a writer would recover it)."""
    conn = sqlite3.connect(store)
    try:
        return {k: f"{r}|{s}|{m}" for k, r, s, m in conn.execute("SELECT key, recipe, seed, metrics FROM runs")}
    finally:
        conn.close()


def _commits(store: Path) -> int:
    if not store.exists():
        return 1
    conn = sqlite3.connect(store)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0])
    finally:
        conn.close()


def _integrity(store: Path) -> str:
    """'ok', or what `PRAGMA integrity_check` (or SQLite opening the file) says is wrong."""
    conn = sqlite3.connect(store)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    except sqlite3.DatabaseError as e:
        return f"error: {e}"
    finally:
        conn.close()


def _duplicates(store: Path) -> int:
    conn = sqlite3.connect(store)
    try:
        total, distinct = conn.execute("SELECT COUNT(*), COUNT(DISTINCT model || '|' || protocol || '|' || recipe || "
                                       "'|' || seed) FROM runs").fetchone()
        return int(total - distinct)
    finally:
        conn.close()


def campaign(kills: int, seed: int = 0, commands: tuple[str, ...] | None = None, keep: str | None = None) -> dict:
    import crescendo.cli  # noqa: F401 - imported once here, so every forked run starts warm

    commands = commands or STORE_COMMANDS + tuple(f"save-{f}" for f in SAVE_FORMATS)
    root = Path(tempfile.mkdtemp(prefix="crescendo-crash-", dir=keep))
    start = time.perf_counter()
    try:
        run = Campaign(root, random.Random(seed))
        for command in commands:
            run.measure_reference(command)
        results = [run.kill_once(commands[i % len(commands)], i) for i in range(kills)]
    finally:
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)
    per = {c: {"kills": 0, "killed": 0, "rows_lost": 0, "rows_duplicated": 0, "integrity_failures": 0,
               "partial_outputs": 0} for c in commands}
    for r in results:
        p = per[r["command"]]
        p["kills"] += 1
        p["killed"] += r["killed"]
        p["rows_lost"] += r["lost"]
        p["rows_duplicated"] += r["duplicated"]
        p["integrity_failures"] += r["integrity"] != "ok"
        p["partial_outputs"] += r["partial_output"]
    total = {k: sum(p[k] for p in per.values()) for k in next(iter(per.values()))}
    return {"seed": seed, "seconds": round(time.perf_counter() - start, 1), "total": total, "per_command": per,
            "kills": results}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=len(STORE_COMMANDS) + len(SAVE_FORMATS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--commands", nargs="*", default=None,
                        help=f"a subset of {', '.join(STORE_COMMANDS + tuple('save-' + f for f in SAVE_FORMATS))}")
    parser.add_argument("--json", default=None, help="write the full record here")
    parser.add_argument("--keep", default=None, help="keep the work folder under this directory")
    args = parser.parse_args()
    summary = campaign(args.kills, args.seed, tuple(args.commands) if args.commands else None, args.keep)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: summary[k] for k in ("seed", "seconds", "total", "per_command")}, indent=2))
    t = summary["total"]
    return 0 if t["rows_lost"] == t["rows_duplicated"] == t["integrity_failures"] == t["partial_outputs"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
