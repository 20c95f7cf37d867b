"""DroneFace (Hsu & Chen, 2017) as the PGAML authors use it: file names, capture geometry, their JSON and folds.

The face crops are named `subject_camera_heightID_imagetype_distanceID.jpg`, e.g. `a_gp_3_ef_04.jpg`:
11 subjects `a`..`k`, camera `gp`, image type `ef` (extracted face), height ID 0/3/4/5 for a camera at
1.5/3/4/5 m, distance ID 0..30 for a horizontal distance of 17 - ID/2 m (17 m down to 2 m). The crops
range from 23x31 to 384x384 pixels. The PGAML authors give each crop's pose in a JSON list of
`{"img_path", "p_id" (or "id"), "yaw", "pitch", "landmark_points"}` objects (their repository's copy is a
JSON string holding that list; `data.face_folder` reads both); all-zero `landmark_points` with yaw = pitch
= 0 is their placeholder where no face was found, and they train on that 0 as it is.

Their margin uses the raw height ID in place of metres (m = m1 + m2 * 0.5 * (|yaw|/90 + ID/20)); this
project uses metres (`HEIGHT_ID_METRES`), and `--height_from_id` feeds the ID instead for an exact comparison.

Their folds (`seed_protocol_folds`): sklearn `KFold(k, shuffle=False)` over the images of subjects a..j in
file order, subject k's images always in the test part, labels remapped per fold.
"""
from __future__ import annotations

import re

import numpy as np

from data.face_folder import FilenameMeta
from utils import UserError
from verification import fold_sizes

SUBJECTS = tuple("abcdefghijk")
HEIGHT_ID_METRES = {0: 1.5, 3: 3.0, 4: 4.0, 5: 5.0}
DISTANCE_IDS = range(31)
CAMERA, IMAGE_TYPE = "gp", "ef"
PHOTO_FOLDER = "photos_all_faces"
JSON_NAME = "face_angles.json"
ALWAYS_TESTED = "k"   # the seed's folds keep this subject in every test part
FILENAME_REGEX = (r"^(?P<identity>[a-z])_(?P<camera>[a-z]+)_(?P<height_id>\d+)_(?P<imagetype>[a-z]+)"
                  r"_(?P<distance_id>\d+)\.(?:jpe?g|png)$")


def distance_metres(distance_id: int) -> float:
    """Horizontal camera-to-subject distance of a distance ID: 17 - ID/2 m."""
    return 17.0 - distance_id / 2.0


def file_name(subject: str, height_id: int, distance_id: int) -> str:
    return f"{subject}_{CAMERA}_{height_id}_{IMAGE_TYPE}_{distance_id:02d}.jpg"


def filename_meta(spec: str, height_from_id: bool = False) -> FilenameMeta:
    """`--meta_from_filename`: 'droneface' (the names above) or a regular expression with named groups
    (identity, yaw, pitch, height, distance in metres; height_id, distance_id as DroneFace's IDs)."""
    regex = FILENAME_REGEX if spec == "droneface" else spec
    try:
        re.compile(regex)
    except re.error as err:
        raise UserError(f"--meta_from_filename {spec!r}: not a regular expression ({err})") from None
    return FilenameMeta(regex, height_of_id=HEIGHT_ID_METRES, distance_of_id=distance_metres,
                        height_from_id=height_from_id)


def seed_protocol_folds(identities: list[str], num_folds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The PGAML authors' (train, test) image indices: KFold(num_folds, shuffle=False) over the images of
    every identity but `ALWAYS_TESTED`, in the given order; that subject's images join every test part."""
    identities = np.asarray(identities)
    always = np.flatnonzero(identities == ALWAYS_TESTED)
    others = np.flatnonzero(identities != ALWAYS_TESTED)
    if len(others) < num_folds:
        raise UserError(f"--cv seed_protocol: {len(others)} images outside subject {ALWAYS_TESTED!r} cannot make "
                        f"{num_folds} folds")
    folds, start = [], 0
    for size in fold_sizes(len(others), num_folds):  # sklearn KFold(shuffle=False)'s sequential parts
        test = np.zeros(len(others), dtype=bool)
        test[start:start + size] = True
        folds.append((others[~test], np.concatenate([others[test], always])))
        start += size
    return folds
