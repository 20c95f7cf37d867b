"""align.py end to end on real photos (scikit-image's): the tree mirrored, metadata for every photo (faces,
no face, unreadable), the central face or all of them, resume after a kill, --to_rec read back, bad input."""
from __future__ import annotations

import csv
import subprocess
import sys

import cv2
import numpy as np
import pytest

import align
from data.recordio import RecordReader, class_label
from tests.conftest import ROOT
from tests.helpers import interrupt_at_call, mtcnn_photos, skimage_photo, write_photo
from utils import UserError


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos") / "raw"
    shots = mtcnn_photos()
    write_photo(root / "eileen" / "portrait.jpg", shots["astronaut"])
    write_photo(root / "eileen" / "tilted.png", shots["astronaut_rotated_20"])
    write_photo(root / "cameraman" / "street.jpg", shots["camera"])
    write_photo(root / "cameraman" / "with_friend.jpg", shots["group"])
    write_photo(root / "nobody" / "coffee.jpg", skimage_photo("coffee"))
    (root / "nobody" / "broken.jpg").write_bytes(b"\xff\xd8 not really a JPEG")
    return root


def table(out) -> list[dict]:
    with open(out / "faces.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_a_folder_is_aligned_with_its_metadata(photos, tmp_path, capsys):
    out = tmp_path / "aligned"
    assert align.main(["--input", str(photos), "--out", str(out)]) == 0
    assert "6 photos (0 done before): 4 aligned (4 faces), 1 without a face, 1 unreadable" in capsys.readouterr().out
    rows = {row["source"]: row for row in table(out)}
    assert set(rows) == {"cameraman/street.jpg", "cameraman/with_friend.jpg", "eileen/portrait.jpg",
                         "eileen/tilted.png", "nobody/broken.jpg", "nobody/coffee.jpg"}
    assert rows["nobody/coffee.jpg"]["status"] == "no_face" and rows["nobody/coffee.jpg"]["output"] == ""
    assert rows["nobody/broken.jpg"]["status"] == "unreadable" and "broken.jpg" in rows["nobody/broken.jpg"]["message"]
    portrait, tilted = rows["eileen/portrait.jpg"], rows["eileen/tilted.png"]
    assert portrait["output"] == "eileen/portrait.jpg" and tilted["output"] == "eileen/tilted.jpg"
    assert abs(float(portrait["yaw"])) < 30 and float(portrait["score"]) > 0.9
    assert float(tilted["roll"]) == pytest.approx(float(portrait["roll"]) + 20, abs=4)  # the photo turned by 20
    for row in rows.values():
        if row["status"] == "aligned":
            image = cv2.imread(str(out / row["output"]))
            assert image.shape == (112, 112, 3)
    # the two-person photo: its most central face (faces.mtcnn.central_face), as detected on the photo
    from faces.mtcnn import MTCNN, central_face
    group = mtcnn_photos()["group"]
    central = central_face(MTCNN().detect(group), *group.shape[:2])
    assert float(rows["cameraman/with_friend.jpg"]["nose_x"]) == pytest.approx(central.landmarks[2, 0], abs=0.5)


def test_all_faces_keeps_every_face(photos, tmp_path, capsys):
    out = tmp_path / "all"
    assert align.main(["--input", str(photos), "--out", str(out), "--all_faces"]) == 0
    group = [row for row in table(out) if row["source"] == "cameraman/with_friend.jpg"]
    assert [(row["face"], row["output"]) for row in group] == [("0", "cameraman/with_friend_0.jpg"),
                                                               ("1", "cameraman/with_friend_1.jpg")]
    assert abs(float(group[0]["nose_x"]) - float(group[1]["nose_x"])) > 100  # two different people
    with pytest.raises(UserError, match="aligned before with"):  # one folder, one set of flags
        align.main(["--input", str(photos), "--out", str(out)])


def test_a_killed_run_continues_where_it_stopped(photos, tmp_path, monkeypatch, capsys):
    import faces.folder as folder

    whole = tmp_path / "whole"
    assert align.main(["--input", str(photos), "--out", str(whole)]) == 0
    real = interrupt_at_call(monkeypatch, folder, "align_photo_faces", 4)
    out = tmp_path / "broken"
    with pytest.raises(KeyboardInterrupt):
        align.main(["--input", str(photos), "--out", str(out)])
    monkeypatch.setattr(folder, "align_photo_faces", real)
    capsys.readouterr()
    assert align.main(["--input", str(photos), "--out", str(out)]) == 0
    assert "6 photos (3 done before)" in capsys.readouterr().out
    assert table(out) == table(whole)


def test_to_rec_packs_the_aligned_tree(photos, tmp_path, capsys):
    from data.datasets import open_dataset

    out = tmp_path / "rec"
    assert align.main(["--input", str(photos), "--out", str(out), "--to_rec"]) == 0
    assert "packed 4 faces of 2 identities" in capsys.readouterr().out
    reader = RecordReader(out / "train.rec", out / "train.idx")
    labels = [int(class_label(reader.read_unpacked(key)[0])) for key in range(1, 5)]
    assert labels == [0, 0, 1, 1]  # cameraman, eileen: sorted identities
    rows = [row for row in table(out) if row["status"] == "aligned"]
    pose = np.load(out / "pose.npy")
    by_output = {row["output"]: float(row["yaw"]) for row in rows}
    expected = [by_output[name] for name in ("cameraman/street.jpg", "cameraman/with_friend.jpg",
                                             "eileen/portrait.jpg", "eileen/tilted.jpg")]
    np.testing.assert_allclose(pose[1:5, 0], expected, atol=1e-4)
    dataset = open_dataset(out)
    image, label, side = dataset[0]
    assert dataset.num_classes == 2 and image.shape == (3, 112, 112) and "yaw" in side


@pytest.mark.parametrize("args, message", [
    (["--input", "{tmp}/missing", "--out", "{tmp}/out"], "missing: --input folder not found"),
    (["--input", "{tmp}/empty", "--out", "{tmp}/out"], "empty: no photos found"),
    (["--input", "{photos}", "--out", "{photos}/aligned"], "is inside --input"),
    (["--input", "{photos}", "--out", "{tmp}/out", "--workers", "0"], "--workers must be >= 1"),
])
def test_bad_input_is_one_line_and_status_2(photos, tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    args = [a.format(tmp=tmp_path, photos=photos) for a in args]
    result = subprocess.run([sys.executable, "align.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("error: ") and message in result.stderr
    assert not (tmp_path / "out").exists() and not (photos / "aligned").exists()


def test_workers_give_the_same_result(photos, tmp_path):
    assert align.main(["--input", str(photos), "--out", str(tmp_path / "one")]) == 0
    assert align.main(["--input", str(photos), "--out", str(tmp_path / "two"), "--workers", "2"]) == 0
    assert table(tmp_path / "one") == table(tmp_path / "two")
    for row in table(tmp_path / "one"):
        if row["output"]:
            one, two = (cv2.imread(str(tmp_path / name / row["output"])).astype(int) for name in ("one", "two"))
            assert np.abs(one - two).mean() < 1.0  # torch's thread count moves the landmarks by < 0.01 px


def test_the_yunet_detector_aligns_the_same_faces(photos, tmp_path, capsys):
    out = tmp_path / "yunet"
    assert align.main(["--input", str(photos), "--out", str(out), "--detector", "yunet"]) == 0
    assert "4 aligned (4 faces), 1 without a face, 1 unreadable" in capsys.readouterr().out
    by_yunet = {row["source"]: row for row in table(out)}
    assert align.main(["--input", str(photos), "--out", str(tmp_path / "mtcnn")]) == 0
    for row in table(tmp_path / "mtcnn"):
        if row["status"] == "aligned":
            other = by_yunet[row["source"]]
            assert abs(float(other["nose_x"]) - float(row["nose_x"])) < 13
            assert abs(float(other["yaw"]) - float(row["yaw"])) < 15
    with pytest.raises(UserError, match="aligned before with"):
        align.main(["--input", str(photos), "--out", str(out)])  # mtcnn into a yunet folder
