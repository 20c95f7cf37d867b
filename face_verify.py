"""Name every face in a photo from the facebank (TreB1eN's face_verify.py, on images).

    python face_verify.py --model M [--bank data/facebank] --image PHOTO [--save OUT.jpg] [--threshold T]
                          [--score] [--no_flip] [--detector mtcnn|yunet]

Every face is detected and aligned, all faces of the photo are embedded in one batch, and each is named by the
person whose mean embedding is nearest (cosine), "Unknown" below the threshold: `--threshold`, else the one
recorded with the model, else the one published with it (OpenCV's 0.363 for SFace). TreB1eN's `-th` was a
squared L2 distance between unit embeddings: d^2 = 2 - 2 cos, so its 1.5 is a cosine of 0.25. `--save` writes the
photo with boxes and names, and a CSV of the detections beside it.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from utils import CliParser, UserError, atomic_write_bytes, atomic_write_text, run_cli


def parse_args(argv=None):
    from inference.loader import add_flip_argument, add_model_arguments

    parser = CliParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--bank", type=Path, default=Path("data/facebank"), help="the facebank folder (facebank.py build)")
    parser.add_argument("--image", type=Path, required=True, help="the photo whose faces to name")
    parser.add_argument("--save", type=Path, default=None, help="write the annotated photo here (+ a .csv beside it)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="cosine at or above which a face is the nearest person (default: recorded or published)")
    parser.add_argument("--score", action="store_true", help="show each face's cosine beside its name")
    parser.add_argument("--detector", default="mtcnn", choices=("mtcnn", "yunet"), help="face detector")
    add_flip_argument(parser)
    return parser.parse_args(argv)


def annotate(rgb: np.ndarray, faces, named, show_score: bool) -> np.ndarray:
    import cv2

    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    thickness = max(1, round(max(rgb.shape[:2]) / 400))
    for face, (name, score) in zip(faces, named):
        x1, y1, x2, y2 = (int(round(v)) for v in face.box)
        colour = (0, 0, 255) if name == "Unknown" else (0, 200, 0)
        cv2.rectangle(bgr, (x1, y1), (x2, y2), colour, thickness)
        label = f"{name} {score:.2f}" if show_score else name
        cv2.putText(bgr, label, (x1, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thickness, colour, thickness)
    return bgr


def main(argv=None) -> int:
    args = parse_args(argv)
    from data.images import read_image_file
    from faces.alignment import align_face
    from inference.facebank import Facebank, check_model, identify
    from faces.pipeline import make_detector
    from inference.loader import conventions_overrides, load_model, model_threshold

    bank = Facebank.load(args.bank)
    model = load_model(args.model, args.net, args.device, conventions_overrides(args))
    check_model(bank, model, args.bank)
    threshold = args.threshold if args.threshold is not None else model_threshold(args.model)
    if threshold is None:
        raise UserError(f"{args.model}: no threshold recorded or published with this model; give --threshold T "
                        "(a cosine; TreB1eN's squared-L2 1.5 is 0.25)")
    rgb = read_image_file(args.image)
    faces = make_detector(args.detector, args.device).detect(rgb)
    crops = np.stack([align_face(rgb, f.landmarks).transpose(2, 0, 1) for f in faces]) if faces else None
    named = identify(bank, model.embed(crops, flip=args.flip), threshold) if faces else []
    for face, (name, score) in zip(faces, named):
        x1, y1, x2, y2 = face.box
        print(f"{name}\t{score:.3f}\tbox {x1:.0f},{y1:.0f},{x2:.0f},{y2:.0f}")
    print(f"{len(faces)} faces in {args.image}, {sum(n != 'Unknown' for n, _ in named)} known (threshold {threshold:.3f})")
    if args.save is not None:
        import cv2

        ok, encoded = cv2.imencode(args.save.suffix or ".jpg", annotate(rgb, faces, named, args.score))
        if not ok:
            raise UserError(f"--save {args.save}: OpenCV cannot write that image format")
        atomic_write_bytes(args.save, encoded.tobytes())
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["frame", "x1", "y1", "x2", "y2", "name", "score"])
        writer.writerows([0, *np.round(f.box, 1).tolist(), n, round(s, 4)] for f, (n, s) in zip(faces, named))
        atomic_write_text(args.save.with_suffix(".csv"), buffer.getvalue())
        print(f"wrote {args.save} and {args.save.with_suffix('.csv')}")
    return 0


if __name__ == "__main__":
    run_cli(main)
