"""Strata of a verification set: pairs grouped by head pose, and the set's images at a lower resolution.

Pose: each image's |yaw| falls in one bin of `edges` (default 0/30/60/90: frontal [0, 30), half [30, 60),
profile [60, 90]); a pair's category is its two images' bins, unordered (frontal-half = half-frontal).
|yaw| beyond the last edge counts in the last bin; images without a yaw (NaN) leave their pair out of
every category. `pose_strata` (frontal pairs: both |yaw| < 30; profile pairs: either >= 60) is the coarse
reading of the same bins that every evaluation reports.

Resolution: `DegradedImages` is a lazy view of a uint8 NCHW array (a memmap of a prepared set): slicing it
reads only that slice and returns it blurred (optionally), downscaled with area interpolation to `size` x
`size` and scaled back up (bilinear) to the images' own size: what a face seen from far away and upsampled
by alignment looks like. No degraded copy of the set is ever held: `inference.embedding.embed_images` slices
one batch at a time.
"""
from __future__ import annotations

import cv2
import numpy as np

from utils import UserError

FRONTAL_YAW, PROFILE_YAW = 30.0, 60.0
DEFAULT_YAW_EDGES = (0.0, FRONTAL_YAW, PROFILE_YAW, 90.0)
THREE_BIN_NAMES = ("frontal", "half", "profile")


# ----------------------------------------------------------------------------------------------- pose

def check_yaw_edges(edges, flag: str = "--yaw_bins") -> tuple[float, ...]:
    """Edges as floats: at least two, starting at 0, strictly increasing (one clear error otherwise)."""
    try:
        edges = tuple(float(e) for e in edges)
    except (TypeError, ValueError):
        raise UserError(f"{flag} {edges!r}: expected numbers (degrees of |yaw|), e.g. 0,30,60,90") from None
    if len(edges) < 2 or edges[0] != 0 or any(b <= a for a, b in zip(edges, edges[1:])):
        raise UserError(f"{flag} {','.join(f'{e:g}' for e in edges)}: expected increasing |yaw| edges from 0, "
                        "e.g. 0,30,60,90")
    return edges


def yaw_bin_names(edges) -> list[str]:
    """'frontal', 'half', 'profile' for three bins; '<low>to<high>' (degrees) for any other number."""
    if len(edges) == 4:
        return list(THREE_BIN_NAMES)
    return [f"{low:g}to{high:g}" for low, high in zip(edges, edges[1:])]


def image_yaw_bins(pose: np.ndarray, edges=DEFAULT_YAW_EDGES) -> np.ndarray:
    """The |yaw| bin of each image (int, 0 = the first bin), -1 where the yaw is unknown (NaN)."""
    yaw = np.abs(np.asarray(pose, dtype=np.float64)[:, 0])
    bins = np.clip(np.searchsorted(np.asarray(edges[1:-1]), yaw, side="right"), 0, len(edges) - 2)
    return np.where(np.isnan(yaw), -1, bins)


def pose_bin_masks(pose: np.ndarray, edges=DEFAULT_YAW_EDGES) -> list[tuple[str, np.ndarray]]:
    """(category, pair mask) for every unordered pair of |yaw| bins, frontal-frontal, frontal-half, ...,
    profile-profile (pairs are images 2i, 2i+1)."""
    edges = check_yaw_edges(edges)
    pose = np.asarray(pose)
    if pose.ndim != 2 or pose.shape[0] % 2 or pose.shape[1] < 1:
        raise UserError(f"pose: expected (2 x pairs, 2) yaw, pitch per image, got shape {pose.shape}")
    pair_bins = image_yaw_bins(pose, edges).reshape(-1, 2)
    low, high = pair_bins.min(axis=1), pair_bins.max(axis=1)
    names = yaw_bin_names(edges)
    return [(f"{names[i]}-{names[j]}", (low == i) & (high == j))
            for i in range(len(names)) for j in range(i, len(names))]


def pose_strata(pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(frontal, profile) pair masks from per-image yaw (pairs are images 2i, 2i+1): frontal = both |yaw| <
    30, profile = either >= 60 (NaN yaw: neither)."""
    yaw = np.abs(np.asarray(pose)[:, 0]).reshape(-1, 2)
    return (yaw < FRONTAL_YAW).all(axis=1), (yaw >= PROFILE_YAW).any(axis=1)


# ------------------------------------------------------------------------------------------ resolution

def degrade(batch: np.ndarray, size: int, blur_sigma: float = 0.0) -> np.ndarray:
    """uint8 NCHW images blurred (Gaussian, `blur_sigma` pixels of the input; 0 = none), downscaled to
    `size` x `size` with area interpolation and scaled back up (bilinear) to their own height and width."""
    batch = np.asarray(batch)
    height, width = batch.shape[2:]
    out = np.empty_like(batch)
    for index, chw in enumerate(batch):
        image = np.ascontiguousarray(chw.transpose(1, 2, 0))
        if blur_sigma > 0:
            image = cv2.GaussianBlur(image, (0, 0), blur_sigma)
        if size != height or size != width:
            image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
        out[index] = image.transpose(2, 0, 1)
    return out


class DegradedImages:
    """uint8 NCHW `images` as seen at `size` pixels (see `degrade`), degraded slice by slice when read.

    Quacks like the array `inference.embedding.embed_images` expects (ndim, shape, dtype, len, slicing)."""

    def __init__(self, images: np.ndarray, size: int, blur_sigma: float = 0.0):
        if images.ndim != 4 or images.dtype != np.uint8:
            raise ValueError(f"expected uint8 images (N, 3, H, W), got {images.dtype} {images.shape}")
        if not 1 <= size <= min(images.shape[2:]):
            raise UserError(f"--resolutions {size}: must lie between 1 and the images' size "
                            f"{images.shape[2]}x{images.shape[3]}")
        self.images, self.size, self.blur_sigma = images, int(size), float(blur_sigma)
        self.shape, self.dtype, self.ndim = images.shape, images.dtype, 4

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index) -> np.ndarray:
        batch = np.asarray(self.images[index])
        if batch.ndim == 3:
            return degrade(batch[None], self.size, self.blur_sigma)[0]
        return degrade(batch, self.size, self.blur_sigma)
