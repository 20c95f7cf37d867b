"""Cross-validated fine-tuning on a small pose-annotated face folder (the PGAML paper's DroneFace experiment).

    python crossval.py --data_path DIR [--meta FILE] --num_folds 5 [--cv identities|images|seed_protocol]
                       [--compare arcface,pgaml] [--pretrained FILE] [any train.py flag] [--out REPORT_DIR]
    python train.py -b 16 -e 20 -d droneface -p True -fold 5      (the PGAML authors' command: runs this)

Every fold of every head starts from the same weights (--pretrained, or the same seeded initialisation)
with a fresh head for the fold's training identities, on identical folds and seeds, so the heads' results
are paired. --cv identities (default) holds out whole identities and scores open-set identification (one
enrolment image per identity in the gallery, the rest probes) and verification over the held-out pairs;
--cv images holds out images and matches them against class means of training images; --cv seed_protocol
reproduces the authors' folds and score (the probe inside its own class mean). The report folder holds
results.json (every fold's held-out identities or images, each head's metrics, the paired test), results.md,
PNG plots and TensorBoard logs (log/ for the summary, folds/<fold>/<head>/log for each training run).
"""
from __future__ import annotations

import argparse
import inspect
import json
import logging
import math
from pathlib import Path

import train
from utils import UserError, atomic_write_text, default_output_dir, path_under, run_cli, setup_logging

log = logging.getLogger("crossval")
CROSSVAL_FLAGS = ("meta", "pose_file", "meta_from_filename", "height_from_id", "align", "detector", "strict", "cv",
                  "num_folds", "compare", "max_pairs", "out")
DRONEFACE_DEFAULT_PATH = "data/droneface"


def build_parser() -> argparse.ArgumentParser:
    from evaluation.gallery_probe import add_face_folder_arguments
    from faces.pipeline import DETECTORS
    from training.kfold import CV_PROTOCOLS

    parser = train.build_parser()
    parser.prog, parser.description = "crossval.py", __doc__
    group = parser.add_argument_group("cross-validation (-d droneface: DroneFace's file names and subjects a-k)")
    add_face_folder_arguments(group, "--data_path", " (default with -d droneface)")
    group.add_argument("--detector", choices=DETECTORS, default="mtcnn", help="--align detect: the face detector")
    group.add_argument("--cv", choices=CV_PROTOCOLS, default="identities",
                       help="identities: hold out whole identities (open set); images: stratified image folds, class "
                            "means from training images (closed set); seed_protocol: the PGAML authors' folds and score")
    group.add_argument("-fold", "--num_folds", "--folds", dest="num_folds", type=int, default=5, help="folds K")
    group.add_argument("--compare", default=None, metavar="HEAD,HEAD",
                       help="heads trained on identical folds and seeds and compared (paired test), e.g. arcface,pgaml "
                            "(default: --head alone)")
    group.add_argument("--max_pairs", type=int, default=20000,
                       help="verification: at most this many pairs of held-out images per fold (a seeded sample; 0: all)")
    group.add_argument("--out", default=None, help="report folder (default: work_space/crossval/<data folder name>)")
    return parser


def parse(argv=None):
    """(Config, cross-validation options) from the command line."""
    args = build_parser().parse_args(argv)
    options = argparse.Namespace(**{name: getattr(args, name) for name in CROSSVAL_FLAGS})
    for name in CROSSVAL_FLAGS:
        delattr(args, name)
    options.droneface = getattr(args, "data_mode", None) == "droneface"
    if hasattr(args, "data_mode"):
        if not options.droneface:
            raise UserError(f"-d {args.data_mode}: crossval.py reads a face folder: give -d droneface or --data_path DIR")
        del args.data_mode
        from config import read_settings
        preset = read_settings(args.config) if getattr(args, "config", None) else {}
        if not hasattr(args, "data_path") and "data_path" not in preset:
            args.data_path = DRONEFACE_DEFAULT_PATH
        options.meta_from_filename = options.meta_from_filename or "droneface"
    if not hasattr(args, "val_sets"):
        args.val_sets = "none"  # the folds are the evaluation
    config = train.config_from_args(args)
    options.heads = _heads(options.compare, config.head)
    return config, options


def _heads(compare: str | None, head: str) -> list[str]:
    from heads import list_heads

    heads = [h.strip().lower() for h in compare.split(",") if h.strip()] if compare else [head]
    unknown = [h for h in heads if h not in list_heads()]
    if unknown or len(set(heads)) != len(heads):
        raise UserError(f"--compare {compare}: give distinct heads among {', '.join(list_heads())}")
    return heads


def head_options_for(head: str, options: dict) -> dict:
    """The head's own options out of the given ones. ArcFace's m is PGAML's m1 (and back), so compared heads
    differ by the pose term alone."""
    from heads import MARGINS

    accepted = [p for p in inspect.signature(MARGINS[head].__init__).parameters if p != "self"]
    chosen = {k: v for k, v in options.items() if k in accepted}
    if "m" in accepted and "m" not in chosen and "m1" in options:
        chosen["m"] = options["m1"]
    if "m1" in accepted and "m1" not in chosen and "m" in options:
        chosen["m1"] = options["m"]
    return chosen


def config_for(config, head: str, work_path: Path):
    return config.replace(head=head, head_options=head_options_for(head, config.head_options),
                          pose_schedule=config.pose_schedule if head == "pgaml" else 0.0,
                          work_path=str(work_path), val_sets="none")


# ------------------------------------------------------------------------------------------ data

def load_dataset(config, options):
    """(the face folder as a FaceFolderDataset, its FaceFolder with the problems met)."""
    from data.face_folder import FaceFolderDataset
    from evaluation.gallery_probe import load_face_folder
    from evaluation.protocols.droneface import SUBJECTS

    images, records, folder = load_face_folder(config.data_path, options,
                                               known_identities=SUBJECTS if options.droneface else None)
    dataset = FaceFolderDataset(images, records, config.augment, config.seed)
    log.info("%s: %d images of %d identities (%s)", folder.source, len(dataset), dataset.num_classes,
             ", ".join(dataset.side_info.names) or "no pose")
    return dataset, folder


# ------------------------------------------------------------------------------------------ running

def check_out(out: Path) -> None:
    if (out / "results.json").exists() or (out / "folds").exists():
        raise UserError(f"--out {out} holds a cross-validation already; choose another --out")


def run_fold(config, dataset, fold, head: str, out: Path, options) -> dict:
    """Train one head on one fold from the starting weights and score it."""
    import torch

    from evaluation import fold_scores
    from inference.embedding import embed_images
    from learner import Learner
    from training.hooks import Checkpointing
    from training.kfold import EpochLoss

    losses = EpochLoss()
    learner = Learner(config_for(config, head, out / "folds" / f"fold{fold.index + 1}" / head),
                      dataset=dataset.subset(fold.train), val_sets=[], hooks=(losses,))
    # a fold is short and its model is not kept: no checkpoints (an interrupted cross-validation starts again)
    learner.hooks = [h for h in learner.hooks if not isinstance(h, Checkpointing)]
    learner.train()
    embeddings = embed_images(learner.backbone, dataset.images, config.val_batch_size, learner.device,
                              config.val_flip, learner.conventions)
    identities = [r.identity for r in dataset.records]
    if options.cv == "identities":
        scores, probes, ranks = fold_scores.open_set(embeddings, dataset.records, identities, fold.train, fold.test,
                                                     options.max_pairs, config.seed)
    elif options.cv == "images":
        scores, probes, ranks = fold_scores.closed_set(embeddings, identities, fold.train, fold.test,
                                                       options.max_pairs, config.seed)
    else:
        scores, probes, ranks = fold_scores.seed_protocol(embeddings, identities, fold.test, options.max_pairs,
                                                          config.seed)
    scores["breakdown"] = fold_scores.breakdown(dataset.records, probes, ranks)
    scores["loss_per_epoch"] = losses.per_epoch
    scores["steps"] = learner.progress.step
    del learner
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return scores


def fold_description(dataset, fold, cv: str, root: Path) -> dict:
    identities = [r.identity for r in dataset.records]
    train_ids = sorted({identities[i] for i in fold.train})
    test_ids = sorted({identities[i] for i in fold.test})
    out = {"fold": fold.index + 1, "train_identities": train_ids, "test_identities": test_ids,
           "num_train_images": int(len(fold.train)), "num_test_images": int(len(fold.test))}
    if cv != "identities":
        out["test_images"] = [path_under(dataset.records[i].path, root.resolve()) for i in fold.test]
    return out



def summarise(folds: list[dict], heads: list[str]) -> tuple[dict, dict]:
    """(per-head mean +- std of each metric, paired comparisons of the first head with each other one)."""
    from evaluation import fold_scores

    metrics = ("rank1", "rank5", "verification_accuracy")

    def values(head, metric):
        if metric == "verification_accuracy":
            return [f["heads"][head]["verification"].get("accuracy", math.nan) for f in folds]
        return [f["heads"][head][metric] for f in folds]

    summary = {head: {m: fold_scores.mean_std(values(head, m)) for m in metrics} for head in heads}
    for head in heads:
        summary[head]["breakdown"] = fold_scores.merge_breakdowns([f["heads"][head]["breakdown"] for f in folds])
    paired = {}
    if len(folds) >= 2:
        for other in heads[1:]:
            paired[f"{other}-{heads[0]}"] = {
                m: fold_scores.paired_comparison(values(heads[0], m), values(other, m), (heads[0], other), m)
                for m in metrics if not any(math.isnan(v) for v in values(heads[0], m) + values(other, m))}
    return summary, paired


def markdown_report(results: dict) -> str:
    heads = results["heads"]
    lines = [f"# Cross-validation: {results['protocol']}, {results['num_folds']} folds", "",
             f"Data: {results['data']['source']} ({results['data']['num_images']} images, "
             f"{results['data']['num_identities']} identities, {len(results['data']['skipped'])} records skipped)", "",
             "| fold | test identities | " + " | ".join(f"{h} rank-1 | {h} rank-5 | {h} verif." for h in heads) + " |",
             "|---|---|" + "---|---|---|" * len(heads)]
    for fold in results["folds"]:
        cells = []
        for h in heads:
            scores = fold["heads"][h]
            cells += [f"{scores['rank1']:.4f}", f"{scores['rank5']:.4f}",
                      _number(scores["verification"].get("accuracy"))]
        lines.append(f"| {fold['fold']} | {','.join(fold['test_identities'])} | " + " | ".join(cells) + " |")
    cells = []
    for h in heads:
        s = results["summary"][h]
        cells += [_mean_std(s["rank1"]), _mean_std(s["rank5"]), _mean_std(s["verification_accuracy"])]
    lines.append("| mean +- std | | " + " | ".join(cells) + " |")
    lines.append("")
    for comparison in results["paired"].values():
        for test in comparison.values():
            lines.append(f"- {test['statement']}")
    lines += ["", "Rank-1 by stratum (probes of all folds):", "",
              "| stratum | " + " | ".join(f"{h} rank-1 (probes)" for h in heads) + " |", "|---|" + "---|" * len(heads)]
    first = results["summary"][heads[0]]["breakdown"]
    for kind in ("height", "distance", "yaw"):
        for label in first.get(kind, {}):
            cells = []
            for h in heads:
                cell = results["summary"][h]["breakdown"].get(kind, {}).get(label)
                cells.append(f"{cell['rank1']:.4f} ({cell['count']})" if cell else "-")
            name = f"height {label} m" if kind == "height" else label
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _number(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def _mean_std(entry: dict) -> str:
    return "-" if entry["mean"] is None else f"{entry['mean']:.4f} +- {entry['std']:.4f}"


def write_plots(results: dict, out: Path) -> None:
    from evaluation import fold_scores

    heads = results["heads"]
    fold_scores.plot_metric_per_fold({h: [f["heads"][h]["rank1"] for f in results["folds"]] for h in heads},
                                     "rank-1", out / "rank1_per_fold.png")
    fold_scores.plot_losses({h: [f["heads"][h]["loss_per_epoch"] for f in results["folds"]] for h in heads},
                            out / "loss_per_epoch.png")
    cmc = {}
    for h in heads:
        curves = [f["heads"][h]["cmc"] for f in results["folds"]]
        length = min(len(c) for c in curves)
        cmc[h] = [sum(c[r] for c in curves) / len(curves) for r in range(length)]
    fold_scores.plot_cmc(cmc, out / "cmc.png")


def log_summary(results: dict, out: Path) -> None:
    """The per-fold metrics as TensorBoard scalars (crossval/<head>/<metric>, step = fold)."""
    from training.run_log import RunLog

    run_log = RunLog(out / "log")
    for fold in results["folds"]:
        for head, scores in fold["heads"].items():
            values = {"rank1": scores["rank1"], "rank5": scores["rank5"]}
            if "accuracy" in scores["verification"]:
                values["verification_accuracy"] = scores["verification"]["accuracy"]
            run_log.scalars(values, fold["fold"], prefix=f"crossval/{head}/")
    run_log.close()


def crossvalidate(config, options) -> dict:
    from training.kfold import fold_plan

    out = default_output_dir(Path(options.out) if options.out else None, "crossval", Path(config.data_path).name)
    check_out(out)
    dataset, folder = load_dataset(config, options)
    if "pgaml" in options.heads and "yaw" not in dataset.side_info.names:
        raise UserError(f"{folder.source}: --head pgaml needs each image's yaw: none of the records gives one "
                        "(a yaw column, the authors' JSON, --pose_file, or a yaw group in --meta_from_filename)")
    folds = fold_plan(options.cv, [r.identity for r in dataset.records], options.num_folds, config.seed)
    results = {"protocol": options.cv, "num_folds": len(folds), "seed": config.seed, "heads": options.heads,
               "gallery_rule": _gallery_rule(options.cv),
               "data": {"source": folder.source, "num_images": len(dataset), "num_identities": dataset.num_classes,
                        "identities": dataset.identities, "align": options.align, "skipped": folder.problems,
                        "notes": folder.notes,
                        "height": "raw height ID (--height_from_id)" if options.height_from_id else "metres"},
               "config": config.to_dict(), "folds": []}
    for fold in folds:
        entry = fold_description(dataset, fold, options.cv, Path(config.data_path))
        entry["heads"] = {}
        for head in options.heads:
            log.info("fold %d/%d, %s: %d training images of %d identities, %d held out", fold.index + 1, len(folds),
                     head, len(fold.train), len(entry["train_identities"]), len(fold.test))
            entry["heads"][head] = run_fold(config, dataset, fold, head, out, options)
            log.info("fold %d %s: rank-1 %.4f rank-5 %.4f", fold.index + 1, head, entry["heads"][head]["rank1"],
                     entry["heads"][head]["rank5"])
        results["folds"].append(entry)
    results["summary"], results["paired"] = summarise(results["folds"], options.heads)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.md", markdown_report(results))
    write_plots(results, out)
    log_summary(results, out)
    atomic_write_text(out / "results.json", json.dumps(_finite(results), indent=1, default=_json_default) + "\n")
    results["out"] = str(out)
    return results


def _gallery_rule(cv: str) -> str:
    from evaluation.fold_scores import ENROLMENT_RULE

    return {"identities": f"one enrolment image per identity of the data set, {ENROLMENT_RULE}; the held-out "
                          "identities' other images are the probes",
            "images": "each identity's mean embedding over its training images; every held-out image is a probe",
            "seed_protocol": "each test identity's mean embedding over ALL its test images, the probe included "
                             "(the PGAML authors' evaluation)"}[cv]


def _finite(value):
    """NaN and infinities as null: results.json stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _json_default(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def main(argv=None) -> int:
    setup_logging()
    config, options = parse(argv)
    results = crossvalidate(config, options)
    print(markdown_report(results), end="")
    print(f"report: {results['out']}")
    return 0


if __name__ == "__main__":
    run_cli(main)
