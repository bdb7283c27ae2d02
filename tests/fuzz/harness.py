"""Structure-aware fuzzing of every file format crescendo reads (issue 27): what every example asserts,
the budgets and the mutations the targets share.

Budget: each target runs a fixed, derandomized number of examples in `make test` (a few seconds in
all). The longer run is one command:

    CRESCENDO_FUZZ_EXAMPLES=400 .venv/bin/python -m pytest tests/fuzz -q -p no:cacheprovider \\
        --hypothesis-show-statistics

which gives every target that many examples (`CRESCENDO_FUZZ_SEED=N` draws another fixed sequence
instead of the derandomized one). Each example asserts what the hand-written hostile-input table
asserts (tests/cli/test_hostile_inputs.py): exit 2 (1 for a failed verify) or, for a mutation that
happens to leave a valid file, 0; one line on stderr, no traceback, nothing written; and memory
bounded twice: the whole run under an address-space limit, each example's peak resident growth
below PEAK_BYTES.
"""

from __future__ import annotations

import json
import os
import resource
from pathlib import Path

import pytest
from formats import peak_growth
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from crescendo.cli import main

PEAK_BYTES = 512 << 20  # per example; the tiny models and files here need a few MiB
ADDRESS_SPACE = 4 << 30  # beyond what the process maps when the fuzzing starts


def budget(ci_examples: int):
    """Hypothesis settings of one target: `ci_examples` in `make test`, CRESCENDO_FUZZ_EXAMPLES in a long run."""
    examples = int(os.environ.get("CRESCENDO_FUZZ_EXAMPLES", ci_examples))
    seed = os.environ.get("CRESCENDO_FUZZ_SEED")
    return settings(max_examples=examples, derandomize=seed is None, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large, HealthCheck.filter_too_much])


def fixed_seed():
    """`hypothesis.seed` of a long run with CRESCENDO_FUZZ_SEED (a no-op otherwise)."""
    from hypothesis import seed

    value = os.environ.get("CRESCENDO_FUZZ_SEED")
    return seed(int(value)) if value is not None else (lambda f: f)


@pytest.fixture(scope="module", autouse=True)
def address_space_limit():
    """An allocation of more than ADDRESS_SPACE beyond what the process maps fails instead of exhausting
    the machine (the mechanism of test_hostile_inputs.py`s `bounded_memory`, for each fuzz module)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    mapped = int(next(line for line in Path("/proc/self/status").read_text().splitlines()
                      if line.startswith("VmSize:")).split()[1]) * 1024
    limit = mapped + ADDRESS_SPACE if hard == resource.RLIM_INFINITY else min(mapped + ADDRESS_SPACE, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    yield
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("CRESCENDO_CACHE", str(tmp_path / "cache"))


def snapshot(*roots: Path) -> dict[str, tuple]:
    seen = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                st_ = p.lstat()
                seen[str(p)] = (p.is_dir(), 0 if p.is_dir() else st_.st_size, 0 if p.is_dir() else st_.st_mtime_ns)
    return seen


def run_cli(argv: list[str], capsys, roots: list[Path], codes: tuple[int, ...]) -> int:
    """Run the CLI in-process and assert the hostile-input promises: the exit code is one of `codes`;
    a refusal is one line on stderr naming crescendo, never a traceback; nothing under `roots` is
    created, changed or removed; the resident set rises by less than PEAK_BYTES. Returns the code."""
    capsys.readouterr()
    before = snapshot(*roots)
    with peak_growth() as peak:
        try:
            code = main(argv)
        except SystemExit as e:  # argparse
            code = e.code if isinstance(e.code, int) else 2
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err[-2000:]
    assert code in codes, f"exit {code} (expected one of {codes}): {err.strip()[:500]}"
    if code != 0:
        lines = err.strip("\n").split("\n")
        assert len(lines) == 1 and lines[0].startswith("crescendo: "), f"not one line: {err[:600]!r}"
        assert out == "", out[:300]
    assert snapshot(*roots) == before, "files were created, changed or removed"
    assert peak["bytes"] < PEAK_BYTES, f"peak memory rose by {peak['bytes'] >> 20} MiB"
    return code


# -- JSON documents: every path of a document, and what can be put there -----------------------------------
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from([2**31, 2**40, 2**62, 2**64, -2**63, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["", "nosuch", "float32", "int8", "../x", "/etc/passwd", "a\u0000b", "rtn:w4", "magnitude:0.5"]))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=8)


def paths(doc, prefix=()) -> list[tuple]:
    """Every key path of a JSON document (the root excluded)."""
    out = []
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else []
    for key, value in items:
        out.append(prefix + (key,))
        out.extend(paths(value, prefix + (key,)))
    return out


def _parent(doc, path):
    for key in path[:-1]:
        doc = doc[key]
    return doc


@st.composite
def mutated_json(draw, doc, *, max_changes: int = 3):
    """`doc` with 1..max_changes changes at paths of its tree: delete, replace by any JSON value, enlarge a
    number, or put a huge list where a shape was."""
    doc = json.loads(json.dumps(doc))
    for _ in range(draw(st.integers(1, max_changes))):
        every = paths(doc)
        if not every:
            break
        path = draw(st.sampled_from(every))
        parent, key = _parent(doc, path), path[-1]
        old = parent[key]
        action = draw(st.sampled_from(["delete", "replace", "enlarge", "retype"]))
        if action == "delete":
            del parent[key]
        elif action == "enlarge" and isinstance(old, int) and not isinstance(old, bool):
            parent[key] = draw(st.sampled_from([old * 1000, old * 2**20, 2**31, 2**62, -old - 1, 0]))
        elif action == "enlarge" and isinstance(old, list):
            parent[key] = old + draw(st.lists(json_values, min_size=1, max_size=3))
        elif action == "retype":
            parent[key] = draw(st.sampled_from([str(old), [old], {"v": old}, None, True, 1.5]))
        else:
            parent[key] = draw(json_values)
    return doc


# -- bytes: structure-blind damage on top of the structure-aware generators ----------------------------------
@st.composite
def damaged_bytes(draw, data: bytes, *, protect: int = 0):
    """`data` truncated, with bytes flipped or overwritten by a huge little-endian u64 (after `protect` bytes)."""
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        if len(data) <= protect + 8:
            break
        at = draw(st.integers(protect, len(data) - 8))
        action = draw(st.sampled_from(["truncate", "flip", "u64", "insert"]))
        if action == "truncate":
            del data[at:]
        elif action == "flip":
            data[at] ^= draw(st.integers(1, 255))
        elif action == "u64":
            data[at:at + 8] = draw(st.sampled_from([2**62, 2**32 + 1, 2**64 - 1, 10**12])).to_bytes(8, "little")
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)
