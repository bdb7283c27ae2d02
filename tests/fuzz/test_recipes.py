"""Fuzzing recipe strings and recipe YAML files from the recipe grammar (crescendo.recipe's docstring).

    recipe := stage (">" stage)*      stage := method [":" arg ("," arg)*]      arg := positional | key=value

Library: `load_recipe` returns a Recipe whose text parses back to itself, or raises a CrescendoError;
nothing else escapes. CLI: `compress --recipe X` on a model that does not exist exits 2 with one line
(the recipe's error, or, for a valid recipe, the missing model's), writing nothing.
"""

from __future__ import annotations

import yaml
from harness import address_space_limit, budget, fixed_seed, offline, run_cli  # noqa: F401
from hypothesis import given
from hypothesis import strategies as st

from crescendo.errors import CrescendoError
from crescendo.methods import METHODS
from crescendo.recipe import load_recipe, parse_recipe

NAMES = sorted(METHODS.names())
numbers = st.one_of(st.sampled_from(["0", "0.5", "0.25", "1", "1.5", "-0.1", "nan", "inf", "1e400", "0.1234567891",
                                     "99999999999999999999"]), st.floats(-2, 2).map(lambda x: f"{x:.3g}"))
positional = st.one_of(
    numbers,
    st.tuples(st.integers(-1, 9), st.integers(-1, 9)).map(lambda nm: f"{nm[0]}:{nm[1]}"),  # N:M
    st.tuples(st.integers(0, 10), st.one_of(st.none(), st.integers(0, 10)), st.one_of(st.none(), st.integers(0, 10)))
    .map(lambda b: f"w{b[0]}" + (f"a{b[1]}" if b[1] is not None else "") + (f"kv{b[2]}" if b[2] is not None else "")),
    st.sampled_from(["g0", "g32", "g64", "g128", "g-1", "g7", "sym", "actorder", "merge", "absorb", "w", "a"]),
    st.text(alphabet="abcxyz019_", min_size=1, max_size=5),
)
keyword = st.tuples(
    st.sampled_from(["bs", "damp", "include", "exclude", "fmt", "nm", "samples", "seed", "steps", "lr", "r", "alpha",
                     "group", "rank", "ratio", "batch", "bogus"]),
    st.one_of(numbers, st.sampled_from(["[", "(a", "q_proj", "mlp", ".*", "q4_0", "q4_1", "q8_0", "ct", "2:4", ""]),
              st.text(max_size=6)),
).map(lambda kv: f"{kv[0]}={kv[1]}")
method = st.one_of(st.sampled_from(NAMES), st.sampled_from(["", "123", "spärsegpt", "nosuch"]),
                   st.text(alphabet="abcdefgmnoprstuw_-", min_size=1, max_size=8))
stage = st.tuples(method, st.lists(st.one_of(positional, keyword), max_size=4)).map(
    lambda s: s[0] + (":" + ",".join(s[1]) if s[1] else ""))
recipes = st.one_of(
    st.lists(stage, min_size=1, max_size=4).map(" > ".join),
    st.tuples(st.sampled_from(["", ">", " > "]), st.lists(stage, min_size=1, max_size=3),
              st.sampled_from([">", " >> ", "> >", "\n"]), st.sampled_from(["", ">", "\x00"])).map(
        lambda t: t[0] + t[2].join(t[1]) + t[3]),  # separators and edges the grammar does not allow
    st.text(max_size=40),  # anything at all
)


def _check_library(spec) -> None:
    try:
        recipe = load_recipe(spec) if isinstance(spec, str) else parse_recipe(spec)
    except CrescendoError:
        return
    assert str(parse_recipe(str(recipe))) == str(recipe)  # canonical text round-trips


@budget(60)
@fixed_seed()
@given(recipe=recipes)
def test_recipe_strings(recipe, tmp_path, capsys):
    if recipe.strip().lower().endswith((".yaml", ".yml")):
        recipe += " "  # a file name; the YAML target covers files
    _check_library(recipe)
    run_cli(["compress", "--model", str(tmp_path / "none"), "--protocol", "sotu-v1-quick", "--recipe", recipe,
             "--quiet"], capsys, [tmp_path], codes=(2,))


yaml_scalar = st.one_of(st.none(), st.booleans(), st.integers(-2, 300), st.floats(allow_nan=True),
                        st.text(max_size=10), numbers, st.sampled_from(NAMES))
yaml_stage = st.one_of(
    stage,
    st.fixed_dictionaries({"method": st.one_of(st.sampled_from(NAMES), yaml_scalar)},
                          optional={"args": st.one_of(st.lists(st.one_of(positional, yaml_scalar), max_size=3),
                                                      yaml_scalar, st.lists(st.lists(yaml_scalar), max_size=2)),
                                    "bits": yaml_scalar, "group": yaml_scalar, "include": yaml_scalar,
                                    "bogus": yaml_scalar}),
    yaml_scalar,
)
yaml_documents = st.one_of(
    st.fixed_dictionaries({"stages": st.one_of(st.lists(yaml_stage, max_size=4), yaml_stage, recipes)}).map(
        lambda d: yaml.safe_dump(d, allow_unicode=True)),
    st.lists(yaml_stage, max_size=4).map(lambda d: yaml.safe_dump(d, allow_unicode=True)),
    st.text(max_size=60),  # arbitrary text
    st.binary(max_size=60),  # not even UTF-8
)


@budget(40)
@fixed_seed()
@given(document=yaml_documents, mangle=st.sampled_from(["none", "truncate", "anchor", "tag", "tabs"]))
def test_recipe_yaml_files(document, mangle, tmp_path, capsys):
    data = document.encode() if isinstance(document, str) else document
    if mangle == "truncate":
        data = data[: len(data) // 2]
    elif mangle == "anchor":
        data = b"x: &a [rtn:w4]\nstages: *a\n" + data
    elif mangle == "tag":
        data = b"stages: !!python/object/apply:os.system ['true']\n" + data
    elif mangle == "tabs":
        data = data.replace(b" ", b"\t")
    path = tmp_path / "r.yaml"
    path.write_bytes(data)
    _check_library(str(path))
    run_cli(["compress", "--model", str(tmp_path / "none"), "--protocol", "sotu-v1-quick", "--recipe", str(path),
             "--quiet"], capsys, [tmp_path], codes=(2,))
