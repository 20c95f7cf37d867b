"""Tests of data/synthetic.py: the emore folder it writes, its val sets, determinism and the renderer."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data import synthetic
from data.images import decode_rgb
from data.recordio import RecordReader, unpack
from data.valsets import read_bin

ROOT = Path(__file__).resolve().parent.parent
CLASSES, PER_CLASS, VAL_CLASSES, PAIRS, SEED = 6, 4, 5, 20, 3
NUM_IMAGES = CLASSES * PER_CLASS
NUM_KEYS = NUM_IMAGES + 1 + CLASSES
SMALL = dict(val_classes=VAL_CLASSES, val_pairs=PAIRS, seed=SEED)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    synthetic.generate(out, CLASSES, PER_CLASS, **SMALL)
    return out


def read_records(folder: Path) -> dict:
    with RecordReader(folder / "train.rec", folder / "train.idx") as reader:
        return {key: unpack(reader.read(key)) for key in range(NUM_KEYS)}


def test_record_layout_is_emore(folder):
    records = read_records(folder)
    header, body = records[0]
    assert header.flag == 2 and list(header.label) == [NUM_IMAGES + 1, NUM_KEYS] and len(body) == 0
    labels = [records[key][0].label for key in range(1, NUM_IMAGES + 1)]
    assert labels == [float((key - 1) // PER_CLASS) for key in range(1, NUM_IMAGES + 1)]
    assert all(records[key][0].flag == 0 for key in range(1, NUM_IMAGES + 1))
    for label in range(CLASSES):
        identity, body = records[NUM_IMAGES + 1 + label]
        first, end = identity.label
        assert (first, end) == (1 + label * PER_CLASS, 1 + (label + 1) * PER_CLASS) and len(body) == 0
        assert {records[key][0].label for key in range(int(first), int(end))} == {float(label)}
    assert (folder / "property").read_text().strip() == f"{CLASSES},112,112"
    assert len((folder / "train.idx").read_text().splitlines()) == NUM_KEYS


def test_images_are_distinct_112x112_rgb_jpegs(folder):
    records = read_records(folder)
    images = [decode_rgb(bytes(records[key][1])) for key in range(1, NUM_IMAGES + 1)]
    assert all(image.shape == (112, 112, 3) and image.dtype == np.uint8 for image in images)
    assert all(image.std() > 10 for image in images)  # not blank
    assert bytes(records[1][1])[:2] == b"\xff\xd8"
    flat = np.stack(images).reshape(len(images), -1).astype(np.int16)
    assert min(np.abs(flat[i] - flat[j]).mean() for i in range(5) for j in range(i + 1, 5)) > 5


def test_pose_and_height_follow_the_record_keys(folder):
    pose, height = np.load(folder / "pose.npy"), np.load(folder / "height.npy")
    assert pose.shape == (NUM_KEYS, 2) and pose.dtype == np.float32
    assert height.shape == (NUM_KEYS,) and height.dtype == np.float32
    not_images = [0, *range(NUM_IMAGES + 1, NUM_KEYS)]
    assert np.isnan(pose[not_images]).all() and np.isnan(height[not_images]).all()
    images = slice(1, NUM_IMAGES + 1)
    assert np.isfinite(pose[images]).all() and (np.abs(pose[images, 0]) <= 90).all()
    assert ((height[images] >= 1.5) & (height[images] <= 20)).all()
    # the stored pose is the pose the stored image was rendered with
    records = read_records(folder)
    key = 7
    jpeg, yaw, pitch, metres = synthetic.render_job(synthetic.train_jobs(SEED, CLASSES, PER_CLASS)[key - 1])
    assert jpeg == bytes(records[key][1])
    assert np.allclose(pose[key], [yaw, pitch]) and np.isclose(height[key], metres)


def test_train_yaw_covers_profiles_but_is_mostly_frontal():
    jobs = synthetic.train_jobs(SEED, 50, 20)
    yaw = np.array([synthetic.sample_yaw(synthetic.rng_for(SEED, *job.stream), "train") for job in jobs])
    assert 0.7 <= np.mean(np.abs(yaw) <= 30) <= 0.84  # 70% normal(0, 15) + 30% uniform(-90, 90)
    assert np.mean(np.abs(yaw) >= 60) > 0.07 and (yaw < -60).any() and (yaw > 60).any()


@pytest.mark.parametrize("name", list(synthetic.VAL_SETS))
def test_val_bins_pair_held_out_identities(folder, name):
    images, issame = read_bin(folder / f"{name}.bin")
    pose = np.load(folder / f"{name}.pose.npy")
    assert len(images) == 2 * PAIRS and issame.shape == (PAIRS,) and issame.sum() == PAIRS // 2
    assert pose.shape == (2 * PAIRS, 2) and pose.dtype == np.float32 and np.isfinite(pose).all()
    assert all(decode_rgb(image).shape == (112, 112, 3) for image in images[:4])
    set_index = list(synthetic.VAL_SETS).index(name)
    jobs, expected_same = synthetic.val_pair_jobs(SEED, set_index, name, PAIRS, range(CLASSES, CLASSES + VAL_CLASSES))
    assert (expected_same == issame).all()
    people = np.array([job.identity_index for job in jobs]).reshape(-1, 2)
    assert (people >= CLASSES).all(), "val identities must never be training classes"
    assert ((people[:, 0] == people[:, 1]) == issame).all()
    assert images[5] == synthetic.render_job(jobs[5])[0]


def test_val_set_poses_match_their_protocols(folder):
    yaw = {name: np.abs(np.load(folder / f"{name}.pose.npy")[:, 0]) for name in synthetic.VAL_SETS}
    assert (yaw["cfp_fp"][0::2] <= 10).all() and ((yaw["cfp_fp"][1::2] >= 60) & (yaw["cfp_fp"][1::2] <= 90)).all()
    assert (yaw["agedb_30"] <= 30).all() and np.median(yaw["lfw"]) < 20


def test_agedb_pairs_have_a_large_age_gap():
    jobs, _ = synthetic.val_pair_jobs(SEED, 2, "agedb_30", PAIRS, range(10, 20))
    ages = np.array([job.age for job in jobs]).reshape(-1, 2)
    assert (np.abs(ages[:, 0] - ages[:, 1]) >= 0.4).all()


def test_meta_records_the_parameters(folder):
    meta = json.loads((folder / "meta_synthetic.json").read_text())
    assert meta["seed"] == SEED and meta["num_classes"] == CLASSES and meta["per_class"] == PER_CLASS
    assert meta["val_identities"] == [CLASSES, CLASSES + VAL_CLASSES] and meta["val_pairs"] == PAIRS
    assert "right" in meta["yaw_convention"]
    assert not list(folder.glob("*.tmp")) and not list(folder.glob(".*"))


def _file_bytes(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_same_seed_same_bytes_with_one_or_two_workers(folder, tmp_path):
    synthetic.generate(tmp_path / "two", CLASSES, PER_CLASS, workers=2, **SMALL)
    expected, got = _file_bytes(folder), _file_bytes(tmp_path / "two")
    assert len(expected) == 14 and expected.keys() == got.keys()
    assert [name for name in expected if expected[name] != got[name]] == []


def test_different_seeds_give_different_data(folder, tmp_path):
    synthetic.generate(tmp_path / "other", CLASSES, PER_CLASS, **{**SMALL, "seed": SEED + 1})
    for name in ("train.rec", "pose.npy", "lfw.bin"):
        assert (folder / name).read_bytes() != (tmp_path / "other" / name).read_bytes()


def test_cli_writes_what_the_api_writes(folder, tmp_path):
    command = [sys.executable, "data/synthetic.py", "--out", str(tmp_path / "cli"), "--classes", str(CLASSES),
               "--per-class", str(PER_CLASS), "--val-classes", str(VAL_CLASSES), "--val-pairs", str(PAIRS),
               "--seed", str(SEED)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert _file_bytes(tmp_path / "cli") == _file_bytes(folder)


@pytest.mark.parametrize("flags, named", [
    (["--classes", "1"], "--classes"),
    (["--val-pairs", "7"], "--val-pairs"),
    (["--workers", "0"], "--workers"),
    (["--per-class", "x"], "--per-class"),
    (["--bogus"], "--bogus"),
])
def test_bad_flags_exit_2_with_one_line(tmp_path, flags, named):
    out = tmp_path / "never"
    result = subprocess.run([sys.executable, "data/synthetic.py", "--out", str(out), *flags], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and named in lines[0], result.stderr
    assert not out.exists()


def test_api_rejects_bad_sizes_naming_the_flag(tmp_path):
    with pytest.raises(synthetic.UserError, match="--val-classes"):
        synthetic.generate(tmp_path, 4, 2, val_classes=1)
    (tmp_path / "file").write_text("x")
    with pytest.raises(synthetic.UserError, match="--out"):
        synthetic.generate(tmp_path / "file", 4, 2)


def test_horizontal_flip_is_the_same_person_at_negated_yaw():
    """Every feature is mirror-symmetric (moles in pairs), so the flip augmentation keeps the identity."""
    for index in range(5):
        person = synthetic.identity_for(0, index)
        assert len(person.moles) >= 2 and len(person.moles) % 2 == 0
        flipped = synthetic.render_face(person, 35.0, 10.0)[:, ::-1].astype(int)
        assert np.abs(flipped - synthetic.render_face(person, -35.0, 10.0)).max() <= 1
        assert np.abs(flipped - synthetic.render_face(person, 35.0, 10.0)).mean() > 15  # the pose really changed


def test_positive_yaw_points_the_nose_to_the_image_right():
    person = synthetic.identity_for(0, 0)
    x, y = synthetic._unit_grid()
    for yaw, sign in ((60.0, 1), (-60.0, -1)):
        part, _, _ = synthetic._ray_cast(person, synthetic.rotation_matrix(yaw, 0.0), x, y)
        assert sign * x[part == 1].mean() > 0.4  # part 1 is the nose
    part, _, _ = synthetic._ray_cast(person, synthetic.rotation_matrix(0.0, 40.0), x, y)
    assert y[part == 1].mean() < y[part == 0].mean() - 0.1  # seen from above, the nose points down


def _raw_pixel_accuracy(images: np.ndarray, issame: np.ndarray) -> float:
    """Best-threshold verification accuracy of the cosine between raw pixel vectors."""
    flat = images.reshape(len(images), -1).astype(np.float64)
    flat /= np.linalg.norm(flat, axis=1, keepdims=True)
    order = np.argsort(-np.sum(flat[0::2] * flat[1::2], axis=1))
    same = issame[order]
    correct = np.cumsum(same) + (~same).sum() - np.cumsum(~same)
    return float(max(correct.max(), same.sum(), (~same).sum()) / len(same))


def test_raw_pixels_are_near_chance_although_identity_is_in_the_pixels():
    jobs, issame = synthetic.val_pair_jobs(1, 0, "lfw", 150, range(10, 60))
    rendered = np.stack([decode_rgb(synthetic.render_job(job)[0]) for job in jobs])
    assert _raw_pixel_accuracy(rendered, issame) < 0.68  # nuisance defeats a pixel matcher
    rng = np.random.default_rng(0)  # the same people, frontal, only the expression varying
    expressions = [synthetic.Nuisance(age=rng.uniform(0.3, 0.7), eye_open=rng.uniform(0.7, 1.1)) for _ in jobs]
    clean = np.stack([synthetic.render_face(synthetic.identity_for(1, job.identity_index), 0.0, 0.0, expression)
                      for job, expression in zip(jobs, expressions)])
    assert _raw_pixel_accuracy(clean, issame) > 0.9


def test_profile_views_carry_less_identity_and_worse_alignment():
    """What makes cfp_fp harder than cfp_ff for a trained model: identity lives mostly in frontal features, so
    two people differ in fewer pixels seen from the side, and profile crops are aligned worse."""
    people = [synthetic.identity_for(0, index) for index in range(24)]

    def identity_signal(yaw: float) -> float:  # two people, the same pose and nuisance: only identity differs
        images = np.stack([synthetic.render_face(person, yaw, 0.0).astype(np.float32) for person in people])
        return float(np.abs(images[0::2] - images[1::2]).mean())

    frontal, profile = identity_signal(0.0), identity_signal(80.0)
    assert profile < 0.85 * frontal, (frontal, profile)
    assert identity_signal(40.0) < frontal
    rng = np.random.default_rng(0)

    def alignment_error(yaw: float) -> float:
        shifts = [synthetic.sample_nuisance(rng, yaw, 3.0, 0.5).crop_shift for _ in range(400)]
        return float(np.linalg.norm(shifts, axis=1).mean())

    assert alignment_error(80.0) > 2 * alignment_error(0.0)


def test_cfp_ff_is_cfp_fp_with_a_frontal_second_image(folder):
    """The same held-out identities and protocol, so cfp_ff - cfp_fp measures what profile costs."""
    yaw = {name: np.abs(np.load(folder / f"{name}.pose.npy")[:, 0]) for name in ("cfp_ff", "cfp_fp")}
    assert (yaw["cfp_ff"] <= 10).all() and (yaw["cfp_fp"][1::2] >= 60).all()
    assert synthetic.VAL_SETS["cfp_ff"][0] == synthetic.VAL_SETS["cfp_fp"][0] == "frontal"
