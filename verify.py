"""Compare two face images with a model: cosine similarity, and "same" or "different" at a threshold.

    python verify.py --model M IMG1 IMG2 [--aligned] [--threshold T] [--no_flip] [--detector mtcnn|yunet]

Photos are detected and aligned (the most central face); `--aligned` takes 112x112 crops as they are. The
threshold is `--threshold`, else the one recorded beside the model (a `"threshold"` in its JSON), else the one
published with it (OpenCV's 0.363 for SFace), else none: then only the similarity is printed. TreB1eN's face_verify compares squared L2 distances of unit embeddings
instead; they are the same test, d^2 = 2 - 2 cos, and are printed too.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from faces.pipeline import make_detector
from inference.faces_in_files import FaceReader
from inference.loader import add_flip_argument, add_model_arguments, conventions_overrides, load_model, model_threshold
from utils import CliParser, UserError, run_cli


def parse_args(argv=None):
    parser = CliParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)
    parser.add_argument("images", type=Path, nargs=2, metavar="IMAGE", help="the two images to compare")
    parser.add_argument("--aligned", action="store_true", help="the images are aligned 112x112 faces already")
    parser.add_argument("--threshold", type=float, default=None,
                        help="cosine similarity at or above which the faces are the same person "
                             "(default: the one recorded with the model)")
    parser.add_argument("--detector", default="mtcnn", choices=("mtcnn", "yunet"), help="face detector for photos")
    add_flip_argument(parser)
    args = parser.parse_args(argv)
    if args.threshold is not None and not -1.0 <= args.threshold <= 1.0:
        parser.error(f"--threshold is a cosine similarity in [-1, 1], got {args.threshold}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    for path in args.images:
        if not path.is_file():
            raise UserError(f"{path}: image not found")
    model = load_model(args.model, args.net, args.device, conventions_overrides(args))
    read = FaceReader(args.aligned, None if args.aligned else make_detector(args.detector, args.device))
    faces = []
    for path in args.images:
        face, why = read(path)
        if face is None:
            raise UserError(why)
        faces.append(face)
    first, second = model.embed(np.stack(faces), flip=args.flip)
    cosine = float(np.dot(first, second))
    threshold = args.threshold if args.threshold is not None else model_threshold(args.model)
    print(f"cosine similarity {cosine:.4f} (squared L2 distance {2 - 2 * cosine:.4f}, TreB1eN's measure)")
    if threshold is None:
        print("no threshold recorded with this model: give --threshold T to decide (see README)")
    else:
        verdict = "same person" if cosine >= threshold else "different people"
        print(f"{verdict} at threshold {threshold:.4f} (cosine; squared L2 {2 - 2 * threshold:.4f})")
    return 0


if __name__ == "__main__":
    run_cli(main)
