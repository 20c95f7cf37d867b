"""faces/pipeline.py: the one photo -> aligned-face path, its order of methods, and a real photo."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from faces.alignment import ALIGNED_SIZE, align_face, crop_box, reference_points
from faces.mtcnn import Face
from faces.pipeline import PhotoAligner, align_photo, centre_square, detect_landmarks, inset
from tests.helpers import skimage_photo

TEMPLATE = reference_points(ALIGNED_SIZE)


class FakeDetector:
    """Finds one face whose landmarks are the template scaled by 2 and shifted to (x0, y0) in the image it is
    given; remembers the shapes of the images it searched."""

    def __init__(self, x0: float = 40.0, y0: float = 30.0, side: float = 224.0, found: bool = True):
        self.x0, self.y0, self.side, self.found, self.searched = x0, y0, side, found, []

    def detect(self, rgb):
        self.searched.append(rgb.shape[:2])
        if not self.found:
            return []
        points = TEMPLATE * 2 + [self.x0, self.y0]
        box = np.array([self.x0, self.y0, self.x0 + self.side, self.y0 + self.side], dtype=np.float64)
        return [Face(box, 0.99, points)]


def photo(seed: int = 0, height: int = 300, width: int = 400) -> np.ndarray:
    coarse = np.random.default_rng(seed).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)


def test_fallback_boxes():
    assert centre_square(0.5)(200, 300) == (100.0, 50.0, 100.0, 100.0)
    assert inset(0.1)(200, 300) == pytest.approx((30.0, 20.0, 240.0, 160.0))


def test_detected_landmarks_come_first():
    rgb = photo()
    face = align_photo(rgb, FakeDetector(), box=(50, 40, 200, 200), landmarks=TEMPLATE)
    assert face.how == "detected" and face.image.shape == (ALIGNED_SIZE, ALIGNED_SIZE, 3)
    np.testing.assert_array_equal(face.image, align_face(rgb, face.landmarks))


def test_a_known_box_limits_the_search_and_shifts_the_points_back():
    rgb = photo(height=600, width=800)
    detector = FakeDetector(x0=52.0, y0=48.0, side=100.0)  # where the box lies in the searched region
    points = detect_landmarks(detector, rgb, box=(300, 200, 100, 100))
    # searched: the box enlarged by half its size on each side (250..450 x 150..350)
    assert detector.searched == [(200, 200)]
    np.testing.assert_allclose(points, TEMPLATE * 2 + [52 + 250, 48 + 150])
    assert detect_landmarks(FakeDetector(x0=0.0, y0=0.0, side=30.0), rgb, box=(300, 200, 100, 100)) is None
    assert detect_landmarks(FakeDetector(), rgb, box=(2000, 2000, 50, 50)) is None  # the box lies outside


def test_without_a_detection_given_landmarks_then_box_then_fallback():
    rgb = photo()
    blind = FakeDetector(found=False)
    given = TEMPLATE[:3] * 1.5 + 20
    by_points = align_photo(rgb, blind, landmarks=given, template_indices=[0, 1, 2])
    assert by_points.how == "landmarks"
    np.testing.assert_array_equal(by_points.image, align_face(rgb, given, ALIGNED_SIZE, [0, 1, 2]))
    by_box = align_photo(rgb, blind, box=(100, 50, 120, 150))
    assert by_box.how == "box" and np.array_equal(by_box.image, crop_box(rgb, (100, 50, 120, 150)))
    fallback = align_photo(rgb, None, fallback=inset(0.06))
    assert fallback.how == "fallback"
    np.testing.assert_array_equal(fallback.image, crop_box(rgb, inset(0.06)(*rgb.shape[:2])))
    with pytest.raises(ValueError):
        align_photo(rgb, None, landmarks=np.zeros((5, 3)))


def test_photo_aligner_lists_fallbacks_and_saves_the_faces(tmp_path):
    folder = tmp_path / "photos" / "someone"
    folder.mkdir(parents=True)
    for name in ("a.jpg", "b.jpg"):
        cv2.imwrite(str(folder / name), photo(1)[:, :, ::-1])
    detector = FakeDetector()
    aligner = PhotoAligner(detector, root=tmp_path / "photos", save_to=tmp_path / "aligned")
    assert aligner(folder / "a.jpg").shape == (3, ALIGNED_SIZE, ALIGNED_SIZE) and aligner.fallbacks == []
    detector.found = False
    aligner(folder / "b.jpg")
    assert aligner.fallbacks == [folder / "b.jpg"]
    assert sorted(p.name for p in (tmp_path / "aligned" / "someone").iterdir()) == ["a.jpg", "b.jpg"]


def test_a_real_photo_is_aligned_on_its_detected_face():
    """scikit-image's astronaut through MTCNN: the aligned eyes land on the template's eyes."""
    from faces.mtcnn import MTCNN

    rgb = skimage_photo("astronaut")
    face = align_photo(rgb, MTCNN())
    assert face.how == "detected"
    again = MTCNN().detect(face.image)[0]  # the aligned crop's own landmarks
    assert np.abs(again.landmarks[:2] - TEMPLATE[:2]).max() < 4.0
