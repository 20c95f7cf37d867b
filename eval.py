"""Evaluate a backbone on prepared verification sets.

    python eval.py --model work_space/save/model_ir_se50.pth --data_path data/faces_emore \
                   [--val_sets all] [--batch_size 256] [--no_flip] [--net NAME] [--out DIR]

The weights file may be ours (a checkpoint or an exported model_*.pth), TreB1eN's or arcface_torch's:
the architecture and channel order are recognised from it (`--net` overrides the architecture). Images
stream from each set's uint8 memmap one batch at a time. Prints a table (accuracy +- std over the 10
folds, best threshold, TAR@FAR, AUC, EER, and accuracy on frontal / profile pairs where the set has
poses) and writes it as results.md and results.csv with a ROC figure per set.

    python eval.py --model arcface.pth --model pgaml.pth --data_path DIR --by pose,resolution \
                   [--yaw_bins 0,30,60,90] [--resolutions 112,56,28,20,14] [--blur SIGMA]

evaluates every model on the same pairs and breaks the results down by the pairs' |yaw| bins and by face
resolution (evaluation.breakdowns): breakdowns.md, results.json and one figure per set and breakdown with a
bar group / line per model, and McNemar's test between every two models on every level.

    python eval.py --model M --ijb DIR --target IJBC|IJBB     IJB-B/C 1:1 TAR@FAR and 1:N (README "IJB-B/C")
    python eval.py --model M --tinyface DIR                   TinyFace rank-k and mAP (README "TinyFace")
    python eval.py --model M --open_set PROBES --bank BANK    strangers vs known people: FPIR, FNIR, DET
    python eval.py --model A --model B --gallery_probe FOLDER [--meta_from_filename droneface]
                                                              rank-1/5 per height, distance, |yaw| bin; CMC
    python eval.py --model M --data_path D --val_sets mine --calibrate far=1e-3
                                                              a deployment threshold stored with the model
"""
from __future__ import annotations

import argparse
from pathlib import Path

from tqdm import tqdm

from evaluation import ValSet, benchmarks, evaluate_set, gallery_probe, markdown_table, resolve_valsets, write_reports
from evaluation.breakdown_reports import ModelEvaluation, breakdown_markdown, model_labels, write_breakdown_report
from evaluation.breakdowns import add_breakdown_arguments, breakdown_set, compare_models, spec_from_args
from inference.loader import add_flip_argument, add_model_arguments, conventions_overrides, load_model
from inference.runtime import AMP_DTYPES
from utils import CliParser, UserError, default_output_dir, run_cli


def parse_args(argv=None):
    parser = CliParser(description=__doc__.split("\n")[0])
    add_model_arguments(parser, multiple=True)
    parser.add_argument("--data_path", type=Path, default=Path("data/faces_emore"),
                        help="folder holding the prepared val sets (<name>/images.npy, issame.npy)")
    parser.add_argument("--val_sets", default="all", help="'all' or a comma-separated list, e.g. lfw,cfp_fp")
    parser.add_argument("--batch_size", type=int, default=256, help="images per forward pass")
    add_flip_argument(parser)
    parser.add_argument("--flip", action="store_true", help=argparse.SUPPRESS)  # the default now; kept for old scripts
    parser.add_argument("--folds", type=int, default=10, help="k of the k-fold protocol")
    parser.add_argument("--amp", default="off", choices=sorted(AMP_DTYPES), help="autocast dtype for the forward")
    parser.add_argument("--out", type=Path, default=None,
                        help="report folder (default: work_space/eval/<model file name>[_vs_<next model>...]; "
                             "with several models, each one's table goes to <out>/<model file name>/)")
    add_breakdown_arguments(parser)
    benchmarks.add_arguments(parser)
    gallery_probe.add_arguments(parser)
    args = parser.parse_args(argv)
    benchmarks.check_arguments(parser, args)
    gallery_probe.check_arguments(parser, args, benchmarks.requested(args))
    if args.batch_size < 1:
        parser.error(f"--batch_size must be >= 1, got {args.batch_size}")
    if args.folds < 2:
        parser.error(f"--folds must be >= 2 (k of the k-fold protocol), got {args.folds}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if benchmarks.requested(args):  # IJB-B/C, TinyFace or --open_set instead of the val sets
        if len(args.model) != 1:
            raise UserError("--ijb / --tinyface / --open_set evaluate one --model at a time")
        return benchmarks.run(one_model(args, args.model[0]),
                              default_output_dir(args.out, "eval", args.model[0].stem))
    if gallery_probe.requested(args):  # identification on a face folder with metadata instead of the val sets
        labels = model_labels(args.model)
        gallery_probe.run(args, labels, default_output_dir(args.out, "eval", "_vs_".join(labels).replace("/", "_")))
        return 0
    names = resolve_valsets(args.data_path, args.val_sets)
    spec = spec_from_args(args)
    for name in names:
        spec.check_fits(ValSet.load(args.data_path, name))
    labels = model_labels(args.model)
    out = default_output_dir(args.out, "eval", "_vs_".join(labels).replace("/", "_"))
    evaluations = []
    for path, label in zip(args.model, labels):
        model = load_model(path, args.net, args.device, conventions_overrides(args))
        print(model.describe())
        evaluations.append(evaluate_model(model, label, names, args, spec))
        print(markdown_table(evaluations[-1].results), end="")
        model_out = out if len(labels) == 1 else out / label
        write_reports(evaluations[-1].results, model_out)
        print(f"wrote {model_out}/results.md, results.csv and roc_<set>.png")
        # --calibrate, else the first set's best threshold: stored with this model
        benchmarks.after_verification(one_model(args, path), evaluations[-1].results)
    if spec.by:
        tests = compare_models({e.label: e.breakdowns for e in evaluations})
        write_breakdown_report(evaluations, tests, spec, out)
        print(breakdown_markdown(evaluations, tests, spec), end="")
        print(f"wrote {out}/breakdowns.md, results.json and <breakdown>_<set>.png")
    return 0


def one_model(args, path: Path) -> argparse.Namespace:
    """The flags as a one-model command sees them (`--model` repeatable here, one path in evaluation.benchmarks)."""
    return argparse.Namespace(**{**vars(args), "model": path})


def evaluate_model(model, label: str, names: list[str], args, spec) -> ModelEvaluation:
    """One model on every set (the main table's rows) and, where --by asks, their breakdowns."""
    evaluation = ModelEvaluation(label, str(model.path))
    for name in names:
        valset = ValSet.load(args.data_path, name)
        with tqdm(desc=f"{label} {name}", unit="img", leave=False) as bar:
            def evaluate(pairs: ValSet):
                return evaluate_set(model.network, pairs, args.batch_size, model.device, args.flip,
                                    model.conventions, args.folds, AMP_DTYPES[args.amp], bar.update)
            evaluation.results.append(evaluate(valset))
            if spec.by:
                evaluation.breakdowns[name] = breakdown_set(evaluate, valset, evaluation.results[-1], spec)
    return evaluation


if __name__ == "__main__":
    run_cli(main)
