"""crossval.py on a tiny DroneFace-like folder: a pretrained start (a TreB1eN-format file) shared by every fold and
head, the three protocols, the paired comparison and its report; the scores themselves on hand-made embeddings
(the seed protocol's leak shown on embeddings that carry no identity at all); train.py's seed command; errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import crossval
import learner as learner_module
from data import synthetic
from data.face_folder import FaceRecord
from evaluation import fold_scores
from identification import gallery_ranks
from model import build_backbone
from tests.helpers import run_command
from training.run_log import read_scalars
from utils import UserError

FAST = ["-n", "mobilefacenet", "--embedding_size", "64", "-b", "8", "-e", "1", "-lr", "0.01", "--num_workers", "0",
        "--num_threads", "1", "--deterministic", "--seed", "1", "--val_batch_size", "64", "--no_val_flip"]


@pytest.fixture(scope="module")
def drone(tmp_path_factory) -> Path:
    """4 subjects x 4 heights x 2 distances = 32 crops, and a TreB1eN-format MobileFaceNet file to start from."""
    root = tmp_path_factory.mktemp("crossval")
    synthetic.generate_droneface(root / "faces", identities=4, distances=2, seed=2, max_size=48)
    torch.manual_seed(0)
    torch.save(build_backbone("mobilefacenet", embedding_size=64).state_dict(), root / "model_mobilefacenet.pth")
    return root


def run(drone: Path, out: Path, *extra) -> dict:
    assert crossval.main(["--data_path", str(drone / "faces"), "--meta_from_filename", "droneface", *FAST,
                          "--out", str(out), *map(str, extra)]) == 0
    return json.loads((out / "results.json").read_text())


def test_paired_identity_folds_from_one_pretrained_start(drone, tmp_path, monkeypatch):
    starts = []
    real_train = learner_module.Learner.train

    def recording_train(self):
        starts.append((self.config.head, self.conventions["channel_order"],
                       {k: v.clone() for k, v in self.backbone.state_dict().items()}, self.num_classes))
        return real_train(self)
    monkeypatch.setattr(learner_module.Learner, "train", recording_train)
    results = run(drone, tmp_path / "report", "--compare", "arcface,pgaml", "-fold", "2", "--pretrained",
                  drone / "model_mobilefacenet.pth")
    # every fold of every head starts from the file's weights, fed BGR as TreB1eN's weights want
    pretrained = torch.load(drone / "model_mobilefacenet.pth", weights_only=True)
    assert [s[0] for s in starts] == ["arcface", "pgaml", "arcface", "pgaml"]
    for _, order, state, num_classes in starts:
        assert order == "BGR" and num_classes == 2
        assert all(torch.equal(state[k], v) for k, v in pretrained.items())
    assert results["protocol"] == "identities" and results["heads"] == ["arcface", "pgaml"]
    assert results["data"]["num_images"] == 32 and results["data"]["skipped"] == []
    held_out = []
    for fold in results["folds"]:
        assert not set(fold["train_identities"]) & set(fold["test_identities"])
        held_out += fold["test_identities"]
        assert fold["num_test_images"] == 8 * len(fold["test_identities"])
        for head in ("arcface", "pgaml"):
            scores = fold["heads"][head]
            assert scores["gallery_size"] == 4 and scores["num_probes"] == fold["num_test_images"] - 2
            assert scores["held_out_gallery"]["gallery_size"] == 2
            assert 0 <= scores["rank1"] <= scores["rank5"] <= 1 and scores["cmc"] == sorted(scores["cmc"])
            assert scores["verification"]["num_pairs"] == 16 * 15 // 2
            assert set(scores["breakdown"]["height"]) == {"1.5", "3", "4", "5"}
            assert sum(c["count"] for c in scores["breakdown"]["distance"].values()) == scores["num_probes"]
            assert len(scores["loss_per_epoch"]) == 1 and scores["steps"] == 2
        # the gallery's enrolment images: 1.5 m and the nearest distance (2 m = ID 30)
        assert all(name.split("_")[2] == "0" and name.endswith("_30.jpg")
                   for name in fold["heads"]["arcface"]["gallery_images"])
    assert sorted(held_out) == ["a", "b", "c", "d"]
    paired = results["paired"]["pgaml-arcface"]["rank1"]
    per_fold = [f["heads"]["pgaml"]["rank1"] - f["heads"]["arcface"]["rank1"] for f in results["folds"]]
    assert paired["per_fold"] == pytest.approx(per_fold) and paired["mean"] == pytest.approx(np.mean(per_fold))
    # 14 probes per fold: rank-1 moves in steps of 1/14, and which machine's kernels give two equal fold
    # differences (no t-test then) is chance
    equal_nonzero = np.ptp(per_fold) < 1e-12 and not np.allclose(per_fold, 0)
    assert ("over 2 folds; paired t-test undefined" if equal_nonzero else "over 2 folds; paired t-test p = ") \
        in paired["statement"]
    summary = results["summary"]["pgaml"]["rank1"]
    assert summary["mean"] == pytest.approx(np.mean([f["heads"]["pgaml"]["rank1"] for f in results["folds"]]))
    report = tmp_path / "report"
    for name in ("rank1_per_fold.png", "loss_per_epoch.png", "cmc.png"):
        assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (report / "results.md").read_text()
    assert "| mean +- std |" in table and "height 1.5 m" in table and paired["statement"] in table
    tags = {(r["tag"], r["step"]) for r in read_scalars(report / "log")}
    assert {("crossval/arcface/rank1", 1), ("crossval/pgaml/rank1", 2)} <= tags
    assert read_scalars(report / "folds" / "fold2" / "pgaml" / "log", "train/loss")
    with pytest.raises(UserError, match="holds a cross-validation already"):
        run(drone, report, "-fold", "2")


@pytest.mark.parametrize("cv", ["images", "seed_protocol"])
def test_image_protocols(drone, tmp_path, cv):
    results = run(drone, tmp_path / cv, "--cv", cv, "-fold", "2", "--head", "arcface", "--height_from_id")
    assert results["protocol"] == cv and results["data"]["height"].startswith("raw height ID")
    listed = sorted(name for fold in results["folds"] for name in fold["test_images"])
    assert len(listed) == 32 and listed[0] == "photos_all_faces/a_gp_0_ef_00.jpg"
    for fold in results["folds"]:
        scores = fold["heads"]["arcface"]
        assert scores["num_probes"] == fold["num_test_images"] == 16
        assert set(scores["breakdown"]["height"]) == {"0", "3", "4", "5"}  # the raw IDs, as asked
        if cv == "images":
            assert fold["train_identities"] == fold["test_identities"] == ["a", "b", "c", "d"]
        else:  # KFold(shuffle=False) over the images in file order: a, b | c, d (no subject k here)
            assert fold["test_identities"] == (["a", "b"] if fold["fold"] == 1 else ["c", "d"])


def test_the_seed_command_runs_crossval(drone, tmp_path):
    result = run_command("train.py", "-b", "8", "-e", "1", "-d", "droneface", "-p", "True", "-fold", "2",
                         "--data_path", drone / "faces", *FAST, "--out", tmp_path / "seed")
    assert result.returncode == 0, result.stderr
    results = json.loads((tmp_path / "seed" / "results.json").read_text())
    assert results["heads"] == ["pgaml"] and results["num_folds"] == 2 and results["protocol"] == "identities"
    assert "| mean +- std |" in result.stdout


def test_bad_metadata_on_the_command_line(drone, tmp_path):
    faces = tmp_path / "faces"
    faces.mkdir()
    for path in (drone / "faces" / "photos_all_faces").iterdir():
        (faces / path.name).write_bytes(path.read_bytes())
    (faces / "meta.csv").write_text("a_gp_0_ef_00.jpg,a,12\na_gp_0_ef_30.jpg,a,abc\nmissing.jpg,b,3\n")
    result = run_command("crossval.py", "--data_path", faces, "--strict", "--out", tmp_path / "r", *FAST)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert "2 bad record(s) (--strict)" in line and "a_gp_0_ef_30.jpg: yaw 'abc' is not a number" in line
    assert "missing.jpg: file not found" in line


@pytest.mark.parametrize("argv, message", [
    (["-d", "emore"], "-d emore: crossval.py reads a face folder"),
    (["--compare", "arcface,arcface"], "--compare arcface,arcface: give distinct heads"),
    (["--head", "pgaml", "--meta", "{csv}"], "--head pgaml needs each image's yaw"),
    (["--height_from_id"], "--height_from_id needs --meta_from_filename"),
    (["-fold", "9"], "--num_folds 9: --cv identities needs 2 <= folds <= the 4 identities"),
])
def test_usage_errors(drone, tmp_path, argv, message):
    csv = tmp_path / "no_pose.csv"
    csv.write_text("".join(f"photos_all_faces/{n},{n[0]}\n" for n in ("a_gp_0_ef_00.jpg", "b_gp_0_ef_00.jpg")))
    argv = [a.replace("{csv}", str(csv)) for a in argv]
    with pytest.raises(UserError, match=message.replace("(", "\\(").replace(")", "\\)")):
        crossval.main(["--data_path", str(drone / "faces"), *FAST, "--out", str(tmp_path / "r"), *argv])


# ------------------------------------------------------------------ the scores, on hand-made embeddings

def unit(vectors) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_gallery_ranks_count_ties_against_the_probe():
    gallery = unit([[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    probes = unit([[0.9, 0.1, 0], [1, 1, 0], [0.2, 0.1, 1]])
    assert gallery_ranks(probes, ["x", "y", "x"], gallery, ["x", "y", "z"]).tolist() == [1, 2, 2]
    with pytest.raises(UserError, match="probe identity 'q' has no gallery entry"):
        gallery_ranks(probes, ["x", "q", "x"], gallery, ["x", "y", "z"])


def test_the_seed_protocol_leak_on_embeddings_without_identity():
    """Random embeddings carry no identity: an honest closed-set score is near chance, the authors' score (the
    probe inside its own class mean) is perfect."""
    rng = np.random.default_rng(0)
    identities = np.repeat(np.array(["a", "b", "c"]), 8)
    embeddings = unit(rng.standard_normal((24, 128)))
    train, test = np.flatnonzero(np.arange(24) % 2 == 0), np.flatnonzero(np.arange(24) % 2 == 1)
    leaked, _, _ = fold_scores.seed_protocol(embeddings, identities, test, 0, 0)
    honest, _, _ = fold_scores.closed_set(embeddings, identities, train, test, 0, 0)
    assert leaked["rank1"] == 1.0 and leaked["gallery_size"] == 3
    assert honest["rank1"] < 0.7


def test_open_set_gallery_rule_and_breakdown():
    records = [FaceRecord(Path(f"{who}{i}.jpg"), who, yaw=float(y), height=h, distance=d)
               for who, rows in {"a": [(5, 3.0, 2.0), (70, 1.5, 16.0), (40, 1.5, 2.0)],
                                 "b": [(0, 1.5, 10.0), (10, 1.5, 6.0), (-45, 4.0, 2.0)]}.items()
               for i, (y, h, d) in enumerate(rows)]
    identities = [r.identity for r in records]
    assert fold_scores.enrolment_image(records, [0, 1, 2]) == 2  # 1.5 m, then nearest: a2
    embeddings = unit([[1, 0], [0.8, 0.6], [1, 0.1], [0, 1], [0.1, 1], [0.9, 0.2]])
    scores, probes, ranks = fold_scores.open_set(embeddings, records, identities, np.array([]), np.arange(6), 0, 0)
    assert scores["gallery_images"] == ["a2.jpg", "b1.jpg"]
    assert scores["held_out_gallery"] == {"rank1": 0.75, "gallery_size": 2}
    assert probes.tolist() == [0, 1, 3, 5] and ranks.tolist() == [1, 1, 1, 2]
    strata = fold_scores.breakdown(records, probes, ranks)
    assert strata["yaw"] == {"|yaw|<30": {"rank1": 1.0, "count": 2}, "|yaw| 30-60": {"rank1": 0.0, "count": 1},
                             "|yaw|>=60": {"rank1": 1.0, "count": 1}}
    assert strata["height"]["1.5"] == {"rank1": 1.0, "count": 2} and strata["distance"]["<5 m"]["count"] == 2


def test_paired_comparison_agrees_with_scipy():
    from scipy import stats
    arcface, pgaml = [0.60, 0.70, 0.65, 0.72, 0.58], [0.62, 0.69, 0.70, 0.75, 0.61]
    result = fold_scores.paired_comparison(arcface, pgaml, ("arcface", "pgaml"), "rank1")
    assert result["mean"] == pytest.approx(0.024) and result["t_test_p"] == pytest.approx(
        stats.ttest_rel(pgaml, arcface).pvalue)
    assert result["wilcoxon_p"] == pytest.approx(stats.wilcoxon(pgaml, arcface).pvalue)
    assert result["significant"] is (result["t_test_p"] < 0.05)
    assert "cannot reach p < 0.05" in result["statement"]
    same = fold_scores.paired_comparison([0.5, 0.6], [0.5, 0.6], ("a", "b"), "rank1")
    assert same["t_test_p"] == 1.0 and "NOT significant" in same["statement"]
    # one pair of 20 each time (accuracy moves in steps of 0.05): t = mean / 0 is no evidence, so no p-value
    steps = fold_scores.paired_comparison([0.80, 0.75, 0.80], [0.75, 0.70, 0.75], ("a", "b"), "accuracy", "seeds")
    assert steps["t_test_p"] is None and not steps["significant"] and steps["wilcoxon_p"] == pytest.approx(0.25)
    assert "t-test undefined" in steps["statement"] and "NOT significant" in steps["statement"]


def test_align_detect_aligns_real_faces_and_resizes_the_rest(tmp_path):
    from tests.helpers import face_like, skimage_photo, write_photo
    write_photo(tmp_path / "astronaut.png", skimage_photo("astronaut")[:260, 100:330])  # a face crop, 230x260
    write_photo(tmp_path / "plain.jpg", face_like(3, 64))  # no face in it
    (tmp_path / "meta.csv").write_text("astronaut.png,eileen,0\nplain.jpg,nobody,0\n")
    config, options = crossval.parse(["--data_path", str(tmp_path), "--align", "detect", "--head", "arcface"])
    dataset, folder = crossval.load_dataset(config, options)
    assert dataset.images.shape == (2, 3, 112, 112)
    assert folder.notes[-1] == "--align detect: no face found in 1 of 2 images; those were resized whole"
