"""Hostile inputs, second pass (issue 27): the faults that pass found, each refused cleanly.

Same harness and promises as test_hostile_inputs.py (exit 2, or 1 for a failed verify; one line on
stderr; no traceback; no file created, changed or removed), plus peak-memory bounds where the fault
was an allocation. The structure-aware fuzzing of the same readers is in tests/fuzz/.
"""

from __future__ import annotations

import json
import shutil
import sys

import pytest
from conftest import TINY_PROTOCOL_ARGS
from formats import STRING, U32, gguf_bytes, idx_gz, peak_growth, safetensors_bytes, tiny_gguf_llama
from test_hostile_inputs import (
    C,
    _run_case,
    both,
    bounded_memory,  # noqa: F401 - fixtures used by the tests below
    edit_json,
    export_edit,
    hostile_env,  # noqa: F401
    mkdir,
    world,  # noqa: F401
    write,
)

from crescendo.cli import main

M = ("--model", "{model}", "--protocol", "{proto}", *TINY_PROTOCOL_ARGS, "--quiet")
NONE = ("--model", "{tmp}/none", "--protocol", "{proto}", *TINY_PROTOCOL_ARGS, "--quiet")  # refused first, or this
GGUF_HUGE_COUNTS = b"GGUF" + (3).to_bytes(4, "little") + (2**62).to_bytes(8, "little") * 2
GGUF_BAD_UTF8 = gguf_bytes([("general.architecture", STRING, b"\xffllama"), ("llama.block_count", U32, 1)], [])


def _rows_store(rel: str):
    def setup(tmp, places):
        from crescendo.store import ResultStore, RunMetrics, record_run

        with ResultStore(tmp / rel) as store:
            record_run(store, model="m", protocol="p", recipe="dense", seed=0, kind="dense",
                       metrics=RunMetrics.from_perplexity(10.0))
        for suffix in ("-wal", "-shm"):
            assert not (tmp / f"{rel}{suffix}").exists()
    return setup


def _sweep_store(rel: str, **bad_extra):
    """A store holding one sweep cell (dense, singles, both orders), the extra of every row but dense changed."""
    def setup(tmp, places):
        from crescendo.store import ResultStore, RunMetrics, record_run

        rows = [("dense", "dense", 10.0), ("magnitude:0.5", "single", 12.0), ("rtn:w4", "single", 11.0),
                ("magnitude:0.5 > rtn:w4", "order", 14.0), ("rtn:w4 > magnitude:0.5", "order", 15.0)]
        with ResultStore(tmp / rel) as store:
            for recipe, kind, ppl in rows:
                extra = {"prune": "magnitude:{r}", "quant": "rtn:w{b}", "ratio": 0.5, "bits": 4}
                record_run(store, model="m", protocol="p", recipe=recipe, seed=0, kind=kind,
                           metrics=RunMetrics.from_perplexity(ppl), extra={**extra, **(bad_extra if kind != "dense"
                                                                                      else {})})
    return setup


def _damage_row(rel: str, column: str, value: str):
    def setup(tmp, places):
        import sqlite3

        conn = sqlite3.connect(tmp / rel)
        conn.execute(f"UPDATE runs SET {column} = ?", (value,))
        conn.commit()
        conn.close()
    return setup


def _set(field, value):
    return lambda m: m.update({field: value})


def _header_dtype(directory):
    path = directory / "model.safetensors"
    raw = path.read_bytes()
    length = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + length])
    next(v for k, v in header.items() if k != "__metadata__")["dtype"] = ["F32"]
    path.write_bytes(safetensors_bytes(header, raw[8 + length:]))


def _gguf_truncated(tmp, places):
    (tmp / "t.gguf").write_bytes(tiny_gguf_llama()[:700])


CASES = [
    # misleading: a parent that is a file was "does not exist"
    C("save-parent-is-file", ("compress", *M, "--recipe", "rtn:w4", "--save", "{tmp}/f/out"), "is a file, not a directory",
      write("f", "x")),
    C("save-gguf-parent-is-file", ("compress", *M, "--recipe", "rtn:w4,g32,sym,fmt=q4_0", "--format", "gguf", "--save",
                                   "{tmp}/f/x.gguf"), "is a file, not a directory", write("f", "x")),
    C("store-parent-is-file", ("order", *M, "--methods", "magnitude:0.5", "rtn:w4", "--store", "{tmp}/f/s.db"),
      "is a file, not a directory", write("f", "x")),
    C("plot-parent-is-file", ("search", *M, "--target-bops", "4", "--plot", "{tmp}/f/p.png"),
      "is a file, not a directory", write("f", "x")),
    C("train-out-parent-is-file", ("train-reference", "--arch", "resnet-mini", "--dataset", "digits", "--out",
                                   "{tmp}/f/a/out"), "is a file, not a directory", write("f", "x")),
    # misleading: ignored option
    C("order-predictor-without-choose", ("order", *M, "--predictor", "zeros", "--methods", "magnitude:0.5", "rtn:w4"),
      "--predictor applies with --choose"),
    # misleading: a recipe no export could hold, refused before the model is looked at (NONE would fail later)
    C("q4_1-pruned-compress", ("compress", *NONE, "--recipe", "magnitude:0.5 > rtn:w4,g32,fmt=q4_1"),
      "cannot represent 0"),
    C("q4_1-pruned-compress-gguf", ("compress", *NONE, "--recipe", "rtn:w4,g32,fmt=q4_1 > wanda:2:4", "--format",
                                    "gguf", "--save", "{tmp}/x.gguf"), "cannot represent 0"),
    C("q4_1-pruned-order", ("order", *NONE, "--methods", "magnitude:0.5", "rtn:w4,g32,fmt=q4_1"), "cannot represent 0"),
    C("q4_1-pruned-choose", ("order", *NONE, "--choose", "--methods", "magnitude:0.5", "rtn:w4,g32,fmt=q4_1"),
      "cannot represent 0"),
    C("q4_1-pruned-sweep", ("sweep", *NONE, "--prune", "magnitude", "--quant", "rtn:w{b},g32,fmt=q4_1", "--bits", "4",
                            "--store", "{tmp}/s.db", "--lanes", "1"), "cannot represent 0"),
    # third-party readers: crafted GGUF headers
    C("gguf-huge-counts-eval", ("eval", *M[:1], "{tmp}/x.gguf", *M[2:]), "more than the file holds",
      write("x.gguf", GGUF_HUGE_COUNTS)),
    C("gguf-huge-counts-verify", ("verify", "{tmp}/x.gguf"), "more than the file holds", write("x.gguf", GGUF_HUGE_COUNTS),
      code=1),
    C("gguf-bad-utf8-eval", ("eval", "--model", "{tmp}/x.gguf", "--protocol", "{proto}", *TINY_PROTOCOL_ARGS),
      "not UTF-8", write("x.gguf", GGUF_BAD_UTF8)),
    C("gguf-bad-utf8-verify", ("verify", "{tmp}/x.gguf"), "not UTF-8", write("x.gguf", GGUF_BAD_UTF8), code=1),
    C("gguf-truncated-eval", ("eval", "--model", "{tmp}/t.gguf", "--protocol", "{proto}", *TINY_PROTOCOL_ARGS),
      "not a valid GGUF file", _gguf_truncated),
    # refusals that wrote: a read that refuses leaves no -wal / -shm beside the store
    C("report-model-nosuch", ("report", "--store", "{tmp}/s.db", "--out", "{tmp}/r", "--model", "nosuch"),
      "no sweep rows", _rows_store("s.db")),
    # misleading: a compressed-tensors export is not a packed one
    C("verify-ct-metadata-list", ("verify", "{ct}"), "must hold a JSON object",
      lambda tmp, p: (tmp / "ct" / "crescendo.json").write_text("[1, 2]"), code=1),
    # state read back without validation
    C("rotation-huge-intermediate", ("eval", "--model", "{rot}", "--protocol", "{proto}", *TINY_PROTOCOL_ARGS),
      "intermediate_size", lambda tmp, p: _rotation(tmp, intermediate_size=2**20)),
    C("rotation-other-intermediate", ("eval", "--model", "{rot}", "--protocol", "{proto}", *TINY_PROTOCOL_ARGS),
      "does not fit", lambda tmp, p: _rotation(tmp, intermediate_size=256)),
    C("rotation-not-integer", ("eval", "--model", "{rot}", "--protocol", "{proto}", *TINY_PROTOCOL_ARGS),
      "intermediate_size", lambda tmp, p: _rotation(tmp, intermediate_size="abc")),
    C("rotation-float", ("eval", "--model", "{rot}", "--protocol", "{proto}", *TINY_PROTOCOL_ARGS),
      "hidden_size", lambda tmp, p: _rotation(tmp, hidden_size=64.0)),
    C("export-config-wider-than-weights", ("eval", "--model", "{export}", "--protocol", "{proto}", *TINY_PROTOCOL_ARGS),
      "disagree", export_edit(edit_json("config.json", lambda c: c.update(hidden_size=16384,
                                                                           intermediate_size=65536)))),
    C("model-config-wider-than-weights", ("eval", "--model", "{tmp}/m", "--protocol", "{proto}", *TINY_PROTOCOL_ARGS),
      "disagree", lambda tmp, p: (shutil.copytree(p["model"], tmp / "m"),
                                  edit_json("config.json", lambda c: c.update(hidden_size=4096))(tmp / "m"))),
    # found by tests/fuzz: manifest fields of the wrong type reached the loader (tracebacks)
    *[C(f"fuzz-manifest-{field}-{kind}", ("eval", "--model", "{export}", "--protocol", "{proto}", *TINY_PROTOCOL_ARGS),
        field, export_edit(edit_json("crescendo_export.json", _set(field, value))))
      for field, kind, value in [("plain", "null", None), ("aliases", "null", None), ("records", "null", None),
                                 ("records", "entry-list", {"model.layers.0.mlp.up_proj": [1]}),
                                 ("transforms", "entry-null", {"model.layers.0.mlp.up_proj": None}),
                                 ("buffer_dtypes", "list", [1])]],
    # found by the long fuzzing run: a dtype that is a list is not even hashable (TypeError in the new checks)
    C("fuzz-manifest-linear-dtype-list", ("verify", "{export}"), "dtype",
      export_edit(edit_json("crescendo_export.json", lambda m: next(iter(m["linears"].values())).update(dtype=[1]))),
      code=1),
    C("fuzz-safetensors-dtype-list", ("eval", "--model", "{tmp}/m", "--protocol", "{proto}", *TINY_PROTOCOL_ARGS),
      "unknown dtype", lambda tmp, p: (shutil.copytree(p["model"], tmp / "m"), _header_dtype(tmp / "m"))),
    # rows of a results store are read back too: a malformed one ended in a traceback in report
    *[C(f"stored-row-{name}", ("report", "--store", "{tmp}/s.db", "--out", "{tmp}/r"), message,
        both(_rows_store("s.db"), _damage_row("s.db", column, value)))
      for name, column, value, message in [("metrics-not-json", "metrics", "{x", "not JSON"),
                                           ("extra-list", "extra", "[1]", "extra must be"),
                                           ("seed-text", "seed", "abc", "seed"),
                                           ("metric-text", "metrics", '{"metric": "abc"}', "metric")]],
    # found by tests/fuzz/test_store_rows.py: a sweep row's extra fields of the wrong type broke the report (now such
    # rows are skipped and named, like rows lacking fields; here no sweep row is left)
    *[C(f"fuzz-stored-row-{name}", ("report", "--store", "{tmp}/s.db", "--out", "{tmp}/r"), "no sweep rows",
        _sweep_store("s.db", **bad)) for name, bad in [("prune-list", {"prune": ["magnitude:{r}"]}),
                                                      ("quant-list", {"quant": ["rtn:w{b}"]}),
                                                      ("prune-bool", {"prune": True})]],
    # found by tests/fuzz: transformers' GGUF reader drew its progress bar on stderr before the refusal
    C("fuzz-gguf-without-tokenizer", ("eval", "--model", "{tmp}/t.gguf", "--protocol", "{proto}", *TINY_PROTOCOL_ARGS),
      "tokenizer", write("t.gguf", tiny_gguf_llama())),
    C("idx-header-too-large", ("train-reference", "--arch", "resnet-mini", "--data-dir", "{tmp}/gz"), "more than",
      lambda tmp, p: (mkdir("gz")(tmp, p), idx_gz(tmp / "gz" / "train-images-idx3-ubyte.gz", 0x803, [10**6, 28, 28]))),
]


def _rotation(tmp, **values):
    edit_json("crescendo.json", lambda d: d["state"]["rotation"].update(values))(tmp / "rot")


@pytest.fixture(scope="module")
def world2(world, tmp_path_factory):  # noqa: F811
    """`world`, plus a compressed-tensors export and a rotated hf save of the tiny model."""
    root = tmp_path_factory.mktemp("hostile2")
    base = ["compress", "--model", str(world["model"]), "--protocol", world["proto"], *TINY_PROTOCOL_ARGS, "--quiet",
            "--no-dense", "--json"]
    assert main(base + ["--recipe", "rtn:w4,g32", "--format", "compressed-tensors", "--save", str(root / "ct")]) == 0
    assert main(base + ["--recipe", "rotate > rtn:w4", "--save", str(root / "rot")]) == 0
    return {**world, "ct_src": root / "ct", "rot_src": root / "rot", "roots": [*world["roots"], root]}


def _run(case, world2, tmp, capsys):
    places = {**world2, "ct": tmp / "ct", "rot": tmp / "rot"}
    for key in ("ct", "rot"):
        if any("{" + key + "}" in a for a in case.argv):
            shutil.copytree(world2[f"{key}_src"], tmp / key)
    _run_case(case, places, tmp, capsys)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
@pytest.mark.timeout(120)
def test_second_pass_inputs_are_refused_cleanly(case, world2, hostile_env, bounded_memory, capsys):  # noqa: F811
    with peak_growth() as peak:
        _run(case, world2, hostile_env, capsys)
    assert peak["bytes"] < 400 << 20, f"peak memory rose by {peak['bytes'] >> 20} MiB"


@pytest.mark.parametrize("argv, message", [
    (("sweep", *M, "--backend", "ray", "--store", "{tmp}/s.db", "--no-cache", "--lanes", "1"), "needs Ray"),
    (("verify", "{ct}"), "compressed-tensors package"),
    (("eval", "--model", "{ct}", "--protocol", "{proto}", *TINY_PROTOCOL_ARGS), "compressed-tensors package"),
], ids=["sweep-ray", "verify-ct", "eval-ct"])
def test_missing_optional_packages_are_named_and_nothing_is_written(argv, message, world2, hostile_env,  # noqa: F811
                                                                    capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed: import fails, find_spec says None
    monkeypatch.setitem(sys.modules, "compressed_tensors", None)
    _run(C("missing-package", argv, message), world2, hostile_env, capsys)


def test_idx_bombs_are_refused_without_inflating_them(tmp_path):
    """A header asking for 784 MB over a small gzip stream: refused after 16 bytes, in bounded memory."""
    from crescendo.data.images import read_idx
    from crescendo.errors import DataError

    bomb = idx_gz(tmp_path / "bomb.gz", 0x803, [60000, 28, 28], data=60000 * 28 * 28 + 4096, level=9)  # 4 KB extra
    small = idx_gz(tmp_path / "trailing.gz", 0x801, [3], data=b"\1\2\3" + b"\0" * (200 << 20))
    with peak_growth() as peak:
        with pytest.raises(DataError, match="more than 47040000 data bytes"):
            read_idx(bomb)
        with pytest.raises(DataError, match="more than 3 data bytes"):
            read_idx(small)  # 200 MB behind a 3-byte header: one byte past it is enough
    assert peak["bytes"] < 120 << 20, f"peak memory rose by {peak['bytes'] >> 20} MiB"
    huge = idx_gz(tmp_path / "huge.gz", 0x803, [10**6, 28, 28])
    with pytest.raises(DataError, match="more than the"):
        read_idx(huge)



@pytest.mark.parametrize("lanes", ["100000", "3"])
def test_lanes_beyond_the_cores_are_refused_before_any_starts(lanes, world2, hostile_env, capsys, monkeypatch):  # noqa: F811
    """Each lane is a process holding the model: --lanes had no upper bound (two usable cores here)."""
    import crescendo.sweep

    monkeypatch.setattr(crescendo.sweep, "usable_cores", lambda: 2, raising=False)
    monkeypatch.setattr(crescendo.sweep, "_start_lanes", lambda *a: pytest.fail("lanes were started"))
    _run(C("sweep-lanes", ("sweep", *M, "--lanes", lanes, "--store", "{tmp}/s.db", "--no-cache"), "--lanes"), world2,
         hostile_env, capsys)


def test_a_collapsed_model_measures_infinite_perplexity(world2, tmp_path, capsys):  # noqa: F811
    """Found by tests/fuzz (a damaged weights file): losses beyond exp's range ended in OverflowError."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(world2["model"], tmp_path / "m")
    path = tmp_path / "m" / "model.safetensors"
    tensors = load_file(str(path))
    tensors["lm_head.weight"] = tensors["lm_head.weight"] * 1e30  # logits of ~1e30: a collapsed model
    save_file(tensors, str(path), metadata={"format": "pt"})
    code = main(["eval", "--model", str(tmp_path / "m"), "--protocol", world2["proto"], *TINY_PROTOCOL_ARGS,
                 "--quiet", "--json"])
    out, err = capsys.readouterr()
    assert code == 0 and "Traceback" not in err, err[-500:]
    assert json.loads(out)["perplexity"] == float("inf")
