"""data/face_folder.py: a face folder with metadata (the authors' JSON, a CSV, identity sub-folders + a pose file,
fields from file names), every kind of bad metadata listed by file name, the in-memory dataset and its folds."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from data.face_folder import (FaceFolderDataset, as_aligned, load_faces, read_face_folder, resize_face)
from evaluation.protocols.droneface import HEIGHT_ID_METRES, SUBJECTS, file_name, filename_meta
from tests.helpers import face_like, write_photo
from utils import UserError

DRONEFACE = filename_meta("droneface")


def drone_folder(root: Path, subjects="abc", heights=(0, 5), distances=(0, 30), size=(31, 40)) -> list[dict]:
    """Photos named as DroneFace's under root/photos_all_faces and the authors' JSON entries for them."""
    entries = []
    for s, subject in enumerate(subjects):
        for h in heights:
            for d in distances:
                name = f"photos_all_faces/{file_name(subject, h, d)}"
                write_photo(root / name, face_like(100 * s + 10 * h + d, 112)[:size[1], :size[0]])
                entries.append({"img_path": name, "p_id": s, "id": subject, "yaw": 10.0 * d / 30 - 5 + s,
                                "pitch": 12.5, "landmark_points": [[1.0, 2.0]] * 6})
    return entries


def write_json(path: Path, entries, double_encoded=False) -> Path:
    text = json.dumps(entries)
    path.write_text(json.dumps(text) if double_encoded else text)
    return path


@pytest.mark.parametrize("double_encoded", [False, True], ids=["list", "json-string (the authors' repository)"])
def test_the_authors_json_as_it_is(tmp_path, double_encoded):
    entries = drone_folder(tmp_path)
    entries[0].update(yaw=0, pitch=0, landmark_points=[[0.0, 0.0]] * 6)  # their "no face found" placeholder
    write_json(tmp_path / "face_angles.json", entries, double_encoded)
    folder = read_face_folder(tmp_path, filename_meta=DRONEFACE)
    assert folder.source == str(tmp_path / "face_angles.json") and not folder.problems
    assert len(folder.records) == 12 and folder.identities == ["a", "b", "c"]
    first = folder.records[0]
    assert first.path.name == "a_gp_0_ef_00.jpg" and first.identity == "a"
    assert (first.yaw, first.pitch) == (0.0, 0.0) and first.height == 1.5 and first.distance == 17.0
    last = folder.records[-1]
    assert last.height == HEIGHT_ID_METRES[5] == 5.0 and last.distance == 2.0 and last.height_id == 5
    assert last.yaw == pytest.approx(10 - 5 + 2)
    assert "placeholder" in folder.notes[0] and folder.notes[0].startswith("1 record")


def test_p_id_alone_is_a_class_index_and_the_file_name_gives_the_name(tmp_path):
    entries = drone_folder(tmp_path, subjects="ab")
    for entry in entries:
        del entry["id"]
    write_json(tmp_path / "train.json", entries)
    assert read_face_folder(tmp_path, filename_meta=DRONEFACE).identities == ["a", "b"]
    assert read_face_folder(tmp_path).identities == ["0", "1"]  # without the pattern: the index is the identity


def test_height_from_id_feeds_the_raw_id(tmp_path):
    write_json(tmp_path / "f.json", drone_folder(tmp_path, subjects="a"))
    folder = read_face_folder(tmp_path, filename_meta=filename_meta("droneface", height_from_id=True))
    assert sorted({r.height for r in folder.records}) == [0.0, 5.0]


def test_a_csv_with_and_without_header(tmp_path):
    for i, name in enumerate(["x1.jpg", "x2.jpg", "y1.png"]):
        write_photo(tmp_path / "img" / name, face_like(i))
    (tmp_path / "meta.csv").write_text("img/x1.jpg,xavier,-30,5,3.5,12\nimg/x2.jpg,xavier,45\n\nimg/y1.png,yann,0,,,4\n")
    folder = read_face_folder(tmp_path)
    assert [(r.identity, r.yaw, r.distance) for r in folder.records][0] == ("xavier", -30.0, 12.0)
    assert folder.records[0].height == 3.5 and math.isnan(folder.records[1].pitch)
    assert math.isnan(folder.records[2].height) and folder.records[2].distance == 4.0
    (tmp_path / "meta.csv").write_text("path,yaw,identity\nimg/x1.jpg,10,xavier\nimg/y1.png,-10,yann\n")
    folder = read_face_folder(tmp_path, meta=tmp_path / "meta.csv")
    assert [(r.identity, r.yaw) for r in folder.records] == [("xavier", 10.0), ("yann", -10.0)]


@pytest.mark.parametrize("pose_format", ["json", "csv"])
def test_identity_sub_folders_with_a_pose_file(tmp_path, pose_format):
    root = tmp_path / "faces"
    for i, path in enumerate(["ann/1.jpg", "ann/2.jpg", "bob/1.jpg"]):
        write_photo(root / path, face_like(i))
    if pose_format == "json":
        pose = write_json(tmp_path / "pose.json", [{"img_path": "ann/1.jpg", "yaw": 20, "pitch": 3},
                                                   {"img_path": "bob/1.jpg", "yaw": -60}])
    else:
        pose = tmp_path / "pose.csv"
        pose.write_text("path,yaw,pitch,height\nann/1.jpg,20,3,\nbob/1.jpg,-60,,4\n")
    folder = read_face_folder(root, pose_file=pose)
    assert [(r.identity, r.path.name, r.yaw) for r in folder.records][0] == ("ann", "1.jpg", 20.0)
    assert math.isnan(folder.records[1].yaw) and folder.records[2].yaw == -60.0
    assert not folder.problems


def test_a_custom_file_name_pattern(tmp_path):
    for i, name in enumerate(["p01_yaw-35.jpg", "p02_yaw40.jpg"]):
        write_photo(tmp_path / "p" / name, face_like(i))
    pattern = filename_meta(r"^(?P<identity>p\d+)_yaw(?P<yaw>-?\d+)\.jpg$")
    (tmp_path / "list.csv").write_text("path,identity\np/p01_yaw-35.jpg,\np/p02_yaw40.jpg,p02\n")
    folder = read_face_folder(tmp_path, filename_meta=pattern)
    assert [(r.identity, r.yaw) for r in folder.records] == [("p01", -35.0), ("p02", 40.0)]
    with pytest.raises(UserError, match="unknown group\\(s\\) age"):
        filename_meta(r"(?P<age>\d+)")
    with pytest.raises(UserError, match="not a regular expression"):
        filename_meta("(unclosed")


BAD_ROWS = {
    "missing file": ("img/none.jpg,ann,10", "img/none.jpg: file not found"),
    "no identity": ("img/a.jpg,,10", "a.jpg: no identity"),
    "non-numeric yaw": ("img/a.jpg,ann,left", "a.jpg: yaw 'left' is not a number"),
    "yaw out of range": ("img/a.jpg,ann,135", "a.jpg: yaw 135 is outside [-90, 90] degrees"),
    "non-numeric height": ("img/a.jpg,ann,10,0,tall", "a.jpg: height 'tall' is not a number"),
    "height out of range": ("img/a.jpg,ann,10,0,-2", "a.jpg: height -2 is outside [0, 1000]"),
    "infinite yaw": ("img/a.jpg,ann,inf", "a.jpg: yaw 'inf' is not a finite number"),
    "listed twice": ("img/b.jpg,bob,1", "img/b.jpg: listed twice"),
}


@pytest.mark.parametrize("case", BAD_ROWS, ids=list(BAD_ROWS))
def test_bad_csv_rows_are_listed_and_skipped_or_refused(tmp_path, case):
    row, message = BAD_ROWS[case]
    for i, name in enumerate(["a.jpg", "b.jpg"]):
        write_photo(tmp_path / "img" / name, face_like(i))
    (tmp_path / "m.csv").write_text(f"img/b.jpg,bob,5\n{row}\n")
    folder = read_face_folder(tmp_path)
    assert [r.path.name for r in folder.records] == ["b.jpg"]
    assert len(folder.problems) == 1 and folder.problems[0].startswith(f"{tmp_path / 'm.csv'}:2: ")
    assert message in folder.problems[0]
    with pytest.raises(UserError, match=f"1 bad record\\(s\\) \\(--strict\\): .*{message.split(':')[0]}"):
        read_face_folder(tmp_path, strict=True)


def test_bad_droneface_names_and_identities(tmp_path):
    entries = drone_folder(tmp_path, subjects="ab", heights=(0,), distances=(0,))
    write_photo(tmp_path / "photos_all_faces" / "a_gp_2_ef_00.jpg", face_like(7))  # height ID 2 does not exist
    write_photo(tmp_path / "photos_all_faces" / "portrait.jpg", face_like(8))
    write_photo(tmp_path / "photos_all_faces" / "z_gp_0_ef_00.jpg", face_like(9))
    entries += [{"img_path": "photos_all_faces/a_gp_2_ef_00.jpg", "id": "a", "yaw": 1, "pitch": 1},
                {"img_path": "photos_all_faces/portrait.jpg", "id": "a", "yaw": 1, "pitch": 1},
                {"img_path": "photos_all_faces/z_gp_0_ef_00.jpg", "id": "z", "yaw": 1, "pitch": 1},
                {"img_path": "photos_all_faces/b_gp_0_ef_00.jpg", "id": "a", "yaw": 1, "pitch": 1},
                {"yaw": 3}]
    entries[1]["img_path"] = "/home/someone/DroneFace/photos_all_faces/b_gp_0_ef_00.jpg"  # found by its name
    write_json(tmp_path / "face_angles.json", entries)
    folder = read_face_folder(tmp_path, filename_meta=DRONEFACE, known_identities=SUBJECTS)
    assert [r.path.name for r in folder.records] == ["a_gp_0_ef_00.jpg", "b_gp_0_ef_00.jpg"]
    problems = "\n".join(folder.problems)
    assert "entry 2: a_gp_2_ef_00.jpg: height ID 2 is not one of 0, 3, 4, 5" in problems
    assert "entry 3: portrait.jpg: the file name does not match --meta_from_filename" in problems
    assert "entry 4: z_gp_0_ef_00.jpg: unknown identity 'z' (expected one of a, b, c" in problems
    assert "entry 5: photos_all_faces/b_gp_0_ef_00.jpg: listed twice" in problems
    assert "entry 6: no image path" in problems
    assert len(folder.problems) == 5


def test_a_pose_row_naming_no_image_is_listed(tmp_path):
    write_photo(tmp_path / "f" / "ann" / "1.jpg", face_like(1))
    (tmp_path / "pose.csv").write_text("ann/1.jpg,10\nann/9.jpg,20\n")
    folder = read_face_folder(tmp_path / "f", pose_file=tmp_path / "pose.csv")
    assert len(folder.records) == 1 and folder.problems == [f"{tmp_path / 'pose.csv'}:2: unknown image 'ann/9.jpg' "
                                                            "(not under the identity folders)"]


@pytest.mark.parametrize("setup, message", [
    (lambda root: None, "no metadata file (*.json / *.csv) and no <identity>/<image> sub-folders"),
    (lambda root: [(root / n).write_text("[]") for n in ("a.json", "b.csv")], "several metadata files (a.json, b.csv)"),
    (lambda root: (root / "m.json").write_text("{not json"), "m.json: not valid JSON"),
    (lambda root: (root / "m.json").write_text('{"img_path": 1}'), "m.json: expected a list"),
    (lambda root: (root / "m.csv").write_text("path,yaw,colour\n"), "header columns must be among"),
    (lambda root: (root / "m.csv").write_text("nothing.jpg,ann,1\n"), "no usable image records (1 skipped; first"),
])
def test_unusable_metadata_is_one_clear_error(tmp_path, setup, message):
    setup(tmp_path)
    with pytest.raises(UserError, match=re_escape(message)):
        read_face_folder(tmp_path)


def re_escape(text: str) -> str:
    import re
    return re.escape(text)


def test_images_resized_checked_or_skipped(tmp_path):
    write_photo(tmp_path / "i" / "small.jpg", face_like(1, 112)[:31, :23])
    write_photo(tmp_path / "i" / "aligned.png", face_like(2, 112))
    (tmp_path / "i" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (tmp_path / "m.csv").write_text("i/small.jpg,a,1\ni/aligned.png,b,2\ni/broken.jpg,b,3\n")
    folder = read_face_folder(tmp_path)
    images, kept = load_faces(folder, resize_face)
    assert images.shape == (2, 3, 112, 112) and images.dtype == np.uint8
    assert [r.path.name for r in kept] == ["small.jpg", "aligned.png"]
    assert "broken.jpg" in folder.problems[-1]
    folder = read_face_folder(tmp_path)
    images, kept = load_faces(folder, as_aligned)
    assert [r.path.name for r in kept] == ["aligned.png"]
    assert "23x31, not an aligned 112x112 face (use --align resize or detect)" in folder.problems[0]
    with pytest.raises(UserError, match="small.jpg: 23x31"):
        load_faces(read_face_folder(tmp_path), as_aligned, strict=True)


def test_dataset_items_side_information_and_folds(tmp_path):
    write_json(tmp_path / "f.json", drone_folder(tmp_path, subjects="abc"))
    folder = read_face_folder(tmp_path, filename_meta=DRONEFACE)
    images, records = load_faces(folder, resize_face)
    dataset = FaceFolderDataset(images, records)
    assert dataset.num_classes == 3 and len(dataset) == 12 and dataset.side_info.names == ["yaw", "pitch", "height"]
    image, label, side = dataset[5]
    assert image.shape == (3, 112, 112) and label == 1 and set(side) == {"yaw", "pitch", "height"}
    assert side["height"] == pytest.approx(1.5) and side["yaw"] == pytest.approx(records[5].yaw)
    fold = dataset.subset(np.flatnonzero(dataset.labels != 0))
    assert fold.identities == ["b", "c"] and sorted(set(fold.labels)) == [0, 1] and len(fold) == 8
    np.testing.assert_array_equal(fold.images[0], images[4])
    no_pose = FaceFolderDataset(images, [type(r)(r.path, r.identity) for r in records])
    assert no_pose.side_info.names == [] and no_pose[0][2] == {}
