"""IJB-B and IJB-C from the files insightface distributes (the layout its recognition/arcface_torch/eval_ijbc.py
reads): 1:1 template verification and 1:N identification, on CPU or GPU, streaming.

Layout, `DIR/` (prefix `ijbc` for IJB-C, `ijbb` for IJB-B):

* `loose_crop/<image_name>`: the face images (JPEG);
* `meta/<p>_name_5pts_score.txt`: one line per image, space-separated, no header:
  `image_name x1 y1 x2 y2 x3 y3 x4 y4 x5 y5 faceness` - five landmarks in `loose_crop` pixels, in ArcFace order
  (eye on the image's left, eye on the right, nose, mouth left, mouth right), then the detector's score;
* `meta/<p>_face_tid_mid.txt`: `image_name template_id media_id`, the same images in the same order (rows are
  matched by order, as insightface does; the names are checked to agree);
* `meta/<p>_template_pair_label.txt`: `template_id1 template_id2 label` (1 = same subject), the 1:1 protocol
  (IJB-C: 15,658,489 pairs, IJB-B: 8,010,270);
* 1:N (optional): the official comma-separated protocol files with a header row, of which the first two columns
  (TEMPLATE_ID, SUBJECT_ID) are read: IJB-C `meta/ijbc_1N_gallery_G1.csv`, `ijbc_1N_gallery_G2.csv`,
  `ijbc_1N_probe_mixed.csv`; IJB-B `meta/ijbb_1N_gallery_S1.csv`, `ijbb_1N_gallery_S2.csv`,
  `ijbb_1N_probe_mixed.csv`. Their template ids are those of `<p>_face_tid_mid.txt`.

The pipeline, as eval_ijbc.py with its default test mode except for one thing:
each image is aligned on its five landmarks to the ArcFace 112x112 template (`faces.alignment`, the similarity
insightface estimates), embedded with flip (the sum of the image's and its mirror's), optionally multiplied by
its faceness score (insightface's "D1", on by default); the images of one media (video frames) are averaged, the
media of one template summed, and the template feature L2-normalised; a pair's score is the cosine of its two
templates. The one difference: our embeddings are L2-normalised before pooling (insightface's "N0"), since our
models and ONNX exports output unit vectors; eval_ijbc.py's default keeps the feature norm ("N1").

1:1: TAR at FAR 1e-6 ... 1e-1 over all pairs (`verification.tar_at_far_scores`: the lowest threshold whose FAR is
within the target, where eval_ijbc.py takes the ROC point nearest the target) and the ROC.
1:N: each gallery (G1, G2) searched by all mixed probes; probes of the other gallery's subjects are the non-mated
ones; rank-1/5/10 over the mated probes and TPIR at FPIR 1e-2 / 1e-1 (`identification.search_gallery`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils import UserError

TARGETS = {"IJBC": "ijbc", "IJBB": "ijbb"}
GALLERY_FILES = {"IJBC": ("G1", "G2"), "IJBB": ("S1", "S2")}
PAIR_CHUNK = 65_536  # pairs scored at a time: two 65,536 x 512 float64 blocks, 0.5 GB


@dataclass
class IJBImages:
    names: list[str]           # file names under loose_crop/
    landmarks: np.ndarray      # float32 (N, 5, 2)
    faceness: np.ndarray       # float32 (N,)
    templates: np.ndarray      # int64 (N,)
    medias: np.ndarray         # int64 (N,)


@dataclass
class IJBProtocol:
    root: Path
    target: str                # 'IJBC' or 'IJBB'
    images: IJBImages
    pair_templates: np.ndarray  # int64 (P, 2)
    pair_labels: np.ndarray     # bool (P,)
    galleries: dict[str, tuple[np.ndarray, np.ndarray]]  # name -> (template ids, subject ids), one row per template
    probes: tuple[np.ndarray, np.ndarray] | None         # the mixed probes' (template ids, subject ids)

    @property
    def prefix(self) -> str:
        return TARGETS[self.target]

    @property
    def image_dir(self) -> Path:
        return self.root / "loose_crop"

    def meta(self, name: str) -> Path:
        return self.root / "meta" / f"{self.prefix}_{name}"


def _lines(path: Path) -> list[list[str]]:
    try:
        with open(path, encoding="utf-8") as f:
            return [line.split() for line in f if line.strip()]
    except FileNotFoundError:
        raise UserError(f"{path}: not found (expected the IJB layout DIR/meta/, DIR/loose_crop/; see the README)") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read: {err}") from None


def _table(path: Path, columns: int, number_columns: slice, dtype) -> tuple[list[list[str]], np.ndarray]:
    """(rows, the numeric columns as an array); every row must have `columns` fields."""
    rows = _lines(path)
    for number, row in enumerate(rows, 1):
        if len(row) != columns:
            raise UserError(f"{path}: line {number} has {len(row)} fields, expected {columns}")
    try:
        values = np.array([row[number_columns] for row in rows], dtype=dtype).reshape(len(rows), -1)
    except ValueError:
        bad = next(i for i, row in enumerate(rows, 1) if not _parses(row[number_columns], dtype))
        raise UserError(f"{path}: line {bad} holds a value that is not a number: {' '.join(rows[bad - 1])}") from None
    return rows, values


def _parses(values, dtype) -> bool:
    try:
        np.array(values, dtype=dtype)
        return True
    except ValueError:
        return False


def _read_pairs(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(P, 2) template ids and labels; np.loadtxt is ~10x faster than splitting 15M lines in Python."""
    try:
        values = np.loadtxt(path, dtype=np.int64, ndmin=2)
    except FileNotFoundError:
        raise UserError(f"{path}: not found (the 1:1 protocol file)") from None
    except ValueError as err:
        raise UserError(f"{path}: not 'template_id1 template_id2 label' lines of integers: {err}") from None
    if values.shape[1] != 3 or not np.isin(values[:, 2], (0, 1)).all():
        raise UserError(f"{path}: expected three integers per line (template_id1 template_id2 label 0/1)")
    return values[:, :2], values[:, 2] == 1


def _read_1n(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One (template id, subject id) per template from an official 1:N CSV (a header, then one row per image)."""
    try:
        with open(path, encoding="utf-8") as f:
            next(f, None)  # TEMPLATE_ID,SUBJECT_ID,FILENAME,...
            rows = [line.split(",")[:2] for line in f if line.strip()]
        values = np.array(rows, dtype=np.int64).reshape(-1, 2)
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read: {err}") from None
    except ValueError:
        raise UserError(f"{path}: the first two columns must be TEMPLATE_ID,SUBJECT_ID integers") from None
    templates, first = np.unique(values[:, 0], return_index=True)
    subjects = values[first, 1]
    conflicting = np.unique(values, axis=0).shape[0] != templates.size
    if conflicting:
        raise UserError(f"{path}: a template is listed with two different subjects")
    return templates, subjects


def read_ijb(root: str | Path, target: str = "IJBC") -> IJBProtocol:
    """The images, 1:1 pairs and (where their files are there) the 1:N galleries and probes of `root`."""
    root = Path(root)
    target = target.upper()
    if target not in TARGETS:
        raise UserError(f"--target: IJBC or IJBB, got {target!r}")
    if not root.is_dir():
        raise UserError(f"{root}: IJB folder not found")
    protocol = IJBProtocol(root, target, None, None, None, {}, None)  # type: ignore[arg-type]
    points_file, media_file = protocol.meta("name_5pts_score.txt"), protocol.meta("face_tid_mid.txt")
    point_rows, points = _table(points_file, 12, slice(1, 12), np.float64)
    media_rows, ids = _table(media_file, 3, slice(1, 3), np.int64)
    if len(point_rows) != len(media_rows):
        raise UserError(f"{media_file}: {len(media_rows)} lines, {points_file} has {len(point_rows)} "
                        "(rows are matched by order)")
    if not point_rows:
        raise UserError(f"{points_file}: no images listed")
    mismatch = next((i for i, (a, b) in enumerate(zip(point_rows, media_rows)) if a[0] != b[0]), None)
    if mismatch is not None:
        raise UserError(f"{media_file}: line {mismatch + 1} names {media_rows[mismatch][0]}, line {mismatch + 1} of "
                        f"{points_file} names {point_rows[mismatch][0]} (rows are matched by order)")
    protocol.images = IJBImages([row[0] for row in point_rows], points[:, :10].reshape(-1, 5, 2).astype(np.float32),
                                points[:, 10].astype(np.float32), ids[:, 0], ids[:, 1])
    pairs_file = protocol.meta("template_pair_label.txt")
    protocol.pair_templates, protocol.pair_labels = _read_pairs(pairs_file)
    known = np.unique(protocol.images.templates)
    unknown = np.setdiff1d(protocol.pair_templates, known)
    if unknown.size:
        raise UserError(f"{pairs_file}: template {unknown[0]} (and {unknown.size - 1} more) has no image in {media_file}")
    _read_identification(protocol, known)
    return protocol


def _read_identification(protocol: IJBProtocol, known: np.ndarray) -> None:
    gallery_names = GALLERY_FILES[protocol.target]
    files = {name: protocol.meta(f"1N_gallery_{name}.csv") for name in gallery_names}
    probe_file = protocol.meta("1N_probe_mixed.csv")
    present = [path.is_file() for path in (*files.values(), probe_file)]
    if not any(present):
        return
    if not all(present):
        missing = [str(p) for p, here in zip((*files.values(), probe_file), present) if not here]
        raise UserError(f"{missing[0]}: not found (1:N needs both galleries and the mixed probes)")
    for name, path in files.items():
        protocol.galleries[name] = _read_1n(path)
    protocol.probes = _read_1n(probe_file)
    for path, (templates, _) in [*zip(files.values(), protocol.galleries.values()), (probe_file, protocol.probes)]:
        unknown = np.setdiff1d(templates, known)
        if unknown.size:
            raise UserError(f"{path}: template {unknown[0]} has no image in {protocol.meta('face_tid_mid.txt')}")


# ----------------------------------------------------------------------------- images -> features -> templates

class LandmarkAligner:
    """Image index -> aligned uint8 CHW face, from loose_crop/ and the listed landmarks."""

    def __init__(self, protocol: IJBProtocol):
        self.protocol = protocol

    def __call__(self, index: int) -> np.ndarray:
        from data.images import read_image_file
        from faces.alignment import align_face

        path = self.protocol.image_dir / self.protocol.images.names[index]
        rgb = read_image_file(path)
        try:
            face = align_face(rgb, self.protocol.images.landmarks[index])
        except ValueError as err:
            raise UserError(f"{self.protocol.meta('name_5pts_score.txt')}: line {index + 1} ({path.name}): "
                            f"unusable landmarks: {err}") from None
        return face.transpose(2, 0, 1)


def template_features(features: np.ndarray, templates: np.ndarray, medias: np.ndarray,
                      weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(template ids ascending, float64 unit template features): image features (times `weights`) averaged
    within each (template, media), the media summed within each template, then L2-normalised."""
    pairs, media_of_image = np.unique(np.stack([templates, medias], 1), axis=0, return_inverse=True)
    media_of_image = media_of_image.reshape(-1)
    order = np.argsort(media_of_image, kind="stable")  # the images of each media together, for reduceat
    grouped = np.asarray(features[order], dtype=np.float64)
    if weights is not None:
        grouped *= np.asarray(weights, dtype=np.float64)[order, None]
    starts = np.searchsorted(media_of_image[order], np.arange(pairs.shape[0]))
    media_mean = np.add.reduceat(grouped, starts, axis=0) / np.bincount(media_of_image)[:, None]
    del grouped
    template_ids, template_of_media = np.unique(pairs[:, 0], return_inverse=True)
    pooled = np.zeros((template_ids.size, features.shape[1]))
    np.add.at(pooled, template_of_media.reshape(-1), media_mean)
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    return template_ids, pooled / np.maximum(norms, 1e-12)


def template_rows(template_ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Rows of `wanted` template ids in the sorted `template_ids`."""
    return np.searchsorted(template_ids, wanted)


def pair_scores(template_ids: np.ndarray, template_feats: np.ndarray, pairs: np.ndarray,
                chunk: int = PAIR_CHUNK) -> np.ndarray:
    """float64 cosine of each template pair, `chunk` pairs at a time (15.7M pairs never gather 2 x 15.7M rows)."""
    scores = np.empty(pairs.shape[0])
    for start in range(0, pairs.shape[0], chunk):
        block = pairs[start:start + chunk]
        first = template_feats[template_rows(template_ids, block[:, 0])]
        second = template_feats[template_rows(template_ids, block[:, 1])]
        scores[start:start + chunk] = np.einsum("ij,ij->i", first, second)
    return scores


def search_galleries(protocol: IJBProtocol, template_ids: np.ndarray, template_feats: np.ndarray) -> dict:
    """gallery name -> identification.GallerySearch of the mixed probes against it."""
    from identification import search_gallery

    if protocol.probes is None:
        return {}
    probe_templates, probe_subjects = protocol.probes
    probes = template_feats[template_rows(template_ids, probe_templates)]
    return {name: search_gallery(probes, probe_subjects, template_feats[template_rows(template_ids, templates)],
                                 subjects)
            for name, (templates, subjects) in protocol.galleries.items()}
