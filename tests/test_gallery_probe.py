"""eval.py --gallery_probe (evaluation/gallery_probe.py): one gallery image per identity, rank-1/5 overall and
per height, distance bin and |yaw| bin, checked against a brute-force loop over the same embeddings; McNemar
between two models; a folder without metadata is one error line."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from data import synthetic
from data.face_folder import FaceRecord, load_faces, read_face_folder, resize_face
from evaluation import gallery_probe
from evaluation.protocols.droneface import filename_meta
from evaluation.strata import DEFAULT_YAW_EDGES
from inference.loader import load_model
from inference.weights import save_backbone_weights
from model import build_backbone
from tests.helpers import jpeg, run_command


@pytest.fixture(scope="module")
def drone(tmp_path_factory) -> Path:
    """3 subjects x 4 heights x 2 distances = 24 small crops, and two different MobileFaceNets."""
    root = tmp_path_factory.mktemp("gallery_probe")
    synthetic.generate_droneface(root / "faces", identities=3, distances=2, seed=5, max_size=40)
    for seed in (0, 1):
        torch.manual_seed(seed)
        save_backbone_weights(build_backbone("mobilefacenet", embedding_size=64), root / f"model_{seed}.pth")
    return root


def unit(rows):
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_gallery_rules_and_known_ranks():
    records = [FaceRecord(Path(f"{who}{i}.jpg"), who, yaw=float(y), height=h, distance=d)
               for who, rows in {"a": [(5, 3.0, 2.0), (70, 1.5, 16.0), (40, 1.5, 2.0)],
                                 "b": [(0, 1.5, 10.0), (10, 1.5, 6.0), (-45, 4.0, 2.0)]}.items()
               for i, (y, h, d) in enumerate(rows)]
    gallery, probes = gallery_probe.split_gallery(records, "enrolment")
    assert gallery.tolist() == [2, 4] and probes.tolist() == [0, 1, 3, 5]  # 1.5 m, then nearest
    assert gallery_probe.split_gallery(records, "frontal")[0].tolist() == [0, 3]  # smallest |yaw|
    embeddings = unit([[1, 0], [0.8, 0.6], [1, 0.1], [0, 1], [0.1, 1], [0.9, 0.2]])
    scores = gallery_probe.score_model(embeddings, records, gallery, probes)
    assert scores["ranks"] == [1, 1, 1, 2] and scores["rank1"] == 0.75 and scores["rank5"] == 1.0
    assert scores["breakdown"]["yaw"]["|yaw| 30-60"] == {"rank1": 0.0, "rank5": 1.0, "count": 1}
    assert scores["breakdown"]["height"]["1.5"] == {"rank1": 1.0, "rank5": 1.0, "count": 2}
    other = {**scores, "ranks": [2, 1, 1, 1]}
    tests = gallery_probe.paired_tests({"A": scores, "B": other}, records, probes)
    overall = next(t for t in tests if t["by"] == "all")
    assert (overall["only_a_right"], overall["only_b_right"], overall["p_value"]) == (1, 1, 1.0)
    yaw = next(t for t in tests if t["by"] == "yaw" and t["level"] == "|yaw| 30-60")
    assert (yaw["probes"], yaw["only_a_right"], yaw["only_b_right"]) == (1, 0, 1)


def brute_force(embeddings, records, gallery):
    """Per probe: 1 + the number of other gallery identities scoring at least the probe's own (cosine)."""
    out = {}
    for probe in range(len(records)):
        if probe in gallery:
            continue
        scores = {records[g].identity: float(embeddings[probe] @ embeddings[g]) for g in gallery}
        own = scores[records[probe].identity]
        out[probe] = 1 + sum(s >= own for who, s in scores.items() if who != records[probe].identity)
    return out


def yaw_bin(yaw: float) -> str:
    labels = ["|yaw|<30", "|yaw| 30-60", "|yaw|>=60"]
    return labels[min(int(np.searchsorted(DEFAULT_YAW_EDGES, abs(yaw), side="right")) - 1, 2)]


def distance_bin(distance: float) -> str:
    return "<5 m" if distance < 5 else "5-9 m" if distance < 9 else "9-13 m" if distance < 13 else ">=13 m"


def test_eval_gallery_probe_on_a_droneface_folder(drone):
    out = drone / "report"
    result = run_command("eval.py", "--model", drone / "model_0.pth", "--model", drone / "model_1.pth",
                         "--gallery_probe", drone / "faces", "--meta_from_filename", "droneface", "--batch_size", 8,
                         "--no_flip", "--out", out)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["cmc.png", "results.json", "results.md"]
    report = json.loads((out / "results.json").read_text())
    assert report["num_gallery"] == 3 and report["num_probes"] == 21
    # the gallery by hand: each subject's lowest height (1.5 m), then nearest distance
    folder = read_face_folder(drone / "faces", filename_meta=filename_meta("droneface"))
    images, records = load_faces(folder, resize_face)
    expected_gallery = sorted(min((r for r in records if r.identity == who),
                                  key=lambda r: (r.height, r.distance, abs(r.yaw))).path.name for who in "abc")
    assert sorted(Path(p).name for p in report["gallery_images"]) == expected_gallery
    gallery = [i for i, r in enumerate(records) if r.path.name in expected_gallery]
    for label, weights in (("model_0", "model_0.pth"), ("model_1", "model_1.pth")):
        embeddings = load_model(drone / weights).embed(images, 8, flip=False)
        expected = brute_force(embeddings, records, gallery)
        scores = report["models"][label]
        assert scores["ranks"] == list(expected.values())
        hits = {p: rank == 1 for p, rank in expected.items()}
        assert scores["rank1"] == pytest.approx(np.mean(list(hits.values())))
        assert scores["rank5"] == 1.0  # 3 identities: every probe is within rank 3
        for kind, key in (("height", lambda r: f"{r.height:g}"), ("distance", lambda r: distance_bin(r.distance)),
                          ("yaw", lambda r: yaw_bin(r.yaw))):
            levels = {}
            for probe, hit in hits.items():
                levels.setdefault(key(records[probe]), []).append(hit)
            got = scores["breakdown"][kind]
            assert sorted(got) == sorted(levels), kind
            for level, values in levels.items():
                assert got[level]["count"] == len(values)
                assert math.isclose(got[level]["rank1"], np.mean(values)), (kind, level)
    assert sorted(report["models"]["model_0"]["breakdown"]["height"]) == ["1.5", "3", "4", "5"]
    overall = next(t for t in report["paired"] if t["by"] == "all")
    first, second = (np.array(report["models"][m]["ranks"]) == 1 for m in ("model_0", "model_1"))
    assert (overall["only_a_right"], overall["only_b_right"]) == (int((first & ~second).sum()),
                                                                  int((~first & second).sum()))
    text = (out / "results.md").read_text()
    assert "## Per capture height" in text and "## Per |yaw|" in text and "McNemar" in text


def test_a_folder_without_metadata_is_one_error_line(tmp_path, drone):
    for who in ("ann", "bob"):
        (tmp_path / "faces" / who).mkdir(parents=True)
        for i in range(2):
            (tmp_path / "faces" / who / f"{i}.jpg").write_bytes(jpeg(i + (who == "bob") * 7))
    result = run_command("eval.py", "--model", drone / "model_0.pth", "--gallery_probe", tmp_path / "faces",
                         "--out", tmp_path / "out")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "gives no height, distance or yaw" in result.stderr
    assert not (tmp_path / "out").exists()


def test_gallery_probe_is_one_benchmark_per_run(tmp_path, drone):
    result = run_command("eval.py", "--model", drone / "model_0.pth", "--gallery_probe", tmp_path,
                         "--tinyface", tmp_path)
    assert result.returncode == 2 and "one benchmark per run" in result.stderr


def test_identity_folders_with_a_csv_and_the_frontal_rule(tmp_path, drone):
    rows = ["path,identity,yaw,height,distance"]
    for who, offset in (("ann", 0), ("bob", 20)):
        for i, (yaw, height, distance) in enumerate([(50, 1.5, 3.0), (-10, 5.0, 15.0), (70, 3.0, 7.0)]):
            (tmp_path / "faces" / who).mkdir(parents=True, exist_ok=True)
            (tmp_path / "faces" / who / f"{i}.jpg").write_bytes(jpeg(offset + i, size=64))
            rows.append(f"{who}/{i}.jpg,{who},{yaw},{height},{distance}")
    (tmp_path / "faces" / "meta.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    result = run_command("eval.py", "--model", drone / "model_0.pth", "--gallery_probe", tmp_path / "faces",
                         "--gallery_rule", "frontal", "--no_flip", "--out", out)
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "results.json").read_text())
    assert report["gallery_images"] == ["ann/1.jpg", "bob/1.jpg"]  # |yaw| 10: the most frontal
    assert report["probe_images"] == ["ann/0.jpg", "ann/2.jpg", "bob/0.jpg", "bob/2.jpg"]
    strata = report["models"]["model_0"]["breakdown"]
    assert {k: v["count"] for k, v in strata["distance"].items()} == {"<5 m": 2, "5-9 m": 2}
    assert {k: v["count"] for k, v in strata["yaw"].items()} == {"|yaw| 30-60": 2, "|yaw|>=60": 2}
    assert report["paired"] == [] and (out / "cmc.png").stat().st_size > 0
