"""Embed a folder (or a list) of face images with a model: feats.npy + paths.txt in the same order.

    python embed.py --model M --input FOLDER_OR_LIST --out feats.npy [--aligned] [--no_flip] [--batch_size 64]
                    [--detector mtcnn|yunet] [--net NAME] [--device cpu] [--channel_order RGB] ...

`--model`: any model the other commands load (ours, TreB1eN's, arcface_torch's, an .onnx). Photos are detected
and aligned (the most central face, as everywhere here); with `--aligned` the files are 112x112 crops already.
feats.npy is float32 (N, E), L2-normalised, one row per input in paths.txt's order; an image that cannot be read
or holds no face keeps its row as NaN and is listed in failed.txt with the reason (and counted in the summary).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from faces.pipeline import make_detector
from inference.faces_in_files import FaceReader, list_images
from inference.loader import add_flip_argument, add_model_arguments, conventions_overrides, load_model
from utils import CliParser, UserError, atomic_save_npy, atomic_write_text, run_cli


def parse_args(argv=None):
    parser = CliParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--input", type=Path, required=True, help="a folder of images, or a text file listing them")
    parser.add_argument("--out", type=Path, required=True, help="feats.npy to write (paths.txt, failed.txt beside it)")
    parser.add_argument("--aligned", action="store_true", help="the images are aligned 112x112 faces already")
    parser.add_argument("--detector", default="mtcnn", choices=("mtcnn", "yunet"), help="face detector for photos")
    parser.add_argument("--batch_size", type=int, default=64, help="images per forward pass")
    add_flip_argument(parser)
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch_size must be >= 1, got {args.batch_size}")
    if args.out.suffix != ".npy":
        parser.error(f"--out {args.out}: give a .npy file name (paths.txt and failed.txt go beside it)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    paths = list_images(args.input)
    model = load_model(args.model, args.net, args.device, conventions_overrides(args))
    print(model.describe())
    read = FaceReader(args.aligned, None if args.aligned else make_detector(args.detector, args.device))
    rows: list[np.ndarray | None] = []
    failures: list[str] = []
    with tqdm(total=len(paths), desc="embed", unit="img", leave=False) as bar:
        for start in range(0, len(paths), args.batch_size):
            chunk = [read(path) for path in paths[start:start + args.batch_size]]
            faces = [face for face, _ in chunk if face is not None]
            embedded = iter(model.embed(np.stack(faces), args.batch_size, args.flip) if faces else [])
            for face, why in chunk:
                rows.append(next(embedded) if face is not None else None)
                if why is not None:
                    failures.append(why)
            bar.update(len(chunk))
    dim = next((len(r) for r in rows if r is not None), None)
    if dim is None:
        raise UserError(f"{args.input}: no image could be embedded (first failure: {failures[0]})")
    feats = np.stack([r if r is not None else np.full(dim, np.nan, np.float32) for r in rows]).astype(np.float32)
    atomic_save_npy(args.out, feats)
    atomic_write_text(args.out.with_name("paths.txt"), "".join(f"{p}\n" for p in paths))
    atomic_write_text(args.out.with_name("failed.txt"), "".join(f"{why}\n" for why in failures))
    print(f"{len(paths)} images: {len(paths) - len(failures)} embedded ({dim}-d, flip {'on' if args.flip else 'off'}), "
          f"{len(failures)} failed (NaN rows, listed in {args.out.with_name('failed.txt')}) -> {args.out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
