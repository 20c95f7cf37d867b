"""Deployment thresholds: stored with the model (inference.weights.record_threshold), recorded by eval.py from its
verification run, calibrated at a target FAR with a bootstrap interval (eval.py --calibrate, verification)."""
import json

import numpy as np
import pytest
import torch

import eval as eval_command
from data.valsets import convert_bin, write_bin
from evaluation import ValSet
from inference.loader import load_model, model_threshold
from inference.weights import metadata_path, record_threshold, save_backbone_weights
from model import build_backbone
from tests.helpers import jpeg, run_command
from utils import UserError
from verification import calibrate_threshold, tar_at_far_scores, threshold_at_far

PAIRS = 20  # 10 different-person pairs: enough for FAR 0.1


@pytest.fixture()
def setup(tmp_path):
    issame = [i % 2 == 0 for i in range(PAIRS)]
    write_bin(tmp_path / "mine.bin", [jpeg(i) for i in range(2 * PAIRS)], issame)
    convert_bin(tmp_path / "mine.bin", tmp_path)
    write_bin(tmp_path / "lfw.bin", [jpeg(1000 + i) for i in range(PAIRS)], issame[:PAIRS // 2])
    convert_bin(tmp_path / "lfw.bin", tmp_path)
    torch.manual_seed(0)
    save_backbone_weights(build_backbone("mobilefacenet"), tmp_path / "model_mobilefacenet.pth")
    return tmp_path


def cosines(setup, name):
    model = load_model(setup / "model_mobilefacenet.pth")
    valset = ValSet.load(setup, name)
    embeddings = model.embed(valset.images, batch_size=16)  # eval.py's batches: the same kernels, the same rounding
    return np.einsum("ij,ij->i", embeddings[0::2], embeddings[1::2]), valset.issame


def test_threshold_at_far_with_ties():
    negatives = np.array([0.9, 0.8, 0.8, 0.8, 0.1, 0.0, -0.1, -0.2, -0.3, -0.4])
    # FAR 0.1 allows one negative: the three tied at 0.8 must all stay out, so t lies just above 0.8
    assert threshold_at_far(negatives, 0.1) == np.nextafter(0.8, 1)
    assert threshold_at_far(negatives, 0.4) == np.nextafter(0.1, 1)  # 0.9 and the three 0.8s: four accepted
    points = tar_at_far_scores(np.r_[negatives, [0.85, 0.5]], np.r_[np.zeros(10, bool), [True, True]], [0.1, 0.4])
    assert [(p.tar, p.far) for p in points] == [(0.5, 0.1), (1.0, 0.4)]


def test_calibration_interval_contains_the_point():
    rng = np.random.default_rng(0)
    scores = np.r_[rng.normal(0.6, 0.1, 500), rng.normal(0.0, 0.1, 5000)]
    issame = np.r_[np.ones(500, bool), np.zeros(5000, bool)]
    c = calibrate_threshold(scores, issame, 1e-2, resamples=200)
    assert c.threshold_ci[0] <= c.threshold <= c.threshold_ci[1] and c.tar_ci[0] <= c.tar <= c.tar_ci[1]
    assert c.far <= 1e-2 and c.num_negative == 5000
    assert c.threshold == pytest.approx(np.quantile(scores[~issame], 0.99), abs=0.02)
    with pytest.raises(UserError, match="needs at least 10000 different-person pairs"):
        calibrate_threshold(scores, issame, 1e-4)


def test_record_threshold_keeps_the_other_keys(tmp_path):
    weights = tmp_path / "model_x.pth"
    save_backbone_weights(build_backbone("mobilefacenet"), weights)
    before = json.loads(metadata_path(weights).read_text())
    record_threshold(weights, 0.31, "test")
    after = json.loads(metadata_path(weights).read_text())
    assert after == {**before, "threshold": 0.31, "threshold_source": "test"}
    assert model_threshold(weights) == 0.31
    load_model(weights)  # the conventions are still read
    record_threshold(tmp_path / "face.onnx", 0.4, "onnx")
    assert json.loads((tmp_path / "face.json").read_text()) == {"threshold": 0.4, "threshold_source": "onnx"}
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="bad.json: not a readable JSON file"):
        record_threshold(tmp_path / "bad.pth", 0.3, "x")
    assert (tmp_path / "bad.json").read_text() == "{not json"


def test_eval_records_the_best_threshold_of_the_first_set(setup, capsys):
    model = setup / "model_mobilefacenet.pth"
    assert eval_command.main(["--model", str(model), "--data_path", str(setup), "--batch_size", "16",
                              "--out", str(setup / "r")]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| lfw"))
    stored = json.loads(metadata_path(model).read_text())
    distance = float(row.split(" | ")[4])
    assert stored["threshold"] == pytest.approx(1 - distance / 2, abs=1e-3)
    assert stored["threshold_source"].startswith("eval.py: best 10-fold threshold on lfw (squared L2")
    assert stored["source"] == "ours"


def test_eval_calibrate_stores_a_threshold_that_later_runs_keep(setup, capsys):
    model = setup / "model_mobilefacenet.pth"
    assert eval_command.main(["--model", str(model), "--data_path", str(setup), "--val_sets", "mine",
                              "--calibrate", "far=0.1", "--bootstrap", "200", "--batch_size", "16", "--out", str(setup / "r")]) == 0
    printed = capsys.readouterr().out
    stored = json.loads(metadata_path(model).read_text())
    scores, issame = cosines(setup, "mine")
    negatives = np.sort(scores[~issame])[::-1]  # 10 negatives: FAR 0.1 accepts at most 1
    assert negatives[1] - 1e-6 < stored["threshold"] <= negatives[1] + 1e-5  # just above the 2nd negative
    tar = np.mean(scores[issame] >= stored["threshold"])
    assert f"TAR {tar:.4f}" in printed and "threshold at FAR 0.1 on mine: cosine" in printed
    assert stored["threshold_source"].startswith("calibrated at FAR 0.1 on mine (10 same / 10 different pairs), "
                                                 "95% CI [")
    assert model_threshold(model) == stored["threshold"]  # what verify.py and the facebank use
    assert eval_command.main(["--model", str(model), "--data_path", str(setup), "--val_sets", "lfw", "--folds", "2",
                              "--batch_size", "16", "--out", str(setup / "r2")]) == 0
    assert "kept the calibrated threshold" in capsys.readouterr().out
    assert json.loads(metadata_path(model).read_text()) == stored


def test_eval_calibrate_unsupported_far_is_a_user_error(setup):
    with pytest.raises(UserError, match="calibration at FAR 0.01 needs at least 100 different-person pairs and "
                                        "one same-person pair; the set has 10 different-person"):
        eval_command.main(["--model", str(setup / "model_mobilefacenet.pth"), "--data_path", str(setup), "--val_sets",
                           "mine", "--folds", "2", "--batch_size", "16", "--out", str(setup / "r"), "--calibrate",
                           "far=1e-2"])


@pytest.mark.parametrize("args, message", [
    (["--calibrate", "far=2"], "--calibrate: expected far=F with 0 < F < 1"),
    (["--calibrate", "far=0.1", "--calibrate_set", "cfp_fp"], "--calibrate_set: cfp_fp is not among --val_sets mine"),
])
def test_eval_calibrate_bad_flags_exit_2(setup, args, message):
    result = run_command("eval.py", "--model", setup / "model_mobilefacenet.pth", "--data_path", setup,
                         "--val_sets", "mine", "--out", setup / "r", *args)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert message in result.stderr.strip().splitlines()[-1]
