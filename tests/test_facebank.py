"""The facebank on real faces (scikit-image's astronaut and cameraman, OpenCV's SFace): build, list, rebuild only
what changed, refuse another model's bank, and name the faces of a photo, strangers Unknown."""
from __future__ import annotations

import csv
import shutil

import cv2
import numpy as np
import pytest

from tests.helpers import mtcnn_photos, run_command, skimage_photo, write_photo
from tests.test_onnx import SFACE


run, write = run_command, write_photo


@pytest.fixture
def bank(tmp_path):
    photos = mtcnn_photos()
    folder = tmp_path / "facebank"
    write(folder / "eileen" / "portrait.jpg", photos["astronaut"])
    write(folder / "eileen" / "tilted.jpg", photos["astronaut_rotated_20"])
    write(folder / "cameraman" / "street.jpg", photos["camera"])
    write(folder / "cameraman" / "cup.jpg", skimage_photo("coffee"))  # no face: listed, not used
    write(folder / "cameraman" / "with_eileen.jpg", photos["group"])  # two faces: whose photo? listed, not used
    return folder


def test_build_list_and_rebuild(bank):
    built = run("facebank.py", "build", "--model", SFACE, "--bank", bank)
    assert built.returncode == 0, built.stderr
    assert "2 people (2 embedded, 0 unchanged), 3 photos used, 2 left out" in built.stdout
    assert "cameraman/cup.jpg" in built.stdout and "no face found" in built.stdout
    assert "with_eileen.jpg: 2 faces of similar size, so whose photo it is is not clear" in built.stdout
    listed = run("facebank.py", "list", "--bank", bank)
    assert "cameraman: 1 photos" in listed.stdout and "eileen: 2 photos" in listed.stdout
    shutil.copy(bank / "cameraman" / "street.jpg", bank / "cameraman" / "again.jpg")
    rebuilt = run("facebank.py", "build", "--model", SFACE, "--bank", bank)
    assert "2 people (1 embedded, 1 unchanged), 4 photos used, 2 left out" in rebuilt.stdout, rebuilt.stdout


def test_faces_are_named_and_strangers_unknown(bank, tmp_path):
    assert run("facebank.py", "build", "--model", SFACE, "--bank", bank).returncode == 0
    photos = mtcnn_photos()
    probe = tmp_path / "probe.jpg"  # the two-person photo: the astronaut and the cameraman, smaller
    write(probe, photos["group"])
    result = run("face_verify.py", "--model", SFACE, "--bank", bank, "--image", probe, "--save", tmp_path / "out.jpg",
                 "--score")
    assert result.returncode == 0, result.stderr
    assert "2 faces in" in result.stdout and "2 known (threshold 0.363)" in result.stdout
    with open(tmp_path / "out.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    by_side = sorted(rows, key=lambda r: float(r["x1"]))  # the astronaut is on the left half
    assert [r["name"] for r in by_side] == ["eileen", "cameraman"]
    assert cv2.imread(str(tmp_path / "out.jpg")).shape == photos["group"].shape
    mirrored = tmp_path / "mirrored.jpg"
    write(mirrored, np.ascontiguousarray(photos["astronaut"][:, ::-1]))
    assert "eileen\t" in run("face_verify.py", "--model", SFACE, "--bank", bank, "--image", mirrored).stdout
    shutil.rmtree(bank / "cameraman")  # a bank without him: he is a stranger now
    assert run("facebank.py", "build", "--model", SFACE, "--bank", bank).returncode == 0
    stranger = tmp_path / "stranger.jpg"
    write(stranger, cv2.resize(photos["camera"], (384, 384), interpolation=cv2.INTER_AREA))
    assert "Unknown\t" in run("face_verify.py", "--model", SFACE, "--bank", bank, "--image", stranger).stdout


def test_bad_input_is_one_line(bank, tmp_path):
    from inference.export import export_onnx
    from inference.loader import load_model
    from inference.weights import save_backbone_weights
    from model import build_backbone

    assert run("facebank.py", "build", "--model", SFACE, "--bank", bank).returncode == 0
    save_backbone_weights(build_backbone("mobilefacenet"), tmp_path / "model_other.pth")
    other = load_model(tmp_path / "model_other.pth")
    export_onnx(other.network, other.conventions, tmp_path / "other.onnx")
    photo = tmp_path / "p.jpg"
    write(photo, mtcnn_photos()["camera"])
    cases = [
        (["face_verify.py", "--model", tmp_path / "other.onnx", "--bank", bank, "--image", photo, "--threshold", "0.3"],
         "built with another model; rebuild it"),
        (["face_verify.py", "--model", SFACE, "--bank", tmp_path / "empty", "--image", photo], "no facebank here"),
        (["face_verify.py", "--model", SFACE, "--bank", bank, "--image", tmp_path / "none.jpg"], "none.jpg: image not found"),
        (["face_verify.py", "--model", tmp_path / "other.onnx", "--bank", bank, "--image", photo],
         "built with another model"),
        (["facebank.py", "build", "--model", SFACE, "--bank", tmp_path / "nobody"], "facebank folder not found"),
    ]
    for args, message in cases:
        result = run(*args)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert message in result.stderr.strip().splitlines()[-1], (args, result.stderr)
