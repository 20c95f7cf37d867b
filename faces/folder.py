"""A folder of photos -> a folder of aligned faces with their metadata: the library of align.py.

The output mirrors the input tree (one identity per sub-folder, as TreB1eN's facebank and image folders
expect): each photo's face becomes `<out>/<same relative path>.jpg`, a 112x112 JPEG warped to the ArcFace
template (`faces.pipeline`: the same detection and choice as every command); with `all_faces` every face is kept as `<name>_<k>.jpg` (k = 0 the most central).
Every photo gets metadata rows in `faces.jsonl` (one JSON object per line, appended as photos finish: it is
also what a re-run resumes from) and, at the end of each run, `faces.csv`: source, output, status
(`aligned`, `no_face`, `unreadable`), the face's index, score, box (x1, y1, x2, y2), five landmarks, yaw,
pitch and roll (`faces.pose`; pitch from five points is the least reliable angle). Photos with no face or
that cannot be read are listed, never dropped silently.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from data.images import PHOTO_SUFFIXES, encode_jpeg, photo_files, read_image_file
from faces.alignment import ALIGNED_SIZE, align_face
from faces.pipeline import faces_central_first
from faces.pose import head_pose
from utils import UserError, atomic_write_bytes, atomic_write_text, parallel_map

JOURNAL, TABLE, SETTINGS = "faces.jsonl", "faces.csv", "align.json"
POSE_NOTE = ("yaw, pitch, roll in degrees from the five landmarks (faces/pose.py); pitch rests on the nose tip's "
             "height between eyes and mouth, which differs between people: the least reliable of the three")


@dataclass
class FaceRow:
    source: str                 # photo path relative to the input folder
    status: str                 # 'aligned', 'no_face' or 'unreadable'
    output: str = ""            # aligned file relative to the output folder
    face: int = -1              # index among the photo's faces (0: the most central)
    score: float = float("nan")
    box: list = field(default_factory=list)        # x1, y1, x2, y2 in photo pixels
    landmarks: list = field(default_factory=list)  # x, y of the five points, LANDMARK_NAMES order
    yaw: float = float("nan")
    pitch: float = float("nan")
    roll: float = float("nan")
    message: str = ""


@dataclass
class Summary:
    photos: int = 0
    skipped: int = 0            # done by an earlier run
    aligned: int = 0            # photos with at least one face
    faces: int = 0
    no_face: int = 0
    unreadable: int = 0


# With workers: the detector is made before the processes fork (they inherit it; the parent runs no inference).
_DETECTOR = None


def align_photo_faces(job: tuple[str, str, str, bool]) -> list[dict]:
    """Detect, align and write the face(s) of one photo; its metadata rows (as dicts)."""
    input_root, out_root, relative, all_faces = job
    try:
        rgb = read_image_file(Path(input_root) / relative)
    except UserError as err:
        return [asdict(FaceRow(relative, "unreadable", message=str(err)))]
    faces = faces_central_first(_DETECTOR, rgb)
    if not faces:
        return [asdict(FaceRow(relative, "no_face"))]
    height, width = rgb.shape[:2]
    rows = []
    for index, face in enumerate(faces if all_faces else faces[:1]):
        name = Path(relative).with_suffix(".jpg")
        output = name.with_name(f"{name.stem}_{index}.jpg") if all_faces else name
        aligned = align_face(rgb, face.landmarks, ALIGNED_SIZE)
        atomic_write_bytes(Path(out_root) / output, encode_jpeg(aligned, quality=95), durable=False)
        pose = head_pose(face.landmarks, height, width)
        rows.append(asdict(FaceRow(relative, "aligned", output.as_posix(), index, round(float(face.score), 6),
                                   np.round(face.box, 2).tolist(), np.round(face.landmarks, 2).ravel().tolist(),
                                   round(pose.yaw, 2), round(pose.pitch, 2), round(pose.roll, 2))))
    return rows


def read_journal(path: Path) -> dict[str, list[dict]]:
    """Rows by source photo; a line cut short by a kill is left out (its photo is done again)."""
    rows: dict[str, list[dict]] = {}
    if not path.is_file():
        return rows
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        rows.setdefault(row["source"], []).append(row)
    return rows


def check_settings(out: Path, settings: dict) -> None:
    """A folder aligned with other settings is not mixed into: one line saying so."""
    path = out / SETTINGS
    if path.is_file():
        previous = json.loads(path.read_text()).get("flags")
        if previous != settings:
            raise UserError(f"{out}: aligned before with {previous}; give the same flags to continue, or a new --out")
    else:
        atomic_write_text(path, json.dumps({"flags": settings, "pose": POSE_NOTE}, indent=1, sort_keys=True) + "\n")


def check_folders(input_root: Path, out: Path) -> list[str]:
    """The photos to align, after the checks that need no detector: one UserError for each way it cannot work."""
    if not input_root.is_dir():
        raise UserError(f"{input_root}: --input folder not found")
    if out.resolve() == input_root.resolve() or input_root.resolve() in out.resolve().parents:
        raise UserError(f"--out {out} is inside --input {input_root}: the aligned faces would be aligned again")
    photos = photo_files(input_root)
    if not photos:
        raise UserError(f"{input_root}: no photos found ({', '.join(PHOTO_SUFFIXES)})")
    return photos


def align_folder(input_root: Path, out: Path, detector, workers: int = 1, all_faces: bool = False,
                 progress=None) -> tuple[Summary, list[dict]]:
    """Align every photo under `input_root` into `out` (resuming a run that stopped); (summary, all rows)."""
    global _DETECTOR
    photos = check_folders(input_root, out)
    out.mkdir(parents=True, exist_ok=True)
    check_settings(out, {"all_faces": all_faces, "detector": type(detector).__name__.lower(), "size": ALIGNED_SIZE})
    done = read_journal(out / JOURNAL)
    todo = [p for p in photos if p not in done]
    summary = Summary(photos=len(photos), skipped=len(photos) - len(todo))
    if progress is not None:
        progress(summary.skipped)
    _DETECTOR = detector
    jobs = [(str(input_root), str(out), relative, all_faces) for relative in todo]
    with open(out / JOURNAL, "a", buffering=1) as journal:
        for rows in parallel_map(align_photo_faces, jobs, workers):
            journal.write("".join(json.dumps(row) + "\n" for row in rows))
            done[rows[0]["source"]] = rows
            if progress is not None:
                progress(1)
    all_rows = [row for relative in photos for row in done.get(relative, [])]
    for relative in photos:
        status = done[relative][0]["status"]
        summary.aligned += status == "aligned"
        summary.no_face += status == "no_face"
        summary.unreadable += status == "unreadable"
    summary.faces = sum(row["status"] == "aligned" for row in all_rows)
    atomic_write_text(out / TABLE, rows_csv(all_rows))
    return summary, all_rows


CSV_COLUMNS = (["source", "status", "output", "face", "score", "x1", "y1", "x2", "y2"]
               + [f"{name}_{axis}" for name in ("eye_left", "eye_right", "nose", "mouth_left", "mouth_right")
                  for axis in "xy"] + ["yaw", "pitch", "roll", "message"])


def rows_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        box = row["box"] or [""] * 4
        points = row["landmarks"] or [""] * 10
        writer.writerow([row["source"], row["status"], row["output"], row["face"], _number(row["score"]), *box,
                         *points, _number(row["yaw"]), _number(row["pitch"]), _number(row["roll"]), row["message"]])
    return buffer.getvalue()


def _number(value) -> str:
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)
