"""Zero-shot evaluation through lm-eval on a local multiple-choice task: no downloads anywhere."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")

from conftest import TINY_PROTOCOL_ARGS  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from crescendo import compress  # noqa: E402
from crescendo.cli import main  # noqa: E402
from crescendo.errors import ConfigError, DataError  # noqa: E402
from crescendo.eval import zeroshot  # noqa: E402
from crescendo.eval.zeroshot import zero_shot  # noqa: E402

# every word is in the tiny word-level tokenizer (w0..w94), one token each
DOCS = [{"question": f"w{i} w{i + 1} w{i + 2}", "choices": [f"w{i + 3}", f"w{i + 10}", f"w{i + 20}"],
         "answer": i % 3} for i in range(6)]


@pytest.fixture(scope="module")
def tiny_task(tmp_path_factory) -> Path:
    """A directory holding `tiny_mc`, a multiple-choice task in lm-eval's YAML format, and its jsonl."""
    root = tmp_path_factory.mktemp("tasks")
    data = root / "tiny_mc.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    (root / "tiny_mc.yaml").write_text(
        "task: tiny_mc\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\n'
        'doc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{answer}}"\n'
        "metric_list:\n  - metric: acc\n")
    return root


@pytest.fixture(scope="module")
def tiny(saved_tiny):
    model_dir, _ = saved_tiny
    return AutoModelForCausalLM.from_pretrained(model_dir).eval(), AutoTokenizer.from_pretrained(model_dir)


def _hand_accuracy(model, tokenizer, docs) -> float:
    """acc as lm-eval defines it: the choice with the largest log-likelihood after the question."""
    hits = 0
    for doc in docs:
        ids = torch.tensor([tokenizer(doc["question"])["input_ids"]])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0, -1], dim=-1)  # (vocab,)
        scores = [logp[tokenizer.convert_tokens_to_ids(c)].item() for c in doc["choices"]]
        hits += int(max(range(len(scores)), key=scores.__getitem__) == doc["answer"])
    return hits / len(docs)


def test_local_task_matches_the_hand_computed_accuracy(tiny, tiny_task):
    model, tokenizer = tiny
    scores = zero_shot(model, tokenizer, ["tiny_mc"], include_path=str(tiny_task))
    metrics = scores["tiny_mc"]
    assert isinstance(metrics["acc"], float) and 0.0 <= metrics["acc"] <= 1.0
    assert metrics["samples"] == len(DOCS)
    assert metrics["acc"] == pytest.approx(_hand_accuracy(model, tokenizer, DOCS))
    assert tokenizer.pad_token is None  # lm-eval got a copy to set its pad token on


def test_a_compressed_model_goes_through_the_same_call(saved_tiny, tiny_task):
    model_dir, _ = saved_tiny
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    compress(model, "magnitude:0.5", progress=False)
    weight = model.model.layers[0].mlp.up_proj.weight
    assert (weight == 0).float().mean().item() == pytest.approx(0.5, abs=0.01)
    metrics = zero_shot(model, tokenizer, ["tiny_mc"], include_path=str(tiny_task), limit=4)["tiny_mc"]
    assert metrics["samples"] == 4
    assert metrics["acc"] == pytest.approx(_hand_accuracy(model, tokenizer, DOCS[:4]))


def test_cli_tasks_json(saved_tiny, tiny_task, capsys):
    model_dir, protocol = saved_tiny
    code = main(["eval", "--model", str(model_dir), "--protocol", protocol, *TINY_PROTOCOL_ARGS,
                 "--tasks", "tiny_mc", "--tasks-include", str(tiny_task), "--json", "--quiet"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["model"] and out["protocol"]
    assert set(out["tasks"]) == {"tiny_mc"}
    assert 0.0 <= out["tasks"]["tiny_mc"]["acc"] <= 1.0 and out["tasks"]["tiny_mc"]["samples"] == len(DOCS)


def test_hub_task_fails_fast_offline(tiny, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(DataError, match=r"arc_easy.*allenai/ai2_arc.*--tasks-include"):
        zero_shot(*tiny, ["arc_easy"])
    assert time.perf_counter() - start < 15


def test_cli_hub_task_exits_2_when_the_hub_is_unreachable(saved_tiny, monkeypatch, capsys):
    model_dir, protocol = saved_tiny
    asked = []
    monkeypatch.setattr(zeroshot, "probe_hub", lambda repo, *a, **k: asked.append(repo) or ("unreachable", "no network"))
    code = main(["eval", "--model", str(model_dir), "--protocol", protocol, "--tasks", "arc_easy", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and asked == ["allenai/ai2_arc"]
    assert len(err.strip().splitlines()) == 1 and "'arc_easy'" in err and "--tasks-include" in err


def test_cli_unknown_task_exits_2(saved_tiny, tiny_task, capsys):
    model_dir, protocol = saved_tiny
    code = main(["eval", "--model", str(model_dir), "--protocol", protocol, "--tasks", "tiny_mc,no_such_task",
                 "--tasks-include", str(tiny_task), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown task 'no_such_task'" in err


def test_missing_lm_eval_is_a_config_error(tiny, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval now raises ImportError
    with pytest.raises(ConfigError, match=r"crescendo\[lmeval\]"):
        zero_shot(*tiny, ["tiny_mc"])
