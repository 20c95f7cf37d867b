"""Photo -> aligned face: the one path every command takes (lfw_eval.py, megaface.py's crop, and the
facebank and align.py to come).

`align_photo` chooses how a face is aligned, in this order, and says which it used (`AlignedFace.how`):

1. `"detected"`: a detector's five landmarks: the face matching a known `box` (a data set's annotation)
   where one is given, else the photo's most central face (`faces.detection.central_face`);
2. `"landmarks"`: landmarks given with the photo (MegaFace's JSON: two eyes and the nose);
3. `"box"`: a square crop of the given face box;
4. `"fallback"`: a fixed crop of the photo (`centre_square` for portrait sets such as LFW, `inset` for
   whole photos, as insightface does for MegaFace).

Aligned faces are `ALIGNED_SIZE` x `ALIGNED_SIZE` RGB uint8 (HWC), warped to the ArcFace template
(`faces.alignment`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from data.images import encode_jpeg, read_image_file
from faces.alignment import ALIGNED_SIZE, align_face, crop_box
from utils import atomic_write_bytes

Box = tuple[float, float, float, float]   # x, y, width, height
# MTCNN's smallest window: a search region smaller than this holds no detectable face
MIN_SEARCH_SIDE = 12


@dataclass
class AlignedFace:
    image: np.ndarray          # (ALIGNED_SIZE, ALIGNED_SIZE, 3) uint8 RGB
    how: str                   # 'detected', 'landmarks', 'box' or 'fallback'
    landmarks: np.ndarray | None = None   # the points the face was aligned on, in photo coordinates

    def chw(self) -> np.ndarray:
        return self.image.transpose(2, 0, 1)


def centre_square(fraction: float) -> Callable[[int, int], Box]:
    """Fallback crop: a centred square of `fraction` of the photo's shorter side."""
    def box(height: int, width: int) -> Box:
        side = fraction * min(height, width)
        return (width - side) / 2, (height - side) / 2, side, side
    return box


def inset(border: float) -> Callable[[int, int], Box]:
    """Fallback crop: the photo less `border` (a fraction of each side) at every edge."""
    def box(height: int, width: int) -> Box:
        return border * width, border * height, (1 - 2 * border) * width, (1 - 2 * border) * height
    return box


def faces_central_first(detector, rgb: np.ndarray) -> list:
    """Every face the detector finds, the most central one (`faces.detection.central_face`) first, then the others
    in the detector's order (most probable first)."""
    from faces.detection import central_face

    faces = detector.detect(rgb)
    central = central_face(faces, *rgb.shape[:2])
    return [central] + [face for face in faces if face is not central] if faces else []


def detect_landmarks(detector, rgb: np.ndarray, box: Box | None = None) -> np.ndarray | None:
    """The five landmarks of the face at `box` (IoU >= 0.3 with a detection), or of the photo's most
    central face when no box is given; None when no detection qualifies.

    With a box, only the box enlarged by half its size on each side is searched: the same face, and a
    much smaller image than a whole photo."""
    from faces.detection import face_in_box

    if box is None:
        faces = faces_central_first(detector, rgb)
        return faces[0].landmarks if faces else None
    x, y, width, height = box
    left, top = max(0, int(x - width / 2)), max(0, int(y - height / 2))
    right = min(rgb.shape[1], int(np.ceil(x + 1.5 * width)))
    bottom = min(rgb.shape[0], int(np.ceil(y + 1.5 * height)))
    if right - left < MIN_SEARCH_SIDE or bottom - top < MIN_SEARCH_SIDE:  # the box lies outside the photo
        return None
    faces = detector.detect(np.ascontiguousarray(rgb[top:bottom, left:right]))
    face = face_in_box(faces, (x - left, y - top, x - left + width, y - top + height))
    return None if face is None else face.landmarks + [left, top]


def align_photo(rgb: np.ndarray, detector=None, *, box: Box | None = None, landmarks=None,
                template_indices=None, fallback: Callable[[int, int], Box] = centre_square(0.5),
                size: int = ALIGNED_SIZE) -> AlignedFace:
    """The aligned face of a photo by the first method that applies (module docstring).

    Unusable given `landmarks` raise ValueError (the caller names the file they came from)."""
    if detector is not None:
        points = detect_landmarks(detector, rgb, box)
        if points is not None:
            return AlignedFace(align_face(rgb, points, size), "detected", points)
    if landmarks is not None:
        points = np.asarray(landmarks, dtype=np.float64)
        return AlignedFace(align_face(rgb, points, size, template_indices), "landmarks", points)
    if box is not None:
        return AlignedFace(crop_box(rgb, box, size), "box")
    return AlignedFace(crop_box(rgb, fallback(*rgb.shape[:2]), size), "fallback")


class PhotoAligner:
    """Raw photo file -> aligned CHW face through `align_photo` (detector, else the fallback crop); the
    files that fell back are listed in `fallbacks`. With `save_to`, each aligned face is also written as
    `<save_to>/<path relative to root>` (JPEG quality 95), a folder that reads back without detecting."""

    def __init__(self, detector, fallback: Callable[[int, int], Box] = centre_square(0.5),
                 root: Path | None = None, save_to: Path | None = None):
        self.detector, self.fallback, self.root, self.save_to = detector, fallback, root, save_to
        self.fallbacks: list[Path] = []

    def __call__(self, path: Path) -> np.ndarray:
        face = align_photo(read_image_file(path), self.detector, fallback=self.fallback)
        if face.how == "fallback":
            self.fallbacks.append(path)
        if self.save_to is not None:
            relative = path.relative_to(self.root) if self.root is not None else Path(path.name)
            atomic_write_bytes(self.save_to / relative, encode_jpeg(face.image, quality=95), durable=False)
        return face.chw()


DETECTORS = ("mtcnn", "yunet")


def make_detector(name: str = "mtcnn", device: str = "cpu", mtcnn_weights=None, min_face_size: float = 20.0,
                  yunet_model=None):
    """The detector every command builds from its `--detector` (and MTCNN's / YuNet's own) flags; imported
    here only when asked for, so neither backend's dependencies load with this module."""
    if name == "yunet":
        from faces.yunet import YuNet
        return YuNet(yunet_model)
    if name != "mtcnn":
        raise ValueError(f"unknown detector {name!r}; choose one of {', '.join(DETECTORS)}")
    from faces.mtcnn import MTCNN
    return MTCNN(weights_dir=mtcnn_weights, min_face_size=min_face_size, device=device)

