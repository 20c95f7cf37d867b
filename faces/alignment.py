"""5-point similarity alignment of faces to the ArcFace 112x112 template: the one home of it.

Every aligned face in this project (MegaFace crops, the facebank, LFW from raw photos) is made here:
the face's landmarks are mapped onto the reference points by the least-squares similarity transform
(rotation, uniform scale, translation; no shear, no reflection) and the image is warped with it.

Landmark order (as insightface's `arcface_dst` and MTCNN's output), in image coordinates, x to the
right and y down, points as they appear in the picture:

    0 eye on the image's left   (the subject's right eye)
    1 eye on the image's right  (the subject's left eye)
    2 nose tip
    3 mouth corner on the image's left
    4 mouth corner on the image's right

Fewer points work too (MegaFace's JSON files give the two eyes and the nose): pass
`template_indices` saying which reference point each landmark is. Images are RGB (or any channel
order: the warp does not look at colours) uint8 HxWx3 arrays; outside the photo is black, as in
insightface's `norm_crop`.
"""
from __future__ import annotations

import cv2
import numpy as np

ALIGNED_SIZE = 112  # the side of every aligned face: the models' input size
LANDMARK_NAMES = ("eye_left", "eye_right", "nose", "mouth_left", "mouth_right")  # as seen in the image

# insightface's `arcface_dst`: the reference points of a 112x112 aligned face (also TreB1eN's square
# reference: its get_reference_facial_points(default_square=True) gives the same points).
ARCFACE_TEMPLATE_112 = np.array([
    [38.2946, 51.6963],
    [73.5318, 51.5014],
    [56.0252, 71.7366],
    [41.5493, 92.3655],
    [70.7299, 92.2041]], dtype=np.float64)


def reference_points(size: int = ALIGNED_SIZE) -> np.ndarray:
    """The (5, 2) reference points of a `size` x `size` aligned face.

    A multiple of 112 scales the 112 template; any other size follows insightface's `estimate_norm`:
    the template is read as 128 wide (the 112 one shifted 8 px right) and scaled to `size`.
    """
    if size < 1:
        raise ValueError(f"aligned size must be positive, got {size}")
    if size % 112 == 0:
        return ARCFACE_TEMPLATE_112 * (size / 112)
    ratio = size / 128
    points = ARCFACE_TEMPLATE_112 * ratio
    points[:, 0] += 8 * ratio
    return points


def estimate_similarity(src_points, dst_points) -> np.ndarray:
    """The 2x3 matrix M of the similarity transform that maps `src_points` onto `dst_points` in the
    least-squares sense: dst ~ M @ [x, y, 1] (Umeyama 1991; no reflection).

    Both are (N, 2) with N >= 2 distinct points. With exact correspondences the transform is
    recovered to rounding error. Raises ValueError for mismatched shapes or coincident points.
    """
    src = np.asarray(src_points, dtype=np.float64)
    dst = np.asarray(dst_points, dtype=np.float64)
    if src.ndim != 2 or src.shape[1] != 2 or src.shape != dst.shape or src.shape[0] < 2:
        raise ValueError(f"expected two (N, 2) point arrays with N >= 2, got {src.shape} and {dst.shape}")
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise ValueError("landmarks must be finite numbers")
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_centred, dst_centred = src - src_mean, dst - dst_mean
    src_variance = np.mean(np.sum(src_centred ** 2, axis=1))
    if src_variance <= 1e-12 * max(1.0, float(np.abs(src).max())) ** 2:
        raise ValueError("the landmarks coincide: no transform can be estimated")
    covariance = dst_centred.T @ src_centred / src.shape[0]
    u, singular, vt = np.linalg.svd(covariance)
    # Force a proper rotation: flip the weakest axis when the best orthogonal fit is a reflection.
    signs = np.array([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rotation = (u * signs) @ vt
    scale = float(np.sum(singular * signs)) / src_variance
    matrix = np.empty((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - scale * rotation @ src_mean
    return matrix


def transform_points(matrix: np.ndarray, points) -> np.ndarray:
    """Apply a 2x3 affine matrix to (N, 2) points."""
    points = np.asarray(points, dtype=np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def alignment_matrix(landmarks, size: int = ALIGNED_SIZE, template_indices=None) -> np.ndarray:
    """The 2x3 matrix taking image coordinates to the aligned `size` x `size` face.

    `landmarks` (K, 2); `template_indices` (K,) names the reference point of each (default: the five
    in LANDMARK_NAMES order).
    """
    landmarks = np.asarray(landmarks, dtype=np.float64)
    indices = np.arange(5) if template_indices is None else np.asarray(template_indices, dtype=np.int64)
    if landmarks.ndim != 2 or landmarks.shape != (indices.size, 2):
        raise ValueError(f"expected {indices.size} landmarks as a ({indices.size}, 2) array, "
                         f"got shape {landmarks.shape}")
    if indices.size and (indices.min() < 0 or indices.max() > 4 or np.unique(indices).size != indices.size):
        raise ValueError(f"template_indices must be distinct indices into the 5 reference points, got {indices}")
    return estimate_similarity(landmarks, reference_points(size)[indices])


def warp(rgb_image: np.ndarray, matrix: np.ndarray, size: int = ALIGNED_SIZE) -> np.ndarray:
    """`size` x `size` crop of an HxWx3 uint8 image through a 2x3 matrix (bilinear, black outside)."""
    image = np.asarray(rgb_image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 image, got {image.dtype} {image.shape}")
    return cv2.warpAffine(np.ascontiguousarray(image), matrix, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))


def align_face(rgb_image: np.ndarray, landmarks, size: int = ALIGNED_SIZE, template_indices=None) -> np.ndarray:
    """The aligned face, uint8 (size, size, 3), from the photo and its landmarks (see the module
    docstring for the point order; `template_indices` for fewer than five points)."""
    return warp(rgb_image, alignment_matrix(landmarks, size, template_indices), size)


def box_matrix(box_xywh, size: int = ALIGNED_SIZE, margin: float = 0.0) -> np.ndarray:
    """The 2x3 matrix of a square crop centred on a face box (x, y, width, height), enlarged by
    `margin` (0.1 = 10 % on each side) and scaled to `size`: the fallback when no landmarks are known."""
    x, y, width, height = (float(v) for v in box_xywh)
    if not (width > 0 and height > 0):
        raise ValueError(f"a face box needs a positive width and height, got {width} x {height}")
    side = max(width, height) * (1 + 2 * margin)
    scale = size / side
    centre_x, centre_y = x + width / 2, y + height / 2
    return np.array([[scale, 0.0, size / 2 - scale * centre_x],
                     [0.0, scale, size / 2 - scale * centre_y]])


def crop_box(rgb_image: np.ndarray, box_xywh, size: int = ALIGNED_SIZE, margin: float = 0.0) -> np.ndarray:
    """uint8 (size, size, 3): the square crop of `box_matrix` (black outside the photo)."""
    return warp(rgb_image, box_matrix(box_xywh, size, margin), size)
