"""MegaFace challenge 1 end to end: align, embed, clean, evaluate (no Matlab, no devkit binaries).

    python megaface.py --action crop_megaface --facescrub_dir FACESCRUB --megaface_dir FlickrFinal2 \
                       --aligned_dir ALIGNED [--facescrub_list JSON] [--megaface_lists DIR] [--workers N] \
                       [--detect [--mtcnn_weights DIR]]
    python megaface.py --action gen_features --model WEIGHTS --aligned_dir ALIGNED --features_dir FEATURES \
                       [--algo pgaml] [--batch_size 256] [--no_flip] [--net NAME] [--device cpu]
    python megaface.py --action remove_noise --features_dir FEATURES --clean_dir CLEAN \
                       --facescrub_noises facescrub_noises.txt --megaface_noises megaface_noises.txt
    python megaface.py --action evaluate --features_dir CLEAN [--sizes 10,100,...] [--out DIR]

Folders hold a `facescrub/` and a `megaface/` part with the official relative paths (see
evaluation/protocols/megaface.py). Features are the devkit's files `<image>_<algo>.bin`, so its
run_experiment.py can read them too. `evaluate` prints rank-1..10 identification and TAR@FAR 1e-6..1e-1
for each distractor subset and writes results.md, results.json, cmc.png and roc.png to `--out`.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from evaluation.protocols.megaface import (
    DistractorSets,
    ProbeSet,
    distractor_sets,
    encode_matrix,
    facescrub_noise_key,
    feature_path,
    megaface_noise_key,
    probe_set,
    read_face_json,
    read_feature,
    read_features,
    read_noise_list,
    write_matrix,
)
from data.images import encode_jpeg, encode_png, read_aligned_face, read_image_file
from faces.alignment import ALIGNED_SIZE
from faces.pipeline import align_photo, inset
from identification import CHUNK_SIZE, OpenSetEvaluator, save_cmc_png, save_roc_png
from inference.loader import add_flip_argument, add_model_arguments
from utils import CliParser, UserError, atomic_write_bytes, atomic_write_text, default_output_dir, parallel_map, run_cli
from verification import DEFAULT_FAR_TARGETS

ACTIONS = ("crop_megaface", "gen_features", "remove_noise", "evaluate")
# insightface's last resort for a photo without a face JSON: the photo less 6 % at each border
NO_FACE_CROP = inset(0.06)
NOISE_JITTER = 0.001     # insightface: a noisy probe becomes its identity's centre + U(-0.001, 0.001)
DISTRACTOR_NOISE_MARK = 100.0  # insightface: the extra coordinate of a noisy distractor (clean ones get 0)


def parse_args(argv=None):
    parser = CliParser(description=__doc__.split("\n")[0])
    parser.add_argument("--action", required=True, choices=ACTIONS, help="the step to run")
    parser.add_argument("--facescrub_dir", type=Path, help="crop: FaceScrub photos <identity>/<image> (+ .json)")
    parser.add_argument("--megaface_dir", type=Path, help="crop: MegaFace distractor photos (FlickrFinal2, + .json)")
    parser.add_argument("--aligned_dir", type=Path, help="crop output / gen_features input: facescrub/ and megaface/")
    parser.add_argument("--features_dir", type=Path,
                        help="gen_features output / remove_noise and evaluate input: facescrub/ and megaface/")
    parser.add_argument("--clean_dir", type=Path, help="remove_noise output (default: <features_dir>_clean)")
    parser.add_argument("--facescrub_list", type=Path,
                        help="the devkit's facescrub_features_list.json (default: every image, identity = folder)")
    parser.add_argument("--megaface_lists", type=Path,
                        help="the devkit's templatelists folder with megaface_features_list.json_<N>_1 "
                             "(default: every image, subsets = prefixes of a seeded shuffle)")
    parser.add_argument("--sizes", default=None,
                        help="distractor subset sizes, comma-separated (default: every list in --megaface_lists, "
                             "else 10,100,1000,10000,100000,1000000 capped at the images available)")
    parser.add_argument("--algo", default="pgaml", help="feature file suffix: <image>_<algo>.bin")
    add_model_arguments(parser, required=False, prefix="gen_features: ")
    parser.add_argument("--batch_size", type=int, default=256, help="gen_features: images per forward pass")
    add_flip_argument(parser, prefix="gen_features: ")
    parser.add_argument("--facescrub_noises", type=Path, help="remove_noise: facescrub_noises.txt")
    parser.add_argument("--megaface_noises", type=Path, help="remove_noise: megaface_noises.txt")
    parser.add_argument("--seed", type=int, default=0, help="remove_noise: seed of the noisy probes' jitter")
    parser.add_argument("--chunk_size", type=int, default=CHUNK_SIZE, help="evaluate: distractors scored at a time")
    parser.add_argument("--out", type=Path, default=None, help="evaluate: report folder "
                        "(default: work_space/megaface/<algo>)")
    parser.add_argument("--workers", type=int, default=1, help="crop_megaface: parallel processes")
    parser.add_argument("--detect", action="store_true",
                        help="crop_megaface: align on MTCNN's five landmarks of the face matching the JSON box "
                             "(the JSON's three points or box where no detection matches)")
    parser.add_argument("--mtcnn_weights", type=Path, default=None,
                        help="crop_megaface --detect: folder with pnet.pt, rnet.pt, onet.pt "
                             "(default: the facenet-pytorch wheel's)")
    parser.add_argument("--force", action="store_true", help="crop/gen_features: redo outputs that exist")
    args = parser.parse_args(argv)
    _check_args(parser, args)
    return args


REQUIRED = {
    "crop_megaface": ("aligned_dir",),
    "gen_features": ("model", "aligned_dir", "features_dir"),
    "remove_noise": ("features_dir",),
    "evaluate": ("features_dir",),
}


def _check_args(parser, args) -> None:
    for name in REQUIRED[args.action]:
        if getattr(args, name) is None:
            parser.error(f"--action {args.action} needs --{name}")
    if args.action == "crop_megaface" and args.facescrub_dir is None and args.megaface_dir is None:
        parser.error("--action crop_megaface needs --facescrub_dir and/or --megaface_dir")
    if (args.detect or args.mtcnn_weights) and args.action != "crop_megaface":
        parser.error("--detect and --mtcnn_weights belong to --action crop_megaface")
    if args.mtcnn_weights is not None and not args.detect:
        parser.error("--mtcnn_weights is for --detect")
    if args.action == "remove_noise" and args.facescrub_noises is None and args.megaface_noises is None:
        parser.error("--action remove_noise needs --facescrub_noises and/or --megaface_noises")
    for flag in ("batch_size", "chunk_size", "workers"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    if not args.algo or any(c in args.algo for c in "/\\") or args.algo.strip() != args.algo:
        parser.error(f"--algo must be a plain name (it ends every feature file name), got {args.algo!r}")
    if args.sizes is not None:
        try:
            args.sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
        except ValueError:
            parser.error(f"--sizes must be comma-separated integers, got {args.sizes!r}")
        if not args.sizes or args.sizes[0] < 1:
            parser.error("--sizes must hold positive integers")
    for flag in ("facescrub_dir", "megaface_dir", "aligned_dir", "features_dir"):
        folder = getattr(args, flag)
        if folder is not None and _reads(args.action, flag) and not folder.is_dir():
            raise UserError(f"{folder}: --{flag} folder not found")
    for flag in ("facescrub_list", "facescrub_noises", "megaface_noises", "model"):
        path = getattr(args, flag)
        if path is not None and not path.is_file():
            raise UserError(f"{path}: --{flag} file not found")
    if args.megaface_lists is not None and not args.megaface_lists.is_dir():
        raise UserError(f"{args.megaface_lists}: --megaface_lists folder not found")


def _reads(action: str, flag: str) -> bool:
    """Whether `action` reads the folder of `flag` (an output folder need not exist yet)."""
    return {"crop_megaface": flag in ("facescrub_dir", "megaface_dir"),
            "gen_features": flag == "aligned_dir"}.get(action, flag == "features_dir")


def _part(root: Path, name: str) -> Path:
    part = root / name
    if not part.is_dir():
        raise UserError(f"{part}: folder not found (expected {root} to hold facescrub/ and megaface/)")
    return part


def _sets(args, root: Path, algo: str | None = None) -> tuple[ProbeSet, DistractorSets]:
    """The probes and distractors under `root` (facescrub/, megaface/), from the lists when given."""
    probes = probe_set(_part(root, "facescrub"), args.facescrub_list, algo)
    distractors = distractor_sets(_part(root, "megaface"), args.megaface_lists, args.sizes, algo=algo)
    return probes, distractors


# ----------------------------------------------------------------------------- crop_megaface
# Progress bars are transient (leave=False): a run that stops on bad input shows just its error line.

# With --detect: the MTCNN, loaded once before the workers fork (they inherit it; the parent runs no
# inference, so no thread pool is copied mid-use).
_DETECTOR = None


# faces.pipeline's names for how a face was aligned -> this command's summary keys
HOW = {"detected": "detected", "landmarks": "landmarks", "box": "box", "fallback": "whole"}


def crop_one(job: tuple[str, str, bool, bool]) -> str:
    """Align one photo into the output; returns how: 'detected', 'landmarks', 'box', 'whole', or 'skipped'."""
    source, target, force, detect = job
    source, target = Path(source), Path(target)
    if target.is_file() and not force:
        return "skipped"
    rgb = read_image_file(source)
    meta_path = source.with_name(source.name + ".json")
    meta = read_face_json(meta_path) if meta_path.is_file() else None
    box, landmarks, indices = (meta.box, meta.landmarks, meta.template_indices) if meta else (None, None, None)
    try:
        face = align_photo(rgb, _DETECTOR if detect else None, box=box, landmarks=landmarks,
                           template_indices=indices, fallback=NO_FACE_CROP)
    except ValueError as err:
        raise UserError(f"{meta_path}: unusable landmarks: {err}") from None
    aligned, how = face.image, HOW[face.how]
    data = encode_png(aligned) if target.suffix.lower() == ".png" else encode_jpeg(aligned, quality=95)
    atomic_write_bytes(target, data, durable=False)
    return how


def crop_megaface(args) -> None:
    global _DETECTOR
    if args.detect:
        from faces.pipeline import make_detector
        _DETECTOR = make_detector("mtcnn", mtcnn_weights=args.mtcnn_weights)
        if args.workers > 1:
            torch.set_num_threads(1)  # each forked worker runs the detector on one core
    parts = []
    if args.facescrub_dir is not None:
        parts.append(("facescrub", args.facescrub_dir, probe_set(args.facescrub_dir, args.facescrub_list).paths))
    if args.megaface_dir is not None:
        sets = distractor_sets(args.megaface_dir, args.megaface_lists, args.sizes)
        parts.append(("megaface", args.megaface_dir, sets.paths))
    for name, source_root, paths in parts:
        jobs = [(str(source_root / p), str(args.aligned_dir / name / p), args.force, args.detect) for p in paths]
        counts: dict[str, int] = {}
        for how in tqdm(parallel_map(crop_one, jobs, args.workers), total=len(jobs), desc=f"crop {name}", unit="img",
                        leave=False):
            counts[how] = counts.get(how, 0) + 1
        summary = ", ".join(f"{counts.get(k, 0)} {label}" for k, label in
                            (("detected", "by MTCNN landmarks"), ("landmarks", "by JSON landmarks"),
                             ("box", "by JSON face box"),
                             ("whole", "without face JSON (central crop)"), ("skipped", "already there")))
        print(f"{name}: {len(jobs)} images -> {args.aligned_dir / name}: {summary}")


# ----------------------------------------------------------------------------- gen_features

def load_aligned(path: Path) -> np.ndarray:
    return read_aligned_face(path, ALIGNED_SIZE, " (run --action crop_megaface first)")


def gen_features(args) -> None:
    from inference.loader import conventions_overrides, load_model

    probes, distractors = _sets(args, args.aligned_dir)
    model = load_model(args.model, args.net, args.device, conventions_overrides(args))
    print(model.describe())
    for name, paths in (("facescrub", probes.paths), ("megaface", distractors.paths)):
        todo = [p for p in paths if args.force or not feature_path(args.features_dir / name, p, args.algo).is_file()]
        with tqdm(total=len(todo), desc=f"features {name}", unit="img", leave=False) as bar:
            for start in range(0, len(todo), args.batch_size):
                batch = todo[start:start + args.batch_size]
                images = np.stack([load_aligned(args.aligned_dir / name / p) for p in batch])
                features = model.embed(images, args.batch_size, flip=args.flip)
                for path, feature in zip(batch, features):
                    write_matrix(feature_path(args.features_dir / name, path, args.algo), feature)
                bar.update(len(batch))
        print(f"{name}: {len(todo)} features written, {len(paths) - len(todo)} already there "
              f"-> {args.features_dir / name}/<image>_{args.algo}.bin")


# ----------------------------------------------------------------------------- remove_noise

def clean_probe_features(features: np.ndarray, identities: list[str], noisy: np.ndarray, seed: int) -> np.ndarray:
    """insightface's remove_noises.py for FaceScrub: one extra coordinate (0) is appended to every
    feature; a noisy (mislabelled) image's feature is replaced by its identity's centre (the sum of
    the identity's clean features) plus U(-0.001, 0.001) jitter, L2-normalised — so the noise lists take
    the label errors out of the ranking instead of penalising every model for them."""
    cleaned = np.concatenate([features, np.zeros((len(features), 1), np.float32)], axis=1)
    rng = np.random.default_rng(seed)
    identities = np.asarray(identities)
    for row in np.flatnonzero(noisy):
        same = (identities == identities[row]) & ~noisy
        if not same.any():
            raise UserError(f"remove_noise: every image of {identities[row]} is in the noise list: "
                            f"no clean centre to replace them with")
        centre = cleaned[same].sum(axis=0, dtype=np.float64)
        centre[:-1] += rng.uniform(-NOISE_JITTER, NOISE_JITTER, size=features.shape[1])
        cleaned[row] = centre / np.linalg.norm(centre)
    return cleaned


def remove_noise(args) -> None:
    clean_dir = args.clean_dir or args.features_dir.with_name(args.features_dir.name + "_clean")
    if clean_dir.resolve() == args.features_dir.resolve():
        raise UserError(f"--clean_dir {clean_dir}: must differ from --features_dir (a second run would "
                        f"extend the cleaned features again)")
    probes, distractors = _sets(args, args.features_dir, args.algo)
    facescrub_noise = {facescrub_noise_key(e) for e in read_noise_list(args.facescrub_noises)} \
        if args.facescrub_noises else set()
    megaface_noise = {megaface_noise_key(e) for e in read_noise_list(args.megaface_noises)} \
        if args.megaface_noises else set()

    source, target = args.features_dir / "facescrub", clean_dir / "facescrub"
    features = read_features([feature_path(source, p, args.algo) for p in probes.paths])
    noisy = np.array([facescrub_noise_key(p) in facescrub_noise for p in probes.paths], dtype=bool)
    cleaned = clean_probe_features(features, probes.identities, noisy, args.seed)
    for path, feature in zip(probes.paths, tqdm(cleaned, desc="clean facescrub", unit="img", leave=False)):
        write_matrix(feature_path(target, path, args.algo), feature)
    print(f"facescrub: {len(probes.paths)} features, {int(noisy.sum())} noisy ones replaced by their "
          f"identity centre ({len(facescrub_noise)} names in the noise list) -> {target}")

    source, target = args.features_dir / "megaface", clean_dir / "megaface"
    marked = 0
    for path in tqdm(distractors.paths, desc="clean megaface", unit="img", leave=False):
        is_noise = megaface_noise_key(path) in megaface_noise
        feature = np.append(read_feature(feature_path(source, path, args.algo)),
                            np.float32(DISTRACTOR_NOISE_MARK if is_noise else 0.0))
        atomic_write_bytes(feature_path(target, path, args.algo), encode_matrix(feature), durable=False)
        marked += is_noise
    print(f"megaface: {len(distractors.paths)} features, {marked} noisy ones marked (extra coordinate "
          f"{DISTRACTOR_NOISE_MARK:g}, never ranked above a mate; {len(megaface_noise)} paths in the noise list) "
          f"-> {target}")


# ----------------------------------------------------------------------------- evaluate

def evaluate(args) -> None:
    probes, distractors = _sets(args, args.features_dir, args.algo)
    probe_root, distractor_root = args.features_dir / "facescrub", args.features_dir / "megaface"
    probe_features = read_features([feature_path(probe_root, p, args.algo) for p in probes.paths])
    evaluator = OpenSetEvaluator(probe_features, probes.labels(), len(distractors.sizes))
    print(f"{len(probes.paths)} probes of {len(set(probes.identities))} identities, "
          f"{len(distractors.paths)} distractors, subsets {', '.join(f'{s:,}' for s in distractors.sizes)}")
    with tqdm(total=len(distractors.paths), desc="score distractors", unit="img", leave=False) as bar:
        for start in range(0, len(distractors.paths), args.chunk_size):
            chunk_paths = [feature_path(distractor_root, p, args.algo)
                           for p in distractors.paths[start:start + args.chunk_size]]
            chunk = read_features(chunk_paths)
            if chunk.shape[1] != probe_features.shape[1]:
                raise UserError(f"{chunk_paths[0]}: feature has {chunk.shape[1]} values, the probes have "
                                f"{probe_features.shape[1]} (mixing cleaned and raw features?)")
            evaluator.add(chunk, distractors.membership[start:start + args.chunk_size])
            bar.update(len(chunk_paths))
    result = evaluator.result(distractors.sizes, far_targets=DEFAULT_FAR_TARGETS)
    result.extra.update({"algo": args.algo, "features_dir": str(args.features_dir)})
    table = result.markdown()
    print(table, end="")
    out = default_output_dir(args.out, "megaface", args.algo)
    atomic_write_text(out / "results.md", f"# MegaFace challenge 1: {args.algo}\n\n{table}")
    atomic_write_text(out / "results.json", json.dumps(result.as_dict(), indent=1) + "\n")
    save_cmc_png(result, out / "cmc.png", title=f"MegaFace ({args.algo})")
    save_roc_png(result, out / "roc.png", title=f"MegaFace ({args.algo})")
    headline = result.tar(1e-6)
    print(f"rank-1 @ {result.sizes[-1]:,} distractors: {100 * result.rank1():.2f}%"
          + ("" if math.isnan(headline) else f", TAR@FAR=1e-6: {headline:.4f}")
          + f"; wrote {out}/results.md, results.json, cmc.png, roc.png")


def main(argv=None) -> int:
    args = parse_args(argv)
    {"crop_megaface": crop_megaface, "gen_features": gen_features,
     "remove_noise": remove_noise, "evaluate": evaluate}[args.action](args)
    return 0


if __name__ == "__main__":
    run_cli(main)
