"""Hostile and broken inputs across every subcommand (issue 12).

Each case asserts: exit code 2 (1 for an export `verify` finds broken), exactly one line on stderr
naming the problem, no traceback, nothing on stdout, and no file created, changed or removed (the
case's tmp directory, the shared fixtures and the working directory are snapshotted before and
after). The security cases (crafted shapes and sizes, YAML bombs, paths outside an export) run in a
subprocess under an address-space limit, so an unbounded allocation fails the test instead of the
machine.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import TINY_PROTOCOL_ARGS

from crescendo.cli import main

# ---------------------------------------------------------------------------------------------- harness


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]  # placeholders: {model} {proto} {tmp} {export} {vision} {test} {calib}
    message: str  # a substring (case-insensitive) the one stderr line must contain
    setup: Callable[[Path, dict], None] | None = None  # writes the case's bad files under tmp
    code: int = 2


def C(id, argv, message, setup=None, code=2):  # noqa: N802 - a table row
    return Case(id, tuple(argv), message, setup, code)


def _snapshot(*roots: Path) -> dict[str, tuple]:
    seen = {}
    for root in roots:
        if not root.exists():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                st = p.lstat()
                seen[str(p)] = (p.is_dir(), st.st_size if not p.is_dir() else 0, st.st_mtime_ns if not p.is_dir() else 0)
    return seen


def _fill(arg: str, places: dict) -> str:
    for key, value in places.items():
        arg = arg.replace("{" + key + "}", str(value))
    return arg


def _call(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse
        code = e.code if isinstance(e.code, int) else 2
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _check(case: Case, code: int, out: str, err: str) -> None:
    assert "Traceback" not in err, err
    assert out == "", f"stdout not empty: {out[:300]!r}"
    lines = err.strip("\n").split("\n")
    assert err.endswith("\n") and len(lines) == 1 and lines[0], f"stderr is not one line: {err[:600]!r}"
    assert code == case.code, f"exit {code}, expected {case.code}: {err.strip()}"
    assert case.message.lower() in err.lower(), f"{case.message!r} not in {err.strip()!r}"


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def world(saved_tiny, tmp_path_factory):
    """The shared inputs: the tiny model and corpus, a packed export of it, a tiny vision model."""
    model_dir, protocol = saved_tiny
    root = tmp_path_factory.mktemp("hostile")
    export = root / "export"
    assert main(["compress", "--model", str(model_dir), "--protocol", protocol, *TINY_PROTOCOL_ARGS,
                 "--recipe", "magnitude:0.5 > rtn:w4,g32", "--quiet", "--no-dense", "--json",
                 "--save", str(export), "--format", "packed"]) == 0
    from crescendo.models.vision import ResNetMiniConfig, build_vision_model
    from crescendo.models.vision_io import save_vision_model

    torch.manual_seed(0)
    save_vision_model(build_vision_model(ResNetMiniConfig(image_size=8, widths=(8, 16), depths=(1, 1),
                                                          strides=(1, 2))), root / "vision")
    text_files = protocol.removeprefix("text:").split(",")
    return {"model": model_dir, "proto": protocol, "export_src": export, "vision": root / "vision",
            "test": text_files[0], "calib": text_files[1], "roots": [model_dir.parent, root]}


@pytest.fixture
def hostile_env(tmp_path, monkeypatch):
    """A working directory and cache directory inside tmp (a default store or cache shows up in the
    snapshot), and no network."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("CRESCENDO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    return tmp_path


@pytest.fixture
def bounded_memory():
    """A safety net for the in-process cases: an allocation of more than a few GiB beyond what the
    test process already maps fails (MemoryError / RuntimeError) instead of exhausting the machine."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    mapped = int(next(line for line in Path("/proc/self/status").read_text().splitlines()
                      if line.startswith("VmSize:")).split()[1]) * 1024
    limit = mapped + (4 << 30)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    yield
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _run_case(case: Case, world: dict, tmp: Path, capsys) -> None:
    places = {**world, "tmp": tmp, "export": tmp / "export"}
    if any("{export}" in a for a in case.argv):
        shutil.copytree(world["export_src"], tmp / "export")
    if case.setup is not None:
        case.setup(tmp, places)
    argv = [_fill(a, places) for a in case.argv]
    roots = [tmp, *world["roots"]]
    before = _snapshot(*roots)
    code, out, err = _call(argv, capsys)
    _check(case, code, out, err)
    after = _snapshot(*roots)
    assert after == before, f"files changed: {sorted(set(after.items()) ^ set(before.items()))[:6]}"


# ---------------------------------------------------------------------------------------------- setups


def write(rel: str, data: str | bytes) -> Callable[[Path, dict], None]:
    def setup(tmp: Path, places: dict) -> None:
        path = tmp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
    return setup


def mkdir(rel: str, *files: str) -> Callable[[Path, dict], None]:
    def setup(tmp: Path, places: dict) -> None:
        (tmp / rel).mkdir(parents=True, exist_ok=True)
        for f in files:
            (tmp / rel / f).write_text("user data")
    return setup


def both(*setups) -> Callable[[Path, dict], None]:
    def setup(tmp: Path, places: dict) -> None:
        for s in setups:
            s(tmp, places)
    return setup


def model_copy(edit: Callable[[Path], None]) -> Callable[[Path, dict], None]:
    """A copy of the tiny model at tmp/m, changed by `edit(directory)`."""
    def setup(tmp: Path, places: dict) -> None:
        shutil.copytree(places["model"], tmp / "m")
        edit(tmp / "m")
    return setup


def edit_json(name: str, change: Callable[[dict], object]) -> Callable[[Path], None]:
    def edit(directory: Path) -> None:
        data = json.loads((directory / name).read_text())
        result = change(data)
        (directory / name).write_text(json.dumps(data if result is None else result))
    return edit


def config_set(**values) -> Callable[[Path], None]:
    return edit_json("config.json", lambda c: c.update(values))


def truncate(name: str, keep: int | None = None) -> Callable[[Path], None]:
    def edit(directory: Path) -> None:
        data = (directory / name).read_bytes()
        (directory / name).write_bytes(data[: len(data) // 2 if keep is None else keep])
    return edit


def replace_file(name: str, data: bytes) -> Callable[[Path], None]:
    def edit(directory: Path) -> None:
        (directory / name).write_bytes(data)
    return edit


def remove(name: str) -> Callable[[Path], None]:
    def edit(directory: Path) -> None:
        (directory / name).unlink()
    return edit


def pickle_only(directory: Path) -> None:
    from safetensors.torch import load_file

    tensors = load_file(str(directory / "model.safetensors"))
    (directory / "model.safetensors").unlink()
    torch.save(tensors, directory / "pytorch_model.bin")


def wrong_shapes(directory: Path) -> None:
    from safetensors.torch import save_file

    save_file({"model.embed_tokens.weight": torch.zeros(3, 3)}, str(directory / "model.safetensors"))


def export_edit(edit: Callable[[Path], None]) -> Callable[[Path, dict], None]:
    """Change the case's copy of the packed export (tmp/export)."""
    def setup(tmp: Path, places: dict) -> None:
        edit(tmp / "export")
    return setup


def manifest(change: Callable[[dict], object]) -> Callable[[Path, dict], None]:
    return export_edit(edit_json("crescendo_export.json", change))


def first_linear(change: Callable[[dict], None]) -> Callable[[dict], None]:
    def edit(m: dict) -> None:
        change(next(iter(m["linears"].values())))
    return edit


def tensors_edit(change: Callable[[dict], None]) -> Callable[[Path, dict], None]:
    def setup(tmp: Path, places: dict) -> None:
        from safetensors.torch import load_file, save_file

        path = tmp / "export" / "crescendo-packed.safetensors"
        tensors = load_file(str(path))
        change(tensors)
        save_file(tensors, str(path))
    return setup


def _nan_in_float(tensors: dict) -> None:
    key = next(k for k, t in tensors.items() if t.is_floating_point() and t.numel() > 1)
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] = float("nan")


def foreign_sqlite(rel: str) -> Callable[[Path, dict], None]:
    def setup(tmp: Path, places: dict) -> None:
        conn = sqlite3.connect(tmp / rel)
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, amount REAL)")
        conn.execute("INSERT INTO invoices (amount) VALUES (12.5)")
        conn.commit()
        conn.close()
    return setup


def other_schema_store(rel: str) -> Callable[[Path, dict], None]:
    def setup(tmp: Path, places: dict) -> None:
        conn = sqlite3.connect(tmp / rel)
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
        conn.execute("CREATE TABLE runs (key TEXT PRIMARY KEY)")
        conn.execute("INSERT INTO meta VALUES ('schema_version', '999')")
        conn.commit()
        conn.close()
    return setup


BILLION_LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
    f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(8)
) + "stages: *i\n"
GZ_NAMES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
            "t10k-labels-idx1-ubyte.gz")

# ---------------------------------------------------------------------------------------------- the table

M = ("--model", "{model}", "--protocol", "{proto}", *TINY_PROTOCOL_ARGS, "--quiet")
V = ("--model", "{vision}", "--protocol", "digits-v1", "--quiet")


def compress(recipe, *more):
    return ("compress", *M, "--recipe", recipe, *more)


RECIPE = [
    C("recipe-empty", compress(""), "empty recipe"),
    C("recipe-blank", compress("   "), "empty recipe"),
    C("recipe-only-separator", compress(">"), "empty stage"),
    C("recipe-trailing-separator", compress("rtn:w4 >"), "empty stage"),
    C("recipe-leading-separator", compress("> rtn:w4"), "empty stage"),
    C("recipe-double-separator", compress("sparsegpt:0.5 >> gptq:w4"), "empty stage"),
    C("recipe-unknown-method", compress("nosuch:0.5"), "unknown method"),
    C("recipe-digit-method", compress("123:0.5"), "malformed"),
    C("recipe-unicode-method", compress("spärsegpt:0.5"), "malformed"),
    C("recipe-newline", compress("rtn:w4\nsparsegpt:0.5"), "rtn"),
    C("recipe-nul", compress("rtn:w4\x00"), "rtn"),
    C("recipe-empty-argument", compress("rtn:w4,,g32"), "empty argument"),
    C("recipe-keyword-twice", compress("gptq:w4,bs=64,bs=32"), "twice"),
    C("recipe-bits-twice", compress("gptq:w4,w8"), "w8"),
    C("recipe-same-positional-twice", compress("rtn:w4,w4"), "twice"),
    C("recipe-two-ratios", compress("magnitude:0.5,0.6"), "0.6"),
    C("recipe-too-long", compress("rtn:w4" + " " * 10_001), "at most"),
    C("recipe-too-many-stages", compress(" > ".join(["rtn:w8"] * 65)), "at most 64 stages"),
    C("recipe-rotate-not-first", compress("sparsegpt:0.5 > rotate"), "first stage"),
    C("recipe-foldbn-after-quant", compress("rtn:w4 > foldbn"), "before every weight quantization"),
    C("recipe-include-bad-regex", compress("rtn:w4,include=["), "include"),
    C("recipe-exclude-bad-regex", compress("rtn:w4,exclude=(a"), "exclude"),
    C("recipe-unknown-keyword", compress("rtn:w4,bogus=1"), "bogus"),
    C("recipe-unknown-positional", compress("rtn:w4,zzz"), "zzz"),
]

RANGES = [
    C("bits-9", compress("rtn:w9"), "bits"),
    C("bits-1", compress("rtn:w1"), "bits"),
    C("bits-0", compress("rtn:w0"), "bits"),
    C("bits-negative", compress("rtn:w-4"), "w-4"),
    C("bits-word", compress("rtn:wfoo"), "wfoo"),
    C("bits-huge", compress("rtn:w99999999999999999999"), "bits"),
    C("act-bits-1", compress("rtn:w4a1"), "bits"),
    C("act-bits-9", compress("rtn:w4a9"), "bits"),
    C("group-0", compress("rtn:w4,g0"), "g0"),
    C("group-negative", compress("rtn:w4,g-1"), "g-1"),
    C("ratio-above-1", compress("sparsegpt:1.5"), "ratio"),
    C("ratio-1", compress("sparsegpt:1.0"), "ratio"),
    C("ratio-negative", compress("magnitude:-0.1"), "-0.1"),
    C("ratio-nan", compress("magnitude:nan"), "ratio"),
    C("ratio-inf", compress("magnitude:inf"), "ratio"),
    C("ratio-overflow", compress("magnitude:1e400"), "ratio"),
    C("damp-negative", compress("gptq:w4,damp=-1"), "damp"),
    C("damp-nan", compress("gptq:w4,damp=nan"), "damp"),
    C("blocksize-0", compress("gptq:w4,bs=0"), "bs"),
    C("wanda-nm-equal", compress("wanda:4:4"), "N < M"),
    C("wanda-nm-zero-n", compress("wanda:0:4"), "N"),
    C("wanda-nm-n-above-m", compress("wanda:5:4"), "N < M"),
    C("wanda-nm-zero-m", compress("wanda:2:0"), "2:0"),
    C("wanda-nm-negative", compress("wanda:2:-4"), "2:-4"),
    C("wanda-nm-words", compress("wanda:a:b"), "a:b"),
    C("wanda-nm-three", compress("wanda:2:4:8"), "2:4:8"),
    C("nm-not-dividing", compress("magnitude:2:48"), "48"),
    C("sleb-too-many-blocks", compress("sleb:5"), "block"),
    C("seqlen-0", ("compress", *M, "--seqlen", "0", "--recipe", "rtn:w4"), "seqlen"),
    C("seqlen-negative", ("compress", *M, "--seqlen", "-5", "--recipe", "rtn:w4"), "seqlen"),
    C("seqlen-beyond-model", ("compress", *M, "--seqlen", "4096", "--recipe", "rtn:w4"), "at most 128 positions"),
    C("seqlen-word", ("compress", *M, "--seqlen", "abc", "--recipe", "rtn:w4"), "invalid int"),
    C("eval-windows-0", ("compress", *M, "--eval-windows", "0", "--recipe", "rtn:w4"), "window"),
    C("eval-windows-negative", ("compress", *M, "--eval-windows", "-3", "--recipe", "rtn:w4"), "window"),
    C("eval-windows-too-many", ("compress", *M, "--eval-windows", "1000", "--recipe", "rtn:w4"), "window"),
    C("nsamples-0", ("compress", *M, "--nsamples", "0", "--recipe", "gptq:w4"), "calibration"),
    C("nsamples-negative", ("compress", *M, "--nsamples", "-1", "--recipe", "gptq:w4"), "calibration"),
    C("calib-batch-0", ("compress", *M, "--calib-batch-size", "0", "--recipe", "gptq:w4"), "calib-batch-size"),
    C("dtype-float16", ("compress", *M, "--dtype", "float16", "--recipe", "rtn:w4"), "invalid choice"),
    C("eval-weights-bogus", ("compress", *M, "--eval-weights", "x", "--recipe", "rtn:w4"), "invalid choice"),
    C("mode-bogus", ("compress", *M, "--mode", "x", "--recipe", "rtn:w4"), "invalid choice"),
    C("interleaved-whole-model-stage", ("compress", *M, "--mode", "interleaved", "--recipe", "rtn:w4 > sleb:0.5"),
      "interleaved"),
    C("unknown-option", ("compress", *M, "--recipe", "rtn:w4", "--bogus"), "unrecognized"),
    C("recipe-missing", ("compress", *M), "--recipe"),
    C("no-subcommand", (), "required"),
    C("bogus-subcommand", ("frobnicate",), "invalid choice"),
]

YAML = [
    C("yaml-missing", compress("{tmp}/missing.yaml"), "not found"),
    C("yaml-directory", compress("{tmp}/d.yaml"), "not found", mkdir("d.yaml")),
    C("yaml-not-utf8", compress("{tmp}/r.yaml"), "not UTF-8", write("r.yaml", b"stages:\n  - rtn:w4 \xff\xfe\n")),
    C("yaml-invalid", compress("{tmp}/r.yaml"), "not valid YAML", write("r.yaml", "stages: [rtn:w4\n")),
    C("yaml-scalar", compress("{tmp}/r.yaml"), "non-empty list", write("r.yaml", "42\n")),
    C("yaml-empty-file", compress("{tmp}/r.yml"), "non-empty list", write("r.yml", "")),
    C("yaml-stages-mapping", compress("{tmp}/r.yaml"), "non-empty list", write("r.yaml", "stages: {a: 1}\n")),
    C("yaml-stages-empty", compress("{tmp}/r.yaml"), "non-empty list", write("r.yaml", "stages: []\n")),
    C("yaml-stage-number", compress("{tmp}/r.yaml"), "malformed YAML stage", write("r.yaml", "stages: [42]\n")),
    C("yaml-method-number", compress("{tmp}/r.yaml"), "method must be a string",
      write("r.yaml", "stages: [{method: 5}]\n")),
    C("yaml-args-number", compress("{tmp}/r.yaml"), "'args' must be a list",
      write("r.yaml", "stages: [{method: rtn, args: 4}]\n")),
    C("yaml-args-nested", compress("{tmp}/r.yaml"), "'args' must be a list",
      write("r.yaml", "stages: [{method: rtn, args: [{a: 1}]}]\n")),
    C("yaml-option-list", compress("{tmp}/r.yaml"), "plain value",
      write("r.yaml", "stages: [{method: rtn, bits: [4]}]\n")),
    C("yaml-python-tag", compress("{tmp}/r.yaml"), "not valid YAML",
      write("r.yaml", "stages: !!python/object/apply:os.system ['touch pwned']\n")),
    C("yaml-anchor", compress("{tmp}/r.yaml"), "anchors or aliases", write("r.yaml", BILLION_LAUGHS)),
    C("yaml-too-big", compress("{tmp}/r.yaml"), "bytes", write("r.yaml", "# " + "x" * 200_000 + "\nstages: [rtn:w4]\n")),
    C("yaml-too-many-stages", compress("{tmp}/r.yaml"), "at most 64 stages",
      write("r.yaml", "stages:\n" + "  - rtn:w8\n" * 65)),
    C("yaml-bad-stage-string", compress("{tmp}/r.yaml"), "empty stage", write("r.yaml", "stages: 'rtn:w4 >> x'\n")),
    C("yaml-bad-bits", compress("{tmp}/r.yaml"), "bits", write("r.yaml", "stages: [{method: rtn, args: [w9]}]\n")),
]

FILES = [  # corpora and protocols (eval on the tiny model)
    C("protocol-unknown", ("eval", "--model", "{model}", "--protocol", "no-such-protocol"), "unknown protocol"),
    C("protocol-empty", ("eval", "--model", "{model}", "--protocol", ""), "protocol"),
    C("corpus-missing", ("eval", "--model", "{model}", "--protocol", "text:{tmp}/none.txt", *TINY_PROTOCOL_ARGS),
      "none.txt"),
    C("corpus-not-utf8", ("eval", "--model", "{model}", "--protocol", "text:{tmp}/l.txt", *TINY_PROTOCOL_ARGS),
      "UTF-8", write("l.txt", "w1 w2 w3 caf\xe9 ".encode("latin-1") * 500)),
    C("corpus-binary", ("eval", "--model", "{model}", "--protocol", "text:{tmp}/b.txt", *TINY_PROTOCOL_ARGS),
      "b.txt", write("b.txt", bytes(range(256)) * 64)),
    C("corpus-empty", ("eval", "--model", "{model}", "--protocol", "text:{tmp}/e.txt", *TINY_PROTOCOL_ARGS),
      "e.txt", write("e.txt", "")),
    C("corpus-directory", ("eval", "--model", "{model}", "--protocol", "text:{tmp}/dir", *TINY_PROTOCOL_ARGS),
      "dir", mkdir("dir")),
    C("corpus-empty-path", ("eval", "--model", "{model}", "--protocol", "text:", *TINY_PROTOCOL_ARGS), "text:"),
    C("corpus-three-files", ("eval", "--model", "{model}", "--protocol", "text:{test},{calib},{test}",
                             *TINY_PROTOCOL_ARGS), "text:"),
    C("corpus-calib-missing", ("compress", "--model", "{model}", "--protocol", "text:{test},{tmp}/none.txt",
                               *TINY_PROTOCOL_ARGS, "--recipe", "gptq:w4"), "none.txt"),
    C("corpus-calib-not-utf8", ("compress", "--model", "{model}", "--protocol", "text:{test},{tmp}/l.txt",
                                *TINY_PROTOCOL_ARGS, "--recipe", "gptq:w4"), "UTF-8",
      write("l.txt", b"\xff\xfe w1 w2" * 500)),
    C("corpus-too-short", ("eval", "--model", "{model}", "--protocol", "text:{tmp}/s.txt", *TINY_PROTOCOL_ARGS),
      "window", write("s.txt", "w1 w2 w3")),
    C("wikitext-dir-missing", ("eval", "--model", "{model}", "--protocol", "wikitext2:{tmp}/none",
                               *TINY_PROTOCOL_ARGS), "none"),
    C("wikitext-dir-empty", ("eval", "--model", "{model}", "--protocol", "wikitext2:{tmp}/wt",
                             *TINY_PROTOCOL_ARGS), "wt", mkdir("wt")),
    C("vision-protocol-language-model", ("eval", "--model", "{model}", "--protocol", "fmnist-v1"),
      "not a crescendo vision model"),
    C("data-dir-language-protocol", ("eval", *M, "--data-dir", "{tmp}"), "--data-dir applies"),
]

MODELS = [
    C("model-missing", ("eval", "--model", "{tmp}/none", "--protocol", "{proto}"), "no such file"),
    C("model-plain-file", ("eval", "--model", "{tmp}/m.txt", "--protocol", "{proto}"), ".gguf",
      write("m.txt", "hello")),
    C("model-dir-without-config", ("eval", "--model", "{tmp}/d", "--protocol", "{proto}"), "no config.json",
      mkdir("d", "README")),
    C("model-hub-offline", ("eval", "--model", "nobody-xyz/no-model", "--protocol", "{proto}"), "nobody-xyz"),
]
_MODEL_DIR_CASES = [
    ("config-garbage", replace_file("config.json", b"{not json"), "config.json"),
    ("config-list", replace_file("config.json", b"[1, 2]"), "JSON object"),
    ("config-not-utf8", replace_file("config.json", b'{"model_type": "llama\xff"}'), "config.json"),
    ("config-hidden-size-string", config_set(hidden_size="64"), "hidden_size"),
    ("config-layers-negative", config_set(num_hidden_layers=-1), "num_hidden_layers"),
    ("config-vocab-float", config_set(vocab_size=96.5), "vocab_size"),
    ("config-model-type-number", config_set(model_type=5), "model_type"),
    ("config-model-type-unknown", config_set(model_type="nosucharch"), "nosucharch"),
    ("config-heads-not-dividing", config_set(num_attention_heads=3), "m"),
    ("config-parameters-huge", config_set(hidden_size=60000, intermediate_size=200000, num_hidden_layers=1000),
     "parameters"),
    ("weights-truncated", truncate("model.safetensors"), "m"),
    ("weights-garbage", replace_file("model.safetensors", b"\x00" * 64), "m"),
    ("weights-header-huge", replace_file("model.safetensors", (10**15).to_bytes(8, "little") + b"{}"), "m"),
    ("weights-wrong-shape", wrong_shapes, "m"),
    ("weights-pickle-only", pickle_only, "pickle"),
    ("weights-none", remove("model.safetensors"), "no .safetensors"),
    ("tokenizer-corrupt", replace_file("tokenizer.json", b"{corrupt"), "tokenizer"),
    ("tokenizer-missing", lambda d: [p.unlink() for p in d.glob("tokenizer*")] and None, "tokenizer"),
    ("tokenizer-remote-code", edit_json("tokenizer_config.json", lambda c: c.update(
        auto_map={"AutoTokenizer": ["evil.EvilTokenizer", None]}, tokenizer_class="EvilTokenizer")), "tokenizer"),
]
MODELS += [C(f"model-{name}", ("eval", "--model", "{tmp}/m", "--protocol", "{proto}", *TINY_PROTOCOL_ARGS, "--quiet"),
             message, model_copy(edit)) for name, edit, message in _MODEL_DIR_CASES]
MODELS += [
    C("gguf-garbage", ("eval", "--model", "{tmp}/x.gguf", "--protocol", "{proto}"), "x.gguf",
      write("x.gguf", b"GGUF" + b"\xff" * 60)),
    C("gguf-empty", ("eval", "--model", "{tmp}/x.gguf", "--protocol", "{proto}"), "x.gguf", write("x.gguf", b"")),
    C("gguf-text", ("eval", "--model", "{tmp}/x.gguf", "--protocol", "{proto}"), "x.gguf",
      write("x.gguf", "not a gguf file at all\n")),
]

DEVICE = [
    C("device-cuda-missing", ("compress", *M, "--device", "cuda", "--recipe", "rtn:w4"), "cuda"),
    C("device-cuda-index", ("compress", *M, "--device", "cuda:7", "--recipe", "rtn:w4"), "cuda"),
    C("device-bogus", ("compress", *M, "--device", "bogus", "--recipe", "rtn:w4"), "bogus"),
    C("device-meta", ("eval", *M, "--device", "meta"), "meta"),
    C("device-empty", ("eval", *M, "--device", ""), "device"),
    C("device-order", ("order", *M, "--device", "bogus", "--methods", "magnitude:0.5", "rtn:w4"), "bogus"),
    C("device-sweep", ("sweep", *M, "--device", "bogus", "--store", "{tmp}/s.db"), "bogus"),
    C("device-search", ("search", *M, "--device", "bogus", "--target-bops", "4"), "bogus"),
    C("device-demo", ("demo", *M, "--device", "bogus"), "bogus"),
    C("device-vision", ("compress", *V, "--device", "bogus", "--recipe", "rtn:w4"), "bogus"),
    C("device-train-reference", ("train-reference", "--dataset", "digits", "--arch", "resnet-mini",
                                 "--device", "bogus"), "bogus"),
]


def order(*more):
    return ("order", *M, *more)


STORE = [
    C("store-is-directory-order", order("--methods", "magnitude:0.5", "rtn:w4", "--store", "{tmp}/d"), "directory",
      mkdir("d")),
    C("store-parent-missing-order", order("--methods", "magnitude:0.5", "rtn:w4", "--store", "{tmp}/no/s.db"),
      "does not exist"),
    C("store-foreign-sqlite-order", order("--methods", "magnitude:0.5", "rtn:w4", "--store", "{tmp}/f.db"),
      "not a crescendo results store", foreign_sqlite("f.db")),
    C("store-foreign-sqlite-sweep", ("sweep", *M, "--store", "{tmp}/f.db"), "not a crescendo results store",
      foreign_sqlite("f.db")),
    C("store-foreign-sqlite-search", ("search", *M, "--target-bops", "4", "--store", "{tmp}/f.db"),
      "not a crescendo results store", foreign_sqlite("f.db")),
    C("store-other-schema-sweep", ("sweep", *M, "--store", "{tmp}/o.db"), "schema version",
      other_schema_store("o.db")),
    C("store-text-file", ("sweep", *M, "--store", "{tmp}/t.db"), "t.db", write("t.db", "hello, I am notes\n" * 50)),
    C("store-is-directory-sweep", ("sweep", *M, "--store", "{tmp}/d"), "directory", mkdir("d")),
    C("store-new-but-bad-bits", ("sweep", *M, "--bits", "9", "--store", "{tmp}/new.db"), "bits"),
    C("store-new-but-bad-methods", order("--methods", "nosuch:1", "rtn:w4", "--store", "{tmp}/new.db"),
      "unknown method"),
    C("store-new-but-bad-model", ("order", "--model", "{tmp}/none", "--protocol", "{proto}", "--methods",
                                  "magnitude:0.5", "rtn:w4", "--store", "{tmp}/new.db"), "no such file"),
    C("store-new-but-bad-protocol", ("sweep", "--model", "{model}", "--protocol", "nosuch", "--store",
                                     "{tmp}/new.db"), "unknown protocol"),
    C("store-new-but-bad-device", ("search", *M, "--target-bops", "4", "--device", "cuda:3", "--store",
                                   "{tmp}/new.db"), "cuda"),
]

OUTPUTS = [
    C("save-not-empty", compress("rtn:w4", "--save", "{tmp}/full"), "not empty", mkdir("full", "x")),
    C("save-under-file", compress("rtn:w4", "--save", "{tmp}/f/out"), "f", write("f", "x")),
    C("save-is-file", compress("rtn:w4", "--save", "{tmp}/f"), "exists", write("f", "x")),
    C("save-parent-missing", compress("rtn:w4", "--save", "{tmp}/a/b/out"), "does not exist"),
    C("save-proc", compress("rtn:w4", "--save", "/proc/crescendo-out"), "/proc"),
    C("save-sys", compress("rtn:w4", "--save", "/sys/crescendo-out"), "/sys"),
    C("save-gguf-suffix", compress("rtn:w4,g32,fmt=q4_1", "--format", "gguf", "--save", "{tmp}/x.bin"), ".gguf"),
    C("save-gguf-exists", compress("rtn:w4,g32,fmt=q4_1", "--format", "gguf", "--save", "{tmp}/x.gguf"), "exists",
      write("x.gguf", "x")),
    C("save-gguf-parent-missing", compress("rtn:w4,g32,fmt=q4_1", "--format", "gguf", "--save", "{tmp}/no/x.gguf"),
      "does not exist"),
    C("save-gguf-grid-does-not-fit", compress("rtn:w3", "--format", "gguf", "--save", "{tmp}/x.gguf"), "gguf"),
    C("save-ct-grid-does-not-fit", compress("hbfp4", "--format", "compressed-tensors", "--save", "{tmp}/ct"),
      "compressed-tensors"),
    C("format-without-save", compress("rtn:w4", "--format", "packed"), "needs --save"),
    C("format-bogus", compress("rtn:w4", "--format", "onnx", "--save", "{tmp}/o"), "invalid choice"),
    C("gguf-other-bogus", compress("rtn:w4", "--format", "gguf", "--gguf-other", "q2", "--save", "{tmp}/x.gguf"),
      "invalid choice"),
    C("save-hf-shared", compress("share:ratio=0.3", "--save", "{tmp}/s"), "packed"),
    C("plot-not-png", ("search", *M, "--target-bops", "4", "--plot", "{tmp}/p.txt"), ".png"),
    C("plot-folder-missing", ("search", *M, "--target-bops", "4", "--plot", "{tmp}/no/p.png"), "does not exist"),
    C("plot-is-directory", ("search", *M, "--target-bops", "4", "--plot", "{tmp}/p.png"), "directory", mkdir("p.png")),
    C("plot-proc", ("search", *M, "--target-bops", "4", "--plot", "/proc/p.png"), "/proc"),
]

REPORT = [
    C("report-store-missing", ("report", "--store", "{tmp}/none.db", "--out", "{tmp}/r"), "no results store"),
    C("report-store-text", ("report", "--store", "{tmp}/t.db", "--out", "{tmp}/r"), "t.db", write("t.db", "notes\n" * 99)),
    C("report-store-foreign", ("report", "--store", "{tmp}/f.db", "--out", "{tmp}/r"), "not a crescendo",
      foreign_sqlite("f.db")),
    C("report-store-directory", ("report", "--store", "{tmp}/d", "--out", "{tmp}/r"), "no results store", mkdir("d")),
    C("report-out-not-empty", ("report", "--store", "{tmp}/f.db", "--out", "{tmp}/full"), "",
      both(foreign_sqlite("f.db"), mkdir("full", "x"))),
    C("report-out-under-file", ("report", "--store", "{tmp}/o.db", "--out", "{tmp}/f/r"), "",
      both(other_schema_store("o.db"), write("f", "x"))),
    C("report-missing-out", ("report", "--store", "{tmp}/s.db"), "--out"),
    C("report-cer-anchor-bogus", ("report", "--store", "s", "--out", "o", "--cer-anchor", "x"), "invalid choice"),
]


def _empty_store(rel: str) -> Callable[[Path, dict], None]:
    def setup(tmp: Path, places: dict) -> None:
        from crescendo.store import ResultStore

        (tmp / rel).touch()  # an existing empty file becomes a store with the schema and no rows
        ResultStore(tmp / rel).close()
    return setup


REPORT += [
    C("report-empty-store", ("report", "--store", "{tmp}/e.db", "--out", "{tmp}/r"), "is empty", _empty_store("e.db")),
    C("report-out-proc", ("report", "--store", "{tmp}/e.db", "--out", "/proc/crescendo-r"), "/proc",
      _empty_store("e.db")),
    C("report-out-parent-missing", ("report", "--store", "{tmp}/e.db", "--out", "{tmp}/a/b"), "does not exist",
      _empty_store("e.db")),
]

ORDER = [
    C("order-one-method", order("--methods", "sparsegpt:0.5"), "two"),
    C("order-same-method-twice", order("--methods", "rtn:w4", "rtn:w4"), "distinct"),
    C("order-unknown-method", order("--methods", "nosuch:1", "rtn:w4"), "unknown method"),
    C("order-methods-missing", order(), "--methods"),
    C("order-one-bit", order("--methods", "magnitude:0.5", "rtn:w4", "--bits", "4"), "two distinct"),
    C("order-same-bits", order("--methods", "magnitude:0.5", "rtn:w4", "--bits", "4,4"), "two distinct"),
    C("order-bits-9", order("--methods", "magnitude:0.5", "rtn:w4", "--bits", "9,4"), "bit-width"),
    C("order-bits-words", order("--methods", "magnitude:0.5", "rtn:w4", "--bits", "a,b"), "integers"),
    C("order-bits-empty", order("--methods", "magnitude:0.5", "rtn:w4", "--bits", ""), "bit"),
    C("order-reference-without-b", order("--methods", "magnitude:0.5", "rtn:w4", "--reference", "rtn:w4"), "{b}"),
    C("order-reference-unknown-field", order("--methods", "magnitude:0.5", "rtn:w4", "--reference", "rtn:w{b}{c}"),
      "template"),
    C("order-reference-unclosed", order("--methods", "magnitude:0.5", "rtn:w4", "--reference", "rtn:w{b"),
      "reference"),
    C("order-reference-unknown-method", order("--methods", "magnitude:0.5", "rtn:w4", "--reference", "nosuch:{b}"),
      "unknown method"),
    C("order-reference-positional-field", order("--methods", "magnitude:0.5", "rtn:w4", "--reference",
                                                "rtn:w{b}{0}"), "template"),
    C("order-layerwise-samples-0", order("--methods", "magnitude:0.5", "rtn:w4", "--layerwise-samples", "0"),
      "--layerwise-samples"),
    C("order-layerwise-samples-negative", order("--methods", "magnitude:0.5", "rtn:w4", "--layerwise-samples", "-2"),
      "--layerwise-samples"),
    C("order-cer-scale-bogus", order("--methods", "magnitude:0.5", "rtn:w4", "--cer-scale", "x"), "invalid choice"),
    C("order-seqlen-beyond-model", ("order", "--model", "{model}", "--protocol", "{proto}", "--seqlen", "512",
                                    "--eval-windows", "1", "--nsamples", "1", "--methods", "magnitude:0.5",
                                    "rtn:w4"), "at most 128 positions"),
    C("choose-unknown-predictor", order("--choose", "--predictor", "bogus", "--methods", "magnitude:0.5", "rtn:w4"),
      "bogus"),
    C("choose-one-method", order("--choose", "--methods", "magnitude:0.5"), "two"),
    C("choose-unknown-method", order("--choose", "--methods", "nosuch:1", "rtn:w4"), "unknown method"),
    C("choose-layerwise-samples-0", order("--choose", "--layerwise-samples", "0", "--methods", "magnitude:0.5",
                                          "rtn:w4"), "--layerwise-samples"),
    C("choose-with-store", order("--choose", "--methods", "magnitude:0.5", "rtn:w4", "--store", "{tmp}/s.db"),
      "--store"),
    C("choose-with-bad-bits", order("--choose", "--methods", "magnitude:0.5", "rtn:w4", "--bits", "9,4"), "bit-width"),
]


def sweep(*more):
    return ("sweep", *M, "--store", "{tmp}/s.db", "--no-cache", "--lanes", "1", *more)


SWEEP = [
    C("sweep-ratios-empty", sweep("--ratios", ""), "ratio"),
    C("sweep-ratios-commas", sweep("--ratios", ",,"), "ratio"),
    C("sweep-ratio-above-1", sweep("--ratios", "0.2,1.2"), "[0, 1)"),
    C("sweep-ratio-nan", sweep("--ratios", "nan"), "nan"),
    C("sweep-ratio-negative", sweep("--ratios", "-0.1"), "-0.1"),
    C("sweep-ratio-word", sweep("--ratios", "half"), "numbers"),
    C("sweep-ratio-too-fine", sweep("--ratios", "0.1234567891"), "0.1234567891"),
    C("sweep-bits-empty", sweep("--bits", ""), "bit"),
    C("sweep-bits-9", sweep("--bits", "9"), "bits"),
    C("sweep-bits-word", sweep("--bits", "4,x"), "integers"),
    C("sweep-multistage-step-too-big", sweep("--multistage", "0.3", "--multistage-step", "0.4"), "multistage-step"),
    C("sweep-multistage-step-0", sweep("--multistage", "0.3", "--multistage-step", "0"), "multistage-step"),
    C("sweep-multistage-step-negative", sweep("--multistage", "0.3", "--multistage-step", "-0.1"), "multistage-step"),
    C("sweep-multistage-step-tiny", sweep("--multistage", "0.3", "--multistage-step", "1e-7"), "steps"),
    C("sweep-multistage-step-not-dividing", sweep("--multistage", "0.3", "--multistage-step", "0.07"), "whole steps"),
    C("sweep-multistage-nan", sweep("--multistage", "nan"), "multistage"),
    C("sweep-multistage-above-1", sweep("--multistage", "1.5"), "multistage"),
    C("sweep-multistage-word", sweep("--multistage", "x"), "invalid float"),
    C("sweep-multistage-bits-not-in-bits", sweep("--bits", "4", "--multistage", "0.4", "--multistage-bits", "8"),
      "multistage-bits"),
    C("sweep-multistage-bits-without-multistage", sweep("--multistage-bits", "4"), "--multistage"),
    C("sweep-multistage-quant-not-in-quant", sweep("--multistage", "0.4", "--multistage-quant", "gptq"),
      "multistage-quant"),
    C("sweep-prune-unknown-field", sweep("--prune", "wanda:{x}"), "{x}"),
    C("sweep-prune-unclosed", sweep("--prune", "wanda:{r"), "template"),
    C("sweep-quant-unknown-field", sweep("--quant", "rtn:w{c}"), "{c}"),
    C("sweep-quant-unclosed", sweep("--quant", "rtn:w{b"), "template"),
    C("sweep-quant-without-b", sweep("--quant", "rtn:w4"), "{b}"),
    C("sweep-prune-unknown", sweep("--prune", "nosuch"), "unknown method"),
    C("sweep-quant-unknown", sweep("--quant", "nosuch"), "unknown method"),
    C("sweep-prune-is-quantizer", sweep("--prune", "rtn"), "rtn"),
    C("sweep-quant-is-pruner", sweep("--quant", "magnitude"), "magnitude"),
    C("sweep-prefix-unknown", sweep("--prefix", "nosuch"), "unknown method"),
    C("sweep-prefix-malformed", sweep("--prefix", "rotate >"), "empty stage"),
    C("sweep-layerwise-samples-0", sweep("--layerwise", "--layerwise-samples", "0"), "--layerwise-samples"),
    C("sweep-lanes-0", sweep("--lanes", "0"), "--lanes"),
    C("sweep-seeds-negative", sweep("--seeds", "-1"), "--seeds"),
    C("sweep-seeds-duplicate", sweep("--seeds", "1,1"), "--seeds"),
    C("sweep-seeds-word", sweep("--seeds", "a"), "--seeds"),
    C("sweep-seeds-empty", sweep("--seeds", ","), "--seeds"),
    C("sweep-seed-negative", sweep("--seed", "-3"), "seed"),
    C("sweep-seqlen-0", sweep("--seqlen", "0"), "seqlen"),
    C("sweep-seqlen-beyond-model", sweep("--seqlen", "4096"), "at most 128 positions"),
    C("sweep-cache-is-file", ("sweep", *M, "--store", "{tmp}/s.db", "--cache", "{tmp}/c", "--lanes", "1"), "c",
      write("c", "x")),
    C("sweep-calib-batch-0", sweep("--calib-batch-size", "0"), "calib-batch-size"),
    C("sweep-model-missing", ("sweep", "--model", "{tmp}/none", "--protocol", "{proto}", "--store", "{tmp}/s.db"),
      "no such file"),
]

SEARCH = [
    C("search-no-target", ("search", *M), "target"),
    C("search-target-below-1", ("search", *M, "--target-bops", "0.5"), ">= 1"),
    C("search-target-negative", ("search", *M, "--target-size", "-1"), ">= 1"),
    C("search-target-nan", ("search", *M, "--target-bops", "nan"), "target"),
    C("search-target-inf", ("search", *M, "--target-bops", "inf"), "target"),
    C("search-generations-0", ("search", *M, "--target-bops", "4", "--generations", "0"), "generations"),
    C("search-population-1", ("search", *M, "--target-bops", "4", "--population", "1"), "population"),
    C("search-population-huge", ("search", *M, "--target-bops", "4", "--population", "100000000"), "population"),
    C("search-bits-empty", ("search", *M, "--target-bops", "4", "--bits", ""), "bit"),
    C("search-bits-9", ("search", *M, "--target-bops", "4", "--bits", "4,9"), "bit-width"),
    C("search-prune-unknown", ("search", *M, "--target-bops", "4", "--prune", "nosuch"), "unknown method"),
    C("search-quant-unknown-field", ("search", *M, "--target-bops", "4", "--quant", "rtn:w{c}"), "{c}"),
    C("search-sampler-bogus", ("search", *M, "--target-bops", "4", "--sampler", "x"), "invalid choice"),
    C("search-seed-negative", ("search", *M, "--target-bops", "4", "--seed", "-1"), "seed"),
]

CACHE = [
    C("cache-action-bogus", ("cache", "purge"), "invalid choice"),
    C("cache-list-dir-is-file", ("cache", "list", "--dir", "{tmp}/f"), "f", write("f", "x")),
    C("cache-clear-dir-is-file", ("cache", "clear", "--dir", "{tmp}/f"), "f", write("f", "x")),
    C("cache-list-under-file", ("cache", "list", "--dir", "{tmp}/f/c"), "f", write("f", "x")),
]

DEMO = [
    C("demo-model-missing", ("demo", "--model", "{tmp}/none", "--protocol", "{proto}"), "no such file"),
    C("demo-vision-model", ("demo", *V), "language models"),
    C("demo-vision-protocol", ("demo", "--model", "{model}", "--protocol", "fmnist-v1"), "vision"),
    C("demo-seqlen-0", ("demo", *M, "--seqlen", "0"), "seqlen"),
    C("demo-protocol-unknown", ("demo", "--model", "{model}", "--protocol", "nosuch"), "unknown protocol"),
    C("demo-calib-batch-0", ("demo", *M, "--calib-batch-size", "0"), "calib-batch-size"),
]

EVAL = [
    C("eval-tasks-empty", ("eval", *M, "--tasks", ",,"), "at least one task"),
    C("eval-limit-0", ("eval", *M, "--tasks", "arc_easy", "--limit", "0"), "--limit"),
    C("eval-tasks-vision", ("eval", *V, "--tasks", "arc_easy"), "vision"),
    C("eval-tasks-include-missing", ("eval", *M, "--tasks", "mytask", "--tasks-include", "{tmp}/none"), "none"),
]

TRAIN = [
    C("train-arch-missing", ("train-reference", "--dataset", "digits"), "--arch"),
    C("train-arch-bogus", ("train-reference", "--arch", "alexnet"), "invalid choice"),
    C("train-dataset-bogus", ("train-reference", "--arch", "resnet-mini", "--dataset", "cifar"), "invalid choice"),
    C("train-epochs-0", ("train-reference", "--arch", "resnet-mini", "--dataset", "digits", "--epochs", "0"),
      "--epochs"),
    C("train-seed-negative", ("train-reference", "--arch", "resnet-mini", "--dataset", "digits", "--seed", "-1"),
      "--seed"),
    C("train-threads-0", ("train-reference", "--arch", "resnet-mini", "--dataset", "digits", "--threads", "0"),
      "--threads"),
    C("train-data-dir-digits", ("train-reference", "--arch", "resnet-mini", "--dataset", "digits", "--data-dir",
                                "{tmp}"), "--data-dir"),
    C("train-out-not-empty", ("train-reference", "--arch", "resnet-mini", "--dataset", "digits", "--out",
                              "{tmp}/full"), "not empty", mkdir("full", "x")),
    C("train-out-under-file", ("train-reference", "--arch", "resnet-mini", "--dataset", "digits", "--out",
                               "{tmp}/f/out"), "f", write("f", "x")),
    C("train-data-dir-missing", ("train-reference", "--arch", "resnet-mini", "--data-dir", "{tmp}/none"),
      "does not exist"),
    C("train-data-dir-garbage", ("train-reference", "--arch", "resnet-mini", "--data-dir", "{tmp}/gz"), "gzip",
      both(*(write(f"gz/{n}", b"not gzip") for n in GZ_NAMES))),
]

VISION = [
    C("vision-language-protocol", ("compress", "--model", "{vision}", "--protocol", "{proto}", "--recipe", "rtn:w4"),
      "is a vision model"),
    C("vision-seqlen", ("compress", *V, "--seqlen", "32", "--recipe", "rtn:w4"), "does not apply"),
    C("vision-dtype", ("compress", *V, "--dtype", "bfloat16", "--recipe", "rtn:w4"), "float32"),
    C("vision-format-gguf", ("compress", *V, "--recipe", "rtn:w4", "--format", "gguf", "--save", "{tmp}/x.gguf"),
      "packed"),
    C("vision-format-without-save", ("compress", *V, "--recipe", "rtn:w4", "--format", "packed"), "needs --save"),
    C("vision-mode-interleaved", ("compress", *V, "--recipe", "rtn:w4", "--mode", "interleaved"), "interleaved"),
    C("vision-save-not-empty", ("compress", *V, "--recipe", "rtn:w4", "--save", "{tmp}/full", "--format", "packed"),
      "not empty", mkdir("full", "x")),
    C("vision-rotate", ("compress", *V, "--recipe", "rotate > rtn:w4"), "rotate"),
    C("vision-calib-batch-0", ("compress", *V, "--calib-batch-size", "0", "--recipe", "gptq:w4"), "calib-batch-size"),
    C("vision-fmnist-data-missing", ("eval", "--model", "{vision}", "--protocol", "fmnist-v1", "--data-dir",
                                     "{tmp}/none"), "does not exist"),
    C("vision-fmnist-data-garbage", ("eval", "--model", "{vision}", "--protocol", "fmnist-v1", "--data-dir",
                                     "{tmp}/gz"), "gzip", both(*(write(f"gz/{n}", b"not gzip") for n in GZ_NAMES))),
    C("vision-order-one-method", ("order", *V, "--methods", "rtn:w4"), "two"),
    C("vision-sweep-seqlen", ("sweep", *V, "--seqlen", "8", "--store", "{tmp}/s.db"), "does not apply"),
    C("vision-search-bad-plot", ("search", *V, "--target-bops", "4", "--plot", "{tmp}/p.jpg"), ".png"),
    C("vision-config-garbage", ("eval", "--model", "{tmp}/v", "--protocol", "digits-v1"), "config.json",
      lambda tmp, p: (shutil.copytree(p["vision"], tmp / "v"), (tmp / "v" / "config.json").write_text("{x"))),
]

EXPORT = [
    C("verify-missing", ("verify", "{tmp}/none"), "no such directory"),
    C("verify-plain-file", ("verify", "{tmp}/f.txt"), "no such directory", write("f.txt", "x")),
    C("verify-empty-dir", ("verify", "{tmp}/e"), "crescendo_export.json", mkdir("e"), code=1),
    C("verify-manifest-garbage", ("verify", "{export}"), "crescendo_export.json",
      export_edit(replace_file("crescendo_export.json", b"{garbage")), code=1),
    C("verify-manifest-list", ("verify", "{export}"), "JSON object",
      export_edit(replace_file("crescendo_export.json", b"[]")), code=1),
    C("verify-manifest-not-utf8", ("verify", "{export}"), "crescendo_export.json",
      export_edit(replace_file("crescendo_export.json", b'{"format": "\xff"}')), code=1),
    C("verify-manifest-other-format", ("verify", "{export}"), "manifest", manifest(lambda m: m.update(format="x")),
      code=1),
    C("verify-weights-missing", ("verify", "{export}"), "crescendo-packed.safetensors",
      export_edit(remove("crescendo-packed.safetensors")), code=1),
    C("verify-weights-truncated", ("verify", "{export}"), "crescendo-packed.safetensors",
      export_edit(truncate("crescendo-packed.safetensors")), code=1),
    C("verify-weights-garbage", ("verify", "{export}"), "crescendo-packed.safetensors",
      export_edit(replace_file("crescendo-packed.safetensors", b"\x08" + b"\x00" * 7 + b"garbage!")), code=1),
    C("verify-weights-path-empty", ("verify", "{export}"), "weights", manifest(lambda m: m.update(weights="")),
      code=1),
    C("verify-weights-path-number", ("verify", "{export}"), "weights", manifest(lambda m: m.update(weights=5)),
      code=1),
    C("verify-weights-path-subdir", ("verify", "{export}"), "weights",
      manifest(lambda m: m.update(weights="sub/crescendo-packed.safetensors")), code=1),
    C("verify-shape-negative", ("verify", "{export}"), "shape",
      manifest(first_linear(lambda e: e.update(shape=[-64, 64]))), code=1),
    C("verify-shape-words", ("verify", "{export}"), "shape",
      manifest(first_linear(lambda e: e.update(shape=["a", "b"]))), code=1),
    C("verify-shape-three-dims", ("verify", "{export}"), "shape",
      manifest(first_linear(lambda e: e.update(shape=[8, 8, 8]))), code=1),
    C("verify-dtype-unsupported", ("verify", "{export}"), "dtype",
      manifest(first_linear(lambda e: e.update(dtype="int8"))), code=1),
    C("verify-grid-unknown", ("verify", "{export}"), "grid",
      manifest(first_linear(lambda e: e.update(grid={"type": "nosuch"}))), code=1),
    C("verify-kept-wrong", ("verify", "{export}"), "keeps",
      manifest(first_linear(lambda e: e.update(kept=1))), code=1),
    C("verify-recipe-unparsable", ("verify", "{export}"), "nosuch",
      manifest(lambda m: m.update(recipe="nosuch:1")), code=1),
    C("verify-recipe-bad-regex", ("verify", "{export}"), "include",
      manifest(lambda m: m.update(recipe="magnitude:0.5 > rtn:w4,g32,include=[")), code=1),
    C("verify-recipe-disagrees", ("verify", "{export}"), "recipe",
      manifest(lambda m: m.update(recipe="magnitude:0.5 > rtn:w8,g32")), code=1),
    C("verify-linears-not-a-dict", ("verify", "{export}"), "malformed",
      manifest(lambda m: m.update(linears=[1, 2])), code=1),
    C("verify-nan", ("verify", "{export}"), "not finite", tensors_edit(_nan_in_float), code=1),
    C("verify-extra-tensor", ("verify", "{export}"), "not in the manifest",
      tensors_edit(lambda t: t.update(extra=torch.zeros(2))), code=1),
    C("verify-missing-tensor", ("verify", "{export}"), "missing",
      tensors_edit(lambda t: t.pop(next(k for k in t if k.endswith(".codes")))), code=1),
    C("verify-metadata-other-recipe", ("verify", "{export}"), "crescendo.json",
      export_edit(edit_json("crescendo.json", lambda d: d.update(recipe="rtn:w8"))), code=1),
    C("verify-gguf-garbage", ("verify", "{tmp}/x.gguf"), "x.gguf", write("x.gguf", b"GGUF" + b"\xff" * 60), code=1),
    C("verify-gguf-empty", ("verify", "{tmp}/x.gguf"), "x.gguf", write("x.gguf", b""), code=1),
    C("verify-ct-without-weights", ("verify", "{tmp}/ct"), "ct",
      write("ct/config.json", json.dumps({"model_type": "llama", "quantization_config":
                                          {"quant_method": "compressed-tensors"}})), code=1),
    C("eval-export-manifest-shape", ("eval", "--model", "{export}", "--protocol", "{proto}", *TINY_PROTOCOL_ARGS),
      "shape", manifest(first_linear(lambda e: e.update(shape=[32, 64])))),
    C("eval-export-config-missing", ("eval", "--model", "{export}", "--protocol", "{proto}", *TINY_PROTOCOL_ARGS),
      "config.json", export_edit(remove("config.json"))),
    C("eval-export-weights-missing", ("eval", "--model", "{export}", "--protocol", "{proto}", *TINY_PROTOCOL_ARGS),
      "crescendo-packed.safetensors", export_edit(remove("crescendo-packed.safetensors"))),
    C("eval-export-tokenizer-corrupt", ("eval", "--model", "{export}", "--protocol", "{proto}", *TINY_PROTOCOL_ARGS),
      "tokenizer", export_edit(replace_file("tokenizer.json", b"{corrupt"))),
    C("eval-export-tokenizer-remote-code", ("eval", "--model", "{export}", "--protocol", "{proto}",
                                            *TINY_PROTOCOL_ARGS), "tokenizer",
      export_edit(edit_json("tokenizer_config.json", lambda c: c.update(
          auto_map={"AutoTokenizer": ["evil.EvilTokenizer", None]}, tokenizer_class="EvilTokenizer")))),
    C("eval-export-masked-not-bool", ("eval", "--model", "{export}", "--protocol", "{proto}", *TINY_PROTOCOL_ARGS),
      "masked", manifest(first_linear(lambda e: e.update(masked="yes")))),
    C("eval-export-unknown-module", ("eval", "--model", "{export}", "--protocol", "{proto}", *TINY_PROTOCOL_ARGS),
      "model.layers.9", manifest(lambda m: m["linears"].update({"model.layers.9.mlp.up_proj": m["linears"][
          next(iter(m["linears"]))]}))),
    C("eval-export-transform-unknown", ("eval", "--model", "{export}", "--protocol", "{proto}", *TINY_PROTOCOL_ARGS),
      "transform", manifest(lambda m: m.update(transforms={"model.layers.0.mlp.down_proj": {
          "input": [{"type": "nosuch"}], "output": []}}))),
]

TABLE = RECIPE + RANGES + YAML + FILES + MODELS + DEVICE + STORE + OUTPUTS + REPORT + ORDER + SWEEP + SEARCH + \
    CACHE + DEMO + EVAL + TRAIN + VISION + EXPORT


def test_the_table_is_large_and_ids_are_unique():
    ids = [c.id for c in TABLE]
    assert len(ids) == len(set(ids))
    assert len(TABLE) + len(SECURITY) >= 150


@pytest.mark.parametrize("case", TABLE, ids=[c.id for c in TABLE])
@pytest.mark.timeout(120)
def test_bad_input_is_refused_cleanly(case, world, hostile_env, bounded_memory, capsys):
    _run_case(case, world, hostile_env, capsys)


# ---------------------------------------------------------------------------------------------- security

ADDRESS_SPACE_LIMIT = 4 << 30  # bytes; torch and transformers import in well under this

_SECURITY_RUNNER = textwrap.dedent("""
    import contextlib, io, json, resource, sys
    limit = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    from crescendo.cli import main
    results = {}
    for case_id, argv in json.loads(sys.argv[2]):
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    code = main(argv)
                except SystemExit as e:
                    code = e.code
        except BaseException as e:  # MemoryError, or anything else that escaped: a failure
            code = f"{type(e).__name__}: {e}"
        results[case_id] = [code, out.getvalue(), err.getvalue()]
        print(json.dumps({case_id: results[case_id]}), flush=True)
""")


def _big_shape(shape) -> Callable[[Path, dict], None]:
    """An unmasked, unquantized layer whose manifest shape is `shape`, its values tensor one float."""
    def setup(tmp: Path, places: dict) -> None:
        from safetensors.torch import load_file, save_file

        export = tmp / "export"
        m = json.loads((export / "crescendo_export.json").read_text())
        name = next(iter(m["linears"]))
        m["linears"][name] = {"shape": list(shape), "dtype": "float32", "grid": None, "masked": False,
                              "kept": shape[0] * shape[1]}
        (export / "crescendo_export.json").write_text(json.dumps(m))
        path = export / "crescendo-packed.safetensors"
        tensors = {k: v for k, v in load_file(str(path)).items() if not k.startswith(f"{name}.weight.")}
        tensors[f"{name}.weight.values"] = torch.zeros(4)
        save_file(tensors, str(path))
    return setup


def _other_export(rel_weights: str) -> Callable[[Path, dict], None]:
    """The export's own weights deleted, its manifest pointing at another export's (a sentinel outside it)."""
    def setup(tmp: Path, places: dict) -> None:
        shutil.copytree(places["export_src"], tmp / "other")
        (tmp / "export" / "crescendo-packed.safetensors").unlink()
        edit_json("crescendo_export.json", lambda m: m.update(weights=rel_weights))(tmp / "export")
    return setup


def _huge_hadamard(tmp: Path, places: dict) -> None:
    edit_json("crescendo_export.json", lambda m: m.update(transforms={"model.layers.0.mlp.down_proj": {
        "input": [{"type": "online_hadamard", "n": 2**20}], "output": []}}))(tmp / "export")


def _huge_vision_width(tmp: Path, places: dict) -> None:
    shutil.copytree(places["vision"], tmp / "v")
    edit_json("config.json", lambda d: d["config"].update(widths=[8, 10**7]))(tmp / "v")


def _evalx(*more):
    return ("eval", "--model", "{export}", "--protocol", "{proto}", *TINY_PROTOCOL_ARGS, "--quiet", *more)


SECURITY = [
    C("sec-verify-shape-40000", ("verify", "{export}"), "shape", _big_shape((40000, 40000)), code=1),
    C("sec-verify-shape-1e7", ("verify", "{export}"), "shape", _big_shape((10**7, 10**7)), code=1),
    C("sec-eval-shape-40000", _evalx(), "shape", _big_shape((40000, 40000))),
    C("sec-eval-shape-1e7", _evalx(), "shape", _big_shape((10**7, 10**7))),
    C("sec-eval-config-hidden-1e7", _evalx(), "hidden_size", export_edit(config_set(hidden_size=10**7))),
    C("sec-model-config-hidden-1e7", ("eval", "--model", "{tmp}/m", "--protocol", "{proto}", *TINY_PROTOCOL_ARGS),
      "hidden_size", model_copy(config_set(hidden_size=10**7))),
    C("sec-eval-huge-hadamard", _evalx(), "hadamard", _huge_hadamard),
    C("sec-vision-config-huge-width", ("eval", "--model", "{tmp}/v", "--protocol", "digits-v1"), "width",
      _huge_vision_width),
    C("sec-yaml-billion-laughs", compress("{tmp}/r.yaml"), "anchors or aliases", write("r.yaml", BILLION_LAUGHS)),
    C("sec-yaml-40mb", compress("{tmp}/r.yaml"), "bytes",
      write("r.yaml", "stages:\n" + "  - rtn:w8\n" * 4_000_000)),
    C("sec-verify-weights-parent", ("verify", "{export}"), "inside the export directory",
      _other_export("../other/crescendo-packed.safetensors"), code=1),
    C("sec-verify-weights-absolute", ("verify", "{export}"), "inside the export directory",
      _other_export("/etc/passwd"), code=1),
    C("sec-eval-weights-parent", _evalx(), "inside the export directory",
      _other_export("../other/crescendo-packed.safetensors")),
    C("sec-eval-weights-absolute", _evalx(), "inside the export directory", _other_export("/etc/passwd")),
    C("sec-verify-weights-symlink", ("verify", "{export}"), "inside the export directory",
      lambda tmp, p: (_other_export("w.safetensors")(tmp, p), os.symlink(
          tmp / "other" / "crescendo-packed.safetensors", tmp / "export" / "w.safetensors")), code=1),
]


@pytest.fixture(scope="module")
def security_results(world, tmp_path_factory):
    """Every security case in one subprocess under RLIMIT_AS (one interpreter start for all)."""
    root = tmp_path_factory.mktemp("security")
    prepared, snapshots = [], {}
    for case in SECURITY:
        tmp = root / case.id
        (tmp / "work").mkdir(parents=True)
        places = {**world, "tmp": tmp, "export": tmp / "export"}
        if any("{export}" in a for a in case.argv):
            shutil.copytree(world["export_src"], tmp / "export")
        case.setup(tmp, places)
        prepared.append((case.id, [_fill(a, places) for a in case.argv]))
        snapshots[case.id] = (tmp, _snapshot(tmp))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "CRESCENDO_CACHE": str(root / "cache"),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2] / "src"),
                                          os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", _SECURITY_RUNNER, str(ADDRESS_SPACE_LIMIT), json.dumps(prepared)],
                          capture_output=True, text=True, timeout=600, env=env, cwd=root)
    results = {}
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            results.update(json.loads(line))
    return results, snapshots, done.stderr[-2000:]


@pytest.mark.parametrize("case", SECURITY, ids=[c.id for c in SECURITY])
def test_crafted_files_are_refused_in_bounded_memory(case, security_results):
    results, snapshots, runner_err = security_results
    assert case.id in results, f"the runner died before this case: {runner_err}"
    code, out, err = results[case.id]
    assert isinstance(code, int), f"escaped the CLI: {code}"
    _check(case, code, out, err)
    tmp, before = snapshots[case.id]
    assert _snapshot(tmp) == before


def test_weights_outside_the_export_are_never_read(world, tmp_path, capsys, monkeypatch):
    """The manifest names another export's weights: refused before any weights file is opened."""
    load_module = sys.modules["crescendo.export.load"]  # the package exports a function of the same name

    shutil.copytree(world["export_src"], tmp_path / "export")
    _other_export("../other/crescendo-packed.safetensors")(tmp_path, {**world})
    opened = []
    real = load_module.load_file
    monkeypatch.setattr(load_module, "load_file", lambda path, *a, **k: opened.append(path) or real(path, *a, **k))
    code, out, err = _call(["verify", str(tmp_path / "export")], capsys)
    assert code == 1 and "inside the export directory" in err and opened == []


# ---------------------------------------------------------------------------------------------- beyond exit codes


def test_cache_clear_leaves_files_it_did_not_write(tmp_path, capsys):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "thesis.txt").write_text("years of work")
    (folder / "sub").mkdir()
    (folder / "sub" / "data.pt").write_bytes(b"x")
    before = _snapshot(folder)
    code, out, _ = _call(["cache", "clear", "--dir", str(folder), "--json"], capsys)
    assert code == 0 and json.loads(out)["removed"] == 0
    assert _snapshot(folder) == before


def test_cache_list_does_not_create_the_directory(tmp_path, capsys):
    code, out, _ = _call(["cache", "list", "--dir", str(tmp_path / "nothing"), "--json"], capsys)
    assert code == 0 and json.loads(out)["entries"] == []
    assert not (tmp_path / "nothing").exists()


def test_identical_packed_saves_are_byte_identical(saved_tiny, tmp_path, capsys):
    model_dir, protocol = saved_tiny
    for name in ("a", "b"):
        assert main(["compress", "--model", str(model_dir), "--protocol", protocol, *TINY_PROTOCOL_ARGS, "--quiet",
                     "--no-dense", "--json", "--recipe", "magnitude:0.5 > rtn:w4,g32", "--format", "packed",
                     "--save", str(tmp_path / name)]) == 0
    capsys.readouterr()
    a = {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()}
    b = {p.name: p.read_bytes() for p in (tmp_path / "b").iterdir()}
    assert a.keys() == b.keys()
    differ = [n for n in a if a[n] != b[n] and n != "crescendo.json"]  # crescendo.json holds timings
    assert differ == []
    assert a["crescendo-packed.safetensors"] == b["crescendo-packed.safetensors"]


def test_sigterm_during_save_leaves_nothing_behind(saved_tiny, tmp_path, capsys, monkeypatch):
    """SIGTERM while the weights are being written: exit 143, no target and no hidden temporary."""
    import signal

    from crescendo.blockwise.writer import SafetensorsStream

    model_dir, protocol = saved_tiny
    real = SafetensorsStream.close

    def write_then_terminate(self):
        real(self)  # the weights file is complete inside the temporary folder
        os.kill(os.getpid(), signal.SIGTERM)  # delivered to this (main) thread: the CLI's handler raises

    monkeypatch.setattr(SafetensorsStream, "close", write_then_terminate)
    code, out, err = _call(["compress", "--model", str(model_dir), "--protocol", protocol, *TINY_PROTOCOL_ARGS,
                            "--quiet", "--no-dense", "--recipe", "rtn:w4", "--format", "packed", "--save",
                            str(tmp_path / "out")], capsys)
    assert code == 143 and err.strip() == "crescendo: terminated"
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_temporaries_of_killed_runs_are_removed_by_the_next_save(saved_tiny, tmp_path, capsys):
    model_dir, protocol = saved_tiny
    stale = tmp_path / ".out.tmp-999999999-abcd"  # no such process: a SIGKILLed run's leftover
    stale.mkdir()
    (stale / "crescendo-packed.safetensors").write_bytes(b"half")
    live = tmp_path / f".out.tmp-{os.getpid()}-efgh"  # a running process's: left alone
    live.mkdir()
    code, _, _ = _call(["compress", "--model", str(model_dir), "--protocol", protocol, *TINY_PROTOCOL_ARGS,
                        "--quiet", "--no-dense", "--recipe", "rtn:w4", "--format", "packed", "--save",
                        str(tmp_path / "out")], capsys)
    assert code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", live.name])
