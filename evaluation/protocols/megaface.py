"""MegaFace challenge 1 from its official files: FaceScrub probes, MegaFace distractors, the devkit's
feature lists, its feature-matrix format and the published noise lists.

Layouts (as distributed by the MegaFace team and used by the devkit and insightface):

* FaceScrub probes: `<facescrub_dir>/<identity>/<image>` (e.g. `Adam_Brody/Adam_Brody_277.png`).
* MegaFace distractors (FlickrFinal2): `<megaface_dir>/<a>/<b>/<image>.jpg`, three levels deep.
* Beside each photo `<image>.json` (`<image>` includes its extension, e.g. `123_0.jpg.json`) with
  `"bounding_box": {"x", "y", "width", "height"}` and `"landmarks": {"0": {"x", "y"}, "1": ..., "2": ...}`:
  key "1" is the eye on the image's left, "0" the eye on the image's right and "2" the nose tip
  (insightface's `face_image.get_dataset_megaface` reads them in that order for its 3-point alignment).
* The devkit's `templatelists/`: `facescrub_features_list.json` = `{"path": [...], "id": [...]}` (image
  paths relative to the FaceScrub folder and the identity of each) and
  `megaface_features_list.json_<N>_<set>` = `{"path": [...]}` for N = 10 ... 1,000,000 distractors.
* Features: `<features_dir>/facescrub/<path><suffix>` and `<features_dir>/megaface/<path><suffix>`, the
  devkit's `file_ending` suffix being `_<algo>.bin` (e.g. `123_0.jpg_pgaml.bin`), one matrix per file.

Without the devkit's lists, every image under the folders is used: the identity of a probe is its
folder, and the distractor subsets are nested prefixes of one fixed (seeded) shuffle.
"""
from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils import UserError, atomic_write_bytes, read_text_lines

FACESCRUB_LIST = "facescrub_features_list.json"
MEGAFACE_LIST_PATTERN = re.compile(r"^megaface_features_list\.json_(\d+)_(\d+)$")
DISTRACTOR_SIZES = (10, 100, 1000, 10000, 100000, 1000000)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SUBSET_SEED = 0

# ----------------------------------------------------------------------------- feature matrices

# The devkit's matrix file (its Python `matio.write_mat` / `read_mat`, and what insightface's
# gen_megaface.py writes): four native (little-endian on every platform the devkit runs on) int32
# `rows, cols, stride, type`, then `rows * stride` bytes of row-major data. `stride` is the bytes per
# row (cols * element size) and `type` OpenCV's depth code. The issue text lists "rows, cols, type",
# but the devkit reads a stride before the type (read_mat reads `rows * stride` data bytes), so a
# three-int header would shift every value: the 4-int layout is the one its binaries accept.
CV_TYPES = {5: np.dtype("<f4"), 6: np.dtype("<f8")}  # CV_32F, CV_64F
MATRIX_HEADER = struct.Struct("<4i")


def encode_matrix(matrix) -> bytes:
    """The devkit file bytes of a 1-D feature (stored as a column, rows = length, cols = 1, as the
    devkit and insightface do) or a 2-D float32/float64 matrix."""
    matrix = np.asarray(matrix)
    if matrix.dtype not in (np.float32, np.float64):
        matrix = matrix.astype(np.float32)
    matrix = matrix.reshape(-1, 1) if matrix.ndim == 1 else matrix
    if matrix.ndim != 2 or 0 in matrix.shape:
        raise ValueError(f"expected a non-empty vector or 2-D matrix, got shape {matrix.shape}")
    dtype = matrix.dtype.newbyteorder("<")
    cv_type = 5 if dtype.itemsize == 4 else 6
    rows, cols = matrix.shape
    return MATRIX_HEADER.pack(rows, cols, cols * dtype.itemsize, cv_type) + matrix.astype(dtype).tobytes()


def write_matrix(path: str | Path, matrix, durable: bool = False) -> None:
    """Write a feature/matrix file atomically (many small files: not fsynced unless `durable`)."""
    atomic_write_bytes(path, encode_matrix(matrix), durable=durable)


def decode_matrix(data: bytes, where: str = "matrix") -> np.ndarray:
    """The (rows, cols) array of devkit matrix bytes; a malformed file raises a UserError naming `where`."""
    if len(data) < MATRIX_HEADER.size:
        raise UserError(f"{where}: not a MegaFace feature file ({len(data)} bytes, shorter than the 16-byte header)")
    rows, cols, stride, cv_type = MATRIX_HEADER.unpack_from(data)
    dtype = CV_TYPES.get(cv_type)
    if dtype is None:
        raise UserError(f"{where}: unsupported matrix type {cv_type} (expected 5 = CV_32F or 6 = CV_64F)")
    if rows < 1 or cols < 1 or stride != cols * dtype.itemsize:
        raise UserError(f"{where}: corrupt matrix header (rows {rows}, cols {cols}, stride {stride}, type {cv_type})")
    expected = MATRIX_HEADER.size + rows * stride
    if len(data) != expected:
        raise UserError(f"{where}: corrupt feature file: header says {rows}x{cols} ({expected} bytes), "
                        f"file has {len(data)} bytes")
    return np.frombuffer(data, dtype=dtype, offset=MATRIX_HEADER.size).reshape(rows, cols)


def read_matrix(path: str | Path) -> np.ndarray:
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: feature file not found") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read: {err.strerror or err}") from None
    return decode_matrix(data, str(path))


def read_feature(path: str | Path) -> np.ndarray:
    """One feature vector as float32 (a devkit file holds it as a column or a row)."""
    matrix = read_matrix(path)
    if 1 not in matrix.shape:
        raise UserError(f"{path}: expected one feature vector, got a {matrix.shape[0]}x{matrix.shape[1]} matrix")
    return matrix.reshape(-1).astype(np.float32)


def read_features(paths: list[Path]) -> np.ndarray:
    """(N, D) float32 from N feature files, all of the same dimension."""
    features = None
    for row, path in enumerate(paths):
        vector = read_feature(path)
        if features is None:
            features = np.empty((len(paths), vector.size), dtype=np.float32)
        elif vector.size != features.shape[1]:
            raise UserError(f"{path}: feature has {vector.size} values, {paths[0]} has {features.shape[1]}")
        features[row] = vector
    return features if features is not None else np.empty((0, 0), dtype=np.float32)


def feature_path(features_root: str | Path, image_path: str, algo: str) -> Path:
    """`<features_root>/<image path>_<algo>.bin`: the devkit's `path + file_ending`."""
    return Path(features_root) / f"{image_path}_{algo}.bin"


# ----------------------------------------------------------------------------- the probe and distractor sets

@dataclass
class ProbeSet:
    paths: list[str]        # image paths relative to the FaceScrub folder
    identities: list[str]   # one per path

    def labels(self) -> np.ndarray:
        """int64 identity label per image (identities numbered in order of first appearance)."""
        numbers: dict[str, int] = {}
        return np.array([numbers.setdefault(name, len(numbers)) for name in self.identities], dtype=np.int64)


@dataclass
class DistractorSets:
    paths: list[str]               # every distractor used by some subset, relative to the MegaFace folder
    sizes: tuple[int, ...]         # the subsets' sizes (the devkit's N), ascending
    membership: np.ndarray         # bool (len(paths), len(sizes)): which subsets hold each distractor


def read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: {what} not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: not a valid {what}: {err}") from None


def read_features_list(path: str | Path) -> tuple[list[str], list[str] | None]:
    """(paths, ids or None) of a devkit features-list JSON."""
    path = Path(path)
    data = read_json(path, "features list")
    paths = data.get("path") if isinstance(data, dict) else None
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise UserError(f"{path}: a features list must be a JSON object with a \"path\" list of strings")
    ids = data.get("id")
    if ids is not None and (not isinstance(ids, list) or len(ids) != len(paths)):
        raise UserError(f"{path}: \"id\" must be a list as long as \"path\" ({len(paths)})")
    return paths, None if ids is None else [str(i) for i in ids]


def list_images(root: str | Path, depth: int | None = None, algo: str | None = None) -> list[str]:
    """Image paths under `root`, relative, sorted; `depth` = folder levels above each image.

    Without `algo` the image files themselves (jpg/png); with it, the images whose feature files
    `<image>_<algo>.bin` are there (the paths returned are the images', as in the devkit's lists).
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: folder not found")
    pattern = "*/" * depth + "*" if depth is not None else "**/*"
    if algo is None:
        found = [p for p in root.glob(pattern) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
        return sorted(p.relative_to(root).as_posix() for p in found)
    ending = f"_{algo}.bin"
    found = [p for p in root.glob(pattern + ending) if p.is_file()]
    return sorted(p.relative_to(root).as_posix()[:-len(ending)] for p in found)


def probe_set(facescrub_root: str | Path, list_path: str | Path | None = None, algo: str | None = None) -> ProbeSet:
    """The FaceScrub probes: the devkit list when given, else every `<identity>/<image>` of the folder
    (with `algo`: every one whose feature file is there)."""
    if list_path is not None:
        paths, ids = read_features_list(list_path)
        identities = ids if ids is not None else [_identity_of(p) for p in paths]
    else:
        paths = list_images(facescrub_root, depth=1, algo=algo)
        identities = [_identity_of(p) for p in paths]
    if not paths:
        what = f"feature files <identity>/<image>_{algo}.bin" if algo else "images <identity>/<image>"
        raise UserError(f"{list_path or facescrub_root}: no FaceScrub {what}")
    return ProbeSet(paths, identities)


def _identity_of(path: str) -> str:
    parts = path.split("/")
    return parts[-2] if len(parts) > 1 else parts[-1].rsplit("_", 1)[0]


def available_list_sizes(lists_dir: Path, set_index: int = 1) -> list[int]:
    return sorted(int(m.group(1)) for p in Path(lists_dir).glob("megaface_features_list.json_*")
                  if (m := MEGAFACE_LIST_PATTERN.match(p.name)) and int(m.group(2)) == set_index)


def distractor_sets(megaface_root: str | Path | None, lists_dir: str | Path | None = None,
                    sizes=None, set_index: int = 1, algo: str | None = None) -> DistractorSets:
    """The distractor subsets of the given sizes: the devkit's `megaface_features_list.json_<N>_<set>`
    files in `lists_dir` (default sizes: every list of the set there), else nested prefixes of a
    seeded shuffle of every image under the folder (with `algo`: every one with a feature file;
    default sizes DISTRACTOR_SIZES; sizes beyond the folder are dropped and the whole folder is
    added as the last size)."""
    if lists_dir is not None:
        lists_dir = Path(lists_dir)
        if not lists_dir.is_dir():
            raise UserError(f"{lists_dir}: distractor lists folder not found")
        sizes = sorted({int(s) for s in sizes}) if sizes is not None else available_list_sizes(lists_dir, set_index)
        if not sizes:
            raise UserError(f"{lists_dir}: no megaface_features_list.json_<N>_{set_index} files")
        subsets = []
        for size in sizes:
            list_path = lists_dir / f"megaface_features_list.json_{size}_{set_index}"
            if not list_path.is_file():
                available = available_list_sizes(lists_dir, set_index)
                raise UserError(f"{list_path}: distractor list not found (lists in {lists_dir} for set "
                                f"{set_index}: {', '.join(map(str, available)) or 'none'}); pick --sizes among them")
            subsets.append(read_features_list(list_path)[0])
        union = list(dict.fromkeys(p for subset in reversed(subsets) for p in subset))
        row = {p: i for i, p in enumerate(union)}
        membership = np.zeros((len(union), len(sizes)), dtype=bool)
        for column, subset in enumerate(subsets):
            membership[[row[p] for p in subset], column] = True
        return DistractorSets(union, tuple(sizes), membership)
    sizes = sorted({int(s) for s in (DISTRACTOR_SIZES if sizes is None else sizes)})
    images = list_images(megaface_root, algo=algo)
    if not images:
        what = f"feature files <image>_{algo}.bin" if algo else "images"
        raise UserError(f"{megaface_root}: no MegaFace {what}")
    order = np.random.default_rng(SUBSET_SEED).permutation(len(images))
    sizes = [s for s in sizes if s < len(images)] + [len(images)]
    paths = [images[i] for i in order]
    position = np.arange(len(paths))[:, None]
    return DistractorSets(paths, tuple(sizes), position < np.array(sizes)[None, :])


# ----------------------------------------------------------------------------- per-image JSON

# MegaFace JSON landmark keys -> reference point in faces.alignment's order (0 eye on the image's left,
# 1 eye on the image's right, 2 nose): key "1" is the image-left eye, as insightface reads it.
JSON_LANDMARK_KEYS = {"1": 0, "0": 1, "2": 2}


@dataclass
class FaceMeta:
    box: tuple[float, float, float, float] | None   # x, y, width, height
    landmarks: np.ndarray | None                    # (K, 2) image coordinates
    template_indices: np.ndarray | None             # (K,) reference point of each landmark


def read_face_json(path: str | Path) -> FaceMeta:
    """The face box and landmarks of a MegaFace/FaceScrub `<image>.json`; absent fields are None."""
    path = Path(path)
    data = read_json(path, "face JSON")
    if not isinstance(data, dict):
        raise UserError(f"{path}: a face JSON must be an object")
    box = None
    raw_box = data.get("bounding_box")
    if raw_box is not None:
        try:
            box = tuple(float(raw_box[k]) for k in ("x", "y", "width", "height"))
        except (TypeError, KeyError, ValueError):
            raise UserError(f"{path}: \"bounding_box\" needs numeric x, y, width, height") from None
        if not (box[2] > 0 and box[3] > 0):
            box = None
    landmarks = indices = None
    raw_points = data.get("landmarks")
    if isinstance(raw_points, dict) and all(k in raw_points for k in JSON_LANDMARK_KEYS):
        try:
            landmarks = np.array([[float(raw_points[k]["x"]), float(raw_points[k]["y"])] for k in JSON_LANDMARK_KEYS])
        except (TypeError, KeyError, ValueError):
            raise UserError(f"{path}: each landmark needs numeric \"x\" and \"y\"") from None
        indices = np.array(list(JSON_LANDMARK_KEYS.values()))
    return FaceMeta(box, landmarks, indices)


# ----------------------------------------------------------------------------- noise lists

def read_noise_list(path: str | Path) -> list[str]:
    """Entries of a published noise list: one per line, '#' comment lines skipped; a line with tabs
    keeps its second field (megaface_noises.txt's `<number>\\t<a>/<b>/<image>` lines), as insightface's
    remove_noises.py reads them."""
    path = Path(path)
    lines = read_text_lines(path, f"{path}: noise list")
    entries = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split("\t")
        entries.append(fields[1].strip() if len(fields) > 1 else line)
    return entries


def facescrub_noise_key(name: str) -> str:
    """A FaceScrub image named in the noise list or the features list, compared by file stem with
    spaces as underscores (the published list and the downloaded files spell names both ways)."""
    stem = name.rsplit("/", 1)[-1]
    stem = stem.rsplit(".", 1)[0] if "." in stem else stem
    return stem.replace(" ", "_")


def megaface_noise_key(path: str) -> str:
    """A distractor compared by its last three path components (`<a>/<b>/<image>`), as insightface does."""
    return "/".join(path.replace("\\", "/").split("/")[-3:])
