"""Naming faces in a video, frames/s on this machine: TreB1eN's way (every frame detected, each face embedded on
its own, flip as a second forward) against ours (all faces of a frame in one batch, channels_last weights; and
`--every K`), same clip, same detector, same model, same run.

    python -m perf.facebank [--frames 30] [--net mobilefacenet] [--detector mtcnn] [--every 5] [--threads 2]

The clip: 640x360, four real faces (scikit-image's astronaut and cameraman, two sizes each) drifting slowly. The
model's weights are random (names do not matter for speed); the bank holds 10 people. Both paths use this
project's detector, so the ratio is the recognition side's alone (TreB1eN's own MTCNN is not measured).
"""
from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from faces.alignment import align_face
from faces.pipeline import make_detector
from inference.conventions import to_model_input
from inference.facebank import Facebank
from inference.loader import load_model
from inference.naming import FaceNamer, name_frames
from inference.weights import save_backbone_weights
from model import build_backbone
from tests.helpers import mtcnn_photos
from perf.report import result

SIZE = (640, 360)


def clip(frames: int) -> list[np.ndarray]:
    photos = mtcnn_photos()
    patches = [cv2.resize(photos["astronaut"][40:300, 120:360], (side, side)) for side in (140, 90)] + \
              [cv2.resize(photos["camera"][20:220, 150:330], (side, side)) for side in (130, 80)]
    spots = [(30, 20), (250, 40), (200, 480), (120, 360)]
    background = cv2.GaussianBlur(np.random.default_rng(0).integers(60, 200, (SIZE[1], SIZE[0], 3), np.uint8), (0, 0), 8)
    out = []
    for i in range(frames):
        frame = background.copy()
        for patch, (y, x) in zip(patches, spots):
            x = min(x + 2 * i, SIZE[0] - patch.shape[1])
            frame[y:y + patch.shape[0], x:x + patch.shape[1]] = patch
        out.append(frame)
    return out


def treb1en_way(frames, detector, network, bank_means: np.ndarray) -> tuple[float, int]:
    """TreB1eN's infer: per face one forward and one for its mirror; squared L2 to every bank embedding."""
    start, faces_seen = time.perf_counter(), 0
    with torch.no_grad():
        for rgb in frames:
            for face in detector.detect(rgb):
                crop = torch.from_numpy(align_face(rgb, face.landmarks).transpose(2, 0, 1)[None].copy())
                x = to_model_input(crop)
                embedding = torch.nn.functional.normalize(network(x) + network(x.flip(3)))
                ((embedding[:, :, None] - torch.from_numpy(bank_means).T[None]) ** 2).sum(1).min(1)
                faces_seen += 1
    return len(frames) / (time.perf_counter() - start), faces_seen


def ours(frames, namer, every: int) -> tuple[float, int]:
    start, faces_seen = time.perf_counter(), 0
    for _, _, faces in name_frames(iter(frames), namer, every):
        faces_seen += len(faces)
    return len(frames) / (time.perf_counter() - start), faces_seen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=30, help="frames in the clip")
    parser.add_argument("--net", default="mobilefacenet", help="backbone (random weights)")
    parser.add_argument("--detector", default="mtcnn", choices=("mtcnn", "yunet"), help="face detector, both paths")
    parser.add_argument("--every", type=int, default=5, help="K of ours with --every K")
    parser.add_argument("--threads", type=int, default=2, help="torch / OpenCV threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    frames, detector = clip(args.frames), make_detector(args.detector)
    torch.manual_seed(0)
    network = build_backbone(args.net).eval()
    means = np.random.default_rng(1).standard_normal((10, 512)).astype(np.float32)
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    bank = Facebank([f"person_{i}" for i in range(10)], means)
    with tempfile.TemporaryDirectory() as folder:
        save_backbone_weights(network, Path(folder) / "model.pth")
        model = load_model(Path(folder) / "model.pth")
    namer = FaceNamer(detector, model, bank, threshold=0.3)
    ours(frames[:2], namer, 1)  # warm-up of both paths
    baseline, seen = treb1en_way(frames, detector, copy.deepcopy(network), means)
    batched, ours_seen = ours(frames, namer, 1)
    every, _ = ours(frames, namer, args.every)
    print(f"{args.frames} frames {SIZE[0]}x{SIZE[1]}, {seen / args.frames:.1f} faces per frame ({ours_seen} named by "
          f"ours), {args.net}, {args.detector}, {args.threads} threads, flip TTA on; frames/s:")
    print(f"{'TreB1eN way':>14s} {'ours':>8s} {'ours every ' + str(args.every):>15s} {'ours/TreB1eN':>13s} "
          f"{'every/TreB1eN':>14s}")
    print(f"{baseline:14.2f} {batched:8.2f} {every:15.2f} {batched / baseline:12.2f}x {every / baseline:13.2f}x")
    result(f"naming faces in a video ({args.detector})", batched, baseline, "frames/s", "TreB1eN's way")
    result(f"naming faces in a video ({args.detector}), --every {args.every}", every, baseline, "frames/s",
           "TreB1eN's way")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
