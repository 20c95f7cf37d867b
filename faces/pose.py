"""Head pose (yaw, pitch, roll in degrees) from five facial landmarks, with `cv2.solvePnP` against a generic
3D face.

Conventions (those of the synthetic data, `data/synthetic.py`, and of `pose.npy`):

    yaw   > 0: the face turns toward the image's right (its nose points to the right edge); a mirrored
          photo has the negated yaw.
    pitch > 0: the face is seen from above (camera above the eyes, as from a drone; the nose points down).
    roll  > 0: the face is turned counter-clockwise in the image (the eye on the image's right is higher).

The head-to-camera rotation is `Rz(roll) @ Rx(pitch) @ Ry(yaw)` in a frame with x to the image's right,
y up and z toward the viewer: yaw about the head's vertical axis, then pitch about the camera's horizontal
axis (the synthetic renderer's `rotation_matrix`), then roll about the viewing axis.

Five points (two eyes, nose tip, two mouth corners; `faces.alignment.LANDMARK_NAMES` order) fix yaw and
roll well; pitch rests mostly on the nose tip's height between the eyes and the mouth, which varies between
people, so it is the least reliable of the three. The camera is taken as a pinhole with focal length
`FOCAL_SCALE` x the image's larger side, centred: a long lens, as portraits and aligned crops of distant
faces are.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

# A generic adult face (mm; x to the image's right of a frontal face, y up, z toward the camera; nose tip at
# the origin): eye centres 63 mm apart, 34 mm above and 27 mm behind the nose tip; mouth corners 50 mm
# apart, 30 mm below and 25 mm behind it.
MODEL_POINTS_MM = np.array([
    [-31.5, 34.0, -27.0],   # eye on the image's left (the subject's right eye)
    [31.5, 34.0, -27.0],    # eye on the image's right
    [0.0, 0.0, 0.0],        # nose tip
    [-25.0, -30.0, -25.0],  # mouth corner on the image's left
    [25.0, -30.0, -25.0],   # mouth corner on the image's right
])
FOCAL_SCALE = 4.0
# this project's frame (y up, z toward the viewer) <-> OpenCV's camera frame (y down, z away from the viewer)
_FLIP_YZ = np.diag([1.0, -1.0, -1.0])


@dataclass(frozen=True)
class HeadPose:
    yaw: float
    pitch: float
    roll: float
    reprojection_px: float   # RMS distance between the landmarks and the fitted model's projection

    def mirrored(self) -> "HeadPose":
        """The pose of the horizontally flipped photo."""
        return HeadPose(-self.yaw, self.pitch, -self.roll, self.reprojection_px)


def rotation_from_angles(yaw_deg: float, pitch_deg: float, roll_deg: float = 0.0) -> np.ndarray:
    """Head -> camera rotation `Rz(roll) @ Rx(pitch) @ Ry(yaw)` (y up, z toward the viewer)."""
    y, p, r = (math.radians(a) for a in (yaw_deg, pitch_deg, roll_deg))
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    return rz @ rx @ ry


def angles_from_rotation(rotation: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees of a rotation composed as `rotation_from_angles` composes it."""
    r = np.asarray(rotation, dtype=np.float64)
    pitch = math.asin(max(-1.0, min(1.0, r[2, 1])))
    yaw = math.atan2(-r[2, 0], r[2, 2])
    roll = math.atan2(-r[0, 1], r[1, 1])
    return math.degrees(yaw), math.degrees(pitch), math.degrees(roll)


def camera_matrix(height: int, width: int, focal_scale: float = FOCAL_SCALE) -> np.ndarray:
    focal = focal_scale * max(height, width)
    return np.array([[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]])


def project_landmarks(yaw_deg: float, pitch_deg: float, roll_deg: float, height: int, width: int,
                      eye_distance_px: float, centre=None, focal_scale: float = FOCAL_SCALE) -> np.ndarray:
    """The (5, 2) image landmarks of the generic face at a pose, its eyes `eye_distance_px` apart when frontal
    (what a photo of that pose shows, up to the person's own face shape)."""
    camera = camera_matrix(height, width, focal_scale)
    focal = camera[0, 0]
    distance = focal * 63.0 / eye_distance_px
    centre = (width / 2.0, height / 2.0) if centre is None else centre
    offset = np.array([(centre[0] - width / 2.0) * distance / focal, (centre[1] - height / 2.0) * distance / focal,
                       distance])
    rotation = _FLIP_YZ @ rotation_from_angles(yaw_deg, pitch_deg, roll_deg) @ _FLIP_YZ
    points, _ = cv2.projectPoints(MODEL_POINTS_MM @ _FLIP_YZ, cv2.Rodrigues(rotation)[0], offset, camera, None)
    return points.reshape(5, 2)


def head_pose(landmarks, height: int, width: int, focal_scale: float = FOCAL_SCALE) -> HeadPose:
    """Yaw, pitch and roll of the face whose five landmarks (image pixels, `LANDMARK_NAMES` order) are given,
    in an image of `height` x `width` pixels."""
    points = np.asarray(landmarks, dtype=np.float64).reshape(-1, 2)
    if points.shape != (5, 2) or not np.isfinite(points).all():
        raise ValueError(f"head_pose needs five finite (x, y) landmarks, got {np.asarray(landmarks).shape}")
    camera = camera_matrix(height, width, focal_scale)
    model = np.ascontiguousarray(MODEL_POINTS_MM @ _FLIP_YZ)
    # SQPnP finds the global optimum without a starting guess (OpenCV's ITERATIVE needs six points or a guess
    # for five non-coplanar ones); Levenberg-Marquardt then polishes it.
    found, rvec, tvec = cv2.solvePnP(model, points, camera, None, flags=cv2.SOLVEPNP_SQPNP)
    if not found:
        raise ValueError("solvePnP found no pose for these landmarks")
    rvec, tvec = cv2.solvePnPRefineLM(model, points, camera, None, rvec, tvec)
    projected, _ = cv2.projectPoints(model, rvec, tvec, camera, None)
    error = float(np.sqrt(np.mean(np.sum((projected.reshape(5, 2) - points) ** 2, axis=1))))
    rotation = _FLIP_YZ @ cv2.Rodrigues(rvec)[0] @ _FLIP_YZ
    yaw, pitch, roll = angles_from_rotation(rotation)
    return HeadPose(yaw, pitch, roll, error)


# ---------------------------------------------------------------------------- aligned crops (emore records)

# Where O-Net looks in an ArcFace-aligned 112x112 crop: a fixed square around the template's face (centred, so
# a crop and its mirror are seen alike). Measured on 250 crops of real faces (scikit-image's photos, aligned
# with random rotations of up to 8 degrees, scales 0.92-1.08 and shifts of up to 4 px, half of them mirrored):
# one O-Net pass gives a yaw within 4.5 degrees on average of a full MTCNN detection on the same crop, at 25x
# its speed (~1,000 crops/s on one core against 43); measured with its mirror too (below), ~470 crops/s.
ALIGNED_FACE_BOX = (12, 20, 100, 108)
MIN_FACE_SCORE = 0.5     # below this O-Net probability the crop holds no usable face: NaN


class AlignedCropPose:
    """Yaw and pitch of batches of aligned face crops (the records of emore and friends), then `head_pose`; NaN
    where no face is seen. With MTCNN (the default): O-Net's landmarks in `ALIGNED_FACE_BOX`, one batched pass;
    with another detector (YuNet): its most central face on each crop."""

    def __init__(self, detector=None):
        if detector is None:
            from faces.mtcnn import MTCNN
            detector = MTCNN()
        self.detector = detector

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """float32 (N, 2) yaw, pitch in degrees of uint8 RGB crops (N, S, S, 3) aligned to the ArcFace template.

        Each crop is measured as it is and mirrored, and the two estimates averaged (the mirror's yaw negated;
        where O-Net sees a face in one of the two only, that one):
        O-Net is not exactly mirror-symmetric (up to 10 degrees apart at 45 degrees of yaw), and a training
        set's flip augmentation negates yaw, so a crop and its mirror must get opposite yaws."""
        size = images.shape[1]
        box = tuple(round(v * size / 112) for v in ALIGNED_FACE_BOX)
        direct = self._poses(images, box, size)
        mirrored = self._poses(np.ascontiguousarray(images[:, :, ::-1]), box, size)
        mirrored[:, 0] *= -1
        both = np.stack([direct, mirrored])
        seen = np.isfinite(both[..., 0])
        # where O-Net sees the face one way only, that one counts (symmetric still: the mirror sees it the other)
        return np.where(seen.any(axis=0)[:, None], np.nansum(both, axis=0) / np.maximum(seen.sum(axis=0), 1)[:, None],
                        np.nan).astype(np.float32)

    def _poses(self, images: np.ndarray, box, size: int) -> np.ndarray:
        if not hasattr(self.detector, "landmarks_in_box"):
            return self._detected_poses(images, size)
        scores, landmarks = self.detector.landmarks_in_box(images, box)
        out = np.full((len(images), 2), np.nan, dtype=np.float64)
        for i in np.flatnonzero(scores >= MIN_FACE_SCORE):
            pose = head_pose(landmarks[i], size, size)
            out[i] = pose.yaw, pose.pitch
        return out


    def _detected_poses(self, images: np.ndarray, size: int) -> np.ndarray:
        from faces.detection import central_face

        out = np.full((len(images), 2), np.nan, dtype=np.float64)
        for i, image in enumerate(images):
            face = central_face(self.detector.detect(image), size, size)
            if face is not None:
                pose = head_pose(face.landmarks, size, size)
                out[i] = pose.yaw, pose.pitch
        return out


def mirror_landmarks(landmarks, width: int) -> np.ndarray:
    """The landmarks of the horizontally flipped image, in `LANDMARK_NAMES` order again (the eyes and the mouth
    corners swap places)."""
    points = np.asarray(landmarks, dtype=np.float64).copy()
    points[:, 0] = width - points[:, 0]
    return points[[1, 0, 2, 4, 3]]
