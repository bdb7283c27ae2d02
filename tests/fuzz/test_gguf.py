"""Fuzzing GGUF files: headers generated from the format's grammar (magic, version, tensor and key counts,
typed key/value pairs with nested arrays, tensor infos with dims, types and offsets, aligned data) and a
valid file of a tiny LLaMA damaged byte-wise. Read by `eval --model X.gguf` (exit 0 or 2) and
`verify X.gguf` (exit 0 or 1); files that break the grammar must be refused, never read."""

from __future__ import annotations

import itertools

from formats import ARRAY, F32, STRING, U8, U32, U64, gguf_bytes, tiny_gguf_llama
from harness import address_space_limit, budget, damaged_bytes, fixed_seed, offline, run_cli  # noqa: F401
from hypothesis import given
from hypothesis import strategies as st

from crescendo.errors import ModelError
from crescendo.models.gguf_file import check_gguf

_count = itertools.count()
TEMPLATE = tiny_gguf_llama()
KEYS = ["general.architecture", "llama.block_count", "llama.embedding_length", "llama.feed_forward_length",
        "llama.attention.head_count", "llama.attention.head_count_kv", "llama.context_length", "llama.vocab_size",
        "general.alignment", "tokenizer.ggml.tokens", "crescendo.metadata", "crescendo.recipe"]
TENSORS = ["token_embd.weight", "output_norm.weight", "blk.0.attn_q.weight", "blk.0.ffn_up.weight",
           "blk.0.ffn_down.weight", "blk.7.attn_k.weight", "x"]

scalar_kv = st.one_of(
    st.tuples(st.just(U32), st.one_of(st.integers(0, 64), st.just(2**32 - 1))),
    st.tuples(st.just(U64), st.sampled_from([0, 1, 2**40, 2**64 - 1])),
    st.tuples(st.just(U8), st.integers(0, 255)),
    st.tuples(st.just(F32), st.floats(width=32, allow_nan=True)),
    st.tuples(st.just(STRING), st.one_of(st.sampled_from(["llama", "gpt2", "", "{}", "[1]"]),
                                         st.binary(max_size=8))),  # not always UTF-8
)
value = st.one_of(scalar_kv, st.tuples(st.just(ARRAY), st.one_of(
    st.tuples(st.just(STRING), st.lists(st.sampled_from(["a", "b", "<s>"]), max_size=4)),
    st.tuples(st.just(U32), st.lists(st.integers(0, 9), max_size=4)),
    st.tuples(st.just(ARRAY), st.lists(st.just((U8, [1])), max_size=2)))))
tensor = st.tuples(st.sampled_from(TENSORS),
                   st.one_of(st.just((32, 32)), st.just((32,)), st.lists(st.sampled_from([0, 1, 16, 32, 2**40]),
                                                                         max_size=5).map(tuple)),
                   st.sampled_from([0, 1, 2, 3, 8, 30, 99, 2**31]),  # F32, F16, Q4_0, Q4_1, Q8_0, BF16, unknown
                   st.sampled_from([0, 32, 7, 4096, 2**62]))


@st.composite
def generated(draw):
    kv = [(k, *draw(value)) for k in draw(st.lists(st.sampled_from(KEYS), max_size=6))]
    tensors = draw(st.lists(tensor, max_size=4))
    counts = draw(st.sampled_from(["right", "more", "huge"]))
    n_kv = {"right": None, "more": len(kv) + 1, "huge": 2**62}[counts]
    n_tensors = {"right": None, "more": len(tensors) + 3, "huge": 2**61}[draw(st.sampled_from(["right", "more",
                                                                                               "huge"]))]
    data = draw(st.one_of(st.none(), st.binary(max_size=64)))
    return gguf_bytes(kv, tensors, version=draw(st.sampled_from([3, 3, 2, 1, 2**24])), n_kv=n_kv,
                      n_tensors=n_tensors, data=data)


def _read(path, protocol, tmp_path, capsys):
    roots = [tmp_path]
    run_cli(["verify", str(path)], capsys, roots, codes=(0, 1))
    return run_cli(["eval", "--model", str(path), "--protocol", protocol, "--seqlen", "8", "--eval-windows", "1",
                    "--quiet"], capsys, roots, codes=(0, 2))


@budget(25)
@fixed_seed()
@given(data=generated())
def test_gguf_from_the_grammar(data, saved_tiny, tmp_path, capsys):
    path = tmp_path / f"g{next(_count)}.gguf"
    path.write_bytes(data)
    try:
        check_gguf(path)
        walked = True
    except ModelError:
        walked = False
    code = _read(path, saved_tiny[1], tmp_path, capsys)
    assert walked or code == 2, "a file the walk refuses was read"
    path.unlink()


@budget(25)
@fixed_seed()
@given(data=damaged_bytes(TEMPLATE, protect=4))
def test_gguf_damaged(data, saved_tiny, tmp_path, capsys):
    path = tmp_path / f"d{next(_count)}.gguf"
    path.write_bytes(data)
    _read(path, saved_tiny[1], tmp_path, capsys)
    path.unlink()
