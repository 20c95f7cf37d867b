"""Validate and index an emore-style RecordIO folder, convert its verification .bin sets, optionally unpack.

    python data/prepare_data.py [--source data/faces_emore] [--out DIR] [--unpack] [--pose | --pose_file FILE]
                                [--workers N] [--skip_decode_check] [--force]
    python data/prepare_data.py --pairs_from FOLDER --out DIR/NAME [--pairs N] [--folds 10] [--seed S]
                                [--align detect] [--pairs_file PAIRS.txt]     a val set from your own faces (data/pairs.py)

Steps (each with a progress bar, each skipped on a re-run when its outputs are complete):
  1. scan     every record of train.rec through train.idx: framing, magic, lengths, labels within
              [0, num_classes), image bytes (decoded unless --skip_decode_check); writes meta.json
  2. valsets  every *.bin in the source (lfw, agedb_30, cfp_fp, ...) -> <out>/<name>/images.npy, issame.npy
  3. unpack   (--unpack) imgs/<class>/<key>.jpg holding the stored image bytes unchanged
  4. pose     (--pose) pose.npy: yaw, pitch of every image (MTCNN's O-Net landmarks on the aligned crop +
              faces.pose.head_pose), NaN where no face is seen; resumable. Or (--pose_file) read from a file.
Every output is written under a temporary name and renamed, so an interrupted run damages nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python data/prepare_data.py`: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from tqdm import tqdm

from data.images import ImageDecodeError, check_image_bytes, decode_rgb
from data.recordio import (RecordError, RecordLayout, RecordReader, class_label, detect_layout,
                           read_property, read_record_at, unpack)
from data.pose_file import read_pose_file
from data.valsets import convert_bin, is_converted
from utils import CliParser, UserError, atomic_save_npy, atomic_write_bytes, atomic_write_text, parallel_map, run_cli

CHUNK = 2048


# ---------------------------------------------------------------- step 1: scan

def source_fingerprint(source: Path) -> dict:
    """Size and modification time of the files meta.json was computed from (decides re-use on a re-run)."""
    files = {}
    for name in ("train.rec", "train.idx", "property"):
        path = source / name
        if path.is_file():
            stat = path.stat()
            files[name] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return files


def check_source(source: Path) -> None:
    if not source.is_dir():
        raise UserError(f"--source {source}: folder not found (expected train.rec, train.idx, property)")
    for name in ("train.rec", "train.idx"):
        if not (source / name).is_file():
            raise UserError(f"{source / name}: file not found (a RecordIO folder needs train.rec and train.idx)")


def scan_records(source: Path, workers: int, decode: bool) -> dict:
    """Check every record; return the meta.json contents."""
    reader = RecordReader(source / "train.rec", source / "train.idx")
    layout = detect_layout(reader)
    prop = read_property(source)
    image_keys = np.sort(layout.image_keys)
    offsets = reader.offsets_of(image_keys)
    labels = _scan_images(reader, image_keys, offsets, workers, decode)
    _check_identity_records(reader, layout)
    num_classes, image_size = _class_count(source, prop, labels, image_keys)
    return {"num_images": int(len(image_keys)), "num_classes": int(num_classes),
            "image_size": list(image_size), "label_style": layout.label_style,
            "source_files": source_fingerprint(source)}


def _scan_images(reader: RecordReader, keys: np.ndarray, offsets: np.ndarray, workers: int,
                 decode: bool) -> np.ndarray:
    jobs = [(str(reader.rec_path), keys[i:i + CHUNK], offsets[i:i + CHUNK], decode)
            for i in range(0, len(keys), CHUNK)]
    labels = np.empty(len(keys), dtype=np.int64)
    done = 0
    with tqdm(total=len(keys), desc="scan train.rec", unit="img", smoothing=0.1) as bar:
        for chunk_labels, error in parallel_map(_scan_chunk, jobs, workers):
            if error is not None:
                raise RecordError(error)
            labels[done:done + len(chunk_labels)] = chunk_labels
            done += len(chunk_labels)
            bar.update(len(chunk_labels))
    return labels


def _scan_chunk(job) -> tuple[np.ndarray, str | None]:
    """Check one chunk of image records (runs in a worker); return (labels, first error or None)."""
    rec_path, keys, offsets, decode = job
    reader_map = _worker_map(rec_path)
    labels = np.empty(len(keys), dtype=np.int64)
    for i, (key, offset) in enumerate(zip(keys.tolist(), offsets.tolist())):
        where = f"{rec_path}: record key {key} at offset {offset}"
        try:
            payload, _ = read_record_at(reader_map, offset)
            header, data = unpack(payload)
            if decode:
                decode_rgb(data)  # checks the bytes' structure first, as check_image_bytes does
            else:
                check_image_bytes(data)
        except (ValueError, ImageDecodeError) as err:
            return labels[:i], f"{where}: {err}"
        label = class_label(header)
        if not float(label).is_integer() or label < 0:
            return labels[:i], f"{where}: label {label} is not a class index (a non-negative integer)"
        labels[i] = int(label)
    return labels, None


_MAPS: dict = {}


def _worker_map(rec_path: str):
    """One read-only mapping of the .rec per process (workers reuse theirs across chunks)."""
    if rec_path not in _MAPS:
        import mmap
        with open(rec_path, "rb") as f:
            _MAPS[rec_path] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    return _MAPS[rec_path]


def _check_identity_records(reader: RecordReader, layout: RecordLayout) -> None:
    for key in layout.identity_keys.tolist():
        header, _ = reader.read_unpacked(key)
        if header.flag < 2:
            raise RecordError(f"{reader.rec_path}: identity record key {key} has no [first, end) key range label")


def _class_count(source: Path, prop, labels: np.ndarray, keys: np.ndarray) -> tuple[int, tuple[int, int]]:
    if len(labels) == 0:
        raise RecordError(f"{source / 'train.rec'}: no image records")
    if prop is None:
        return int(labels.max()) + 1, (112, 112)
    num_classes, image_size = prop
    bad = np.flatnonzero(labels >= num_classes)
    if len(bad):
        key = int(keys[bad[0]])
        raise RecordError(f"{source / 'train.rec'}: record key {key}: label {int(labels[bad[0]])} outside "
                          f"[0, {num_classes}) ({source / 'property'} declares {num_classes} classes)")
    return num_classes, image_size


def prepare_meta(source: Path, out: Path, workers: int, decode: bool, force: bool) -> dict:
    meta_path = out / "meta.json"
    if meta_path.is_file() and not force:
        meta = json.loads(meta_path.read_text())
        if meta.get("source_files") == source_fingerprint(source):
            print(f"scan: {meta_path} is up to date ({meta['num_images']} images, {meta['num_classes']} classes)")
            return meta
    start = time.perf_counter()
    meta = scan_records(source, workers, decode)
    elapsed = time.perf_counter() - start
    atomic_write_text(meta_path, json.dumps(meta, indent=2) + "\n")
    print(f"scan: {meta['num_images']} images, {meta['num_classes']} classes, label style "
          f"{meta['label_style']} in {elapsed:.1f} s ({meta['num_images'] / max(elapsed, 1e-9):.0f} img/s)")
    return meta


# ---------------------------------------------------------------- step 2: val sets

def prepare_valsets(source: Path, out: Path, workers: int, force: bool) -> list[str]:
    names = []
    for bin_path in sorted(source.glob("*.bin")):
        name = bin_path.stem
        names.append(name)
        if is_converted(out, name) and not force:
            print(f"valsets: {name} already converted")
            continue
        with tqdm(desc=f"convert {bin_path.name}", unit="img") as bar:
            convert_bin(bin_path, out, workers=workers, progress=bar.update)
    return names


# ---------------------------------------------------------------- step 3: unpack

def unpack_images(source: Path, out: Path, workers: int, force: bool) -> None:
    """imgs/<class>/<key>.jpg with the stored bytes as they are (no re-encode, so no quality loss)."""
    imgs = out / "imgs"
    done_marker = imgs / ".complete"
    if done_marker.is_file() and not force:
        print(f"unpack: {imgs} already complete")
        return
    reader = RecordReader(source / "train.rec", source / "train.idx")
    keys = np.sort(detect_layout(reader).image_keys)
    offsets = reader.offsets_of(keys)
    jobs = [(str(reader.rec_path), str(imgs), keys[i:i + CHUNK], offsets[i:i + CHUNK])
            for i in range(0, len(keys), CHUNK)]
    with tqdm(total=len(keys), desc="unpack", unit="img", smoothing=0.1) as bar:
        for written, error in parallel_map(_unpack_chunk, jobs, workers):
            if error is not None:
                raise RecordError(error)
            bar.update(written)
    atomic_write_text(done_marker, f"{len(keys)}\n")


def _unpack_chunk(job) -> tuple[int, str | None]:
    rec_path, imgs, keys, offsets = job
    buf = _worker_map(rec_path)
    for key, offset in zip(keys.tolist(), offsets.tolist()):
        try:
            header, data = unpack(read_record_at(buf, offset)[0])
            check_image_bytes(data)
        except (ValueError, ImageDecodeError) as err:
            return 0, f"{rec_path}: record key {key} at offset {offset}: {err}"
        target = Path(imgs) / str(int(class_label(header))) / f"{key}{_extension(data)}"
        if not target.exists():  # each file appears by rename, so an existing one is whole
            atomic_write_bytes(target, data, durable=False)
    return len(keys), None


def _extension(data) -> str:
    return ".jpg" if bytes(data[:2]) == b"\xff\xd8" else ".png"


# ---------------------------------------------------------------- step 4: head pose

POSE_CHUNK = 1024


def prepare_pose(source: Path, out: Path, workers: int, force: bool, detector: str = "mtcnn") -> None:
    """pose.npy: float32 (num_keys, 2) yaw, pitch in degrees by record key (NaN: no face, or not an image),
    estimated on each aligned crop (`faces.pose.AlignedCropPose`). Resumable: the rows are filled in a partial
    file whose progress is recorded after every chunk, so a killed run continues where it stopped."""
    target = out / "pose.npy"
    reader, keys, num_keys = _image_keys(source)
    if target.is_file() and not force and np.load(target, mmap_mode="r").shape == (num_keys, 2):
        print(f"pose: {target} already complete")
        return
    partial, done_path = out / ".pose.npy.partial", out / ".pose.npy.done"
    chunks = [(i, keys[i:i + POSE_CHUNK]) for i in range(0, len(keys), POSE_CHUNK)]
    table, done = _open_partial(partial, done_path, num_keys, force)
    offsets = reader.offsets_of(keys)
    jobs = [(str(reader.rec_path), chunk_keys, offsets[i:i + POSE_CHUNK], detector) for i, chunk_keys in chunks[done:]]
    start = time.perf_counter()
    with tqdm(total=len(keys), initial=min(done * POSE_CHUNK, len(keys)), desc="pose", unit="img",
              smoothing=0.1) as bar:
        for index, (chunk_keys, poses, error) in enumerate(parallel_map(_pose_chunk, jobs, workers), start=done):
            if error is not None:
                raise RecordError(error)
            table[chunk_keys] = poses
            table.flush()
            atomic_write_text(done_path, f"{index + 1}\n")
            bar.update(len(chunk_keys))
    del table
    os.replace(partial, target)
    done_path.unlink(missing_ok=True)
    rate = sum(len(job[1]) for job in jobs) / max(time.perf_counter() - start, 1e-9)
    poses = np.load(target, mmap_mode="r")[keys]
    print(f"pose: {len(keys)} images, {int(np.isnan(poses[:, 0]).sum())} without a face (NaN) -> {target} "
          f"({rate:.0f} img/s)")


def _image_keys(source: Path) -> tuple[RecordReader, np.ndarray, int]:
    """The reader, the image records' keys (sorted) and the rows a per-key table needs (largest key + 1)."""
    reader = RecordReader(source / "train.rec", source / "train.idx")
    keys = np.sort(detect_layout(reader).image_keys)
    return reader, keys, int(max(reader.keys.max(), keys.max())) + 1


def _open_partial(partial: Path, done_path: Path, num_keys: int, force: bool):
    """The partial table and the number of chunks already in it (0 for a fresh start)."""
    if not force and partial.is_file() and done_path.is_file():
        try:
            table = np.load(partial, mmap_mode="r+")
            done = int(done_path.read_text())
            if table.shape == (num_keys, 2):
                print(f"pose: continuing after {done} chunks of {POSE_CHUNK}")
                return table, done
        except (ValueError, OSError):
            pass
    table = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float32, shape=(num_keys, 2))
    table[:] = np.nan
    table.flush()
    atomic_write_text(done_path, "0\n")
    return table, 0


def pose_from_file(source: Path, out: Path, pose_file: Path) -> None:
    """pose.npy (+ height.npy) from a pose file (`data.pose_file`); skipped rows listed in pose_skipped.txt."""
    _, keys, num_keys = _image_keys(source)
    table = read_pose_file(pose_file, keys, num_keys)
    if not table.matched:
        raise UserError(f"{pose_file}: no row matches an image record of {source / 'train.rec'} "
                        f"({len(table.skipped)} rows; first: {table.skipped[0] if table.skipped else 'none'})")
    atomic_save_npy(out / "pose.npy", table.pose)
    if table.height is not None:
        atomic_save_npy(out / "height.npy", table.height)
    skipped = out / "pose_skipped.txt"
    atomic_write_text(skipped, "".join(line + "\n" for line in table.skipped))
    print(f"pose: {table.matched} of {len(keys)} images from {pose_file}"
          f"{' (+ height.npy)' if table.height is not None else ''}; {len(table.skipped)} rows skipped"
          f"{f' (listed in {skipped})' if table.skipped else ''} -> {out / 'pose.npy'}")


_POSE: dict = {}   # one estimator per detector and worker process


def _pose_chunk(job) -> tuple[np.ndarray, np.ndarray, str | None]:
    rec_path, keys, offsets, detector = job
    if detector not in _POSE:
        import cv2
        import torch

        from faces.pipeline import make_detector
        from faces.pose import AlignedCropPose
        torch.set_num_threads(1)  # one core per worker process
        cv2.setNumThreads(1)
        _POSE[detector] = AlignedCropPose(make_detector(detector))
    buf = _worker_map(rec_path)
    images = []
    for key, offset in zip(keys.tolist(), offsets.tolist()):
        try:
            images.append(decode_rgb(unpack(read_record_at(buf, offset)[0])[1]))
        except (ValueError, ImageDecodeError) as err:
            return keys, None, f"{rec_path}: record key {key} at offset {offset}: {err}"
    return keys, _POSE[detector](np.stack(images)), None


# ---------------------------------------------------------------- CLI

def parse_args(argv=None) -> argparse.Namespace:
    parser = CliParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", type=Path, default=Path("data/faces_emore"),
                        help="RecordIO folder: train.rec, train.idx, property and the *.bin val sets")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: --source)")
    parser.add_argument("--unpack", action="store_true",
                        help="also write imgs/<class>/<key>.jpg (TreB1eN's folder layout; not needed to train)")
    parser.add_argument("--pose", action="store_true",
                        help="also estimate every image's yaw and pitch into pose.npy (what --head pgaml needs)")
    parser.add_argument("--detector", default="mtcnn", choices=("mtcnn", "yunet"),
                        help="--pose: MTCNN's O-Net on the crop's fixed face box, or YuNet's detection on the crop")
    parser.add_argument("--pose_file", type=Path, default=None,
                        help="take pose.npy (and height.npy) from this file instead: the PGAML authors' JSON "
                             "(img_path, yaw, pitch, ...) or a CSV key_or_path,yaw[,pitch][,height]")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel processes (default: all cores)")
    parser.add_argument("--skip_decode_check", action="store_true",
                        help="check image bytes structurally only, without decoding every image (faster)")
    parser.add_argument("--force", action="store_true", help="redo every step even where outputs are complete")
    own = parser.add_argument_group("a verification set from your own faces (writes DIR/NAME.bin and DIR/NAME/)")
    own.add_argument("--pairs_from", type=Path, default=None,
                     help="folder with one sub-folder of faces per identity (aligned 112x112, or photos with --align "
                          "detect); --out DIR/NAME names the set")
    own.add_argument("--pairs_file", type=Path, default=None,
                     help="your own pairs instead of drawn ones: 'path1 path2 same' lines, paths relative to "
                          "--pairs_from (default: the file's folder)")
    own.add_argument("--pairs", type=int, default=6000, help="pairs to draw, half same, half different (LFW: 6000)")
    own.add_argument("--folds", type=int, default=10, help="identity-disjoint folds (evaluate with eval.py --folds K)")
    own.add_argument("--seed", type=int, default=0, help="seed of the drawing")
    own.add_argument("--align", choices=("none", "detect"), default="none",
                     help="none: the faces are aligned 112x112 crops; detect: photos, detected and aligned "
                          "(--detector) as align.py does")
    args = parser.parse_args(argv)
    if (args.pairs_from or args.pairs_file) and args.out is None:
        parser.error("--pairs_from / --pairs_file need --out DIR/NAME (the set is written as DIR/NAME.bin and DIR/NAME/)")
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    if args.pose and args.pose_file is not None:
        parser.error("--pose estimates the pose, --pose_file reads it: give one of them")
    return args


def prepare_pairs(args) -> int:
    """--pairs_from / --pairs_file: data.pairs draws or reads the pairs and writes the set."""
    from data.images import encode_jpeg, read_aligned_face
    from data.pairs import identity_folders, make_pairs, read_pairs_file, write_pair_set

    root = args.pairs_from if args.pairs_from is not None else args.pairs_file.parent
    if args.pairs_file is not None:
        pairs = read_pairs_file(args.pairs_file, root)
    else:
        pairs = make_pairs(identity_folders(root), args.pairs, args.folds, args.seed)
    if args.align == "detect":
        from faces.pipeline import PhotoAligner, make_detector

        aligner = PhotoAligner(make_detector(args.detector))
        def load(path):
            return encode_jpeg(aligner(root / path).transpose(1, 2, 0), quality=95)
    else:
        def load(path):
            read_aligned_face(root / path, hint=" (give --align detect for photos)")
            return (root / path).read_bytes()  # an aligned JPEG/PNG goes into the .bin as it is
    with tqdm(desc=f"pairs {args.out.name}", unit="img") as bar:
        folder = write_pair_set(args.out.parent, args.out.name, pairs, load, bar.update)
    same = sum(p.same for p in pairs)
    print(f"{args.out.name}: {len(pairs)} pairs ({same} same, {len(pairs) - same} different) in {folder} and "
          f"{args.out}.bin; evaluate with python eval.py --data_path {args.out.parent} --val_sets {args.out.name}"
          + (f" --folds {args.folds}" if args.pairs_file is None and args.folds != 10 else ""))
    if args.align == "detect" and aligner.fallbacks:
        print(f"no face detected in {len(aligner.fallbacks)} photo(s), centre crop used: "
              + ", ".join(str(p) for p in aligner.fallbacks[:5]))
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.pairs_from is not None or args.pairs_file is not None:
        return prepare_pairs(args)
    source, out = args.source, args.out or args.source
    check_source(source)
    out.mkdir(parents=True, exist_ok=True)
    prepare_meta(source, out, args.workers, not args.skip_decode_check, args.force)
    names = prepare_valsets(source, out, args.workers, args.force)
    print(f"valsets: {', '.join(names) if names else 'no *.bin files found'}")
    if args.unpack:
        unpack_images(source, out, args.workers, args.force)
    if args.pose:
        prepare_pose(source, out, args.workers, args.force, args.detector)
    elif args.pose_file is not None:
        pose_from_file(source, out, args.pose_file)
    print(f"prepared {out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
