"""The protocol registry and protocol validation."""

from __future__ import annotations

import dataclasses

import pytest

from crescendo.data import Protocol, custom_protocol, get_protocol, list_protocols, register_protocol
from crescendo.errors import DataError


def test_registered_protocols_match_the_spec():
    quick, full = get_protocol("sotu-v1-quick"), get_protocol("sotu-v1-full")
    assert (quick.corpus, quick.seqlen, quick.n_eval_windows, quick.n_calibration, quick.seed, quick.dtype) \
        == ("sotu", 512, 64, 32, 0, "float32")
    assert (full.corpus, full.seqlen, full.n_eval_windows, full.n_calibration) == ("sotu", 2048, None, 128)
    wiki, c4 = get_protocol("wikitext2"), get_protocol("c4")
    assert (wiki.corpus, wiki.seqlen, wiki.n_eval_windows, wiki.n_calibration) \
        == ("wikitext2", 2048, None, 128)
    assert (c4.corpus, c4.seqlen, c4.n_eval_windows, c4.n_calibration) == ("c4", 2048, 256, 128)
    assert {"sotu-v1-quick", "sotu-v1-full", "wikitext2", "c4"} <= set(list_protocols())


def test_unknown_protocol_lists_known():
    with pytest.raises(DataError, match="unknown protocol 'sotu-v2'") as info:
        get_protocol("sotu-v2")
    assert "sotu-v1-quick" in str(info.value) and "wikitext2" in str(info.value)
    with pytest.raises(DataError):
        get_protocol("sotu-v1-quick:/data")  # only hub corpora take a local copy


def test_hub_protocol_with_local_copy():
    protocol = get_protocol("wikitext2:/data/wikitext")
    assert protocol.name == "wikitext2" and protocol.corpus == "wikitext2:/data/wikitext"
    assert get_protocol("c4:/data/c4").corpus == "c4:/data/c4"


def test_duplicate_registration_raises():
    with pytest.raises(DataError, match="already registered"):
        register_protocol(Protocol("sotu-v1-quick", "sotu", 512, 64, 32))


def test_override_and_custom():
    quick = get_protocol("sotu-v1-quick")
    small = dataclasses.replace(quick, n_eval_windows=4)
    assert small.n_eval_windows == 4 and quick.n_eval_windows == 64
    custom = custom_protocol("text:/x.txt", 128, None, 8)
    assert (custom.corpus, custom.seqlen, custom.n_eval_windows, custom.n_calibration) \
        == ("text:/x.txt", 128, None, 8)
    assert "text:/x.txt" in custom.name and "seqlen=128" in custom.name
    assert custom_protocol("sotu", 64, 2, 2, name="mine").name == "mine"
    assert "first 64 windows" in quick.describe()


@pytest.mark.parametrize("changes", [
    {"seqlen": 1}, {"seqlen": 512.0}, {"n_eval_windows": 0}, {"n_calibration": -1},
    {"dtype": "float64"}, {"name": ""},
])
def test_invalid_protocols_raise(changes):
    with pytest.raises(DataError):
        dataclasses.replace(get_protocol("sotu-v1-quick"), **changes)
