"""eval.py end to end: a saved backbone evaluated on prepared val sets, and its bad-input errors."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from data.valsets import convert_bin, write_bin
from inference.weights import save_backbone_weights
from model import build_backbone
from tests.conftest import ROOT
from tests.helpers import jpeg


def run_eval(*args):
    return subprocess.run([sys.executable, str(ROOT / "eval.py"), *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval")
    images = [jpeg(i) for i in range(24)]
    write_bin(tmp / "lfw.bin", images, [i % 2 == 0 for i in range(12)])
    np.save(tmp / "lfw.pose.npy", np.tile(np.array([[0, 0], [80, 0]], np.float32), (12, 1)))
    convert_bin(tmp / "lfw.bin", tmp)
    write_bin(tmp / "agedb_30.bin", images[:20], [i % 2 == 1 for i in range(10)])
    convert_bin(tmp / "agedb_30.bin", tmp)
    torch.manual_seed(0)
    model = build_backbone("mobilefacenet")
    save_backbone_weights(model, tmp / "model_mobilefacenet.pth")
    torch.save(model.state_dict(), tmp / "treb1en_style.pth")  # no conventions file: TreB1eN's weights
    return tmp


def test_eval_ours(setup):
    out = setup / "report"
    result = run_eval("--model", setup / "model_mobilefacenet.pth", "--data_path", setup, "--batch_size", "8",
                      "--folds", "2", "--out", out)
    assert result.returncode == 0, result.stderr
    assert "mobilefacenet (ours weights, RGB input)" in result.stdout
    lines = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[0] for line in lines] == ["| set", "| lfw", "| agedb_30"]
    assert lines[1].split(" | ")[-1].startswith("0.") and "(12)" in lines[1]  # profile pairs counted
    assert sorted(p.name for p in out.iterdir()) == ["results.csv", "results.md", "roc_agedb_30.png", "roc_lfw.png"]


def test_eval_treb1en_weights_are_bgr(setup):
    result = run_eval("--model", setup / "treb1en_style.pth", "--data_path", setup, "--val_sets", "lfw",
                      "--folds", "2", "--out", setup / "report2")
    assert result.returncode == 0, result.stderr
    assert "mobilefacenet (treb1en weights, BGR input)" in result.stdout


@pytest.mark.parametrize("args, message", [
    (["--model", "missing.pth"], "missing.pth: weights file not found"),
    (["--val_sets", "cplfw"], "--val_sets: cplfw not found under"),
    (["--batch_size", "0"], "--batch_size must be >= 1"),
    (["--net", "resnet9"], "argument --net: invalid choice"),
    (["--folds", "0"], "--folds must be >= 2"),
    (["--model", "."], ".: a folder, not a weights file"),
])
def test_eval_bad_input(setup, args, message):
    base = {"--model": str(setup / "model_mobilefacenet.pth"), "--data_path": str(setup)}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    result = run_eval(*[item for pair in base.items() for item in pair])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ") and message in result.stderr


def test_eval_reports_what_training_logged(train_data, tmp_path):
    """One protocol everywhere: eval.py on the exported model prints the accuracy TensorBoard shows."""
    from learner import Learner
    from tests.test_learner import small_config
    from training.run_log import read_scalars

    work = tmp_path / "run"
    Learner(small_config(train_data, work, max_steps=3, val_sets="lfw", eval_every=100)).train()
    logged = read_scalars(work / "log", "val/lfw/accuracy")[-1]["value"]
    result = run_eval("--model", work / "save" / "model_latest.pth", "--data_path", train_data, "--val_sets", "lfw",
                      "--out", tmp_path / "report")
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if line.startswith("| lfw"))
    assert row.split(" | ")[2] == f"{logged:.4f}"
    without_flip = run_eval("--model", work / "save" / "model_latest.pth", "--data_path", train_data, "--val_sets",
                            "lfw", "--no_flip", "--out", tmp_path / "report2")
    assert without_flip.returncode == 0 and "| lfw" in without_flip.stdout


def test_eval_an_onnx_export_gives_the_same_table(setup):
    from inference.export import export_onnx
    from inference.loader import load_model

    ours = load_model(setup / "model_mobilefacenet.pth")
    export_onnx(ours.network, ours.conventions, setup / "model.onnx")
    rows = []
    for name in ("model_mobilefacenet.pth", "model.onnx"):
        result = run_eval("--model", setup / name, "--data_path", setup, "--val_sets", "lfw", "--folds", "2",
                          "--out", setup / f"report_{name}")
        assert result.returncode == 0, result.stderr
        rows.append(next(line for line in result.stdout.splitlines() if line.startswith("| lfw")))
    assert rows[0].split(" | ")[:6] == rows[1].split(" | ")[:6]


def test_eval_several_models_by_pose_and_resolution(setup):
    """Two models on the same pairs: each one's table, the breakdowns of both, McNemar's test between them."""
    import json

    out = setup / "compare"
    result = run_eval("--model", setup / "model_mobilefacenet.pth", "--model", setup / "treb1en_style.pth",
                      "--data_path", setup, "--val_sets", "lfw", "--folds", "2", "--batch_size", "8",
                      "--by", "pose,resolution", "--resolutions", "112,28", "--breakdown_far", "0.2", "--out", out)
    assert result.returncode == 0, result.stderr
    assert "(ours weights, RGB input)" in result.stdout and "(treb1en weights, BGR input)" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["breakdowns.md", "model_mobilefacenet", "pose_lfw.png",
                                                    "resolution_lfw.png", "results.json", "treb1en_style"]
    assert (out / "treb1en_style" / "results.md").is_file()
    document = json.loads((out / "results.json").read_text())
    ours = document["models"]["model_mobilefacenet"]["sets"]["lfw"]
    assert ours["pose"][2]["level"] == "frontal-profile" and ours["pose"][2]["pairs"] == 12  # yaw 0 and 80
    assert [level["level"] for level in ours["resolution"]] == ["res112", "res28"]
    assert ours["resolution"][0]["accuracy"] == ours["accuracy"]  # full size: the main table's number
    tested = {(c["breakdown"], c["level"]) for c in document["comparisons"]}
    assert tested == {("pose", "frontal-profile"), ("resolution", "res112"), ("resolution", "res28")}
    assert "| lfw | resolution | res28 | model_mobilefacenet vs treb1en_style |" in result.stdout


@pytest.mark.parametrize("args, message", [
    (["--by", "colour"], "--by colour: unknown breakdown colour"),
    (["--by", "pose", "--yaw_bins", "10,20"], "--yaw_bins 10,20: expected increasing |yaw| edges from 0"),
    (["--by", "resolution", "--resolutions", "56,500"], "--resolutions 500: larger than lfw's 112x112 images"),
    (["--by", "resolution", "--resolutions", "56,x"], "--resolutions 56,x: expected a comma-separated list of ints"),
])
def test_eval_bad_breakdown_flags(setup, args, message):
    result = run_eval("--model", setup / "model_mobilefacenet.pth", "--data_path", setup, "--val_sets", "lfw",
                      "--out", setup / "never", *args)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ") and message in result.stderr
    assert not (setup / "never").exists()
