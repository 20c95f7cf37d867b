"""Video files and cameras as RGB frames, and annotated videos written atomically (OpenCV).

`open_video(path)` / `open_camera(index)` give a `VideoSource` (frame rate, frame count where known, size);
`read_frames` yields its frames as RGB uint8 HWC, from `begin_s` for `duration_s` seconds (0: to the end).
`VideoOut` writes BGR frames at the source's rate and size under a temporary name that replaces the output only
when every frame was written, so an interrupted run never leaves a half-written video in its place.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from utils import UserError, atomic_path

# Containers OpenCV's bundled FFmpeg writes with a codec it always has; the container follows the suffix.
FOURCC_BY_SUFFIX = {".avi": "MJPG", ".mp4": "mp4v", ".mkv": "MJPG", ".mov": "mp4v"}


@dataclass
class VideoSource:
    capture: object            # cv2.VideoCapture
    name: str                  # the file, or "camera N"
    fps: float
    frame_count: int | None    # None for a camera (or a file that does not say)
    size: tuple[int, int]      # width, height

    def close(self) -> None:
        self.capture.release()


def _source(capture, name: str, is_camera: bool) -> VideoSource:
    import cv2

    fps = capture.get(cv2.CAP_PROP_FPS)
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    size = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    return VideoSource(capture, name, fps if fps and fps > 0 else 25.0,
                       None if is_camera or count <= 0 else count, size)


def open_video(path: str | Path) -> VideoSource:
    import cv2

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: video file not found")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise UserError(f"{path}: OpenCV cannot open this video (not a video, or a codec it lacks)")
    return _source(capture, str(path), is_camera=False)


def open_camera(index: int) -> VideoSource:
    import cv2

    capture = cv2.VideoCapture(index)
    if not capture.isOpened():
        capture.release()
        raise UserError(f"--camera {index}: no camera can be opened at that index (is one connected, and free?)")
    return _source(capture, f"camera {index}", is_camera=True)


def read_frames(source: VideoSource, begin_s: float = 0.0, duration_s: float = 0.0) -> Iterator[np.ndarray]:
    """RGB uint8 HWC frames from `begin_s` seconds on, for `duration_s` seconds (0: until the stream ends)."""
    import cv2

    for _ in range(round(begin_s * source.fps)):  # grab(): skipped frames are not decoded
        if not source.capture.grab():
            return
    limit = round(duration_s * source.fps) if duration_s > 0 else None
    produced = 0
    while limit is None or produced < limit:
        ok, bgr = source.capture.read()
        if not ok:
            return
        produced += 1
        yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class VideoOut:
    """`with VideoOut(path, fps, (width, height)) as out: out.write(bgr)`; the file appears when the block ends
    without an error. The codec follows the suffix (`FOURCC_BY_SUFFIX`)."""

    def __init__(self, path: str | Path, fps: float, size: tuple[int, int]):
        self.path, self.fps, self.size = Path(path), fps, size
        fourcc = FOURCC_BY_SUFFIX.get(self.path.suffix.lower())
        if fourcc is None:
            raise UserError(f"--save {self.path}: a video needs one of the suffixes {', '.join(FOURCC_BY_SUFFIX)}")
        self.fourcc, self.frames = fourcc, 0

    def __enter__(self) -> "VideoOut":
        import cv2

        self._atomic = atomic_path(self.path, keep_suffix=True)
        tmp = self._atomic.__enter__()
        self._writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*self.fourcc), self.fps, self.size)
        if not self._writer.isOpened():
            self._atomic.__exit__(UserError, None, None)
            raise UserError(f"--save {self.path}: OpenCV cannot write a {self.fourcc} video there")
        return self

    def write(self, bgr: np.ndarray) -> None:
        if bgr.shape[1::-1] != self.size:
            raise ValueError(f"frame of {bgr.shape[1]}x{bgr.shape[0]} in a {self.size[0]}x{self.size[1]} video")
        self._writer.write(np.ascontiguousarray(bgr))
        self.frames += 1

    def __exit__(self, kind, error, trace) -> bool:
        self._writer.release()
        return bool(self._atomic.__exit__(kind, error, trace))
