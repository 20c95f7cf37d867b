"""faces/pose.py: yaw/pitch/roll from five landmarks, its sign conventions, mirror symmetry, and accuracy
measured on projected landmarks, a real photo and the synthetic renders with their true yaw."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from data.synthetic import rotation_matrix
from faces.pose import (HeadPose, angles_from_rotation, head_pose, mirror_landmarks, project_landmarks,
                        rotation_from_angles)
from tests.helpers import skimage_photo

POSES = list(itertools.product((-80, -45, -10, 0, 25, 60, 85), (-25, 0, 20), (-15, 0, 10)))


def test_the_convention_is_the_synthetic_renderers():
    for yaw, pitch in [(30, 0), (-50, 20), (70, -15)]:
        np.testing.assert_allclose(rotation_from_angles(yaw, pitch), rotation_matrix(yaw, pitch), atol=1e-12)
        assert angles_from_rotation(rotation_from_angles(yaw, pitch, 12)) == pytest.approx((yaw, pitch, 12))


def test_signs_as_seen_in_the_image():
    frontal = project_landmarks(0, 0, 0, 112, 112, 35)
    eyes_mid = lambda points: points[:2].mean(axis=0)  # noqa: E731
    turned = project_landmarks(30, 0, 0, 112, 112, 35)
    assert turned[2, 0] - eyes_mid(turned)[0] > frontal[2, 0] - eyes_mid(frontal)[0]  # the nose points right
    from_above = project_landmarks(0, 20, 0, 112, 112, 35)
    # seen from above, the eyes (behind the nose tip) rise in the image: the nose sits lower below them
    assert from_above[2, 1] - eyes_mid(from_above)[1] > frontal[2, 1] - eyes_mid(frontal)[1] + 3
    rolled = project_landmarks(0, 0, 15, 112, 112, 35)
    assert rolled[1, 1] < rolled[0, 1]  # the eye on the image's right is higher


@pytest.mark.parametrize("yaw, pitch, roll", POSES)
def test_projected_landmarks_give_their_pose_back(yaw, pitch, roll):
    pose = head_pose(project_landmarks(yaw, pitch, roll, 250, 250, 60, centre=(120, 135)), 250, 250)
    assert (pose.yaw, pose.pitch, pose.roll) == pytest.approx((yaw, pitch, roll), abs=0.01)
    assert pose.reprojection_px < 1e-3


def test_landmark_noise_costs_about_a_degree():
    rng = np.random.default_rng(0)
    errors = []
    for yaw, pitch, roll in POSES:
        noisy = project_landmarks(yaw, pitch, roll, 250, 250, 60) + rng.normal(0, 0.5, (5, 2))
        pose = head_pose(noisy, 250, 250)
        errors.append([abs(pose.yaw - yaw), abs(pose.pitch - pitch), abs(pose.roll - roll)])
    mean = np.mean(errors, axis=0)
    assert mean[0] < 2.0 and mean[1] < 2.0 and mean[2] < 1.0, mean


def test_a_mirrored_face_has_the_negated_yaw():
    points = project_landmarks(35, 10, 8, 112, 112, 35)
    pose, mirrored = head_pose(points, 112, 112), head_pose(mirror_landmarks(points, 112), 112, 112)
    assert (mirrored.yaw, mirrored.pitch, mirrored.roll) == pytest.approx(
        (pose.mirrored().yaw, pose.mirrored().pitch, pose.mirrored().roll), abs=1e-6)


def test_a_real_photo_and_its_mirror():
    """scikit-image's astronaut (a near-frontal portrait) through MTCNN, and the same photo flipped."""
    from faces.mtcnn import MTCNN

    photo = skimage_photo("astronaut")
    detector = MTCNN()
    face = detector.detect(photo)[0]
    flipped = detector.detect(np.ascontiguousarray(photo[:, ::-1]))[0]
    pose, pose_flipped = head_pose(face.landmarks, *photo.shape[:2]), head_pose(flipped.landmarks, *photo.shape[:2])
    assert abs(pose.yaw) < 30 and abs(pose.roll) < 15
    assert pose_flipped.yaw == pytest.approx(-pose.yaw, abs=3.0)
    assert pose_flipped.roll == pytest.approx(-pose.roll, abs=2.0)


def test_synthetic_renders_follow_their_true_yaw(train_data):
    """The synthetic faces are cartoons (MTCNN finds about half of them), but where it does, the estimated yaw
    follows the renderer's (measured on 300 renders of the demo set: mean error 13 degrees, correlation 0.86 within
    |yaw| < 30, 0.99 beyond)."""
    from data.images import decode_rgb
    from data.recordio import RecordReader, unpack
    from faces.mtcnn import MTCNN, central_face

    reader = RecordReader(train_data / "train.rec", train_data / "train.idx")
    true_pose = np.load(train_data / "pose.npy")
    detector = MTCNN()
    pairs = []
    for key in range(1, 81):
        rgb = decode_rgb(unpack(reader.read(key))[1])
        face = central_face(detector.detect(rgb), *rgb.shape[:2])
        if face is not None:
            pairs.append((true_pose[key, 0], head_pose(face.landmarks, *rgb.shape[:2]).yaw))
    true_yaw, estimated = np.array(pairs).T
    assert len(pairs) >= 20
    assert np.corrcoef(true_yaw, estimated)[0, 1] > 0.8
    turned = np.abs(true_yaw) > 30
    assert np.mean(np.sign(estimated[turned]) == np.sign(true_yaw[turned])) >= 0.9


def test_aligned_crops_of_real_faces():
    """The fixed O-Net box on aligned crops (emore's records) agrees with a full detection on them, mirrored too."""
    from faces.alignment import align_face
    from faces.mtcnn import MTCNN
    from faces.pose import AlignedCropPose
    from tests.helpers import mtcnn_photos

    detector = MTCNN()
    crops = [align_face(photo, face.landmarks) for photo in mtcnn_photos().values()
             for face in detector.detect(photo)[:2]]
    crops += [np.ascontiguousarray(crop[:, ::-1]) for crop in crops]
    crops = np.stack(crops)
    estimated = AlignedCropPose(detector)(crops)
    reference = np.array([head_pose(detector.detect(crop)[0].landmarks, 112, 112).yaw for crop in crops])
    assert estimated.dtype == np.float32 and np.isfinite(estimated).all()
    assert np.abs(estimated[:, 0] - reference).mean() < 6.0
    half = len(crops) // 2
    np.testing.assert_allclose(estimated[half:, 0], -estimated[:half, 0], atol=1e-4)  # symmetric by construction
    np.testing.assert_allclose(estimated[half:, 1], estimated[:half, 1], atol=1e-4)
    assert np.isnan(AlignedCropPose(detector)(np.zeros((2, 112, 112, 3), np.uint8))).all()  # no face


def test_bad_landmarks():
    with pytest.raises(ValueError, match="five finite"):
        head_pose(np.zeros((4, 2)), 112, 112)
    with pytest.raises(ValueError, match="five finite"):
        head_pose(np.full((5, 2), np.nan), 112, 112)
    assert isinstance(head_pose(project_landmarks(0, 0, 0, 112, 112, 35), 112, 112), HeadPose)
