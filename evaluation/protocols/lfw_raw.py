"""LFW from its official files: `pairs.txt` and an image folder in the lfw / lfw-funneled layout.

pairs.txt (View 2): a header line `<folds>\t<pairs per fold>` (`10\t300`), then for each fold
`pairs per fold` matched lines `name\tn1\tn2` followed by as many mismatched lines
`name1\tn1\tname2\tn2`. Image `n` of `name` is `<root>/<name>/<name>_<n:04d>.jpg`.

`read_pairs` returns the pairs in file order, so that `verification.verify(..., num_folds=folds)`
with sequential folds reproduces the official folds exactly. `load_pair_images` reads the faces into
the `(2P, 3, 112, 112)` uint8 RGB array the verification protocol expects (pair `i` is rows `2i`,
`2i+1`), decoding each distinct file once: already aligned 112x112 files as they are, or raw photos
through `faces.pipeline.PhotoAligner` (MTCNN + 5-point alignment, as foamliu/InsightFace-v2 evaluates
LFW; `NO_FACE_CROP` where no face is found).
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from data.images import read_aligned_face
from faces.alignment import ALIGNED_SIZE
from faces.pipeline import centre_square
from utils import UserError

# No face found: LFW centres each photo on its face (the photos are the Viola-Jones box enlarged), so
# the fallback is a centred square of half the photo's side -- the framing an aligned crop of a typical
# LFW face has (an aligned 112 crop spans ~1.45x the MTCNN box, and LFW faces are ~85 px of 250;
# LFWcrop's fixed face box is 83 px).
NO_FACE_CROP = centre_square(0.5)


class Pair(NamedTuple):
    path1: Path
    path2: Path
    issame: bool


def image_path(root: Path, name: str, number: int) -> Path:
    return Path(root) / name / f"{name}_{number:04d}.jpg"


def _number(field: str, where: str) -> int:
    try:
        value = int(field)
    except ValueError:
        value = 0
    if value < 1:
        raise UserError(f"{where}: image number must be a positive integer, got {field!r}")
    return value


def read_pairs(pairs_path: str | Path, lfw_dir: str | Path, check_files: bool = True) -> tuple[list[Pair], int]:
    """The pairs of an official pairs.txt in file order, and the number of folds its header declares.

    Malformed lines raise a UserError naming pairs.txt and the line number; with `check_files`, a
    missing image raises one naming the file (and how many others are missing).
    """
    pairs_path, lfw_dir = Path(pairs_path), Path(lfw_dir)
    if not pairs_path.is_file():
        raise UserError(f"{pairs_path}: pairs file not found")
    if not lfw_dir.is_dir():
        raise UserError(f"{lfw_dir}: LFW image folder not found")
    try:
        lines = pairs_path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{pairs_path}: cannot read: {err}") from None
    # Trailing blank lines are harmless; blank lines inside the pair list are not.
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise UserError(f"{pairs_path}: empty file (expected a header line '<folds>\\t<pairs per fold>')")
    header = lines[0].split()
    try:
        num_folds, per_fold = (int(field) for field in header)
        valid = num_folds >= 1 and per_fold >= 1 and len(header) == 2
    except ValueError:
        valid = False
    if not valid:
        raise UserError(f"{pairs_path}:1: header must be '<folds>\\t<pairs per fold>' "
                        f"with positive integers (e.g. '10\\t300'), got {lines[0]!r}")
    expected = 2 * num_folds * per_fold
    if len(lines) - 1 != expected:
        raise UserError(f"{pairs_path}: header declares {num_folds} folds x {per_fold} matched + {per_fold} "
                        f"mismatched = {expected} pair lines, but the file has {len(lines) - 1}")
    pairs = []
    for index, line in enumerate(lines[1:]):
        lineno = index + 2
        where = f"{pairs_path}:{lineno}"
        fields = line.split()
        matched = index % (2 * per_fold) < per_fold
        if matched:
            if len(fields) != 3:
                raise UserError(f"{where}: expected a matched pair 'name\\tn1\\tn2' (3 fields), "
                                f"got {len(fields)}: {line!r}")
            name, n1, n2 = fields
            pairs.append(Pair(image_path(lfw_dir, name, _number(n1, where)),
                              image_path(lfw_dir, name, _number(n2, where)), True))
        else:
            if len(fields) != 4:
                raise UserError(f"{where}: expected a mismatched pair 'name1\\tn1\\tname2\\tn2' (4 fields), "
                                f"got {len(fields)}: {line!r}")
            name1, n1, name2, n2 = fields
            pairs.append(Pair(image_path(lfw_dir, name1, _number(n1, where)),
                              image_path(lfw_dir, name2, _number(n2, where)), False))
    if check_files:
        missing = [path for path in distinct_paths(pairs) if not path.is_file()]
        if missing:
            others = f" (and {len(missing) - 1} other images)" if len(missing) > 1 else ""
            raise UserError(f"{missing[0]}: image named in {pairs_path} not found{others}")
    return pairs, num_folds


def distinct_paths(pairs: list[Pair]) -> list[Path]:
    """Every image the pairs use, once each, in order of first use."""
    return list(dict.fromkeys(path for pair in pairs for path in (pair.path1, pair.path2)))


def read_aligned_file(path: Path) -> np.ndarray:
    """An aligned 112x112 face file as uint8 CHW RGB (a UserError for any other size)."""
    return read_aligned_face(path, ALIGNED_SIZE, " (leave out --aligned to detect and align raw photos)")


def load_pair_images(pairs: list[Pair], progress=None, read_face=read_aligned_file) -> np.ndarray:
    """uint8 RGB `(2P, 3, 112, 112)`: pair `i` is rows `2i` and `2i+1`; each file is read once.

    `read_face(path)` gives one aligned CHW face: by default the file must already be an aligned
    112x112 face (a UserError naming the file otherwise); pass a `faces.pipeline.PhotoAligner` for raw photos.
    `progress(n)` is called after each file.
    """
    paths = distinct_paths(pairs)
    row_of = {path: row for row, path in enumerate(paths)}
    decoded = np.empty((len(paths), 3, ALIGNED_SIZE, ALIGNED_SIZE), dtype=np.uint8)
    for row, path in enumerate(paths):
        decoded[row] = read_face(path)
        if progress is not None:
            progress(1)
    order = np.array([row_of[path] for pair in pairs for path in (pair.path1, pair.path2)], dtype=np.int64)
    return decoded[order]
