"""Head pose given in a file instead of estimated: `prepare_data.py --pose_file FILE`.

Two formats:

* the PGAML authors' JSON: a list of `{"img_path", "p_id", "yaw", "pitch", "landmark_points"}` objects;
* a CSV `key_or_path,yaw[,pitch][,height]` (a header line naming the columns is optional; height in metres).

A row names its record by key (`123`) or by a path whose file name is the key (`imgs/7/123.jpg`, as
`prepare_data.py --unpack` writes them). Rows that match no image record, or whose numbers do not parse, are
listed (not silently dropped); a yaw outside [-90, 90] or a negative height is an error naming the row.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from utils import UserError


@dataclass
class PoseTable:
    pose: np.ndarray                    # float32 (num_keys, 2) yaw, pitch; NaN where not given
    height: np.ndarray | None           # float32 (num_keys,) metres, or None when no row gives one
    matched: int = 0
    skipped: list[str] = field(default_factory=list)   # "<file>:<row>: why" for every row left out


def read_pose_file(path: str | Path, image_keys: np.ndarray, num_keys: int) -> PoseTable:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: --pose_file not found")
    rows = _json_rows(path) if path.suffix.lower() == ".json" else _csv_rows(path)
    images = set(int(k) for k in image_keys)
    table = PoseTable(np.full((num_keys, 2), np.nan, np.float32), None)
    heights = np.full(num_keys, np.nan, np.float32)
    for where, name, values in rows:
        key = _key_of(name)
        if key is None or key not in images:
            table.skipped.append(f"{where}: {name!r} is no image record's key or <key>.jpg path")
            continue
        try:
            yaw, pitch, height = (_number(values.get(column)) for column in ("yaw", "pitch", "height"))
        except ValueError as err:
            table.skipped.append(f"{where}: {err}")
            continue
        if yaw is None:
            table.skipped.append(f"{where}: no yaw")
            continue
        if not -90.0 <= yaw <= 90.0:
            raise UserError(f"{where}: yaw {yaw} is outside [-90, 90] degrees")
        if height is not None and height < 0:
            raise UserError(f"{where}: height {height} m is negative")
        table.pose[key] = yaw, np.nan if pitch is None else pitch
        if height is not None:
            heights[key] = height
        table.matched += 1
    if np.isfinite(heights).any():
        table.height = heights
    return table


def _json_rows(path: Path):
    try:
        entries = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None
    if isinstance(entries, str):  # the PGAML authors' file is a JSON string holding the JSON list
        try:
            entries = json.loads(entries)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}: a JSON string that is not itself valid JSON ({err})") from None
    if not isinstance(entries, list):
        raise UserError(f"{path}: expected a list of {{\"img_path\", \"yaw\", \"pitch\", ...}} objects")
    for index, entry in enumerate(entries):
        where = f"{path}: entry {index}"
        if not isinstance(entry, dict) or "img_path" not in entry:
            yield where, None, {}
        else:
            yield where, str(entry["img_path"]), entry


def read_csv_table(path: Path) -> list[list[str]]:
    """A CSV file's rows; a file that is not text is a UserError naming it."""
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not a text CSV ({err})") from None
    return list(csv.reader(lines))


def _csv_rows(path: Path):
    reader = read_csv_table(path)
    columns = ["key_or_path", "yaw", "pitch", "height"]
    start = 0
    if reader and len(reader[0]) > 1 and reader[0][1].strip().lower() == "yaw":  # a header line
        columns = [c.strip().lower() for c in reader[0]]
        start = 1
    for number, fields in enumerate(reader[start:], start=start + 1):
        if not fields or not "".join(fields).strip():
            continue
        values = dict(zip(columns[1:], (f.strip() for f in fields[1:])))
        yield f"{path}:{number}", fields[0].strip(), values


def _key_of(name: str | None) -> int | None:
    if name is None:
        return None
    stem = Path(name).stem if not name.isdigit() else name
    return int(stem) if stem.isdigit() else None


def _number(value) -> float | None:
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{value!r} is not a number") from None
    if not math.isfinite(number):
        raise ValueError(f"{value!r} is not a finite number")
    return number
