"""What every face detector returns (MTCNN, YuNet) and how a face is chosen among a photo's detections.

Coordinates are in pixels, 0-based, x right and y down; a box (x1, y1, x2, y2) covers x1 <= x < x2.
Landmarks are (5, 2) in `faces.alignment.LANDMARK_NAMES` order. No detector's dependencies are imported here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class Face:
    """One detection: box (x1, y1, x2, y2), the detector's face probability, landmarks (5, 2) as (x, y)."""
    box: np.ndarray
    score: float
    landmarks: np.ndarray

    @property
    def size(self) -> float:
        return float(math.sqrt(max(0.0, (self.box[2] - self.box[0]) * (self.box[3] - self.box[1]))))


def overlaps(box: np.ndarray, boxes: np.ndarray, mode: str = "union") -> np.ndarray:
    """Overlap of one (x1, y1, x2, y2) box with each of `boxes` (N, 4): intersection over union
    (`mode="union"`) or over the smaller of the two (`"min"`); 0 where the denominator is 0."""
    if mode not in ("union", "min"):
        raise ValueError(f"mode must be 'union' or 'min', got {mode!r}")
    box, boxes = np.asarray(box, dtype=np.float64), np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    width = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    height = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    intersection = width * height
    area = max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    denominator = area + areas - intersection if mode == "union" else np.minimum(area, areas)
    return np.divide(intersection, denominator, out=np.zeros_like(intersection), where=denominator > 0)


def central_face(faces: list[Face], height: int, width: int, centre_weight: float = 2.0) -> Face | None:
    """The face a portrait crop is about (LFW, a facebank photo): the largest box area minus
    `centre_weight` times its centre's squared distance from the photo's centre (facenet-pytorch's
    "center_weighted_size"); None when there is no face."""
    if not faces:
        return None

    def merit(face: Face) -> float:
        x1, y1, x2, y2 = face.box
        offset = ((x1 + x2) / 2 - width / 2) ** 2 + ((y1 + y2) / 2 - height / 2) ** 2
        return (x2 - x1) * (y2 - y1) - centre_weight * offset

    return max(faces, key=merit)


def face_in_box(faces: list[Face], box_xyxy, min_iou: float = 0.3) -> Face | None:
    """The detection that best overlaps a known face box (a dataset's annotation), if its IoU is at
    least `min_iou`; None otherwise."""
    if not faces:
        return None
    iou = overlaps(box_xyxy, np.stack([face.box for face in faces]))
    best = int(np.argmax(iou))
    return faces[best] if iou[best] >= min_iou else None


def match_boxes(boxes_a, boxes_b, min_iou: float = 0.3) -> list[tuple[int, int]]:
    """Pairs (i, j) of the same face in two lists of (x1, y1, x2, y2) boxes (consecutive video frames): greedily the
    highest intersection over union first, each box used once, none below `min_iou`."""
    boxes_a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    boxes_b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    if not len(boxes_a) or not len(boxes_b):
        return []
    iou = np.stack([overlaps(box, boxes_b) for box in boxes_a])
    pairs = []
    for flat in np.argsort(-iou, axis=None):
        i, j = divmod(int(flat), iou.shape[1])
        if iou[i, j] < min_iou:
            break
        if all(i != a and j != b for a, b in pairs):
            pairs.append((i, j))
    return pairs


def rivals(faces: list[Face], chosen: Face, min_ratio: float = 0.6) -> list[Face]:
    """The other faces at least `min_ratio` of the chosen face's size: a photo meant to show one person (a facebank
    photo) with rivals does not say which face is theirs."""
    return [face for face in faces if face is not chosen and face.size >= min_ratio * chosen.size]
