"""The DroneFace facts (evaluation/protocols/droneface.py), the DroneFace-like synthetic folder (data/synthetic.py
--layout droneface) and the cross-validation folds (training/kfold.py): no identity leaks across identity folds."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from data import synthetic
from data.face_folder import read_face_folder
from evaluation.protocols import droneface
from tests.helpers import run_command
from training.kfold import fold_plan, identity_folds, image_folds
from utils import UserError


@pytest.fixture(scope="module")
def drone(tmp_path_factory):
    out = tmp_path_factory.mktemp("droneface")
    synthetic.generate_droneface(out, identities=3, distances=3, seed=4, max_size=96)
    return out


def test_droneface_names_and_geometry():
    assert droneface.file_name("a", 3, 4) == "a_gp_3_ef_04.jpg"
    assert droneface.distance_metres(0) == 17.0 and droneface.distance_metres(30) == 2.0
    fields = droneface.filename_meta("droneface").fields("k_gp_5_ef_30.jpg")
    assert fields == {"identity": "k", "height_id": "5", "distance_id": "30"}
    assert droneface.filename_meta("droneface").fields("k_gp_5_ef_30.txt") is None


def test_the_synthetic_folder_is_droneface_like(drone):
    names = sorted(p.name for p in (drone / "photos_all_faces").iterdir())
    assert len(names) == 3 * 4 * 3 and names[0] == "a_gp_0_ef_00.jpg" and names[-1] == "c_gp_5_ef_30.jpg"
    assert {n.split("_")[4][:2] for n in names} == {"00", "15", "30"}
    entries = json.loads((drone / "face_angles.json").read_text())
    assert [e["img_path"] for e in entries] == [f"photos_all_faces/{n}" for n in sorted(names, key=entries_order)]
    assert set(entries[0]) == {"img_path", "p_id", "id", "yaw", "pitch", "landmark_points"}
    assert all(-90 <= e["yaw"] <= 90 for e in entries) and len({e["yaw"] for e in entries}) == len(entries)
    sizes = {n: cv2.imread(str(drone / "photos_all_faces" / n)).shape[:2] for n in names}
    assert len(set(sizes.values())) > 5  # crops of many sizes
    for subject in "abc":  # faces shrink with distance (17 m, 9.5 m, 2 m) and with height
        far, middle, near = (sizes[droneface.file_name(subject, 0, d)][0] for d in (0, 15, 30))
        assert far < middle < near
        assert sizes[droneface.file_name(subject, 5, 15)][0] < middle
        assert max(max(size) for size in sizes.values()) == 96  # --max-size
    # the camera above the eyes looks down: pitch grows with the height at a near distance
    pitch = {(e["id"], e["img_path"].split("/")[1].split("_")[2]): e["pitch"] for e in entries if e["img_path"].endswith("_30.jpg")}
    assert all(pitch[(s, "5")] > pitch[(s, "0")] + 20 for s in "abc")


def entries_order(name: str):
    subject, _, height, _, distance = name[:-4].split("_")
    return subject, int(height), int(distance)


def test_the_generator_is_deterministic_and_reads_back(drone, tmp_path):
    synthetic.generate_droneface(tmp_path, identities=3, distances=3, seed=4, max_size=96, workers=2)
    for path in (drone / "photos_all_faces").iterdir():
        assert (tmp_path / "photos_all_faces" / path.name).read_bytes() == path.read_bytes()
    folder = read_face_folder(drone, filename_meta=droneface.filename_meta("droneface"),
                              known_identities=droneface.SUBJECTS)
    assert len(folder.records) == 36 and not folder.problems
    assert sorted({r.height for r in folder.records}) == [1.5, 3.0, 4.0, 5.0]


def test_the_generator_command(tmp_path):
    result = run_command("data/synthetic.py", "--layout", "droneface", "--out", tmp_path / "d", "--identities", 2,
                         "--distances", 1, "--max-size", 48)
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "d" / "photos_all_faces").iterdir())) == 2 * 4
    result = run_command("data/synthetic.py", "--layout", "droneface", "--out", tmp_path / "e", "--identities", 12)
    assert result.returncode == 2 and "DroneFace names 11 subjects (a-k) at most" in result.stderr
    assert "Traceback" not in result.stderr


IDENTITIES = np.repeat(np.array(list("abcdefghijk")), [5, 6, 4, 5, 5, 7, 3, 5, 5, 6, 4])


@pytest.mark.parametrize("num_folds", [2, 3, 5, 11])
def test_identity_folds_never_leak_an_identity(num_folds):
    folds = identity_folds(IDENTITIES, num_folds, seed=1)
    held_out = []
    for fold in folds:
        train, test = set(IDENTITIES[fold.train]), set(IDENTITIES[fold.test])
        assert not train & test, f"fold {fold.index} trains on held-out identities {train & test}"
        assert len(fold.train) + len(fold.test) == len(IDENTITIES)
        held_out += sorted(test)
    assert sorted(held_out) == sorted(set(IDENTITIES))  # each identity held out exactly once
    assert [f.test.tolist() for f in identity_folds(IDENTITIES, num_folds, seed=1)] == [f.test.tolist() for f in folds]
    assert [f.test.tolist() for f in identity_folds(IDENTITIES, num_folds, seed=2)] != [f.test.tolist() for f in folds]


def test_image_folds_are_stratified_and_keep_every_identity_in_training():
    folds = image_folds(IDENTITIES, 3, seed=0)
    assert sorted(np.concatenate([f.test for f in folds]).tolist()) == list(range(len(IDENTITIES)))
    for fold in folds:
        assert set(IDENTITIES[fold.train]) == set(IDENTITIES)
        assert not set(fold.train) & set(fold.test)
    assert max(len(f.test) for f in folds) - min(len(f.test) for f in folds) <= 1
    with pytest.raises(UserError, match="identity 'z' has one image"):
        image_folds(np.array(["a", "a", "z"]), 2, 0)


def test_the_seed_protocol_is_the_authors_kfold():
    folds = fold_plan("seed_protocol", IDENTITIES, 5, seed=0)
    others = np.flatnonzero(IDENTITIES != "k")  # 51 images: KFold(5, shuffle=False) sizes 11, 10, 10, 10, 10
    k_images = np.flatnonzero(IDENTITIES == "k").tolist()
    assert [len(f.test) - len(k_images) for f in folds] == [11, 10, 10, 10, 10]
    assert folds[0].test.tolist() == others[:11].tolist() + k_images
    assert folds[1].train.tolist() == others[:11].tolist() + others[21:].tolist()
    for fold in folds:
        assert "k" not in set(IDENTITIES[fold.train]) and set(k_images) <= set(fold.test)
    # its test identities overlap its training ones: the protocol is neither open nor closed set
    assert set(IDENTITIES[folds[1].test]) & set(IDENTITIES[folds[1].train]) == {"e"}


def test_too_many_folds():
    with pytest.raises(UserError, match="--cv identities needs 2 <= folds <= the 11 identities"):
        identity_folds(IDENTITIES, 12, 0)
    with pytest.raises(UserError, match="--cv 'pairs': choose one of identities, images, seed_protocol"):
        fold_plan("pairs", IDENTITIES, 2, 0)
