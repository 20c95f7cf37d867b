"""A folder of face images with metadata (identity, pose, capture height and distance): fine-tuning data.

`read_face_folder(root, meta=None, pose_file=None, filename_meta=None)` takes the metadata from, in order:
  * `meta` (or the only `*.json` / `*.csv` directly in `root`):
      - the PGAML authors' JSON, as it is: a list of `{"img_path", "p_id" or "id", "yaw", "pitch",
        "landmark_points"}` objects (also a JSON string holding that list, as their repository stores it);
        "id" (a name) is preferred to "p_id" (a class index);
      - a CSV `path,identity,yaw[,pitch][,height][,distance]` (height and distance in metres; a header line
        starting with `path` is optional and may name the columns in another order);
  * otherwise one sub-folder per identity (`<root>/<identity>/<image>`), with the pose of each image from
    `pose_file` (the authors' JSON or a CSV `path,yaw[,pitch][,height]`, rows matched by the path relative
    to `root` or by the file name).
Paths are relative to the metadata file's folder or to `root`; one that is not there but whose file name
is unique under `root` is found by that name (the authors' JSON holds paths of their own machine).
`filename_meta` (`--meta_from_filename`) fills what the metadata leaves out from each file name's named
groups: identity, yaw, pitch, height, distance (metres), height_id, distance_id (IDs turned into metres
by the tables given, e.g. DroneFace's in `evaluation.protocols.droneface`). With `height_from_id`, the raw
height ID is used as the height (the PGAML authors' margin) instead of metres.

Bad metadata never ends in a traceback: each problem (a missing file, an unknown or missing identity, a
non-numeric or out-of-range yaw/pitch/height/distance, a file name the pattern does not match, a duplicate
path, an undecodable image) is listed with the file name and the record skipped (`FaceFolder.problems`),
or, with `strict`, the first problems end the run as one UserError.

`FaceFolderDataset` holds the faces in memory (uint8 RGB 112x112: 1,364 DroneFace crops take 51 MB) and
is what `learner.Learner(config, dataset=...)` takes; `subset` cuts a cross-validation fold with its labels
renumbered 0..C-1.
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from config import AugmentConfig
from data.datasets import _AugmentedDataset
from data.images import ImageDecodeError, decode_rgb, photo_files
from data.pose_file import _csv_rows, _json_rows, _number, read_csv_table
from utils import UserError

log = logging.getLogger(__name__)

ALIGNED_SIZE = 112
ALIGN_MODES = ("resize", "detect", "none")
FILENAME_GROUPS = ("identity", "yaw", "pitch", "height", "distance", "height_id", "distance_id")
CSV_COLUMNS = ("path", "identity", "yaw", "pitch", "height", "distance")
MAX_HEIGHT_M = 1000.0        # a capture height beyond this is a unit mistake (millimetres, feet x 100)
MAX_LISTED = 5               # problems shown in a log line or an error


@dataclass
class FaceRecord:
    path: Path
    identity: str
    yaw: float = math.nan          # degrees, > 0 toward the image's right
    pitch: float = math.nan        # degrees, > 0 seen from above
    height: float = math.nan       # capture height: metres (or the raw ID with height_from_id)
    distance: float = math.nan     # metres
    height_id: float = math.nan    # the file name's raw ID, where it gives one
    distance_id: float = math.nan


@dataclass
class FilenameMeta:
    """`--meta_from_filename`: a regular expression matched against each file name (searched, so anchor it
    to match the whole name), with named groups among FILENAME_GROUPS."""
    regex: str
    height_of_id: dict | None = None                      # height ID -> metres
    distance_of_id: Callable[[int], float] | None = None  # distance ID -> metres
    height_from_id: bool = False

    def __post_init__(self):
        self.pattern = re.compile(self.regex)
        unknown = sorted(set(self.pattern.groupindex) - set(FILENAME_GROUPS) - {"camera", "imagetype"})
        if unknown:
            raise UserError(f"--meta_from_filename: unknown group(s) {', '.join(unknown)}; use "
                            f"{', '.join(FILENAME_GROUPS)}")
        if self.height_from_id and "height_id" not in self.pattern.groupindex:
            raise UserError("--height_from_id needs a height_id group in --meta_from_filename (e.g. 'droneface')")

    def fields(self, name: str) -> dict[str, str] | None:
        match = self.pattern.search(name)
        if match is None:
            return None
        return {k: v for k, v in match.groupdict().items() if k in FILENAME_GROUPS and v is not None}


@dataclass
class FaceFolder:
    root: Path
    source: str                                        # where the metadata came from
    records: list[FaceRecord]
    problems: list[str] = field(default_factory=list)  # "<file or row>: why" for every record left out
    notes: list[str] = field(default_factory=list)     # facts a user should know (placeholders used as given)

    @property
    def identities(self) -> list[str]:
        return sorted({r.identity for r in self.records})


# ------------------------------------------------------------------------------------------ reading

def read_face_folder(root: str | Path, meta: str | Path | None = None, pose_file: str | Path | None = None,
                     filename_meta: FilenameMeta | None = None, strict: bool = False,
                     known_identities=None) -> FaceFolder:
    """The records of a face folder (module docstring); problems skipped and listed, or raised with `strict`.
    `known_identities`: where given, any other identity is a problem."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: --data_path is not a folder")
    meta_path = Path(meta) if meta else _metadata_file(root)
    if meta_path is not None:
        if not meta_path.is_file():
            raise UserError(f"{meta_path}: --meta file not found")
        suffix = meta_path.suffix.lower()
        if suffix not in (".json", ".csv"):
            raise UserError(f"{meta_path}: --meta must be the authors' .json list or a .csv")
        rows = _json_meta_rows(meta_path) if suffix == ".json" else _csv_meta_rows(meta_path)
        source, bases = str(meta_path), (meta_path.parent, root)
        if pose_file:
            log.warning("--pose_file %s is not read: the metadata file %s gives the pose", pose_file, meta_path)
    else:
        rows, source, bases = _folder_rows(root, pose_file), f"{root} (one sub-folder per identity)", (root,)
    builder = _RecordBuilder(root, bases, filename_meta, known_identities)
    for where, path_text, values in rows:
        builder.add(where, path_text, values)
    folder = FaceFolder(root, source, builder.records, builder.problems, builder.notes(rows))
    report_problems(folder.problems, source, strict)
    if not folder.records:
        raise UserError(f"{source}: no usable image records"
                        + (f" ({len(folder.problems)} skipped; first: {folder.problems[0]})" if folder.problems else ""))
    return folder


def report_problems(problems: list[str], source: str, strict: bool) -> None:
    """Raise (strict) or log the problems, naming the first few and the count."""
    if not problems:
        return
    listed = "; ".join(problems[:MAX_LISTED]) + ("; ..." if len(problems) > MAX_LISTED else "")
    if strict:
        raise UserError(f"{source}: {len(problems)} bad record(s) (--strict): {listed}")
    log.warning("%s: skipped %d bad record(s): %s", source, len(problems), listed)


def _metadata_file(root: Path) -> Path | None:
    found = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in (".json", ".csv"))
    if len(found) > 1:
        raise UserError(f"{root}: several metadata files ({', '.join(p.name for p in found)}); choose one with --meta")
    return found[0] if found else None


def _json_meta_rows(path: Path):
    rows = []
    for where, name, entry in _json_rows(path):
        values = {k: entry.get(k) for k in ("yaw", "pitch", "height", "distance") if entry.get(k) is not None}
        identity = entry.get("id", entry.get("p_id"))
        if identity is not None:
            values["identity"] = str(identity)
            values["identity_is_index"] = "id" not in entry and _is_integer(entry.get("p_id"))
        values["placeholder"] = _is_placeholder(entry)
        rows.append((where, name, values))
    return rows


def _is_integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_placeholder(entry: dict) -> bool:
    """The authors' 'no face found': all-zero landmarks with yaw = pitch = 0."""
    points = entry.get("landmark_points")
    try:
        zero = points is not None and len(points) > 0 and not np.any(np.asarray(points, dtype=np.float64))
    except (TypeError, ValueError):
        return False
    return bool(zero) and entry.get("yaw") == 0 and entry.get("pitch") == 0


def _csv_meta_rows(path: Path):
    table = read_csv_table(path)
    columns, start = list(CSV_COLUMNS), 0
    if table and table[0] and table[0][0].strip().lower() == "path":
        columns, start = [c.strip().lower() for c in table[0]], 1
        unknown = sorted(set(columns) - set(CSV_COLUMNS))
        if unknown or "identity" not in columns:
            raise UserError(f"{path}:1: header columns must be among {', '.join(CSV_COLUMNS)} with path and identity "
                            f"(unknown: {', '.join(unknown) or 'none'})")
    rows = []
    for number, cells in enumerate(table[start:], start=start + 1):
        if not cells or not "".join(cells).strip():
            continue
        values = {c: v.strip() for c, v in zip(columns, cells) if v.strip() != ""}
        rows.append((f"{path}:{number}", values.pop("path", None), values))
    return rows


def _folder_rows(root: Path, pose_file) -> list:
    files = [f for f in photo_files(root) if len(Path(f).parts) == 2]
    if not files:
        raise UserError(f"{root}: no metadata file (*.json / *.csv) and no <identity>/<image> sub-folders; give "
                        "--meta FILE or arrange the images one folder per identity")
    rows = [(f"{root / f}", f, {"identity": Path(f).parts[0]}) for f in files]
    if pose_file:
        _attach_poses(rows, Path(pose_file), root)
    return rows


def _attach_poses(rows: list, pose_path: Path, root: Path) -> None:
    """Each pose-file row's yaw/pitch/height onto the image it names (relative path, else file name); a row
    naming no image is an 'unknown image' problem row."""
    if not pose_path.is_file():
        raise UserError(f"{pose_path}: --pose_file not found")
    pose_rows = _json_rows(pose_path) if pose_path.suffix.lower() == ".json" else _csv_rows(pose_path)
    by_path = {relative: values for _, relative, values in rows}
    by_name: dict[str, list] = {}
    for _, relative, values in rows:
        by_name.setdefault(Path(relative).name, []).append(values)
    for where, name, given in pose_rows:
        target = None
        if name is not None:
            text = Path(name).as_posix()
            candidates = by_name.get(Path(text).name, [])
            target = by_path.get(text) or (candidates[0] if len(candidates) == 1 else None)
        if target is None:
            rows.append((where, None, {"unknown_image": name}))
            continue
        target.update({k: given[k] for k in ("yaw", "pitch", "height") if given.get(k) not in (None, "")})


class _RecordBuilder:
    """Turns (where, path, values) rows into FaceRecords, listing every problem."""

    def __init__(self, root: Path, bases, filename_meta: FilenameMeta | None, known_identities):
        self.root, self.bases, self.filename_meta = root, bases, filename_meta
        self.known = None if known_identities is None else {str(i) for i in known_identities}
        self.records: list[FaceRecord] = []
        self.problems: list[str] = []
        self.seen: set[Path] = set()
        self._by_name = None
        self.placeholders = 0

    def notes(self, rows) -> list[str]:
        if not self.placeholders:
            return []
        return [f"{self.placeholders} record(s) have all-zero landmark_points with yaw = pitch = 0 (the authors' "
                "placeholder where no face was found); their yaw 0 is used as given, as the authors do"]

    def add(self, where: str, path_text, values: dict) -> None:
        try:
            record = self._record(where, path_text, values)
        except ValueError as err:
            self.problems.append(str(err))
            return
        self.records.append(record)
        self.placeholders += bool(values.get("placeholder"))

    def _record(self, where: str, path_text, values: dict) -> FaceRecord:
        if "unknown_image" in values:
            raise ValueError(f"{where}: unknown image {values['unknown_image']!r} (not under the identity folders)")
        if not path_text:
            raise ValueError(f"{where}: no image path")
        path = self._resolve(path_text)
        if path is None:
            raise ValueError(f"{where}: {path_text}: file not found")
        if path in self.seen:
            raise ValueError(f"{where}: {path_text}: listed twice")
        values = dict(values)
        if self.filename_meta is not None:
            self._fill_from_name(where, path, values)
        identity = str(values.get("identity", "")).strip()
        if not identity:
            raise ValueError(f"{where}: {path.name}: no identity")
        if self.known is not None and identity not in self.known:
            raise ValueError(f"{where}: {path.name}: unknown identity {identity!r} (expected one of "
                             f"{', '.join(sorted(self.known))})")
        record = FaceRecord(path, identity)
        for name, low, high in (("yaw", -90.0, 90.0), ("pitch", -90.0, 90.0), ("height", 0.0, MAX_HEIGHT_M),
                                ("distance", 0.0, math.inf), ("height_id", 0.0, math.inf),
                                ("distance_id", 0.0, math.inf)):
            setattr(record, name, _checked(where, path.name, name, values.get(name), low, high))
        self._heights_from_ids(where, path.name, record)
        self.seen.add(path)
        return record

    def _fill_from_name(self, where: str, path: Path, values: dict) -> None:
        found = self.filename_meta.fields(path.name)
        if found is None:
            raise ValueError(f"{where}: {path.name}: the file name does not match --meta_from_filename "
                             f"{self.filename_meta.regex!r}")
        given = values.get("identity")
        if given is not None and "identity" in found and str(given) != found["identity"] \
                and not values.get("identity_is_index"):
            raise ValueError(f"{where}: {path.name}: identity {given!r} in the metadata, {found['identity']!r} in "
                             "the file name")
        for key, value in found.items():
            if key == "identity" and values.get("identity_is_index"):
                values[key] = value  # the name, not the authors' class index
            values.setdefault(key, value)

    def _heights_from_ids(self, where: str, name: str, record: FaceRecord) -> None:
        meta = self.filename_meta
        if meta is None:
            return
        if not math.isnan(record.height_id):
            table = meta.height_of_id or {}
            if meta.height_from_id:
                record.height = record.height_id
            elif math.isnan(record.height):
                if int(record.height_id) not in table:
                    raise ValueError(f"{where}: {name}: height ID {record.height_id:g} is not one of "
                                     f"{', '.join(str(k) for k in table) or 'the known IDs'}")
                record.height = float(table[int(record.height_id)])
        if not math.isnan(record.distance_id) and math.isnan(record.distance) and meta.distance_of_id:
            record.distance = float(meta.distance_of_id(int(record.distance_id)))

    def _resolve(self, path_text: str) -> Path | None:
        given = Path(path_text)
        candidates = [given] if given.is_absolute() else [base / given for base in self.bases]
        for candidate in candidates:
            if candidate.is_file():
                return candidate.resolve()
        if self._by_name is None:
            self._by_name = {}
            for relative in photo_files(self.root):
                self._by_name.setdefault(Path(relative).name, []).append(self.root / relative)
        matches = self._by_name.get(given.name, [])
        return matches[0].resolve() if len(matches) == 1 else None


def _checked(where: str, name: str, column: str, value, low: float, high: float) -> float:
    try:
        number = _number(value)
    except ValueError as err:
        raise ValueError(f"{where}: {name}: {column} {err}") from None
    if number is None:
        return math.nan
    if not low <= number <= high:
        unit = " degrees" if column in ("yaw", "pitch") else ""
        raise ValueError(f"{where}: {name}: {column} {number:g} is outside [{low:g}, {high:g}]{unit}")
    return number


# ------------------------------------------------------------------------------------------ images

def resize_face(rgb: np.ndarray, size: int = ALIGNED_SIZE) -> np.ndarray:
    """`--align resize`: the whole crop resized to size x size (the PGAML authors' plain Resize), CHW."""
    shrinking = rgb.shape[0] > size or rgb.shape[1] > size
    resized = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    return resized.transpose(2, 0, 1)


def as_aligned(rgb: np.ndarray, size: int = ALIGNED_SIZE) -> np.ndarray:
    """`--align none`: the file must already be an aligned size x size face."""
    if rgb.shape[:2] != (size, size):
        raise ValueError(f"{rgb.shape[1]}x{rgb.shape[0]}, not an aligned {size}x{size} face (use --align resize or "
                         "detect)")
    return rgb.transpose(2, 0, 1)


def load_faces(folder: FaceFolder, prepare: Callable[[np.ndarray], np.ndarray], strict: bool = False
               ) -> tuple[np.ndarray, list[FaceRecord]]:
    """uint8 (N, 3, 112, 112) faces of the records, each decoded and passed through `prepare` (RGB HWC ->
    CHW); an unreadable or unusable file is a problem of the folder (skipped, or raised with `strict`)."""
    faces, kept, problems = [], [], []
    for record in folder.records:
        try:
            face = prepare(decode_rgb(record.path.read_bytes()))
        except (OSError, ImageDecodeError, ValueError) as err:
            problems.append(f"{record.path}: {err}")
            continue
        faces.append(face)
        kept.append(record)
    folder.problems.extend(problems)
    report_problems(problems, folder.source, strict)
    if not faces:
        raise UserError(f"{folder.source}: no image could be read")
    return np.stack(faces), kept


# ------------------------------------------------------------------------------------------ dataset

class _SideNames:
    """What `Learner` reads of a dataset's side information: the names of the columns it has."""

    def __init__(self, names):
        self.names = list(names)


class FaceFolderDataset(_AugmentedDataset):
    """In-memory faces with identity labels and side information (yaw, pitch, height), the Learner's interface:
    `num_classes`, `side_info.names`, `set_epoch`, items `(uint8 CHW, label, side)`."""

    SIDE_COLUMNS = ("yaw", "pitch", "height")

    def __init__(self, images: np.ndarray, records: list[FaceRecord], augment_cfg: AugmentConfig | None = None,
                 seed: int = 0, identities: list[str] | None = None):
        super().__init__(augment_cfg, seed)
        if len(images) != len(records):
            raise ValueError("one record per image")
        self.images, self.records = images, list(records)
        self.identities = identities or sorted({r.identity for r in records})
        index = {name: i for i, name in enumerate(self.identities)}
        self.labels = np.array([index[r.identity] for r in records], dtype=np.int64)
        self.num_classes = len(self.identities)
        self.side = {name: np.array([getattr(r, name) for r in records], dtype=np.float32)
                     for name in self.SIDE_COLUMNS}
        self.side_info = _SideNames(n for n in self.SIDE_COLUMNS if np.isfinite(self.side[n]).any())

    def subset(self, indices, augment_cfg: AugmentConfig | None = None) -> "FaceFolderDataset":
        """The images at `indices` with the labels renumbered 0..C-1 over their identities (a fold)."""
        indices = np.asarray(indices, dtype=np.int64)
        return FaceFolderDataset(self.images[indices], [self.records[i] for i in indices],
                                 augment_cfg if augment_cfg is not None else self.augment_cfg, self.seed)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        side = {name: self.side[name][index] for name in self.side_info.names}
        return self._finish(self.images[index].transpose(1, 2, 0), int(self.labels[index]), side, index)
