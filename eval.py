"""Evaluate a backbone on prepared verification sets.

    python eval.py --model work_space/save/model_ir_se50.pth --data_path data/faces_emore \
                   [--val_sets all] [--batch_size 256] [--no_flip] [--net NAME] [--out DIR]

The weights file may be ours (a checkpoint or an exported model_*.pth), TreB1eN's or arcface_torch's:
the architecture and channel order are recognised from it (`--net` overrides the architecture). Images
stream from each set's uint8 memmap one batch at a time. Prints a table (accuracy +- std over the 10
folds, best threshold, TAR@FAR, AUC, EER, and accuracy on frontal / profile pairs where the set has
poses) and writes it as results.md and results.csv with a ROC figure per set.

    python eval.py --model M --ijb DIR --target IJBC|IJBB     IJB-B/C 1:1 TAR@FAR and 1:N (README "IJB-B/C")
    python eval.py --model M --tinyface DIR                   TinyFace rank-k and mAP (README "TinyFace")
    python eval.py --model M --open_set PROBES --bank BANK    strangers vs known people: FPIR, FNIR, DET
    python eval.py --model M --data_path D --val_sets mine --calibrate far=1e-3
                                                              a deployment threshold stored with the model
"""
from __future__ import annotations

import argparse
from pathlib import Path

from tqdm import tqdm

from evaluation import ValSet, benchmarks, evaluate_set, markdown_table, resolve_valsets, write_reports
from inference.loader import add_flip_argument, add_model_arguments, conventions_overrides, load_model
from inference.runtime import AMP_DTYPES
from utils import CliParser, default_output_dir, run_cli


def parse_args(argv=None):
    parser = CliParser(description=__doc__.split("\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--data_path", type=Path, default=Path("data/faces_emore"),
                        help="folder holding the prepared val sets (<name>/images.npy, issame.npy)")
    parser.add_argument("--val_sets", default="all", help="'all' or a comma-separated list, e.g. lfw,cfp_fp")
    parser.add_argument("--batch_size", type=int, default=256, help="images per forward pass")
    add_flip_argument(parser)
    parser.add_argument("--flip", action="store_true", help=argparse.SUPPRESS)  # the default now; kept for old scripts
    parser.add_argument("--folds", type=int, default=10, help="k of the k-fold protocol")
    parser.add_argument("--amp", default="off", choices=sorted(AMP_DTYPES), help="autocast dtype for the forward")
    parser.add_argument("--out", type=Path, default=None,
                        help="report folder (default: work_space/eval/<model file name>)")
    benchmarks.add_arguments(parser)
    args = parser.parse_args(argv)
    benchmarks.check_arguments(parser, args)
    if args.batch_size < 1:
        parser.error(f"--batch_size must be >= 1, got {args.batch_size}")
    if args.folds < 2:
        parser.error(f"--folds must be >= 2 (k of the k-fold protocol), got {args.folds}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if benchmarks.requested(args):  # IJB-B/C, TinyFace or --open_set instead of the val sets
        return benchmarks.run(args, default_output_dir(args.out, "eval", args.model.stem))
    names = resolve_valsets(args.data_path, args.val_sets)
    model = load_model(args.model, args.net, args.device, conventions_overrides(args))
    print(model.describe())
    results = []
    for name in names:
        with tqdm(desc=name, unit="img", leave=False) as bar:
            results.append(evaluate_set(model.network, ValSet.load(args.data_path, name), args.batch_size,
                                        model.device, args.flip, model.conventions, args.folds,
                                        AMP_DTYPES[args.amp], bar.update))
    print(markdown_table(results), end="")
    out = default_output_dir(args.out, "eval", args.model.stem)
    write_reports(results, out)
    print(f"wrote {out}/results.md, results.csv and roc_<set>.png")
    benchmarks.after_verification(args, results)  # --calibrate, or the best threshold stored with the model
    return 0


if __name__ == "__main__":
    run_cli(main)
