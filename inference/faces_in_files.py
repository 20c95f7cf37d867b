"""Image files -> aligned faces for embed.py and verify.py: aligned 112x112 crops as they are, or photos
through detection + alignment (`faces.pipeline`, the most central face). A file that cannot be read, or a photo
without a face, is a failure with its reason, never a silent gap: callers keep the input order."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from data.images import PHOTO_SUFFIXES, photo_files, read_aligned_face, read_image_file
from faces.alignment import ALIGNED_SIZE, align_face
from faces.detection import rivals
from faces.pipeline import faces_central_first
from utils import UserError

def list_images(source: Path) -> list[Path]:
    """Every image under a folder (sorted), or the paths a text file lists one per line (relative ones from the
    list's folder)."""
    if source.is_dir():
        found = photo_files(source)
        if not found:
            raise UserError(f"{source}: no images found ({', '.join(PHOTO_SUFFIXES)})")
        return [source / relative for relative in found]
    if source.is_file():
        lines = [line.strip() for line in source.read_text(errors="replace").splitlines() if line.strip()]
        if not lines:
            raise UserError(f"{source}: an empty list of images")
        return [Path(line) if Path(line).is_absolute() else source.parent / line for line in lines]
    raise UserError(f"{source}: --input not found (a folder of images or a text file listing them)")


class FaceReader:
    """`reader(path)` -> (uint8 CHW aligned face, None) or (None, why it failed).

    `accept_aligned`: a photo of exactly the aligned size is taken as an aligned face already (TreB1eN's facebank
    rule: take_pic.py saves aligned crops beside people's photos). `one_person`: a photo with other faces nearly as
    large as the central one is a failure (`faces.detection.rivals`): whose face it is is not clear."""

    def __init__(self, aligned: bool, detector=None, accept_aligned: bool = False, one_person: bool = False):
        if not aligned and detector is None:
            raise ValueError("photos need a detector")
        self.aligned, self.detector = aligned, detector
        self.accept_aligned, self.one_person = accept_aligned, one_person

    def __call__(self, path: Path) -> tuple[np.ndarray | None, str | None]:
        try:
            if self.aligned:
                return read_aligned_face(path, ALIGNED_SIZE, " (leave out --aligned to detect and align photos)"), None
            rgb = read_image_file(path)
        except UserError as err:
            return None, str(err)
        if self.accept_aligned and rgb.shape[:2] == (ALIGNED_SIZE, ALIGNED_SIZE):
            return rgb.transpose(2, 0, 1), None
        faces = faces_central_first(self.detector, rgb)
        if not faces:
            return None, f"{path}: no face found"
        if self.one_person and rivals(faces, faces[0]):
            return None, (f"{path}: {1 + len(rivals(faces, faces[0]))} faces of similar size, so whose photo it is is "
                          "not clear (crop it to the person)")
        return align_face(rgb, faces[0].landmarks, ALIGNED_SIZE).transpose(2, 0, 1), None

