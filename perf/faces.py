"""The two face detectors side by side on the same photos: faces found, how far apart their landmarks are,
and milliseconds per photo. MTCNN (faces/mtcnn.py, PyTorch) is the baseline; YuNet (faces/yunet.py, OpenCV).

    python -m perf.faces [--rounds 3] [--threads 1]

Photos: scikit-image's bundled ones (the astronaut, the cameraman, the astronaut turned by 20 degrees, a
two-person composite, and the coffee cup with no face), each at its size and at twice its size.
"""
from __future__ import annotations

import argparse
import statistics
import time

import cv2
import numpy as np
import torch

from faces.mtcnn import MTCNN
from faces.yunet import YuNet
from tests.helpers import mtcnn_photos, skimage_photo
from perf.report import result


def photos() -> dict[str, np.ndarray]:
    shots = {**mtcnn_photos(), "coffee": skimage_photo("coffee")}
    return {**shots, **{f"{name} x2": cv2.resize(rgb, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
                        for name, rgb in shots.items()}}


def timed(detector, rgb: np.ndarray, rounds: int) -> tuple[list, float]:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        faces = detector.detect(rgb)
        times.append(time.perf_counter() - start)
    return faces, statistics.median(times) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="timed detections per photo (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch / OpenCV threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    mtcnn, yunet = MTCNN(), YuNet()
    print(f"{'photo':24s} {'size':>9s} {'MTCNN':>6s} {'YuNet':>6s} {'MTCNN ms':>9s} {'YuNet ms':>9s} {'ratio':>6s} "
          f"{'landmark px (max)':>18s}")
    totals = [0.0, 0.0]
    for name, rgb in photos().items():
        ours, mtcnn_ms = timed(mtcnn, rgb, args.rounds)
        theirs, yunet_ms = timed(yunet, rgb, args.rounds)
        totals[0] += mtcnn_ms
        totals[1] += yunet_ms
        distances = [np.linalg.norm(min(ours, key=lambda m: np.linalg.norm(m.landmarks - f.landmarks)).landmarks
                                    - f.landmarks, axis=1).max() for f in theirs] if ours else []
        distance = f"{max(distances):.1f}" if distances else "-"
        print(f"{name:24s} {rgb.shape[1]:4d}x{rgb.shape[0]:<4d} {len(ours):6d} {len(theirs):6d} {mtcnn_ms:9.1f} "
              f"{yunet_ms:9.1f} {mtcnn_ms / yunet_ms:6.1f} {distance:>18s}")
    result("face detection, all photos", totals[1], totals[0], "ms", "MTCNN (ours is YuNet)", higher_is_better=False)
    print(f"all photos: MTCNN {totals[0]:.0f} ms, YuNet {totals[1]:.0f} ms: YuNet is {totals[0] / totals[1]:.1f}x faster "
          f"({args.threads} thread(s))")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
