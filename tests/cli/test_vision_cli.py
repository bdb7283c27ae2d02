"""The CLI on vision models: compress / eval / verify round trip, and bad input (one line, exit 2, nothing written)."""

from __future__ import annotations

import json

import pytest
import torch

from crescendo.cli import main
from crescendo.models.vision import ResNetMiniConfig, ViTMiniConfig, build_vision_model
from crescendo.models.vision_io import save_vision_model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("vision")
    torch.manual_seed(0)
    save_vision_model(build_vision_model(ResNetMiniConfig(image_size=8, widths=(8, 16), depths=(1, 1),
                                                          strides=(1, 2))), root / "resnet")
    save_vision_model(build_vision_model(ViTMiniConfig(image_size=8, patch_size=2, dim=16, depth=1, heads=2,
                                                       mlp_dim=16)), root / "vit")
    save_vision_model(build_vision_model(ResNetMiniConfig(image_size=28, widths=(4,), depths=(1,), strides=(2,))),
                      root / "resnet28")
    unknown = root / "unknown"
    save_vision_model(build_vision_model(ViTMiniConfig(image_size=8, patch_size=2, dim=16, depth=1, heads=2,
                                                       mlp_dim=16)), unknown)
    config = json.loads((unknown / "config.json").read_text())
    config["config"]["arch"] = "alexnet"
    (unknown / "config.json").write_text(json.dumps(config))
    return root


def run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_compress_save_verify_and_reload_agree(models, tmp_path, capsys):
    out = tmp_path / "c"
    code, text, _ = run(["compress", "--model", str(models / "resnet"), "--protocol", "digits-v1", "--quiet", "--json",
                         "--recipe", "foldbn > sparsegpt:2:4 > gptq:w4a8", "--save", str(out), "--format", "packed"],
                        capsys)
    assert code == 0
    result = json.loads(text)
    assert result["batchnorm"] == "folded" and result["sparsity"] == pytest.approx(0.5)
    assert run(["verify", str(out)], capsys)[0] == 0
    code, text, _ = run(["eval", "--model", str(out), "--protocol", "digits-v1", "--json", "--quiet"], capsys)
    assert code == 0 and json.loads(text)["accuracy"] == result["accuracy"]


@pytest.mark.parametrize("argv,message", [
    (["--model", "{root}/missing", "--protocol", "digits-v1"], "not a crescendo vision model directory"),
    (["--model", "{root}/resnet"], "is a vision model; give a vision protocol"),
    (["--model", "{root}/resnet28", "--protocol", "digits-v1"], "takes 1x28x28 images"),
    (["--model", "{root}/unknown", "--protocol", "digits-v1"], "unknown vision architecture 'alexnet'"),
    (["--model", "{root}/vit", "--protocol", "digits-v1", "--recipe", "foldbn"], "has no batch norm"),
    (["--model", "{root}/resnet28", "--protocol", "fmnist-v1", "--data-dir", "{root}/nodata"], "does not exist"),
    (["--model", "{root}/resnet28", "--protocol", "fmnist-v1", "--data-dir", "{root}/baddata"], "not a readable gzip"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(models, argv, message, tmp_path, capsys):
    bad = models / "baddata"
    bad.mkdir(exist_ok=True)
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                 "t10k-labels-idx1-ubyte.gz"):
        (bad / name).write_bytes(b"not gzip")
    argv = [a.replace("{root}", str(models)) for a in argv]
    if "--recipe" not in argv:
        argv += ["--recipe", "rtn:w4"]
    out = tmp_path / "out"
    code, text, err = run(["compress", *argv, "--quiet", "--save", str(out), "--format", "packed"], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
