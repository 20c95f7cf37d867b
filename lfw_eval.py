"""Evaluate a backbone on LFW from the official pairs.txt and the image folder (raw photos or aligned faces).

    python lfw_eval.py --model work_space/save/model_ir_se50.pth --lfw_dir lfw-funneled --pairs pairs.txt \
                       [--aligned] [--save_aligned DIR] [--mtcnn_weights DIR] [--min_face_size 20] \
                       [--batch_size 64] [--no_flip] [--net NAME] [--device cpu] [--out DIR] [--worst 8]

`--lfw_dir` holds `<name>/<name>_<n:04d>.jpg` (the lfw / lfw-funneled layout). Raw photos are
detected with MTCNN and aligned on its five landmarks to the ArcFace 112x112 template (the face
nearest the photo's centre; where none is found, a centred crop, listed in no_face.txt); with
`--aligned` the files already are aligned 112x112 faces. The folds are the ones pairs.txt declares
(10 x 600 for the official file). Prints the accuracy +- std and each fold's accuracy, and writes to
`--out` the misclassified pairs (misclassified.txt), a grid of the worst of them (worst_pairs.png)
and the ROC (roc_lfw.png).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from tqdm import tqdm

from evaluation.protocols.lfw_raw import NO_FACE_CROP, distinct_paths, load_pair_images, read_aligned_file, read_pairs
from faces.pipeline import PhotoAligner
from inference.loader import add_flip_argument, add_model_arguments, conventions_overrides, load_model
from utils import CliParser, UserError, atomic_path, atomic_write_text, default_output_dir, path_under, run_cli
from verification import save_roc_png, verify


def parse_args(argv=None):
    parser = CliParser(description=__doc__.split("\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--lfw_dir", type=Path, required=True, help="LFW image folder (<name>/<name>_0001.jpg)")
    parser.add_argument("--pairs", type=Path, required=True, help="the official pairs.txt")
    parser.add_argument("--aligned", action="store_true",
                        help="the images are already aligned 112x112 faces (default: raw photos, detected and aligned)")
    parser.add_argument("--save_aligned", type=Path, default=None,
                        help="also write the aligned faces here in the same layout (re-evaluate with --aligned)")
    parser.add_argument("--mtcnn_weights", type=Path, default=None,
                        help="folder with MTCNN's pnet.pt, rnet.pt, onet.pt (default: the facenet-pytorch wheel's)")
    parser.add_argument("--min_face_size", type=float, default=20.0,
                        help="smallest face MTCNN searches for, in pixels")
    parser.add_argument("--batch_size", type=int, default=64, help="images per forward pass")
    add_flip_argument(parser)
    parser.add_argument("--out", type=Path, default=None,
                        help="report folder (default: work_space/lfw_eval/<model file name>)")
    parser.add_argument("--worst", type=int, default=8, help="misclassified pairs shown in worst_pairs.png")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch_size must be >= 1, got {args.batch_size}")
    if args.worst < 0:
        parser.error(f"--worst must be >= 0, got {args.worst}")
    if args.min_face_size < 12:
        parser.error(f"--min_face_size must be >= 12 pixels (MTCNN's window), got {args.min_face_size}")
    if args.aligned and (args.save_aligned or args.mtcnn_weights):
        parser.error("--save_aligned and --mtcnn_weights are for raw photos: leave out --aligned")
    if args.save_aligned is not None and args.save_aligned.resolve() == args.lfw_dir.resolve():
        parser.error(f"--save_aligned {args.save_aligned} would overwrite the photos in --lfw_dir")
    return args


def photo_aligner(args) -> PhotoAligner:
    from faces.pipeline import make_detector

    detector = make_detector("mtcnn", args.device, args.mtcnn_weights, args.min_face_size)
    return PhotoAligner(detector, NO_FACE_CROP, root=args.lfw_dir, save_to=args.save_aligned)


def misclassified(result) -> list[tuple[int, float, float]]:
    """(pair index, distance, fold threshold) of every wrong pair, the largest margin first."""
    thresholds = result.best_thresholds[result.fold_of_pair]
    wrong = np.flatnonzero(~result.pair_correct)
    margin = np.abs(result.distances[wrong] - thresholds[wrong])
    order = wrong[np.argsort(-margin, kind="stable")]
    return [(int(i), float(result.distances[i]), float(thresholds[i])) for i in order]


def misclassified_text(errors, pairs, result, lfw_dir: Path) -> str:
    lines = [f"# {len(errors)} misclassified of {len(pairs)} pairs, largest margin first",
             "# fold\tpair\tlabel\tdistance\tthreshold\timage1\timage2"]
    for i, dist, threshold in errors:
        pair = pairs[i]
        names = [path_under(path, lfw_dir) for path in (pair.path1, pair.path2)]
        label = "same" if pair.issame else "different"
        lines.append(f"{result.fold_of_pair[i] + 1}\t{i + 1}\t{label}\t{dist:.4f}\t{threshold:.2f}\t"
                     f"{names[0]}\t{names[1]}")
    return "\n".join(lines) + "\n"



def save_worst_pairs_png(errors, pairs, images: np.ndarray, path: Path) -> Path:
    """A grid of the given pairs, each side by side with its label, distance and threshold."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = min(4, max(1, len(errors)))
    rows = max(1, math.ceil(len(errors) / cols))
    figure = Figure(figsize=(3 * cols, 1.9 * rows), dpi=100)
    FigureCanvasAgg(figure)
    if not errors:
        figure.text(0.5, 0.5, "no misclassified pairs", ha="center", va="center")
    for k, (i, dist, threshold) in enumerate(errors):
        axes = figure.add_subplot(rows, cols, k + 1)
        side_by_side = np.concatenate([images[2 * i], images[2 * i + 1]], axis=2).transpose(1, 2, 0)
        axes.imshow(side_by_side)
        axes.set_axis_off()
        label = "same" if pairs[i].issame else "different"
        axes.set_title(f"{label}: d={dist:.3f} (thr {threshold:.2f})", fontsize=8)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    return path


def main(argv=None) -> int:
    args = parse_args(argv)
    pairs, num_folds = read_pairs(args.pairs, args.lfw_dir)
    if num_folds < 2:
        raise UserError(f"{args.pairs}: the header declares {num_folds} fold; k-fold verification needs >= 2")
    model = load_model(args.model, args.net, args.device, conventions_overrides(args))
    print(model.describe())
    read_face = read_aligned_file if args.aligned else photo_aligner(args)
    num_files = len(distinct_paths(pairs))
    with tqdm(total=num_files, desc="aligned faces" if args.aligned else "detect + align",
              unit="img", leave=False) as bar:
        images = load_pair_images(pairs, progress=bar.update, read_face=read_face)
    print(f"{len(pairs)} pairs, {num_folds} folds, {images.shape[0]} images")
    embeddings = model.embed(images, args.batch_size, flip=args.flip)
    result = verify(embeddings, np.array([pair.issame for pair in pairs]), num_folds=num_folds)
    print(f"LFW accuracy: {result.accuracy:.4f} +- {result.accuracy_std:.4f} "
          f"(flip {'on' if args.flip else 'off'})")
    print("fold accuracies: " + " ".join(f"{acc:.4f}" for acc in result.fold_accuracy))
    print(f"AUC {result.auc:.4f}, EER {result.eer:.4f}")

    out = default_output_dir(args.out, "lfw_eval", args.model.stem)
    errors = misclassified(result)
    atomic_write_text(out / "misclassified.txt", misclassified_text(errors, pairs, result, args.lfw_dir))
    written = ["misclassified.txt"]
    if not args.aligned:
        no_face = read_face.fallbacks
        print(f"no face found in {len(no_face)} of {num_files} photos (centred crop used)")
        atomic_write_text(out / "no_face.txt", "".join(f"{path_under(path, args.lfw_dir)}\n" for path in no_face))
        written.append("no_face.txt")
    if args.worst:
        save_worst_pairs_png(errors[:args.worst], pairs, images, out / "worst_pairs.png")
        written.append("worst_pairs.png")
    save_roc_png(result, out / "roc_lfw.png", title="LFW")
    written.append("roc_lfw.png")
    print(f"{len(errors)} misclassified pairs; wrote {', '.join(str(out / name) for name in written)}")
    return 0


if __name__ == "__main__":
    run_cli(main)
