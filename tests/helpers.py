"""Small generated images, record folders and experiment YAMLs shared by the tests (no downloads, no synthetic
renderer)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

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


# --- real faces for the detector: scikit-image (a dev requirement) bundles two photographs with a face,
# "astronaut" (Eileen Collins, frontal, ~90 px) and "camera" (the cameraman, ~55 px, grey).

def skimage_photo(name: str) -> np.ndarray:
    """RGB uint8 photo `name`.png from scikit-image's data folder, read without importing skimage."""
    import importlib.util

    import cv2
    spec = importlib.util.find_spec("skimage")
    assert spec is not None, "scikit-image is a test requirement (requirements-dev.txt)"
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / f"{name}.png"
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def rotate_photo(rgb: np.ndarray, degrees: float, centre: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """The photo rotated by `degrees` (counter-clockwise) about `centre`, and the 2x3 matrix used."""
    import cv2
    matrix = cv2.getRotationMatrix2D(centre, degrees, 1.0)
    return cv2.warpAffine(rgb, matrix, rgb.shape[1::-1], flags=cv2.INTER_LINEAR), matrix


def mtcnn_photos() -> dict[str, np.ndarray]:
    """The photos whose MTCNN detections tests/fixtures/mtcnn_reference.json records."""
    import cv2
    astronaut, camera = skimage_photo("astronaut"), skimage_photo("camera")
    group = np.concatenate([cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA),
                            cv2.resize(camera, (256, 256), interpolation=cv2.INTER_AREA)], axis=1)
    return {"astronaut": astronaut, "camera": camera,
            "astronaut_rotated_20": rotate_photo(astronaut, 20, (224, 120))[0],
            "group": group}


def interrupt_at_call(monkeypatch, module, name: str, call: int):
    """Make `module.name` raise KeyboardInterrupt on its `call`-th call (a run killed mid-way); returns the real
    function, to put back for the run that resumes."""
    real, calls = getattr(module, name), []

    def interrupted(*args, **kwargs):
        calls.append(args)
        if len(calls) == call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(module, name, interrupted)
    return real


def write_photo(path: Path, rgb: np.ndarray) -> None:
    """An RGB photo written as the file its suffix names (folders created)."""
    import cv2
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1]))


def run_command(script: str, *args, timeout: float = 300):
    """`python <script> <args>` from the repository root, as a user runs it."""
    import subprocess
    import sys
    root = Path(__file__).resolve().parent.parent
    return subprocess.run([sys.executable, script, *map(str, args)], cwd=root, capture_output=True, text=True,
                          timeout=timeout)


TINY_RECIPE = {"net_mode": "mobilefacenet", "embedding_size": 64, "batch_size": 8, "lr": 0.05, "schedule": "cosine",
               "num_workers": 0, "num_threads": 1, "val_batch_size": 64, "val_flip": False, "log_every": 2}


def tiny_experiment_config(tmp_path, data: dict, **profile) -> str:
    """A YAML with two arms (ArcFace, PGAML m2 0.2) and a `tiny` profile of 2 seeds x 4 steps."""
    settings = {
        "out": str(tmp_path / "out"),
        "arms": {"arcface": {"head": "arcface"},
                 "pgaml": {"head": "pgaml", "head_options": {"m2": 0.2}, "use_height": True, "pose_schedule": 0},
                 "pgaml_no_height": {"head": "pgaml", "head_options": {"m2": 0.2}, "use_height": False}},
        "evaluation": {"val_sets": "cfp_fp", "eval_every": 2, "resolutions": [112, 28]},
        "profiles": {"tiny": {"data": data, "recipe": dict(TINY_RECIPE), "margin": {"s": 16.0, "m": 0.3},
                              "steps": 4, "seeds": [0, 1], "arms": ["arcface", "pgaml"], **profile}},
    }
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return str(path)
