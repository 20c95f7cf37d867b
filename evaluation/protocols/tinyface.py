"""TinyFace (Cheng et al., ACCV 2018): 1:N identification on native low-resolution faces, from its official files.

Layout, `DIR/Testing_Set/`:

* `Probe/` (3,728 images), `Gallery_Match/` (4,443), `Gallery_Distractor/` (153,428, unlabelled): JPEGs named
  `<ID>_<photo>.jpg`, the identity being the number before the first `_`;
* `probe_img_ID_pairs.mat` (`probe_set`: the probe file names, `probe_ids`) and `gallery_match_img_ID_pairs.mat`
  (`gallery_set`, `gallery_ids`): the protocol's order and labels, read with scipy.io.loadmat (MATLAB cell arrays
  of strings and numeric columns; scipy returns them as object arrays, which we turn into plain lists, so no
  `np.object` - gone since NumPy 1.24 - is needed).

Every face (about 20 x 16 px) is resized to 112 x 112 (bilinear), embedded with flip, and each probe searches the
whole gallery: the matches plus every distractor (labelled -100 as in the official evaluation, an id no probe
has). Reported: rank-1/5/10/20 (a tie with a non-mate is not a win) and mAP (mean over probes of the
non-interpolated average precision over the ranked gallery), through `identification.search_gallery`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from utils import UserError

DISTRACTOR_ID = -100
RANKS = (1, 5, 10, 20)
PROBE_MAT, GALLERY_MAT = "probe_img_ID_pairs.mat", "gallery_match_img_ID_pairs.mat"


@dataclass
class TinyFaceProtocol:
    root: Path                   # DIR/Testing_Set
    probes: list[str]            # paths relative to root
    probe_ids: np.ndarray        # int64
    gallery: list[str]           # Gallery_Match/... then Gallery_Distractor/...
    gallery_ids: np.ndarray      # int64, DISTRACTOR_ID for distractors

    def paths(self) -> list[str]:
        """Every image, probes first, then the gallery (the order of the features file)."""
        return self.probes + self.gallery


def identity_of(name: str) -> int | None:
    """The identity number before the first `_` of a TinyFace file name, None if there is none."""
    head = Path(name).name.split("_", 1)[0]
    return int(head) if head.isdigit() else None


def _read_mat(path: Path, names_key: str, ids_key: str) -> tuple[list[str], np.ndarray]:
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    try:
        content = loadmat(str(path))
    except FileNotFoundError:
        raise UserError(f"{path}: not found (expected the TinyFace layout DIR/Testing_Set/; see the README)") from None
    except (OSError, ValueError, TypeError, NotImplementedError, MatReadError) as err:
        raise UserError(f"{path}: not a readable MATLAB file: {err}") from None
    if names_key not in content or ids_key not in content:
        raise UserError(f"{path}: expected the variables {names_key} and {ids_key}, found "
                        f"{', '.join(k for k in content if not k.startswith('__')) or 'none'}")
    names = [_string(cell) for cell in np.asarray(content[names_key], dtype=object).reshape(-1)]
    try:
        ids = np.asarray(content[ids_key], dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise UserError(f"{path}: {ids_key} must be numbers") from None
    if len(names) != ids.size or any(name is None for name in names):
        raise UserError(f"{path}: {names_key} must be {ids.size} file names, one per {ids_key}")
    if not np.all(ids == np.round(ids)):
        raise UserError(f"{path}: {ids_key} must be whole numbers")
    return names, ids.astype(np.int64)


def _string(cell) -> str | None:
    """A MATLAB cell's string (scipy gives a 1-element array of str, possibly nested)."""
    while isinstance(cell, np.ndarray):
        if cell.size != 1:
            return None
        cell = cell.reshape(-1)[0]
    return cell if isinstance(cell, str) and cell else None


def read_tinyface(root: str | Path) -> TinyFaceProtocol:
    root = Path(root)
    testing = root / "Testing_Set" if (root / "Testing_Set").is_dir() else root
    for folder in ("Probe", "Gallery_Match", "Gallery_Distractor"):
        if not (testing / folder).is_dir():
            raise UserError(f"{testing / folder}: folder not found (expected DIR/Testing_Set/{{Probe, Gallery_Match, "
                            "Gallery_Distractor}/ and the two .mat files)")
    probes, probe_ids = _read_mat(testing / PROBE_MAT, "probe_set", "probe_ids")
    matches, match_ids = _read_mat(testing / GALLERY_MAT, "gallery_set", "gallery_ids")
    for folder, names, mat in (("Probe", probes, PROBE_MAT), ("Gallery_Match", matches, GALLERY_MAT)):
        missing = next((n for n in names if not (testing / folder / n).is_file()), None)
        if missing is not None:
            raise UserError(f"{testing / mat}: lists {missing}, which is not in {testing / folder}")
    if np.isin(DISTRACTOR_ID, probe_ids):
        raise UserError(f"{testing / PROBE_MAT}: probe id {DISTRACTOR_ID} is the distractors' label")
    from data.images import photo_files

    distractors = photo_files(testing / "Gallery_Distractor")
    if not distractors:
        raise UserError(f"{testing / 'Gallery_Distractor'}: no images")
    return TinyFaceProtocol(
        testing, [f"Probe/{n}" for n in probes], probe_ids,
        [f"Gallery_Match/{n}" for n in matches] + [f"Gallery_Distractor/{n}" for n in distractors],
        np.r_[match_ids, np.full(len(distractors), DISTRACTOR_ID, np.int64)])


class UpscaledFace:
    """Index -> the image resized to 112 x 112, uint8 CHW."""

    def __init__(self, protocol: TinyFaceProtocol, size: int = 112):
        self.paths, self.root, self.size = protocol.paths(), protocol.root, size

    def __call__(self, index: int) -> np.ndarray:
        from data.images import read_image_file

        rgb = read_image_file(self.root / self.paths[index])
        if rgb.shape[:2] != (self.size, self.size):
            rgb = cv2.resize(rgb, (self.size, self.size), interpolation=cv2.INTER_LINEAR)
        return rgb.transpose(2, 0, 1)
