"""Naming the faces of photos and video frames from the facebank (face_verify.py, infer_on_video.py).

`FaceNamer(frame)` finds every face (`--min_face_size`, `--face_limit`), aligns them, embeds all faces of the
frame in one batch and names each by the nearest person of the bank (`inference.facebank.identify`).
`name_frames` does it for a stream: with `every=K` only every K-th frame (and the last) goes through detection and
the model; the frames between are given the faces of the two detection frames around them, matched by box overlap
(`faces.detection.match_boxes`): a matched face's box moves linearly between the two, and takes the name of the
nearer detection; an unmatched one is kept up to half-way. Each frame is yielded once, in order, so a writer can
produce the same number of frames as the input.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from faces.alignment import ALIGNED_SIZE, align_face
from faces.detection import match_boxes
from inference.facebank import UNKNOWN, identify
from utils import atomic_write_text


@dataclass
class NamedFace:
    box: np.ndarray          # x1, y1, x2, y2 in frame pixels
    name: str                # a person of the bank, or UNKNOWN
    score: float             # cosine with that person's mean embedding
    detected: bool = True    # False: carried from the detection frames around this one (`every` > 1)


class FaceNamer:
    """rgb frame -> [NamedFace] (largest faces first)."""

    def __init__(self, detector, model, bank, threshold: float, flip: bool = True, face_limit: int = 0,
                 min_face_size: float = 0.0):
        self.detector, self.model, self.bank, self.threshold, self.flip = detector, model, bank, threshold, flip
        self.face_limit, self.min_face_size = face_limit, min_face_size

    def faces(self, rgb: np.ndarray) -> list:
        """The detections kept: boxes whose shorter side is at least `min_face_size`, the `face_limit` largest."""
        kept = [f for f in self.detector.detect(rgb)
                if min(f.box[2] - f.box[0], f.box[3] - f.box[1]) >= self.min_face_size]
        kept.sort(key=lambda face: -face.size)
        return kept[: self.face_limit] if self.face_limit > 0 else kept

    def __call__(self, rgb: np.ndarray) -> list[NamedFace]:
        faces = self.faces(rgb)
        if not faces:
            return []
        crops = np.stack([align_face(rgb, face.landmarks, ALIGNED_SIZE).transpose(2, 0, 1) for face in faces])
        names = identify(self.bank, self.model.embed(crops, flip=self.flip), self.threshold)
        return [NamedFace(np.asarray(face.box, dtype=np.float64), name, score)
                for face, (name, score) in zip(faces, names)]


def carried(before: list[NamedFace], after: list[NamedFace], fraction: float, min_iou: float = 0.3) -> list[NamedFace]:
    """The faces of a frame `fraction` (0..1) of the way from one detection frame to the next (module docstring)."""
    pairs = match_boxes([f.box for f in before], [f.box for f in after], min_iou)
    faces = []
    for i, j in pairs:
        nearer = before[i] if fraction < 0.5 else after[j]
        box = (1 - fraction) * before[i].box + fraction * after[j].box
        faces.append(NamedFace(box, nearer.name, nearer.score, detected=False))
    matched_before, matched_after = {i for i, _ in pairs}, {j for _, j in pairs}
    alone = ([f for k, f in enumerate(before) if k not in matched_before] if fraction < 0.5 else
             [f for k, f in enumerate(after) if k not in matched_after])
    return faces + [NamedFace(f.box.copy(), f.name, f.score, detected=False) for f in alone]


def name_frames(frames: Iterable[np.ndarray], namer, every: int = 1) -> Iterator[tuple[int, np.ndarray, list[NamedFace]]]:
    """(frame index, rgb frame, its faces) for every frame of `frames`, in order; the model runs on every `every`-th
    frame and the last one, at most `every - 1` frames are held meanwhile."""
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    last_index, last_faces, waiting = None, None, []

    def detection(index: int, frame: np.ndarray):
        faces = namer(frame)
        if last_index is not None:
            for between, held in waiting:
                yield between, held, carried(last_faces, faces, (between - last_index) / (index - last_index))
        yield index, frame, faces

    index = -1
    for index, frame in enumerate(frames):
        if index % every == 0:
            faces_of = list(detection(index, frame))
            yield from faces_of
            last_index, last_faces, waiting = index, faces_of[-1][2], []
        else:
            waiting.append((index, frame))
    if waiting:  # the stream ended between two detection frames: its last frame is one
        final_index, final_frame = waiting.pop()
        yield from detection(final_index, final_frame)


def draw_names(rgb: np.ndarray, faces: list[NamedFace], show_score: bool = False) -> np.ndarray:
    """A BGR copy of the frame with each face's box and name (green: known, red: Unknown)."""
    import cv2

    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    thickness = max(1, round(max(rgb.shape[:2]) / 400))
    for face in faces:
        x1, y1, x2, y2 = (int(round(v)) for v in face.box)
        colour = (0, 0, 255) if face.name == UNKNOWN else (0, 200, 0)
        cv2.rectangle(bgr, (x1, y1), (x2, y2), colour, thickness)
        label = f"{face.name} {face.score:.2f}" if show_score else face.name
        scale = 0.45 * thickness
        (width, height), baseline = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        top = max(0, y1 - height - baseline - 2)  # the label sits on the box, on a filled strip to stay legible
        cv2.rectangle(bgr, (x1, top), (x1 + width + 2, top + height + baseline + 2), colour, cv2.FILLED)
        cv2.putText(bgr, label, (x1 + 1, top + height + 1), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255),
                    thickness, cv2.LINE_AA)
    return bgr


DETECTION_FIELDS = ["frame", "x1", "y1", "x2", "y2", "name", "score", "detected"]


def detection_rows(index: int, faces: list[NamedFace]) -> list[dict]:
    return [{"frame": index, **dict(zip(("x1", "y1", "x2", "y2"), np.round(face.box, 1).tolist())),
             "name": face.name, "score": round(face.score, 4), "detected": face.detected} for face in faces]


def write_detections(path_stem, rows: list[dict], summary: dict) -> tuple:
    """`<stem>.csv` (one row per face per frame) and `<stem>.json` (the summary and the same rows), atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, DETECTION_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({**row, "detected": int(row["detected"])} for row in rows)
    csv_path, json_path = path_stem.with_suffix(".csv"), path_stem.with_suffix(".json")
    atomic_write_text(csv_path, buffer.getvalue())
    atomic_write_text(json_path, json.dumps({**summary, "detections": rows}, indent=1) + "\n")
    return csv_path, json_path
