"""crescendo train-reference: a short run on digits, and bad input as one line, exit 2, nothing written."""

from __future__ import annotations

import json

import pytest

from crescendo.cli import main
from crescendo.models.vision_io import load_vision_model


def _run(capsys, *argv):
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse refuses unknown choices itself (exit 2, one line)
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_digits_run_writes_a_loadable_model(capsys, tmp_path):
    code, out, _ = _run(capsys, "train-reference", "--dataset", "digits", "--arch", "resnet-mini", "--epochs", "1",
                        "--seed", "3", "--out", str(tmp_path / "m"), "--json", "--quiet")
    assert code == 0
    result = json.loads(out)
    assert (result["dataset"], result["arch"], result["seed"], result["epochs"]) == ("digits", "resnet-mini", 3, 1)
    assert result["test_total"] == 360 and 0 <= result["test_accuracy"] <= 100
    loaded = load_vision_model(tmp_path / "m")
    assert loaded.metadata["test_correct"] == result["test_correct"] and loaded.metadata["training"]["seed"] == 3


@pytest.mark.parametrize("argv, message", [
    (["--arch", "resnet-huge"], "invalid choice"),
    (["--arch", "vit-mini", "--dataset", "cifar10"], "invalid choice"),
    (["--arch", "resnet-mini", "--epochs", "0"], "--epochs must be at least 1"),
    (["--arch", "resnet-mini", "--seed", "-1"], "--seed"),
    (["--arch", "resnet-mini", "--threads", "0"], "--threads"),
    (["--arch", "resnet-mini", "--data-dir", "/no/such/dir"], "Fashion-MNIST directory /no/such/dir does not exist"),
    (["--arch", "resnet-mini", "--dataset", "digits", "--data-dir", "/tmp"], "only applies to fashion-mnist"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(argv, message, capsys, tmp_path):
    out_dir = tmp_path / "out"
    code, out, err = _run(capsys, "train-reference", *argv, "--out", str(out_dir), "--quiet")
    assert code == 2 and out == ""
    assert message in err and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []


def test_non_empty_out_and_malformed_data_are_refused(capsys, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    code, _, err = _run(capsys, "train-reference", "--dataset", "digits", "--arch", "resnet-mini",
                        "--out", str(tmp_path / "full"), "--quiet")
    assert code == 2 and "not empty" in err and sorted(p.name for p in (tmp_path / "full").iterdir()) == ["keep.txt"]
    from data.test_images import make_fashion_dir

    root, _ = make_fashion_dir(tmp_path / "fm")
    (root / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip")
    code, _, err = _run(capsys, "train-reference", "--arch", "resnet-mini", "--data-dir", str(root),
                        "--out", str(tmp_path / "new"), "--quiet")
    assert code == 2 and "train-images-idx3-ubyte.gz: not a readable gzip file" in err and err.count("\n") == 1
    assert not (tmp_path / "new").exists()


def test_recipe_shape_mismatch_is_refused(capsys, tmp_path):
    from data.test_images import make_fashion_dir

    root, _ = make_fashion_dir(tmp_path / "fm", size=6)  # the fashion-mnist recipe expects 28x28
    code, _, err = _run(capsys, "train-reference", "--arch", "vit-mini", "--data-dir", str(root), "--quiet")
    assert code == 2 and "expects 1x28x28" in err
