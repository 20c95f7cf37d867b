"""Offline generator of an emore-format (MS1M-ArcFace RecordIO) face identity data set with known pose.

No face data set can be downloaded offline, so the demo and the tests train on faces rendered here:
a few ray-cast ellipsoids (head, nose, ears, neck) under orthographic projection, with every facial
feature drawn in the head's surface coordinates, so foreshortening, the far eye vanishing and the ear
appearing in profile need no special cases. Identity lives mostly in frontal features (eyes, brows,
nose and mouth geometry, moles); hair and skin come from narrow shared palettes with per-image
jitter, so a model cannot identify a profile face from its colours alone.

Usage (from the repository root):
    python data/synthetic.py --out data/synthetic --classes 200 --per-class 40 --workers 2
    python data/synthetic.py --layout droneface --out data/droneface_synthetic   (see generate_droneface)

Output folder:
    train.rec, train.idx   key 0: header record, label [N+1, N+1+C], no image
                           keys 1..N (N = C*K): 112x112 JPEG, label = class index (classes contiguous)
                           keys N+1..N+C: one identity record per class, label [first_key, end_key)
    property               "C,112,112"
    pose.npy               float32 (N+1+C, 2): yaw, pitch in degrees per record key; NaN for non-images
    height.npy             float32 (N+1+C,): capture height in metres per key; NaN for non-images
    lfw.bin, cfp_fp.bin, agedb_30.bin, cfp_ff.bin
                           insightface verification pairs of HELD-OUT identities (images 2i, 2i+1
                           form pair i; half same): lfw mixed poses, mostly near-frontal; cfp_fp one
                           near-frontal and one |yaw| 60-90 image per pair; agedb_30 near-frontal with
                           a large age change between the two images of every pair; cfp_ff two
                           near-frontal images per pair (cfp_ff - cfp_fp: what profile costs)
    <name>.pose.npy        float32 (2P, 2) yaw, pitch of each image of <name>.bin, in bin order
    meta_synthetic.json    generation parameters

Pose conventions (degrees):
    yaw   > 0: the face is turned toward the image's RIGHT (the nose points to the right edge).
          A horizontal flip negates yaw; every feature is mirror-symmetric, so it shows the same person.
    pitch > 0: the face is seen from above (camera above the eyes, as from a drone; nose points down).

Every image is a pure function of (seed, record key): any --workers gives byte-identical output.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python data/synthetic.py`: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import contextlib
import functools
import json
import logging
import math
import multiprocessing
import time
from dataclasses import dataclass, replace
from typing import Callable, Iterator

import cv2
import numpy as np
from tqdm import tqdm

from data.images import encode_jpeg
from data.recordio import IRHeader, RecordWriter, pack, write_property
from data.valsets import write_bin
from utils import (CliParser, UserError, atomic_save_npy, atomic_write_bytes, atomic_write_text, run_cli,
                   setup_logging)

RENDER_SIZE = 64
IMAGE_SIZE = 112
VIEW_HALF_WIDTH = 0.92  # world units either side of the crop centre: eyes at ~46% of the height, mouth at
                        # ~80%, as in the ArcFace 112x112 alignment template
GENERATOR_VERSION = 4  # 2: moles in mirror pairs (a flip shows the same person); 3: fewer drone and profile
                       # training views, half the per-image colour jitter; 4: the cfp_ff set (the others unchanged)

# Independent random streams (SeedSequence([seed, stream, ...])): identities, train images, pair lists and val
# images never share numbers, and each image depends on nothing but its own stream.
IDENTITY_STREAM, TRAIN_IMAGE_STREAM, PAIRS_STREAM, VAL_IMAGE_STREAM = 1, 2, 3, 4

# name -> (pose kind of the first image, of the second image) in every pair; see sample_yaw. cfp_ff pairs the same
# held-out identities as cfp_fp frontal with frontal (CFP's own FF protocol): cfp_ff - cfp_fp is the profile gap.
# New sets go at the end: a set's random streams follow its index, so the sets before it keep their bytes.
VAL_SETS = {"lfw": ("lfw", "lfw"), "cfp_fp": ("frontal", "profile"), "agedb_30": ("agedb", "agedb"),
            "cfp_ff": ("frontal", "frontal")}

HAIR_PALETTE = np.array([[0.13, 0.09, 0.06], [0.24, 0.16, 0.10], [0.09, 0.08, 0.07], [0.33, 0.23, 0.14]])
IRIS_PALETTE = np.array([[0.24, 0.14, 0.07], [0.13, 0.09, 0.06], [0.28, 0.38, 0.48], [0.30, 0.34, 0.20]])
SKIN_BASE = np.array([0.80, 0.62, 0.52])
LIP_BASE = np.array([0.66, 0.36, 0.36])
SCLERA = np.array([0.90, 0.88, 0.85])
MOLE = np.array([0.30, 0.18, 0.12])


def rng_for(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *stream]))


# ---- Identity: the fixed parameters of one person
@dataclass(frozen=True)
class Identity:
    head_axes: tuple[float, float, float]
    skin: np.ndarray
    hair: np.ndarray
    iris: np.ndarray
    lips: np.ndarray
    eye_spacing: float      # surface angle (rad) of each eye from the midline
    eye_height: float       # surface height, head half-height = 1
    eye_width: float
    eye_open: float
    eye_tilt: float
    brow_gap: float
    brow_length: float
    brow_thickness: float
    brow_tilt: float
    brow_arch: float
    nose_height: float
    nose_length: float
    nose_width: float
    nose_depth: float
    mouth_height: float
    mouth_width: float
    mouth_thickness: float
    mouth_curve: float
    moles: np.ndarray       # (2n, 3): surface angle, height, radius; n mirror pairs
    hairline: float
    widow_peak: float
    hair_stripes: float
    greying: float
    base_age: float
    ear_height: float


def sample_identity(rng: np.random.Generator) -> Identity:
    u = rng.uniform
    # moles come in mirror pairs: every feature is then left-right symmetric, so a horizontal flip (the training
    # augmentation) shows the same person, not a mirrored one that the model would have to learn as well
    num_pairs = rng.integers(1, 4)
    spacing = u(0.30, 0.48)
    half = np.stack([u(0.12, 0.75, num_pairs), u(-0.65, 0.45, num_pairs), u(0.045, 0.085, num_pairs)], 1)
    moles = np.concatenate([half, half * np.array([-1.0, 1.0, 1.0])])
    return Identity(
        head_axes=(0.74 * u(0.96, 1.04), 1.0, 0.86 * u(0.96, 1.04)),
        skin=SKIN_BASE * (1 + rng.normal(0, 0.03)) * (1 + rng.normal(0, 0.02, 3)),
        hair=HAIR_PALETTE[rng.integers(len(HAIR_PALETTE))],
        iris=IRIS_PALETTE[rng.integers(len(IRIS_PALETTE))],
        lips=LIP_BASE * (1 + rng.normal(0, 0.05, 3)),
        eye_spacing=spacing, eye_height=u(0.05, 0.25), eye_width=min(u(0.12, 0.20), 0.75 * spacing),
        eye_open=u(0.35, 0.75), eye_tilt=u(-0.35, 0.35),
        brow_gap=u(0.10, 0.22), brow_length=u(0.12, 0.24), brow_thickness=u(0.025, 0.06),
        brow_tilt=u(-0.5, 0.5), brow_arch=u(-0.02, 0.07),
        nose_height=u(-0.30, -0.12), nose_length=u(0.16, 0.30), nose_width=u(0.08, 0.16),
        nose_depth=u(0.12, 0.30),
        mouth_height=u(-0.62, -0.40), mouth_width=u(0.16, 0.34), mouth_thickness=u(0.025, 0.07),
        mouth_curve=u(-0.08, 0.08),
        moles=moles,
        hairline=u(0.50, 0.72), widow_peak=u(-0.08, 0.12), hair_stripes=u(6, 14),
        greying=u(0.3, 1.0), base_age=u(0.1, 0.9), ear_height=u(-0.15, 0.10),
    )


@functools.lru_cache(maxsize=4096)
def identity_for(seed: int, identity_index: int) -> Identity:
    return sample_identity(rng_for(seed, IDENTITY_STREAM, identity_index))


# ---- Per-image nuisance: pose, capture geometry, lighting, background, degradations
@dataclass(frozen=True)
class Nuisance:
    age: float = 0.5
    light_dir: tuple[float, float, float] = (0.0, 0.0, 1.0)
    ambient: float = 0.45
    diffuse: float = 0.6
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)
    skin_gain: tuple[float, float, float] = (1.0, 1.0, 1.0)
    hair_gain: tuple[float, float, float] = (1.0, 1.0, 1.0)
    eye_open: float = 1.0
    smile: float = 0.0
    background: tuple = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 0.0)   # colour A, colour B, gradient angle
    blob: tuple | None = None                                      # (x, y, radius, colour) clutter
    crop_shift: tuple[float, float] = (0.0, 0.0)                   # alignment error, world units
    crop_scale: float = 1.0
    crop_rotation: float = 0.0                                     # radians, in the image plane
    face_pixels: int = RENDER_SIZE                                 # resolution left after distance
    blur_sigma: float = 0.0
    noise_sigma: float = 0.0
    noise_seed: int = 0
    jpeg_quality: int = 95


def sample_yaw(rng: np.random.Generator, kind: str) -> float:
    if kind == "train":   # ~77% within +-30 degrees, the rest spread over -90..90
        yaw = rng.normal(0, 15) if rng.random() < 0.7 else rng.uniform(-90, 90)
    elif kind == "lfw":
        yaw = rng.normal(0, 12) if rng.random() < 0.8 else rng.uniform(-75, 75)
    elif kind == "frontal":
        yaw = rng.normal(0, 5)
    elif kind == "profile":
        yaw = rng.uniform(60, 90) * rng.choice([-1.0, 1.0])
    elif kind == "agedb":
        yaw = rng.normal(0, 10)
    else:
        raise ValueError(f"unknown pose kind {kind!r}")
    limit = {"frontal": 10.0, "agedb": 30.0, "lfw": 75.0}.get(kind, 90.0)
    return float(np.clip(yaw, -limit, limit))


def sample_capture(rng: np.random.Generator, from_drone: bool) -> tuple[float, float, float]:
    """(height m, camera elevation deg, distance m): a drone sees the face from above and farther away."""
    if from_drone:
        height = math.exp(rng.uniform(math.log(2.0), math.log(20.0)))
        ground = max(rng.uniform(3.0, 15.0), (height - 1.6) / math.tan(math.radians(55)))
    else:
        height, ground = rng.uniform(1.5, 2.0), rng.uniform(1.0, 4.0)
    rise = height - 1.6  # the eyes of a standing person
    return height, math.degrees(math.atan2(rise, ground)), math.hypot(rise, ground)


def sample_nuisance(rng: np.random.Generator, yaw: float, distance: float, age: float) -> Nuisance:
    u, n = rng.uniform, rng.normal
    light = np.array([n(0, 0.7), n(0.3, 0.5), 1.0])
    difficulty = abs(yaw) / 90.0  # real profile crops are aligned worse: landmarks are harder to find
    blob = None
    if rng.random() < 0.6:
        blob = (u(-1.2, 1.2), u(-1.2, 1.2), u(0.2, 0.7), tuple(u(0, 1, 3)))
    return Nuisance(
        age=age,
        light_dir=tuple(light / np.linalg.norm(light)),
        ambient=u(0.25, 0.55), diffuse=u(0.5, 0.85),
        tint=tuple(1 + 0.5 * n(0, 0.08, 3)),  # colour jitter (v3: halved; raw pixels stay at chance)
        skin_gain=tuple(1 + 0.5 * ((1 + n(0, 0.08)) * (1 + n(0, 0.04, 3)) - 1)),
        hair_gain=tuple((1 + n(0, 0.15)) * (1 + n(0, 0.08, 3))),
        eye_open=u(0.55, 1.15), smile=n(0, 0.04),
        background=(tuple(u(0, 1, 3)), tuple(u(0, 1, 3)), u(0, 2 * math.pi)),
        blob=blob,
        crop_shift=(n(0, 0.03 + 0.07 * difficulty), n(0, 0.03 + 0.05 * difficulty)),
        crop_scale=math.exp(n(0, 0.03 + 0.06 * difficulty)),
        crop_rotation=math.radians(n(0, 3 + 6 * difficulty)),
        face_pixels=int(np.clip(round(RENDER_SIZE * 5.0 / distance), 24, RENDER_SIZE)),
        blur_sigma=u(0.0, 1.3), noise_sigma=u(1.0, 6.0), noise_seed=int(rng.integers(2**31)),
        jpeg_quality=int(rng.integers(90, 96)),
    )


# ---- Renderer
def rotation_matrix(yaw_deg: float, pitch_deg: float) -> np.ndarray:
    """Head -> camera rotation: yaw about the head's vertical axis, then pitch about the camera's x axis."""
    y, p = math.radians(yaw_deg), math.radians(pitch_deg)
    yaw_m = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    pitch_m = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    return pitch_m @ yaw_m


@functools.lru_cache(maxsize=1)
def _unit_grid() -> tuple[np.ndarray, np.ndarray]:
    centres = (np.arange(RENDER_SIZE) + 0.5) / RENDER_SIZE * 2 - 1
    x, y = np.meshgrid(centres, -centres)  # row 0 is the top of the image: world y points up
    return x.ravel(), y.ravel()


def _crop_grid(nuisance: Nuisance, yaw_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """World (x, y) of each pixel centre, through the similarity transform of an imperfect alignment.

    An aligned crop is centred on the visible landmarks (eyes, nose, mouth), not on the skull, so the
    crop follows the face toward the side it turns to.
    """
    x, y = _unit_grid()
    landmark_centre = 0.5 * math.sin(math.radians(yaw_deg))
    scale = VIEW_HALF_WIDTH * nuisance.crop_scale
    c, s = math.cos(nuisance.crop_rotation) * scale, math.sin(nuisance.crop_rotation) * scale
    return c * x - s * y + nuisance.crop_shift[0] + landmark_centre, s * x + c * y + nuisance.crop_shift[1]


def _ellipsoids(identity: Identity) -> tuple[np.ndarray, np.ndarray]:
    """(centres, semi-axes), each (5, 3) in head coordinates: head, nose, left ear, right ear, neck."""
    ax, ay, az = identity.head_axes
    nose_y = identity.nose_height
    nose_z = az * math.sqrt(max(0.0, 1 - nose_y ** 2)) - 0.2 * identity.nose_depth
    ear_y, ear_axes = identity.ear_height, [0.09, 0.2, 0.12]
    centres = np.array([[0, 0, 0], [0, nose_y, nose_z], [-ax * 0.98, ear_y, -0.06], [ax * 0.98, ear_y, -0.06],
                        [0, -1.05, -0.2]])
    axes = np.array([[ax, ay, az], [identity.nose_width, identity.nose_length, identity.nose_depth],
                     ear_axes, ear_axes, [0.42, 0.6, 0.4]])
    return centres, axes


def _ray_cast(identity: Identity, rotation: np.ndarray, x: np.ndarray, y: np.ndarray):
    """Nearest hit per pixel: (part index or -1, hit point in head coordinates, surface normal).

    Orthographic rays (origin x*ex + y*ey + 3*ez, direction -ez in head coordinates) are linear in the
    pixel position, so each ray-ellipsoid quadratic is built from a few scalars and two pixel vectors.
    """
    ex, ey, ez = rotation.T[:, 0], rotation.T[:, 1], rotation.T[:, 2]  # camera axes in head coordinates
    nearest = np.full(x.shape, np.inf)
    part = np.full(x.shape, -1)
    centres, axes = _ellipsoids(identity)
    for index, (centre, axis) in enumerate(zip(centres, axes)):
        centre_x, centre_y = ex @ centre, ey @ centre  # cull to the pixels its bounding sphere covers
        near = np.flatnonzero((np.abs(x - centre_x) < axis.max()) & (np.abs(y - centre_y) < axis.max()))
        px, py = x[near], y[near]
        a_vec, b_vec, c_vec, d_vec = ex / axis, ey / axis, (3.0 * ez - centre) / axis, -ez / axis
        dd = d_vec @ d_vec
        half_b = px * (a_vec @ d_vec) + py * (b_vec @ d_vec) + c_vec @ d_vec
        origin_sq = (px * px * (a_vec @ a_vec) + py * py * (b_vec @ b_vec) + px * py * (2 * a_vec @ b_vec)
                     + px * (2 * a_vec @ c_vec) + py * (2 * b_vec @ c_vec) + (c_vec @ c_vec - 1))
        disc = half_b * half_b - dd * origin_sq
        t = (-half_b - np.sqrt(np.maximum(disc, 0))) / dd
        closer = (disc >= 0) & (t < nearest[near])
        nearest[near[closer]], part[near[closer]] = t[closer], index
    hit = part >= 0
    points = np.outer(x[hit], ex) + np.outer(y[hit], ey) + np.outer(3.0 - nearest[hit], ez)
    normals = (points - centres[part[hit]]) / axes[part[hit]] ** 2
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    return part, points, normals


def _soft_ellipse(du, dv, half_u, half_v, tilt=0.0, edge=0.25):
    """Coverage in [0, 1] of a tilted ellipse; `edge` is the soft rim as a fraction of the radius."""
    c, s = math.cos(tilt), math.sin(tilt)
    a, b = (c * du + s * dv) / half_u, (c * dv - s * du) / half_v
    return np.clip((1 - np.sqrt(a * a + b * b)) / edge, 0, 1)


def _paint(colour: np.ndarray, alpha: np.ndarray, rgb) -> None:
    colour += alpha[:, None] * (np.asarray(rgb) - colour)


def _paint_region(colour, u, v, keep, paint_feature, *args) -> None:
    """Paint a feature only on the pixels it can cover, so its cost follows its size on screen."""
    index = np.flatnonzero(keep)
    if index.size:
        region = colour[index]
        paint_feature(region, u[index], v[index], *args)
        colour[index] = region


def _paint_eyes_and_brows(colour, u_abs, v, person: Identity, nuisance: Nuisance) -> None:
    """Eyes and brows are mirror-symmetric, so they are drawn once in |surface angle|."""
    du, dv = u_abs - person.eye_spacing, v - person.eye_height
    half_v = person.eye_width * person.eye_open * nuisance.eye_open * 0.6
    sclera = _soft_ellipse(du, dv, person.eye_width, half_v, person.eye_tilt)
    _paint(colour, sclera, SCLERA)
    _paint(colour, sclera * _soft_ellipse(du, dv, 0.45 * person.eye_width, 0.55 * person.eye_width, 0, 0.4),
           person.iris)
    lid = _soft_ellipse(du, dv - 0.3 * half_v, 1.1 * person.eye_width, 0.9 * half_v + 0.03, person.eye_tilt, 0.5)
    _paint(colour, 0.8 * lid * (1 - sclera) * (dv > -0.2 * half_v), (0.15, 0.1, 0.08))
    bu = u_abs - person.eye_spacing - 0.02
    bv = v - person.eye_height - person.brow_gap - person.brow_tilt * 0.3 * bu \
        - person.brow_arch * (1 - (bu / person.brow_length) ** 2)
    brow = np.clip((1 - np.abs(bv) / person.brow_thickness) / 0.4, 0, 1) \
        * np.clip((1 - np.abs(bu) / person.brow_length) / 0.2, 0, 1)
    _paint(colour, 0.9 * brow, person.hair * 0.8)


def _paint_mouth(colour, u, v, person: Identity, nuisance: Nuisance) -> None:
    curve = person.mouth_curve + nuisance.smile - 0.06 * nuisance.age  # mouth corners droop with age
    dv = v - person.mouth_height - curve * (u / person.mouth_width) ** 2
    across = np.clip((1 - np.abs(u) / person.mouth_width) / 0.25, 0, 1)
    _paint(colour, across * np.clip((1 - np.abs(dv) / person.mouth_thickness) / 0.4, 0, 1), person.lips)
    _paint(colour, 0.7 * across * np.clip((1 - np.abs(dv) / 0.012) / 0.5, 0, 1), person.lips * 0.4)


def _paint_moles(colour, u, v, person: Identity) -> None:
    for mole_u, mole_v, radius in person.moles:
        near = (np.abs(u - mole_u) < radius) & (np.abs(v - mole_v) < radius)
        if near.any():
            colour[near] += _soft_ellipse(u[near] - mole_u, v[near] - mole_v, radius, radius, 0, 0.5)[:, None] \
                * (MOLE - colour[near])


def _paint_hair_and_age(colour, u, v, person: Identity, nuisance: Nuisance) -> None:
    u_abs, age = np.abs(u), nuisance.age
    hair = person.hair + (np.array([0.62, 0.6, 0.58]) - person.hair) * person.greying * age ** 2
    hair = hair * np.asarray(nuisance.hair_gain)
    front = person.hairline + 0.12 * age * person.greying - person.widow_peak * np.exp(-(u / 0.3) ** 2)
    around = np.clip((u_abs - 1.25) / 0.7, 0, 1)  # behind the ears the hair comes down to the neck
    boundary = front + (-0.35 - front) * around * around * (3 - 2 * around)
    coverage = np.clip((v - boundary) / 0.06, 0, 1)
    texture = 1 + 0.12 * np.sin(person.hair_stripes * u_abs + 9 * v)  # mirror-symmetric, parted in the middle
    wrinkles = np.clip((np.cos((v - 0.28) * 2 * math.pi / 0.08) - 0.7) / 0.3, 0, 1) \
        * (v > 0.22) * (v < boundary - 0.04) * (u_abs < 0.55)
    _paint(colour, 0.35 * age * wrinkles, person.skin * 0.6)
    _paint(colour, coverage, np.clip(hair[None, :] * texture[:, None], 0, 1))


def _paint_nostrils(colour, on_nose, points, person: Identity) -> None:
    centres, axes = _ellipsoids(person)
    q = (points[on_nose] - centres[1]) / axes[1]  # the nose's own unit-sphere coordinates
    nostrils = _soft_ellipse(np.abs(q[:, 0]) - 0.4, q[:, 1] + 0.72, 0.3, 0.22, 0, 0.5) * (q[:, 2] > 0)
    nose_colour = colour[on_nose]
    _paint(nose_colour, 0.8 * nostrils, person.skin * 0.3)
    colour[on_nose] = nose_colour


def _shade_surface(person: Identity, nuisance: Nuisance, part, points, normals, rotation) -> np.ndarray:
    """Albedo of every hit pixel (features painted in surface coordinates), then Lambert shading."""
    skin = np.clip(person.skin * (1 + 0.12 * nuisance.age * np.array([0.0, -0.1, -0.2]))
                   * np.asarray(nuisance.skin_gain), 0, 1)
    hit_part = part[part >= 0]
    colour = np.tile(skin, (len(hit_part), 1))
    colour[hit_part >= 2] *= 0.94  # ears and neck sit a little in shadow
    on_head = hit_part == 0
    ax, ay, az = person.head_axes
    p = points[on_head]
    u, v = np.arctan2(p[:, 0] / ax, p[:, 2] / az), p[:, 1] / ay
    head_colour = colour[on_head]
    u_abs = np.abs(u)
    eye_band = (u_abs < person.eye_spacing + 1.2 * person.eye_width + 0.05) \
        & (v > person.eye_height - 0.15) & (v < person.eye_height + person.brow_gap + 0.15)
    _paint_region(head_colour, u_abs, v, eye_band, _paint_eyes_and_brows, person, nuisance)
    mouth_band = (u_abs < person.mouth_width + 0.05) & (np.abs(v - person.mouth_height) < 0.2)
    _paint_region(head_colour, u, v, mouth_band, _paint_mouth, person, nuisance)
    _paint_moles(head_colour, u, v, person)
    _paint_hair_and_age(head_colour, u, v, person, nuisance)
    colour[on_head] = head_colour
    _paint_nostrils(colour, hit_part == 1, points, person)
    light_in_head = rotation.T @ np.asarray(nuisance.light_dir)
    lambert = np.clip(normals @ light_in_head, 0, 1)
    return colour * (nuisance.ambient + nuisance.diffuse * lambert)[:, None]


def _background(nuisance: Nuisance, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    colour_a, colour_b, angle = nuisance.background
    ramp = np.clip(0.5 + 0.4 * (x * math.cos(angle) + y * math.sin(angle)), 0, 1)[:, None]
    image = np.asarray(colour_a) + ramp * (np.asarray(colour_b) - np.asarray(colour_a))
    if nuisance.blob is not None:
        bx, by, radius, blob_colour = nuisance.blob
        _paint(image, _soft_ellipse(x - bx, y - by, radius, radius, 0, 0.3), blob_colour)
    return image


def render_face(person: Identity, yaw_deg: float, pitch_deg: float, nuisance: Nuisance | None = None) -> np.ndarray:
    """Render one aligned 112x112 RGB uint8 face; nuisance=None gives a clean, centred, evenly lit view."""
    nuisance = nuisance or Nuisance()
    rotation = rotation_matrix(yaw_deg, pitch_deg)
    x, y = _crop_grid(nuisance, yaw_deg)
    part, points, normals = _ray_cast(person, rotation, x, y)
    image = _background(nuisance, x, y)
    image[part >= 0] = _shade_surface(person, nuisance, part, points, normals, rotation)
    image = image * (255.0 * np.asarray(nuisance.tint))
    return _degrade(image.reshape(RENDER_SIZE, RENDER_SIZE, 3).astype(np.float32), nuisance)


def _degrade(image: np.ndarray, nuisance: Nuisance) -> np.ndarray:
    """Distance down-scaling, optics blur and sensor noise at the capture resolution, then the resize
    to the output size (as a face crop of a small, far face is up-sampled by alignment)."""
    pixels = nuisance.face_pixels
    if pixels < RENDER_SIZE:
        image = cv2.resize(image, (pixels, pixels), interpolation=cv2.INTER_AREA)
    blur_sigma = nuisance.blur_sigma * pixels / IMAGE_SIZE  # blur_sigma is in output pixels
    if blur_sigma > 0.2:
        image = cv2.GaussianBlur(image, (0, 0), blur_sigma)
    if nuisance.noise_sigma > 0:
        noise_rng = np.random.default_rng(nuisance.noise_seed)
        image += nuisance.noise_sigma * noise_rng.standard_normal(image.shape, dtype=np.float32)
    image = np.clip(image + 0.5, 0, 255).astype(np.uint8)
    return cv2.resize(image, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_LINEAR)


# ---- Jobs: one image each, a pure function of (seed, stream), so any number of workers agrees
# share of training images captured from a drone (2-20 m); the rest from 1.5-2 m. Drone shots from high up show
# mostly the top of the head at 24-40 px: 40% of them left too little identity to learn from in a few hundred steps
DRONE_FRACTION = 0.25


@dataclass(frozen=True)
class RenderJob:
    seed: int
    stream: tuple[int, ...]      # (TRAIN_IMAGE_STREAM, key) or (VAL_IMAGE_STREAM, set index, image index)
    identity_index: int
    pose_kind: str               # see sample_yaw
    age: float | None = None     # None: the person's own age give or take a few years


def render_job(job: RenderJob) -> tuple[bytes, float, float, float]:
    """(JPEG bytes, yaw, pitch, capture height) of one image."""
    rng = rng_for(job.seed, *job.stream)
    person = identity_for(job.seed, job.identity_index)
    yaw = sample_yaw(rng, job.pose_kind)
    from_drone = job.pose_kind == "train" and rng.random() < DRONE_FRACTION
    height, elevation, distance = sample_capture(rng, from_drone)
    head_pitch = rng.normal(0, 5 if job.pose_kind == "frontal" else 8)
    pitch = float(np.clip(head_pitch + elevation, -45, 70))
    age = job.age if job.age is not None else float(np.clip(person.base_age + rng.uniform(-0.25, 0.25), 0, 1))
    nuisance = sample_nuisance(rng, yaw, distance, age)
    image = render_face(person, yaw, pitch, nuisance)
    return encode_jpeg(image, nuisance.jpeg_quality), yaw, pitch, height


def train_jobs(seed: int, num_classes: int, per_class: int) -> list[RenderJob]:
    """Record key k = 1..C*K shows class (k-1)//K: the images of a class are contiguous."""
    return [RenderJob(seed, (TRAIN_IMAGE_STREAM, key), (key - 1) // per_class, "train")
            for key in range(1, num_classes * per_class + 1)]


def val_pair_jobs(seed: int, set_index: int, name: str, num_pairs: int,
                  val_identities: range) -> tuple[list[RenderJob], np.ndarray]:
    """Jobs for the 2P images of one verification set (images 2i, 2i+1 form pair i) and issame."""
    rng = rng_for(seed, PAIRS_STREAM, set_index)
    issame = rng.permutation(np.arange(num_pairs) < num_pairs // 2)
    first_kind, second_kind = VAL_SETS[name]
    jobs = []
    for pair, same in enumerate(issame):
        people = rng.choice(val_identities, size=2, replace=False)
        if same:
            people[1] = people[0]
        ages = (None, None)
        if name == "agedb_30":  # a large age gap within every pair, young or old first
            ages = tuple(rng.permutation([rng.uniform(0.0, 0.3), rng.uniform(0.7, 1.0)]))
        for slot, (person, kind, age) in enumerate(zip(people, (first_kind, second_kind), ages)):
            jobs.append(RenderJob(seed, (VAL_IMAGE_STREAM, set_index, 2 * pair + slot), int(person), kind,
                                  None if age is None else float(age)))
    return jobs, issame


@contextlib.contextmanager
def rendering(workers: int, render=None):
    """Yield a function that maps `render` (default render_job) over a list of jobs, in order, here or in
    `workers` processes."""
    render = render or render_job
    if workers == 1:
        yield lambda jobs: map(render, jobs)
        return
    # spawn, not fork: safe when the caller already runs threads (torch), and the same on every platform
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield lambda jobs: pool.imap(render, jobs, chunksize=16)


# ---- Writing the emore folder
DEFAULT_VAL_CLASSES = 100
DEFAULT_VAL_PAIRS = 300
log = logging.getLogger("synthetic")
RenderMany = Callable[[list[RenderJob]], Iterator[tuple[bytes, float, float, float]]]


def write_train_records(out: Path, jobs: list[RenderJob], num_classes: int, per_class: int,
                        render_many: RenderMany) -> tuple[np.ndarray, np.ndarray]:
    """train.rec/.idx in the emore layout; returns pose (keys, 2) and height (keys,) arrays."""
    num_images = num_classes * per_class
    first_identity = num_images + 1
    pose = np.full((first_identity + num_classes, 2), np.nan, np.float32)
    height = np.full(first_identity + num_classes, np.nan, np.float32)
    with RecordWriter(out / "train.rec", out / "train.idx") as writer:
        writer.write(0, pack(IRHeader(0, [first_identity, first_identity + num_classes], 0, 0), b""))
        for job, (jpeg, yaw, pitch, metres) in zip(jobs, tqdm(render_many(jobs), total=len(jobs),
                                                               desc="train.rec", unit="img", leave=False)):
            key = job.stream[1]
            writer.write(key, pack(IRHeader(0, float(job.identity_index), key, 0), jpeg))
            pose[key], height[key] = (yaw, pitch), metres
        for label in range(num_classes):
            first = 1 + label * per_class
            writer.write(first_identity + label, pack(IRHeader(0, [first, first + per_class], 0, 0), b""))
    return pose, height


def write_valset(out: Path, set_index: int, name: str, num_pairs: int, val_identities: range, seed: int,
                 render_many: RenderMany) -> None:
    jobs, issame = val_pair_jobs(seed, set_index, name, num_pairs, val_identities)
    images, pose = [], np.zeros((len(jobs), 2), np.float32)
    for index, (jpeg, yaw, pitch, _) in enumerate(render_many(jobs)):
        images.append(jpeg)
        pose[index] = yaw, pitch
    atomic_save_npy(out / f"{name}.pose.npy", pose)
    write_bin(out / f"{name}.bin", images, issame)


def validate_sizes(num_classes: int, per_class: int, val_classes: int, val_pairs: int, seed: int,
                   workers: int) -> None:
    """Raise UserError naming the CLI flag of the first out-of-range value."""
    checks = [("--classes", num_classes, 2), ("--per-class", per_class, 1), ("--val-classes", val_classes, 2),
              ("--val-pairs", val_pairs, 2), ("--seed", seed, 0), ("--workers", workers, 1)]
    for flag, value, minimum in checks:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
            raise UserError(f"{flag} must be an integer >= {minimum}, got {value!r}")
    if val_pairs % 2:
        raise UserError(f"--val-pairs must be even (half same, half different pairs), got {val_pairs}")


def _meta(seed, num_classes, per_class, val_classes, val_pairs, pose) -> dict:
    yaw = np.abs(pose[1:1 + num_classes * per_class, 0])
    return {
        "generator": "data/synthetic.py", "version": GENERATOR_VERSION, "seed": seed,
        "num_classes": num_classes, "per_class": per_class, "num_images": num_classes * per_class,
        "val_classes": val_classes, "val_pairs": val_pairs,
        "val_identities": [num_classes, num_classes + val_classes],
        "image_size": [IMAGE_SIZE, IMAGE_SIZE], "render_size": RENDER_SIZE,
        "yaw_convention": "degrees; > 0 = face turned toward the image's right; a horizontal flip negates it",
        "pitch_convention": "degrees; > 0 = face seen from above (camera above the eyes)",
        "train_yaw_distribution": "70% normal(0, 15) + 30% uniform(-90, 90), clipped to [-90, 90]",
        "train_yaw_within_30": round(float(np.mean(yaw <= 30)), 4),
        "train_height_distribution": f"{1 - DRONE_FRACTION:.0%} uniform(1.5, 2.0) m at 1-4 m; "
                                     f"{DRONE_FRACTION:.0%} log-uniform(2, 20) m from a drone, elevation <= 55 deg",
        "val_sets": {name: {"pairs": val_pairs, "poses": list(kinds)} for name, kinds in VAL_SETS.items()},
    }


def generate(out_dir: str | Path, num_classes: int, per_class: int, *, val_classes: int = DEFAULT_VAL_CLASSES,
             val_pairs: int = DEFAULT_VAL_PAIRS, seed: int = 0, workers: int = 1) -> dict:
    """Write a complete synthetic emore folder (see the module docstring); return a summary dict."""
    validate_sizes(num_classes, per_class, val_classes, val_pairs, seed, workers)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta_synthetic.json").unlink(missing_ok=True)  # written last: its presence means complete
    started = time.perf_counter()
    val_identities = range(num_classes, num_classes + val_classes)  # never in train.rec
    with rendering(workers) as render_many:
        pose, height = write_train_records(out, train_jobs(seed, num_classes, per_class), num_classes,
                                           per_class, render_many)
        for set_index, name in enumerate(VAL_SETS):
            write_valset(out, set_index, name, val_pairs, val_identities, seed, render_many)
    atomic_save_npy(out / "pose.npy", pose)
    atomic_save_npy(out / "height.npy", height)
    write_property(out, num_classes, (IMAGE_SIZE, IMAGE_SIZE))
    meta = _meta(seed, num_classes, per_class, val_classes, val_pairs, pose)
    atomic_write_text(out / "meta_synthetic.json", json.dumps(meta, indent=2) + "\n")
    seconds = time.perf_counter() - started
    num_rendered = num_classes * per_class + 2 * val_pairs * len(VAL_SETS)
    return {"out_dir": str(out), "num_classes": num_classes, "num_images": num_classes * per_class,
            "val_sets": list(VAL_SETS), "seconds": round(seconds, 2),
            "images_per_second": round(num_rendered / max(seconds, 1e-9), 1)}


# ---- The DroneFace-like layout (--layout droneface): raw face crops named as DroneFace's, the authors' JSON
DRONEFACE_STREAM = 5
DRONEFACE_HEIGHT_IDS = (0, 3, 4, 5)      # 1.5, 3, 4, 5 m
DRONEFACE_MAX_CROP = 384                 # DroneFace's crops span 23x31 to 384x384 pixels
DRONEFACE_MIN_CROP = 23
DEFAULT_DRONE_DISTANCES = 8


@dataclass(frozen=True)
class DroneJob:
    seed: int
    subject: int                 # 0 = 'a'
    height_id: int
    distance_id: int
    max_size: int


def drone_geometry(height_id: int, distance_id: int) -> tuple[float, float, float]:
    """(camera height m, camera elevation above the eyes deg, slant distance m) of a DroneFace capture."""
    from evaluation.protocols.droneface import HEIGHT_ID_METRES, distance_metres

    height, ground = HEIGHT_ID_METRES[height_id], distance_metres(distance_id)
    rise = height - 1.6  # the eyes of a standing person
    return height, math.degrees(math.atan2(rise, ground)), math.hypot(rise, ground)


def drone_crop_size(slant_m: float, rng: np.random.Generator, max_size: int) -> tuple[int, int]:
    """(width, height) of the face crop: 384 px tall at 2 m, ~30 px at 17 m, a little narrower than tall."""
    tall = float(np.clip(DRONEFACE_MAX_CROP * (2.0 / slant_m) ** 1.2, DRONEFACE_MIN_CROP * 4 / 3, DRONEFACE_MAX_CROP))
    wide = float(np.clip(tall * rng.uniform(0.72, 1.0), DRONEFACE_MIN_CROP, DRONEFACE_MAX_CROP))
    shrink = min(1.0, max_size / max(tall, wide))
    return max(8, round(wide * shrink)), max(8, round(tall * shrink))


def render_drone_job(job: DroneJob) -> tuple[bytes, float, float]:
    """(JPEG bytes, yaw, pitch) of one DroneFace-like crop: the farther and higher the camera, the fewer
    pixels the face keeps and the blurrier it is."""
    rng = rng_for(job.seed, DRONEFACE_STREAM, job.subject, job.height_id, job.distance_id)
    person = identity_for(job.seed, job.subject)
    yaw = sample_yaw(rng, "train")
    _, elevation, slant = drone_geometry(job.height_id, job.distance_id)
    pitch = float(np.clip(rng.normal(0, 5) + elevation, -45, 70))
    age = float(np.clip(person.base_age + rng.uniform(-0.05, 0.05), 0, 1))
    nuisance = sample_nuisance(rng, yaw, slant, age)
    nuisance = replace(nuisance, face_pixels=int(np.clip(round(RENDER_SIZE * 3.0 / slant), 12, RENDER_SIZE)),
                       blur_sigma=nuisance.blur_sigma * 0.5 + 0.08 * slant)
    face = render_face(person, yaw, pitch, nuisance)
    width, height = drone_crop_size(slant, rng, job.max_size)
    interpolation = cv2.INTER_AREA if height < IMAGE_SIZE else cv2.INTER_LINEAR
    crop = cv2.resize(face, (width, height), interpolation=interpolation)
    return encode_jpeg(crop, nuisance.jpeg_quality), yaw, pitch


def drone_distance_ids(count: int) -> list[int]:
    """`count` distance IDs spread evenly over DroneFace's 0..30 (17 m .. 2 m), both ends included."""
    return sorted({int(round(i * 30 / max(count - 1, 1))) for i in range(count)})


def generate_droneface(out_dir: str | Path, identities: int = 11, distances: int = DEFAULT_DRONE_DISTANCES,
                       seed: int = 0, workers: int = 1, max_size: int = DRONEFACE_MAX_CROP) -> dict:
    """A DroneFace-like folder: `photos_all_faces/<subject>_gp_<heightID>_ef_<distanceID>.jpg` for
    `identities` subjects (a, b, ...) x 4 heights x `distances` distances, and beside it the PGAML authors'
    JSON list `face_angles.json` ({"img_path", "p_id", "id", "yaw", "pitch", "landmark_points"}) with the
    true yaw and pitch (no landmarks: `landmark_points` is null)."""
    from evaluation.protocols.droneface import JSON_NAME, PHOTO_FOLDER, SUBJECTS, file_name

    checks = [("--identities", identities, 2), ("--distances", distances, 1), ("--seed", seed, 0),
              ("--workers", workers, 1), ("--max-size", max_size, 8)]
    for flag, value, minimum in checks:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
            raise UserError(f"{flag} must be an integer >= {minimum}, got {value!r}")
    if identities > len(SUBJECTS):
        raise UserError(f"--identities {identities}: DroneFace names {len(SUBJECTS)} subjects (a-k) at most")
    if distances > 31:
        raise UserError(f"--distances {distances}: DroneFace has 31 distance IDs (0-30)")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    (out / PHOTO_FOLDER).mkdir(parents=True, exist_ok=True)
    (out / JSON_NAME).unlink(missing_ok=True)  # written last: its presence means complete
    started = time.perf_counter()
    jobs = [DroneJob(seed, subject, height_id, distance_id, max_size) for subject in range(identities)
            for height_id in DRONEFACE_HEIGHT_IDS for distance_id in drone_distance_ids(distances)]
    entries = []
    with rendering(workers, render_drone_job) as render_many:
        for job, (jpeg, yaw, pitch) in zip(jobs, tqdm(render_many(jobs), total=len(jobs), desc="droneface",
                                                      unit="img", leave=False)):
            name = f"{PHOTO_FOLDER}/{file_name(SUBJECTS[job.subject], job.height_id, job.distance_id)}"
            atomic_write_bytes(out / name, jpeg, durable=False)
            entries.append({"img_path": name, "p_id": job.subject, "id": SUBJECTS[job.subject],
                            "yaw": round(yaw, 4), "pitch": round(pitch, 4), "landmark_points": None})
    atomic_write_text(out / JSON_NAME, json.dumps(entries, indent=1) + "\n")
    seconds = time.perf_counter() - started
    return {"out_dir": str(out), "num_classes": identities, "num_images": len(jobs), "seconds": round(seconds, 2),
            "images_per_second": round(len(jobs) / max(seconds, 1e-9), 1)}


# ---- CLI
def parse_args(argv=None) -> argparse.Namespace:
    parser = CliParser(description="Generate an emore-format synthetic face data set with known head pose.")
    parser.add_argument("--out", default="data/synthetic", help="output folder (default: data/synthetic)")
    parser.add_argument("--classes", type=int, default=200, help="training identities (default: 200)")
    parser.add_argument("--per-class", type=int, default=30, help="images per identity (default: 30)")
    parser.add_argument("--val-classes", type=int, default=DEFAULT_VAL_CLASSES,
                        help=f"held-out identities for lfw/cfp_fp/agedb_30 (default: {DEFAULT_VAL_CLASSES})")
    parser.add_argument("--val-pairs", type=int, default=DEFAULT_VAL_PAIRS,
                        help=f"pairs per verification set, even (default: {DEFAULT_VAL_PAIRS})")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the identities, poses and nuisances: the same seed gives the same data set")
    parser.add_argument("--workers", type=int, default=1, help="rendering processes (default: 1)")
    group = parser.add_argument_group("--layout droneface (a DroneFace-like folder of raw face crops)")
    group.add_argument("--layout", choices=("emore", "droneface"), default="emore",
                       help="emore: train.rec + val sets; droneface: photos_all_faces/<DroneFace names>.jpg + the "
                            "PGAML authors' JSON (default: emore)")
    group.add_argument("--identities", type=int, default=11, help="droneface: subjects a, b, ... (default: 11)")
    group.add_argument("--distances", type=int, default=DEFAULT_DRONE_DISTANCES,
                       help=f"droneface: distance IDs spread over 0..30 (17 m .. 2 m) (default: {DEFAULT_DRONE_DISTANCES})")
    group.add_argument("--max-size", type=int, default=DRONEFACE_MAX_CROP,
                       help=f"droneface: largest crop side in pixels (default: {DRONEFACE_MAX_CROP}, DroneFace's)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    setup_logging()
    args = parse_args(argv)
    if args.layout == "droneface":
        summary = generate_droneface(args.out, args.identities, args.distances, seed=args.seed, workers=args.workers,
                                     max_size=args.max_size)
        log.info("wrote %d DroneFace-like crops of %d identities to %s in %.1f s", summary["num_images"],
                 summary["num_classes"], summary["out_dir"], summary["seconds"])
        return 0
    summary = generate(args.out, args.classes, args.per_class, val_classes=args.val_classes,
                       val_pairs=args.val_pairs, seed=args.seed, workers=args.workers)
    log.info("wrote %d images of %d identities + %s to %s in %.1f s (%.0f images/s)", summary["num_images"],
             summary["num_classes"], ", ".join(summary["val_sets"]), summary["out_dir"], summary["seconds"],
             summary["images_per_second"])
    return 0


if __name__ == "__main__":
    run_cli(main)
