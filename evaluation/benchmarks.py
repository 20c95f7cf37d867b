"""eval.py's benchmark and threshold flags: IJB-B/C (`--ijb`), TinyFace (`--tinyface`), a deployment threshold
calibrated at a target FAR (`--calibrate far=F`), and the threshold plain verification records with the model.

The readers are `evaluation.protocols.ijb` / `tinyface`, the metrics `verification` / `identification`; this
module embeds (`evaluation.features`: batches, progress, resume), runs the metrics and writes the reports.
Thresholds are cosines (accept when cosine >= t); TreB1eN's squared L2 distance between unit embeddings is
d^2 = 2 - 2 cos, so its threshold d^2 < 1.5 is cosine > 0.25.
"""
from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import numpy as np

from utils import UserError, atomic_save_npy, atomic_write_text

CALIBRATED = "calibrated"  # how a calibrated threshold's source starts: plain eval.py never replaces it


def add_arguments(parser) -> None:
    group = parser.add_argument_group("benchmarks and deployment thresholds")
    group.add_argument("--ijb", type=Path, default=None,
                       help="IJB-B/C folder (meta/, loose_crop/ as insightface distributes them): 1:1 TAR@FAR, ROC and "
                            "1:N identification instead of the val sets")
    group.add_argument("--target", type=str.upper, default="IJBC", choices=("IJBC", "IJBB"),
                       help="which IJB: the meta/ files' prefix ijbc_ or ijbb_")
    group.add_argument("--no_faceness", dest="faceness", action="store_false",
                       help="IJB: do not weight each image's embedding by its detector (faceness) score before pooling "
                            "(default: weighted, as insightface's eval_ijbc.py)")
    group.add_argument("--tinyface", type=Path, default=None,
                       help="TinyFace folder (Testing_Set/ with Probe, Gallery_Match, Gallery_Distractor and the two "
                            ".mat files): rank-1/5/10/20 and mAP instead of the val sets")
    group.add_argument("--open_set", type=Path, default=None, metavar="PROBES",
                       help="open-set identification against the facebank --bank: PROBES/<name>/<photo>, people of "
                            "the bank are mated probes, anyone else a stranger; FPIR and FNIR at the threshold, "
                            "TPIR@FPIR, the DET curve")
    group.add_argument("--bank", type=Path, default=Path("data/facebank"),
                       help="--open_set: the facebank folder (built by facebank.py build with this model)")
    group.add_argument("--aligned", action="store_true", help="--open_set: the probes are aligned 112x112 faces")
    group.add_argument("--detector", default="mtcnn", choices=("mtcnn", "yunet"),
                       help="--open_set: face detector for probe photos")
    group.add_argument("--threshold", type=float, default=None,
                       help="--open_set / --ijb: the cosine threshold FPIR and FNIR are reported at (default: the "
                            "one stored with the model)")
    group.add_argument("--features", type=Path, default=None,
                       help="folder of the benchmarks' features files, where an interrupted embedding resumes "
                            "(default: the --out folder)")
    group.add_argument("--workers", type=int, default=2, help="threads reading and aligning a benchmark's images")
    group.add_argument("--calibrate", default=None, metavar="far=F",
                       help="choose the deployment threshold at FAR F on a val set's pairs (e.g. far=1e-3), with a "
                            "bootstrap 95%% interval, and store it with the model (its JSON's \"threshold\")")
    group.add_argument("--calibrate_set", default=None,
                       help="the val set --calibrate uses (default: the first evaluated, lfw when present)")
    group.add_argument("--bootstrap", type=int, default=1000, help="--calibrate: bootstrap resamples")
    group.add_argument("--no_record_threshold", dest="record_threshold", action="store_false",
                       help="do not store the verification run's best threshold with the model (by default the first "
                            "set's mean 10-fold threshold is recorded, unless a calibrated one is there)")


def check_arguments(parser, args) -> None:
    if sum(x is not None for x in (args.ijb, args.tinyface, args.open_set)) > 1:
        parser.error("--ijb, --tinyface, --open_set: one benchmark per run")
    if args.threshold is not None and not -1.0 <= args.threshold <= 1.0:
        parser.error(f"--threshold is a cosine similarity in [-1, 1], got {args.threshold}")
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    if args.bootstrap < 0:
        parser.error(f"--bootstrap must be >= 0, got {args.bootstrap}")
    if args.calibrate is not None:
        args.calibrate_far = parse_far(args.calibrate)
        if requested(args):
            parser.error("--calibrate works on val set pairs, not with --ijb / --tinyface / --open_set")
        listed = [name.strip() for name in args.val_sets.split(",")]
        if args.calibrate_set is not None and args.val_sets != "all" and args.calibrate_set not in listed:
            parser.error(f"--calibrate_set: {args.calibrate_set} is not among --val_sets {args.val_sets}")


def parse_far(text: str) -> float:
    match = re.fullmatch(r"\s*(?:far\s*=\s*)?([0-9.eE+-]+)\s*", text)
    try:
        far = float(match.group(1)) if match else math.nan
    except ValueError:
        far = math.nan
    if not 0 < far < 1:
        raise UserError(f"--calibrate: expected far=F with 0 < F < 1 (e.g. far=1e-3), got {text!r}")
    return far


def requested(args) -> bool:
    return args.ijb is not None or args.tinyface is not None or args.open_set is not None


# ----------------------------------------------------------------------------- thresholds with the model

def cosine_of_squared_l2(distance: float) -> float:
    return 1.0 - distance / 2.0


def after_verification(args, results) -> None:
    """--calibrate on the chosen set, else record the first set's best k-fold threshold (see the flags)."""
    from inference.weights import recorded_metadata

    if not results:
        return
    if args.calibrate is not None:
        calibrate(args, results)
        return
    if not args.record_threshold:
        return
    stored = str(recorded_metadata(args.model).get("threshold_source", ""))
    if stored.startswith(CALIBRATED):
        print(f"kept the calibrated threshold stored with the model ({stored})")
        return
    first = results[0]
    distance = first.result.best_threshold
    cosine = cosine_of_squared_l2(distance)
    source = (f"eval.py: best {len(first.result.fold_accuracy)}-fold threshold on {first.name} "
              f"(squared L2 {distance:.4f} = cosine {cosine:.4f})")
    _store(args.model, cosine, source)


def _store(model_path: Path, cosine: float, source: str) -> None:
    from inference.weights import record_threshold

    try:
        where = record_threshold(model_path, cosine, source)
    except OSError as err:
        print(f"warning: could not store the threshold beside {model_path}: {err.strerror or err}")
        return
    print(f"stored threshold {cosine:.4f} (cosine) in {where}: {source}")


def calibrate(args, results) -> None:
    from verification import calibrate_threshold

    name = args.calibrate_set or results[0].name
    chosen = next((entry for entry in results if entry.name == name), None)
    if chosen is None:
        raise UserError(f"--calibrate_set: {name} was not evaluated (evaluated: {', '.join(e.name for e in results)})")
    scores = 1.0 - chosen.result.distances / 2.0  # cosines of the unit embeddings
    c = calibrate_threshold(scores, chosen.result.issame, args.calibrate_far, args.bootstrap)
    source = (f"{CALIBRATED} at FAR {c.far_target:g} on {name} ({c.num_positive} same / {c.num_negative} different "
              f"pairs), 95% CI [{c.threshold_ci[0]:.4f}, {c.threshold_ci[1]:.4f}] ({c.resamples} bootstrap resamples); "
              f"TAR {c.tar:.4f} [{c.tar_ci[0]:.4f}, {c.tar_ci[1]:.4f}] at FAR {c.far:.2g}")
    print(f"threshold at FAR {c.far_target:g} on {name}: cosine {c.threshold:.4f} (TreB1eN's squared L2 "
          f"{2 - 2 * c.threshold:.4f}), 95% CI [{c.threshold_ci[0]:.4f}, {c.threshold_ci[1]:.4f}]; "
          f"TAR {c.tar:.4f} [{c.tar_ci[0]:.4f}, {c.tar_ci[1]:.4f}], achieved FAR {c.far:.2g}")
    _store(args.model, c.threshold, source)


# ----------------------------------------------------------------------------- benchmarks

def run(args, out: Path) -> int:
    from inference.loader import conventions_overrides, load_model

    model = load_model(args.model, args.net, args.device, conventions_overrides(args))
    print(model.describe())
    if args.ijb is not None:
        run_ijb(args, model, out)
    elif args.tinyface is not None:
        run_tinyface(args, model, out)
    else:
        run_open_set(args, model, out)
    return 0


def _embed(args, model, stem: Path, count: int, load, items_file: Path, what: str) -> np.ndarray:
    from tqdm import tqdm

    from evaluation.features import embed_files, run_key
    from inference.runtime import AMP_DTYPES

    key = run_key(args.model, items_file, args.flip, {"conventions": model.conventions, "count": count})
    amp = AMP_DTYPES[args.amp]
    started, first = time.perf_counter(), None
    with tqdm(total=count, desc=what, unit="img") as bar:
        def progress(done):
            nonlocal first
            first = done if first is None else first
            bar.update(done - bar.n)
        features = embed_files(stem, count, load, lambda batch: model.embed(batch, len(batch), args.flip, amp), key,
                               args.batch_size, args.workers, progress)
    embedded = count - (first or 0)
    if embedded:
        seconds = time.perf_counter() - started
        print(f"embedded {embedded} images in {seconds:.1f} s ({embedded / seconds:.1f} images/s, flip "
              f"{'on' if args.flip else 'off'}); features in {stem.with_suffix('.npy')}")
    return features


def run_ijb(args, model, out: Path) -> dict:
    from evaluation.protocols.ijb import LandmarkAligner, pair_scores, read_ijb, search_galleries, template_features
    from identification import DEFAULT_FPIR_TARGETS, DEFAULT_SEARCH_RANKS, save_det_png
    from inference.loader import model_threshold
    from verification import DEFAULT_FAR_TARGETS, save_score_roc_png, score_roc, tar_at_far_scores

    protocol = read_ijb(args.ijb, args.target)
    images = protocol.images
    print(f"{protocol.target}: {len(images.names)} images, {np.unique(images.templates).size} templates, "
          f"{protocol.pair_labels.size} pairs ({int(protocol.pair_labels.sum())} genuine)")
    stem = (args.features or out) / f"{protocol.prefix}_features"
    features = _embed(args, model, stem, len(images.names), LandmarkAligner(protocol),
                      protocol.meta("name_5pts_score.txt"), protocol.target)
    template_ids, template_feats = template_features(features, images.templates, images.medias,
                                                     images.faceness if args.faceness else None)
    scores = pair_scores(template_ids, template_feats, protocol.pair_templates)
    points = tar_at_far_scores(scores, protocol.pair_labels, DEFAULT_FAR_TARGETS)
    fpr, tpr, auc = score_roc(scores, protocol.pair_labels)
    atomic_save_npy(out / f"{protocol.prefix}_scores.npy", scores.astype(np.float32))
    save_score_roc_png(fpr, tpr, points, out / f"roc_{protocol.prefix}.png", f"{protocol.target} 1:1")
    report = {"target": protocol.target, "faceness": args.faceness, "flip": args.flip,
              "verification": {"pairs": int(scores.size), "genuine": int(protocol.pair_labels.sum()), "auc": auc,
                               "tar_at_far": {f"{p.far_target:g}": {"tar": p.tar, "far": p.far,
                                                                   "threshold": p.threshold} for p in points}}}
    lines = [f"# {protocol.target}", "", f"1:1 verification, {scores.size} template pairs (AUC {auc:.4f})", "",
             "| " + " | ".join(f"TAR@FAR={p.far_target:g}" for p in points) + " |", "|" + "---|" * len(points),
             "| " + " | ".join(f"{p.tar:.4f}" for p in points) + " |"]
    searches = search_galleries(protocol, template_ids, template_feats)
    threshold = args.threshold if args.threshold is not None else model_threshold(args.model)
    if searches:
        lines += ["", "1:N identification (mixed probes; probes of the other gallery's subjects are non-mated)", "",
                  "| gallery | mated | non-mated | " + " | ".join(f"rank-{r}" for r in DEFAULT_SEARCH_RANKS) + " | "
                  + " | ".join(f"TPIR@FPIR={f:g}" for f in DEFAULT_FPIR_TARGETS) + " |",
                  "|---|---|---|" + "---|" * (len(DEFAULT_SEARCH_RANKS) + len(DEFAULT_FPIR_TARGETS))]
        report["identification"] = {}
        for name, search in searches.items():
            entry = search.as_dict(DEFAULT_SEARCH_RANKS, DEFAULT_FPIR_TARGETS)
            tpir = {p.fpir_target: p.tpir for p in search.tpir_at_fpir(DEFAULT_FPIR_TARGETS)}
            cells = [f"{100 * v:.2f}%" for v in search.cmc(DEFAULT_SEARCH_RANKS)] + \
                [f"{tpir[f]:.4f}" if f in tpir else "-" for f in DEFAULT_FPIR_TARGETS]
            lines.append(f"| {name} | {search.num_mated} | {int((~search.mated).sum())} | " + " | ".join(cells) + " |")
            if threshold is not None:
                fnir, fpir = search.fnir_fpir(threshold)
                entry["at_model_threshold"] = {"threshold": threshold, "fpir": fpir, "fnir": fnir}
            save_det_png(search, out / f"det_{protocol.prefix}_{name}.png", f"{protocol.target} 1:N {name}", threshold)
            report["identification"][name] = entry
        if threshold is not None:
            lines += ["", f"At the model's threshold {threshold:.4f}: " + ", ".join(
                f"{name} FPIR {report['identification'][name]['at_model_threshold']['fpir']:.4f} FNIR "
                f"{report['identification'][name]['at_model_threshold']['fnir']:.4f}" for name in searches)]
    _write_report(out, protocol.prefix, lines, report)
    return report


def run_tinyface(args, model, out: Path) -> dict:
    from evaluation.protocols.tinyface import PROBE_MAT, RANKS, UpscaledFace, read_tinyface
    from identification import save_search_cmc_png, search_gallery

    protocol = read_tinyface(args.tinyface)
    num_probes = len(protocol.probes)
    print(f"TinyFace: {num_probes} probes, {int((protocol.gallery_ids != -100).sum())} gallery matches, "
          f"{int((protocol.gallery_ids == -100).sum())} distractors")
    stem = (args.features or out) / "tinyface_features"
    features = _embed(args, model, stem, len(protocol.paths()), UpscaledFace(protocol), protocol.root / PROBE_MAT,
                      "TinyFace")
    search = search_gallery(features[:num_probes], protocol.probe_ids, features[num_probes:], protocol.gallery_ids)
    cmc = search.cmc(RANKS)
    save_search_cmc_png(search, out / "cmc_tinyface.png", max_rank=20, title="TinyFace")
    report = {"probes": num_probes, "gallery": search.num_gallery, "mated_probes": search.num_mated,
              "cmc": {str(r): float(v) for r, v in zip(RANKS, cmc)}, "mAP": search.mean_average_precision,
              "flip": args.flip}
    lines = ["# TinyFace", "", f"{num_probes} probes against {search.num_gallery} gallery images (distractors "
             "included)", "", "| " + " | ".join(f"rank-{r}" for r in RANKS) + " | mAP |", "|" + "---|" * (len(RANKS) + 1),
             "| " + " | ".join(f"{100 * v:.2f}%" for v in cmc) + f" | {100 * search.mean_average_precision:.2f}% |"]
    _write_report(out, "tinyface", lines, report)
    return report


def run_open_set(args, model, out: Path) -> dict:
    """The facebank's people as the gallery (each person's mean embedding, as face_verify.py names faces), the
    probe folder's people as probes: mated where the name is in the bank, strangers otherwise."""
    from faces.pipeline import make_detector
    from identification import DEFAULT_FPIR_TARGETS, save_det_png, search_gallery
    from inference.facebank import Facebank, check_model, person_photos
    from inference.faces_in_files import FaceReader
    from inference.loader import model_threshold

    bank = Facebank.load(args.bank)
    check_model(bank, model, args.bank)
    read = FaceReader(args.aligned, None if args.aligned else make_detector(args.detector, args.device))
    faces, labels, failed = [], [], []
    for name, photos in person_photos(args.open_set).items():
        for path in photos:
            face, why = read(path)
            if face is None:
                failed.append(why)
                continue
            faces.append(face)
            labels.append(bank.names.index(name) if name in bank.names else -1)
    if not faces:
        raise UserError(f"--open_set {args.open_set}: no usable probe face ({failed[0] if failed else 'no photos'})")
    embeddings = model.embed(np.stack(faces), args.batch_size, args.flip)
    search = search_gallery(embeddings, np.array(labels), bank.means, np.arange(len(bank.names)))
    threshold = args.threshold if args.threshold is not None else model_threshold(args.model)
    report = search.as_dict((1,), DEFAULT_FPIR_TARGETS)
    report["left_out"] = failed
    lines = ["# Open-set identification", "", f"{search.num_mated} probes of the bank's {len(bank.names)} people, "
             f"{int((~search.mated).sum())} of strangers; {len(failed)} photos left out", ""]
    if search.num_mated:
        lines.append(f"rank-1 (closed set, mated probes): {100 * search.cmc([1])[0]:.2f}%")
    for point in search.tpir_at_fpir(DEFAULT_FPIR_TARGETS):
        lines.append(f"TPIR at FPIR {point.fpir_target:g}: {point.tpir:.4f} (threshold {point.threshold:.4f})")
    if threshold is not None:
        fnir, fpir = search.fnir_fpir(threshold)
        report["at_threshold"] = {"threshold": threshold, "fpir": fpir, "fnir": fnir}
        lines.append(f"at threshold {threshold:.4f}: FPIR {fpir:.4f} (strangers named), FNIR {fnir:.4f} "
                     "(known people missed or misnamed)")
    if search.num_mated and (~search.mated).any():
        save_det_png(search, out / "det_open_set.png", "open-set identification", threshold)
    _write_report(out, "open_set", lines, report)
    return report


def _write_report(out: Path, name: str, lines: list[str], report: dict) -> None:
    text = "\n".join(lines) + "\n"
    print(text, end="")
    atomic_write_text(out / f"{name}.md", text)
    atomic_write_text(out / f"{name}.json", json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}/{name}.md, {name}.json and the figures")
