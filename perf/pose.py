"""Head-pose estimation speed for training records (`prepare_data.py --pose`): the fixed-box O-Net path of
`faces.pose.AlignedCropPose` against a full MTCNN detection per crop (the usual way, and what the PGAML
authors' pipeline does with its detector), measured in the same run on the same aligned crops.

    python -m perf.pose [--crops 512] [--threads 1]

The crops are real faces: scikit-image's photos aligned to the ArcFace template with random rotations,
scales and shifts, half mirrored. Prints crops/s of both, the speed-up, the mean yaw difference between
them, and the projected time of `--pose` for all 5,822,653 emore records on 2 and on 16 cores (one
worker process per core; decoding the JPEGs included).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from data.images import decode_rgb, encode_jpeg
from faces.alignment import alignment_matrix, warp
from faces.mtcnn import MTCNN
from faces.pose import AlignedCropPose, head_pose
from tests.helpers import mtcnn_photos
from perf.report import result

EMORE_RECORDS = 5_822_653


def aligned_crops(count: int, seed: int = 0) -> np.ndarray:
    detector = MTCNN()
    rng = np.random.default_rng(seed)
    faces = [(photo, face.landmarks) for photo in mtcnn_photos().values() for face in detector.detect(photo)[:2]]
    crops = []
    for i in range(count):
        photo, landmarks = faces[i % len(faces)]
        angle, scale = np.radians(rng.uniform(-8, 8)), rng.uniform(0.92, 1.08)
        jitter = np.array([[scale * np.cos(angle), -scale * np.sin(angle), 0], [scale * np.sin(angle),
                           scale * np.cos(angle), 0], [0, 0, 1]])
        jitter[:2, 2] = (np.eye(2) - jitter[:2, :2]) @ [56, 56] + rng.uniform(-4, 4, 2)
        crop = warp(photo, (jitter @ np.vstack([alignment_matrix(landmarks), [0, 0, 1]]))[:2])
        crops.append(np.ascontiguousarray(crop[:, ::-1]) if i % 2 else crop)
    return np.stack(crops)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--crops", type=int, default=512, help="aligned crops timed")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (one worker process's share)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    crops = aligned_crops(args.crops)
    jpegs = [encode_jpeg(crop, quality=90) for crop in crops]

    start = time.perf_counter()
    decoded = np.stack([decode_rgb(data) for data in jpegs])
    decode_s = time.perf_counter() - start
    estimator = AlignedCropPose()
    estimator(decoded[:64])  # warm-up
    start = time.perf_counter()
    ours = np.concatenate([estimator(decoded[i:i + 256]) for i in range(0, len(decoded), 256)])
    ours_s = time.perf_counter() - start + decode_s

    detector = MTCNN()
    baseline_count = min(len(crops), 128)
    start = time.perf_counter()
    reference = []
    for data in jpegs[:baseline_count]:
        rgb = decode_rgb(data)
        faces = detector.detect(rgb)
        reference.append(head_pose(faces[0].landmarks, 112, 112).yaw if faces else np.nan)
    baseline_s = (time.perf_counter() - start) * len(crops) / baseline_count
    reference = np.array(reference)
    valid = np.isfinite(reference) & np.isfinite(ours[:baseline_count, 0])

    ours_rate, baseline_rate = len(crops) / ours_s, len(crops) / baseline_s
    print(f"{len(crops)} aligned 112x112 crops of real faces, {args.threads} torch thread(s), JPEG decode included")
    print(f"  full MTCNN detection per crop (baseline)   {baseline_rate:8.0f} crops/s")
    print(f"  AlignedCropPose (O-Net, fixed box, + mirror) {ours_rate:6.0f} crops/s   speed-up {ours_rate / baseline_rate:.1f}x")
    result("pose of aligned crops (prepare_data --pose)", ours_rate, baseline_rate, "crops/s", "full MTCNN detection")
    print(f"  mean |yaw difference| to the full detection: {np.abs(ours[:baseline_count][valid, 0] - reference[valid]).mean():.1f} degrees "
          f"on {valid.sum()} crops")
    for cores in (2, 16):
        hours = EMORE_RECORDS / (ours_rate * cores) / 3600
        base_hours = EMORE_RECORDS / (baseline_rate * cores) / 3600
        print(f"  emore ({EMORE_RECORDS:,} records) on {cores:2d} cores: {hours:5.1f} h (full detection: {base_hours:.1f} h)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
