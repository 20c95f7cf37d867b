"""faces/yunet.py on real photos: the same faces and landmark order as MTCNN, no face where there is none."""
from __future__ import annotations

import numpy as np
import pytest

from faces.mtcnn import MTCNN
from faces.yunet import YuNet
from tests.helpers import mtcnn_photos, skimage_photo
from utils import UserError


@pytest.fixture(scope="module")
def detectors():
    return YuNet(), MTCNN()


@pytest.mark.parametrize("name", ["astronaut", "camera", "astronaut_rotated_20", "group"])
def test_faces_and_landmarks_agree_with_mtcnn(detectors, name):
    yunet, mtcnn = detectors
    photo = mtcnn_photos()[name]
    found, reference = yunet.detect(photo), mtcnn.detect(photo)
    assert len(found) == len(reference)
    for face in found:
        twin = min(reference, key=lambda r: np.linalg.norm(r.landmarks - face.landmarks))
        assert np.linalg.norm(face.landmarks - twin.landmarks, axis=1).max() < 13  # same points, same order
        x1, y1, x2, y2 = face.box
        assert x1 < face.landmarks[:, 0].min() and face.landmarks[:, 0].max() < x2 and y1 < face.landmarks[:, 1].min()
    assert [f.score for f in found] == sorted((f.score for f in found), reverse=True)


def test_no_face_in_a_photo_without_one(detectors):
    assert detectors[0].detect(skimage_photo("coffee")) == []
    assert detectors[0].detect(np.zeros((200, 300, 3), np.uint8)) == []


def test_model_file_errors(tmp_path):
    with pytest.raises(UserError, match="YuNet model file not found"):
        YuNet(tmp_path / "missing.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    with pytest.raises(UserError, match="bad.onnx: not a YuNet ONNX model"):
        YuNet(tmp_path / "bad.onnx")
