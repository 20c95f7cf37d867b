"""Small generated images and record folders shared by the tests (no downloads, no synthetic renderer)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from data.images import encode_jpeg
from data.recordio import IRHeader, RecordWriter, pack, write_property


def face_like(seed: int, size: int = 112) -> np.ndarray:
    """A smooth random RGB image (JPEG-friendly, distinct per seed)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    import cv2
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)


def jpeg(seed: int, size: int = 112) -> bytes:
    return encode_jpeg(face_like(seed, size), quality=90)


def write_emore(folder: Path, num_classes: int = 3, per_class: int = 2, image=jpeg) -> Path:
    """An emore-layout folder: header record 0, images 1..N, identity records, property."""
    folder.mkdir(parents=True, exist_ok=True)
    num_images = num_classes * per_class
    first_identity = num_images + 1
    with RecordWriter(folder / "train.rec", folder / "train.idx") as writer:
        writer.write(0, pack(IRHeader(0, [first_identity, first_identity + num_classes], 0, 0), b""))
        for key in range(1, num_images + 1):
            writer.write(key, pack(IRHeader(0, float((key - 1) // per_class), key, 0), image(key)))
        for label in range(num_classes):
            first = 1 + label * per_class
            writer.write(first_identity + label, pack(IRHeader(0, [first, first + per_class], 0, 0), b""))
    write_property(folder, num_classes)
    return folder
