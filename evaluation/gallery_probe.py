"""eval.py --gallery_probe FOLDER: closed-set identification on a face folder with metadata (the DroneFace
layout, or any identity/ folder tree with a CSV / the PGAML authors' JSON; `data.face_folder` reads it).

Gallery: ONE image per identity, chosen by `--gallery_rule` (`enrolment`: crossval's
`fold_scores.ENROLMENT_RULE`, lowest height, nearest distance, smallest |yaw|; `frontal`: smallest |yaw|
first). Every other image is a probe. Each probe's rank is its identity's rank in the gallery
(`identification.gallery_ranks`, cosine scores); rank-1 / rank-5 overall and per capture height, distance
bin and |yaw| bin (`fold_scores.breakdown`, bins `fold_scores.DISTANCE_BINS` / `YAW_BINS`, the |yaw| bins
being `evaluation.strata`'s default edges 0/30/60/90 with beyond 90 in the last). Every model sees the
same gallery and probes (the rule reads metadata, not embeddings), so two models' per-probe rank-1
correctness is paired: McNemar's test (`evaluation.breakdowns.mcnemar`) overall and per metadata value.
Writes results.md, results.json and cmc.png (one line per model) to the report folder.
"""
from __future__ import annotations

import itertools
import json
import logging
import math
from pathlib import Path

import numpy as np

from evaluation import fold_scores
from utils import UserError, atomic_write_text, path_under

GALLERY_RULES = {
    "enrolment": fold_scores.ENROLMENT_RULE,
    "frontal": "the most frontal image: smallest |yaw|, then lowest height, then nearest distance, then first "
               "file name (unknown values sort last)",
}
log = logging.getLogger(__name__)
REPORTED_RANKS = (1, 5)
KINDS = (("height", "capture height"), ("distance", "distance"), ("yaw", "|yaw|"))


def add_arguments(parser) -> None:
    group = parser.add_argument_group("gallery/probe identification on a face folder with metadata")
    group.add_argument("--gallery_probe", type=Path, default=None, metavar="FOLDER",
                       help="a face folder with metadata (DroneFace layout, identity/ sub-folders, or a CSV / the "
                            "authors' JSON): one gallery image per identity (--gallery_rule), the rest probes; "
                            "rank-1/5 overall and per height, distance bin and |yaw| bin, CMC; instead of the val sets")
    group.add_argument("--gallery_rule", choices=sorted(GALLERY_RULES), default="enrolment",
                       help="which image of each identity is its gallery entry: enrolment = lowest height, nearest "
                            "distance, smallest |yaw| (crossval.py's rule); frontal = smallest |yaw| first")
    add_face_folder_arguments(group, "FOLDER")


def add_face_folder_arguments(group, folder: str, droneface_note: str = "") -> None:
    """The flags `load_face_folder` reads (all but --detector), in an argument group; `folder` names the
    command's folder flag in the help."""
    from data.face_folder import ALIGN_MODES

    group.add_argument("--meta", default=None, help="metadata file: the PGAML authors' JSON list or a CSV "
                       f"path,identity,yaw[,pitch][,height][,distance] (default: the only *.json/*.csv in {folder}, "
                       "else one sub-folder per identity)")
    group.add_argument("--pose_file", default=None, help="with one sub-folder per identity: the pose of each image "
                       "(the authors' JSON or a CSV path,yaw[,pitch][,height])")
    group.add_argument("--meta_from_filename", default=None, metavar="REGEX|droneface",
                       help="fill identity, yaw, pitch, height, distance (metres), height_id, distance_id from named "
                            "groups of each file name; 'droneface' = subject_camera_heightID_imagetype_distanceID.jpg"
                            + droneface_note)
    group.add_argument("--height_from_id", action="store_true", default=False,
                       help="use the raw height ID (DroneFace 0/3/4/5) as the height, as the PGAML authors do, "
                            "instead of metres (1.5/3/4/5)")
    group.add_argument("--align", choices=ALIGN_MODES, default="resize",
                       help="resize: the whole crop to 112x112 (the authors' way); detect: detect (--detector) + "
                            "5-point alignment (whole crop where no face is found); none: files are aligned 112x112 "
                            "already")
    group.add_argument("--strict", action="store_true", default=False,
                       help="stop at bad metadata or an unreadable image instead of skipping the records (they are "
                            "listed either way)")


def requested(args) -> bool:
    return args.gallery_probe is not None


def check_arguments(parser, args, others_requested: bool) -> None:
    if requested(args) and others_requested:
        parser.error("--gallery_probe: one benchmark per run (not with --ijb / --tinyface / --open_set)")


# ------------------------------------------------------------------------------------------ data

def load_face_folder(root, options, known_identities=None):
    """(uint8 N x 3 x 112 x 112 faces, their FaceRecords, the FaceFolder with the problems met) of a face folder
    read with the face-folder flags `options` carries (meta, pose_file, meta_from_filename, height_from_id,
    align, detector, strict): eval.py --gallery_probe's and crossval.py's one way of reading one."""
    from data.face_folder import as_aligned, load_faces, read_face_folder, resize_face
    from evaluation.protocols.droneface import filename_meta

    if options.height_from_id and not options.meta_from_filename:
        raise UserError("--height_from_id needs --meta_from_filename (the height ID comes from the file name)")
    pattern = filename_meta(options.meta_from_filename, options.height_from_id) if options.meta_from_filename else None
    folder = read_face_folder(root, options.meta, options.pose_file, pattern, options.strict,
                              known_identities=known_identities)
    for note in folder.notes:
        log.info("%s: %s", folder.source, note)
    prepare = {"resize": resize_face, "none": as_aligned}.get(options.align) or detecting_aligner(options.detector)
    images, records = load_faces(folder, prepare, options.strict)
    if hasattr(prepare, "fallbacks"):
        folder.notes.append(f"--align detect: no face found in {sum(prepare.fallbacks)} of {len(prepare.fallbacks)} "
                            "images; those were resized whole")
        log.info("%s: %s", folder.source, folder.notes[-1])
    return images, records, folder


def detecting_aligner(detector_name: str):
    """--align detect: the face pipeline (detector + 5-point alignment); the whole crop where no face is found
    (`.fallbacks`: one bool per image, True where that happened)."""
    from faces.pipeline import align_photo, inset, make_detector

    detector = make_detector(detector_name, device="cpu")
    fallbacks = []

    def prepare(rgb):
        face = align_photo(rgb, detector, fallback=inset(0.0))
        fallbacks.append(face.how == "fallback")
        return face.chw()
    prepare.fallbacks = fallbacks
    return prepare


def load_folder(args):
    """--gallery_probe's faces, records and FaceFolder; refused where no image has a height, distance or yaw."""
    if not Path(args.gallery_probe).is_dir():
        raise UserError(f"--gallery_probe {args.gallery_probe}: not a folder")
    images, records, folder = load_face_folder(args.gallery_probe, args)
    check_metadata(folder)
    return images, records, folder


def check_metadata(folder) -> None:
    known = [kind for kind, _ in KINDS if any(math.isfinite(getattr(r, kind)) for r in folder.records)]
    if not known:
        raise UserError(f"--gallery_probe {folder.root}: {folder.source} gives no height, distance or yaw for any "
                        "image: give --meta (CSV path,identity,yaw[,pitch][,height][,distance] or the authors' JSON), "
                        "--pose_file or --meta_from_filename")


# ------------------------------------------------------------------------------------------ scoring

def _last(value: float) -> float:
    return math.inf if math.isnan(value) else value


def frontal_image(records, indices) -> int:
    return min(indices, key=lambda i: (_last(abs(records[i].yaw)), _last(records[i].height),
                                       _last(records[i].distance), records[i].path.name))


def split_gallery(records, rule: str = "enrolment") -> tuple[np.ndarray, np.ndarray]:
    """(gallery indices: one per identity, in identity order; probe indices: every other image)."""
    pick = {"enrolment": fold_scores.enrolment_image, "frontal": frontal_image}[rule]
    identities = np.array([r.identity for r in records])
    gallery = np.array([pick(records, np.flatnonzero(identities == name).tolist()) for name in np.unique(identities)])
    probes = np.setdiff1d(np.arange(len(records)), gallery)
    if not len(probes):
        raise UserError("--gallery_probe: every identity has a single image: no probes left after the gallery")
    return gallery, probes


def score_model(embeddings: np.ndarray, records, gallery: np.ndarray, probes: np.ndarray) -> dict:
    """Rank-1/5, CMC and the per-metadata breakdown of one model's embeddings; `ranks` per probe."""
    from identification import gallery_ranks

    identities = np.array([r.identity for r in records])
    ranks = gallery_ranks(embeddings[probes], identities[probes], embeddings[gallery], identities[gallery])
    scores = fold_scores._rank_scores(ranks, len(gallery))
    scores["breakdown"] = fold_scores.breakdown(records, probes, ranks, REPORTED_RANKS)
    scores["ranks"] = ranks.tolist()
    return scores


def paired_tests(per_model: dict[str, dict], records, probes: np.ndarray) -> list[dict]:
    """McNemar on per-probe rank-1 correctness for every two models: overall and per metadata value."""
    from evaluation.breakdowns import mcnemar

    masks = {("all", "all"): np.ones(len(probes), dtype=bool)}
    strata = fold_scores.breakdown(records, probes, np.ones(len(probes)))  # the strata's labels only
    for kind, labels in strata.items():
        for label in labels:
            masks[(kind, label)] = np.array([_in_stratum(records, p, kind, label) for p in probes])
    tests = []
    for first, second in itertools.combinations(per_model, 2):
        right_a = np.asarray(per_model[first]["ranks"]) == 1
        right_b = np.asarray(per_model[second]["ranks"]) == 1
        for (kind, label), mask in masks.items():
            only_a, only_b, p_value, method = mcnemar(right_a[mask], right_b[mask])
            tests.append({"model_a": first, "model_b": second, "by": kind, "level": label, "probes": int(mask.sum()),
                          "only_a_right": only_a, "only_b_right": only_b, "p_value": p_value, "method": method,
                          "verdict": _verdict(first, second, only_a, only_b, p_value)})
    return tests


def _in_stratum(records, index: int, kind: str, label: str) -> bool:
    """Whether record `index` falls in fold_scores.breakdown's stratum (kind, label)."""
    return label in fold_scores.breakdown(records, np.array([index]), np.ones(1))[kind]


def _verdict(first: str, second: str, only_a: int, only_b: int, p_value: float) -> str:
    from evaluation.breakdowns import ALPHA

    if p_value >= ALPHA:
        return f"no significant difference (p = {p_value:.3g} >= {ALPHA:g})"
    return f"{first if only_a > only_b else second} better, significant (p = {p_value:.3g} < {ALPHA:g})"


# ------------------------------------------------------------------------------------------ report

def _cell(text: str) -> str:
    return str(text).replace("|", "\\|")  # the |yaw| labels inside a Markdown table


def markdown_report(report: dict) -> str:
    models = list(report["models"])
    lines = ["# Gallery/probe identification", "",
             f"{report['data']['source']}: {report['num_gallery']} gallery images (one per identity), "
             f"{report['num_probes']} probes", "", f"Gallery rule ({report['gallery_rule']}): "
             f"{GALLERY_RULES[report['gallery_rule']]}.", "",
             "| model | rank-1 | rank-5 | probes |", "|---|---|---|---|"]
    for name, scores in report["models"].items():
        lines.append(f"| {name} | {100 * scores['rank1']:.2f}% | {100 * scores['rank5']:.2f}% | {scores['num_probes']} |")
    if report["num_gallery"] <= max(REPORTED_RANKS):
        lines += ["", f"With {report['num_gallery']} identities in the gallery, rank-{max(REPORTED_RANKS)} is 100% "
                  "by construction."]
    for kind, title in KINDS:
        levels = list(report["models"][models[0]]["breakdown"][kind])
        if not levels:
            continue
        lines += ["", f"## Per {title}", "", "| " + _cell(title) + " | probes | " +
                  " | ".join(f"{m} rank-1 | {m} rank-5" for m in models) + " |", "|---|---|" + "---|---|" * len(models)]
        for level in levels:
            cells = [report["models"][m]["breakdown"][kind][level] for m in models]
            lines.append(f"| {_cell(level)} | {cells[0]['count']} | " +
                         " | ".join(f"{100 * c['rank1']:.2f}% | {100 * c['rank5']:.2f}%" for c in cells) + " |")
    if report["paired"]:
        lines += ["", "## McNemar's test on per-probe rank-1 correctness", "",
                  "| models | by | level | probes | only A right | only B right | p | verdict |",
                  "|---|---|---|---|---|---|---|---|"]
        for t in report["paired"]:
            lines.append(f"| {t['model_a']} vs {t['model_b']} | {t['by']} | {_cell(t['level'])} | {t['probes']} | "
                         f"{t['only_a_right']} | {t['only_b_right']} | {t['p_value']:.3g} | {t['verdict']} |")
    return "\n".join(lines) + "\n"



def run(args, labels: list[str], out: Path) -> dict:
    """Every --model on the folder's gallery and probes; the report written to `out`."""
    from inference.loader import conventions_overrides, load_model

    images, records, folder = load_folder(args)
    gallery, probes = split_gallery(records, args.gallery_rule)
    per_model = {}
    for path, label in zip(args.model, labels):
        model = load_model(path, args.net, args.device, conventions_overrides(args))
        print(model.describe())
        per_model[label] = score_model(model.embed(images, args.batch_size, args.flip), records, gallery, probes)
    report = {"data": {"source": folder.source, "num_images": len(records), "skipped": folder.problems,
                       "notes": folder.notes},
              "gallery_rule": args.gallery_rule, "num_gallery": int(len(gallery)), "num_probes": int(len(probes)),
              "gallery_images": [path_under(records[i].path, folder.root) for i in gallery],
              "probe_images": [path_under(records[i].path, folder.root) for i in probes],
              "flip": args.flip, "models": per_model, "paired": paired_tests(per_model, records, probes)}
    out.mkdir(parents=True, exist_ok=True)
    text = markdown_report(report)
    print(text, end="")
    atomic_write_text(out / "results.md", text)
    atomic_write_text(out / "results.json", json.dumps(report, indent=1) + "\n")
    fold_scores.plot_cmc({name: s["cmc"] for name, s in per_model.items()}, out / "cmc.png",
                         ylabel="identification rate (%)", title=f"CMC, {len(gallery)} identities")
    print(f"wrote {out}/results.md, results.json and cmc.png")
    return report
