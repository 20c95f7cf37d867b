"""An identity-per-folder tree of aligned face images -> an emore-layout RecordIO folder, so a user's own
photos train exactly like emore (`train.py --data_path FOLDER`).

Layout written (`data.recordio`'s emore label style): key 0 a header record whose label is the identity
records' key range, keys 1..N the images (the stored JPEG/PNG bytes unchanged), grouped by class in sorted
folder order, then one identity record per class with its `[first, end)` image keys; `property`; and, where
poses are given, `pose.npy` float32 (num_keys, 2) yaw, pitch by record key (NaN where unknown).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from data.images import ImageDecodeError, check_image_bytes
from data.recordio import IRHeader, RecordWriter, pack, write_property
from utils import UserError, atomic_save_npy

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def class_folders(root: Path) -> list[tuple[str, list[Path]]]:
    """(identity, image files) of each sub-folder holding images, in sorted order."""
    classes = []
    for folder in sorted(p for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if files:
            classes.append((folder.name, files))
    return classes


def pack_folder(root: str | Path, out: str | Path | None = None, poses: dict[Path, tuple[float, float]] | None = None,
                image_size: tuple[int, int] = (112, 112)) -> dict:
    """Write train.rec/.idx, property (and pose.npy with `poses`, keyed by image path) for the tree under
    `root` into `out` (default `root`); returns {num_images, num_classes, identities}."""
    root = Path(root)
    out = Path(out) if out is not None else root
    classes = class_folders(root)
    if not classes:
        raise UserError(f"{root}: no identity sub-folders with images to pack (expected <identity>/<image>.jpg)")
    num_images = sum(len(files) for _, files in classes)
    first_identity = num_images + 1
    pose = np.full((first_identity + len(classes), 2), np.nan, np.float32)
    with RecordWriter(out / "train.rec", out / "train.idx") as writer:
        writer.write(0, pack(IRHeader(0, [first_identity, first_identity + len(classes)], 0, 0), b""))
        key, ranges = 1, []
        for label, (_, files) in enumerate(classes):
            ranges.append((key, key + len(files)))
            for path in files:
                data = path.read_bytes()
                try:
                    check_image_bytes(data)
                except ImageDecodeError as err:
                    raise UserError(f"{path}: {err}") from None
                writer.write(key, pack(IRHeader(0, float(label), key, 0), data))
                if poses and path in poses:
                    pose[key] = poses[path]
                key += 1
        for label, (first, end) in enumerate(ranges):
            writer.write(first_identity + label, pack(IRHeader(0, [first, end], 0, 0), b""))
    write_property(out, len(classes), image_size)
    if poses is not None:
        atomic_save_npy(out / "pose.npy", pose)
    return {"num_images": num_images, "num_classes": len(classes), "identities": [name for name, _ in classes]}
