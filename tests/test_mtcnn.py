"""MTCNN: the same detections as an independent implementation (facenet-pytorch, recorded in a
fixture), landmarks that follow the face, alignment that undoes a rotation, NMS against a loop."""
import json

import numpy as np
import pytest
import torch

from faces.alignment import align_face, transform_points
from faces.mtcnn import (MTCNN, WEIGHT_FILES, Face, central_face, default_weights_dir, find_weights_dir, nms,
                         pyramid_scales)
from tests.conftest import ROOT
from tests.helpers import mtcnn_photos, rotate_photo, skimage_photo
from utils import UserError

REFERENCE = json.loads((ROOT / "tests" / "fixtures" / "mtcnn_reference.json").read_text())


@pytest.fixture(scope="module")
def detector():
    return MTCNN()


@pytest.fixture(scope="module")
def photos():
    return mtcnn_photos()


@pytest.mark.parametrize("name", sorted(REFERENCE["photos"]))
def test_detections_equal_the_reference_implementation(detector, photos, name):
    expected = REFERENCE["photos"][name]
    faces = detector.detect(photos[name])
    assert len(faces) == len(expected) > 0
    for face, ref in zip(faces, expected):
        # The reference returns x1, y1 1-based; ours are 0-based half-open boxes.
        ref_box = np.array(ref["box_1based"]) - [1, 1, 0, 0]
        np.testing.assert_allclose(face.box, ref_box, atol=0.01)
        np.testing.assert_allclose(face.landmarks, ref["landmarks"], atol=0.01)
        assert face.score == pytest.approx(ref["score"], abs=1e-4)


def test_landmarks_are_a_face(detector, photos):
    (face,) = detector.detect(photos["astronaut"])
    eye_left, eye_right, nose, mouth_left, mouth_right = face.landmarks
    assert eye_left[0] < nose[0] < eye_right[0] and mouth_left[0] < mouth_right[0]
    assert max(eye_left[1], eye_right[1]) < nose[1] < min(mouth_left[1], mouth_right[1])
    x1, y1, x2, y2 = face.box
    assert (face.landmarks >= [x1, y1]).all() and (face.landmarks <= [x2, y2]).all()
    assert 80 < face.size < 110


def test_rotation_moves_the_landmarks_and_alignment_undoes_it(detector, photos):
    (upright,) = detector.detect(photos["astronaut"])
    rotated_photo, matrix = rotate_photo(photos["astronaut"], -25, (224, 120))
    (rotated,) = detector.detect(rotated_photo)
    moved = transform_points(matrix, upright.landmarks)
    assert np.abs(rotated.landmarks - moved).max() < 4.0  # px, on a ~95 px face
    a = align_face(photos["astronaut"], upright.landmarks).astype(np.float64)
    b = align_face(rotated_photo, rotated.landmarks).astype(np.float64)
    centre = (slice(20, 92), slice(20, 92))  # the face itself, away from the rotated photo's black corners
    assert np.abs(a[centre] - b[centre]).mean() < 12  # of 255: the same face, the same pose
    shuffled = align_face(photos["astronaut"], upright.landmarks[[1, 0, 2, 4, 3]]).astype(np.float64)
    assert np.abs(a[centre] - shuffled[centre]).mean() > 2 * np.abs(a[centre] - b[centre]).mean()


def test_no_face_in_blank_or_faceless_photos(detector):
    assert detector.detect(np.full((240, 320, 3), 128, np.uint8)) == []
    assert detector.detect(skimage_photo("coffee")) == []
    assert detector.detect(np.zeros((10, 10, 3), np.uint8)) == []  # smaller than any face


def test_detect_rejects_wrong_images(detector):
    with pytest.raises(ValueError, match="RGB HxWx3 uint8"):
        detector.detect(np.zeros((64, 64), np.uint8))
    with pytest.raises(ValueError, match="RGB HxWx3 uint8"):
        detector.detect(np.zeros((64, 64, 3), np.float32))


def test_min_face_size_skips_much_smaller_faces(photos):
    # A soft bound (the box regression reaches somewhat below it): 80 drops the ~30 px cameraman of
    # "group" but keeps the ~45 px astronaut.
    assert len(MTCNN(min_face_size=40).detect(photos["group"])) == 2
    faces = MTCNN(min_face_size=80).detect(photos["group"])
    assert len(faces) == 1 and faces[0].box[2] < 256


def test_face_cut_by_the_photo_edge_is_found(detector, photos):
    # Only the left ~60 % of the astronaut's face remains: crops outside the photo are black.
    cut = np.ascontiguousarray(photos["astronaut"][:, 215:])
    (face,) = detector.detect(cut)
    assert face.box[0] < 0 and face.score > detector.thresholds[2]
    (whole,) = detector.detect(photos["astronaut"])
    eye_in_view = whole.landmarks[1] - [215, 0]
    assert np.abs(face.landmarks[1] - eye_in_view).max() < 5


def loop_nms(boxes, scores, threshold, mode):
    alive = list(np.argsort(-scores, kind="stable"))
    keep = []
    while alive:
        best = alive.pop(0)
        keep.append(best)
        survivors = []
        for other in alive:
            iw = max(0.0, min(boxes[best, 2], boxes[other, 2]) - max(boxes[best, 0], boxes[other, 0]))
            ih = max(0.0, min(boxes[best, 3], boxes[other, 3]) - max(boxes[best, 1], boxes[other, 1]))
            area = [(boxes[k, 2] - boxes[k, 0]) * (boxes[k, 3] - boxes[k, 1]) for k in (best, other)]
            denominator = area[0] + area[1] - iw * ih if mode == "union" else min(area)
            if iw * ih / denominator <= threshold:
                survivors.append(other)
        alive = survivors
    return keep


@pytest.mark.parametrize("mode", ["union", "min"])
def test_nms_equals_a_loop(mode):
    rng = np.random.default_rng(3)
    corners = rng.uniform(0, 100, size=(200, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(5, 40, size=(200, 2))], axis=1)
    scores = rng.uniform(size=200).round(2)  # ties included
    for threshold in (0.3, 0.5, 0.7):
        assert nms(boxes, scores, threshold, mode).tolist() == loop_nms(boxes, scores, threshold, mode)
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []
    with pytest.raises(ValueError, match="mode"):
        nms(boxes, scores, 0.5, "iou")


def test_pyramid_reaches_down_to_the_network_window():
    scales = pyramid_scales(250, 250, 20, 0.709)
    assert scales[0] == pytest.approx(12 / 20)
    assert 250 * scales[-1] >= 12 > 250 * scales[-1] * 0.709
    assert pyramid_scales(10, 400, 20, 0.709) == []


def test_central_face():
    def face(x1, y1, x2, y2):
        return Face(np.array([x1, y1, x2, y2], float), 0.99, np.zeros((5, 2)))

    middle, big_corner, small_near = face(75, 75, 175, 175), face(0, 0, 110, 110), face(100, 100, 140, 140)
    assert central_face([big_corner, middle, small_near], 250, 250) is middle
    assert central_face([], 250, 250) is None


def test_weights_come_from_the_installed_wheel_and_missing_ones_are_named(tmp_path):
    folder = default_weights_dir()
    assert folder is not None and find_weights_dir() == folder
    assert all((folder / name).is_file() for name in WEIGHT_FILES)
    (tmp_path / "pnet.pt").write_bytes((folder / "pnet.pt").read_bytes())
    with pytest.raises(UserError, match="rnet.pt: MTCNN weight file not found"):
        MTCNN(weights_dir=tmp_path)
    (tmp_path / "rnet.pt").write_bytes(b"not a state dict")
    (tmp_path / "onet.pt").write_bytes((folder / "onet.pt").read_bytes())
    with pytest.raises(UserError, match=r"rnet.pt: not an MTCNN RNet state dict \(torch.load with weights_only failed"):
        MTCNN(weights_dir=tmp_path)
    (tmp_path / "rnet.pt").write_bytes((folder / "onet.pt").read_bytes())  # a state dict, the wrong one
    with pytest.raises(UserError, match="rnet.pt: not an MTCNN RNet state dict") as err:
        MTCNN(weights_dir=tmp_path)
    assert "\n" not in str(err.value)


def test_weights_load_without_pickle_code():
    # weights_only=True refuses pickled code: the files are plain tensors.
    state = torch.load(default_weights_dir() / "onet.pt", weights_only=True)
    assert state["dense6_3.weight"].shape == (10, 256)
