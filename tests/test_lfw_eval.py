"""LFW from pairs.txt: the official-format parser, the aligned-image loader, raw photos through MTCNN +
alignment, and lfw_eval.py end to end."""
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from evaluation.protocols.lfw_raw import NO_FACE_CROP, load_pair_images, read_pairs
from faces.pipeline import PhotoAligner
from inference.weights import save_backbone_weights
from model import build_backbone
from tests.conftest import ROOT
from data.images import encode_jpeg
from tests.helpers import jpeg, skimage_photo
from utils import UserError

# Frank is Alice's twin (the same image): the mismatched Alice/Frank pair has distance ~0 and is
# always misclassified, so misclassified.txt and worst_pairs.png have something to show.
PEOPLE = {"Alice_Smith": (1, 4), "Bob_Jones": (2, 2), "Carol_White": (3, 3), "Dave_Brown": (4, 2),
          "Eve_Black": (5, 2), "Frank_Smith": (1, 2)}
PAIRS_TXT = """2\t3
Alice_Smith\t1\t2
Bob_Jones\t1\t2
Carol_White\t1\t3
Alice_Smith\t1\tBob_Jones\t2
Carol_White\t2\tDave_Brown\t1
Alice_Smith\t3\tFrank_Smith\t1
Dave_Brown\t1\t2
Eve_Black\t1\t2
Alice_Smith\t2\t4
Bob_Jones\t1\tEve_Black\t2
Dave_Brown\t2\tFrank_Smith\t2
Carol_White\t1\tEve_Black\t1
"""


def write_lfw(root):
    for name, (seed, count) in PEOPLE.items():
        (root / name).mkdir(parents=True)
        for n in range(1, count + 1):
            (root / name / f"{name}_{n:04d}.jpg").write_bytes(jpeg(seed))
    return root


@pytest.fixture(scope="module")
def lfw(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lfw")
    write_lfw(tmp / "lfw")
    (tmp / "pairs.txt").write_text(PAIRS_TXT)
    torch.manual_seed(0)
    save_backbone_weights(build_backbone("mobilefacenet"), tmp / "model_mobilefacenet.pth")
    return tmp


def test_read_pairs_order_labels_paths(lfw):
    pairs, folds = read_pairs(lfw / "pairs.txt", lfw / "lfw")
    assert folds == 2 and len(pairs) == 12
    assert [p.issame for p in pairs] == [True] * 3 + [False] * 3 + [True] * 3 + [False] * 3
    root = lfw / "lfw"
    assert pairs[0] == (root / "Alice_Smith/Alice_Smith_0001.jpg", root / "Alice_Smith/Alice_Smith_0002.jpg", True)
    assert pairs[5] == (root / "Alice_Smith/Alice_Smith_0003.jpg", root / "Frank_Smith/Frank_Smith_0001.jpg", False)
    assert pairs[8].path2 == root / "Alice_Smith/Alice_Smith_0004.jpg"


def test_load_pair_images(lfw):
    pairs, _ = read_pairs(lfw / "pairs.txt", lfw / "lfw")
    decoded = []
    images = load_pair_images(pairs, progress=decoded.append)
    assert images.shape == (24, 3, 112, 112) and images.dtype == np.uint8
    assert len(decoded) == 15  # distinct files, each decoded once
    assert np.array_equal(images[0], images[1]) and not np.array_equal(images[6], images[7])


def replace_line(text, lineno, new):
    lines = text.splitlines()
    lines[lineno - 1] = new
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("text, message", [
    (replace_line(PAIRS_TXT, 1, "2"), "pairs.txt:1: header must be"),
    (replace_line(PAIRS_TXT, 3, "Bob_Jones\t1\tEve_Black\t2"), "pairs.txt:3: expected a matched pair"),
    (replace_line(PAIRS_TXT, 6, "Carol_White\t2\t1"), "pairs.txt:6: expected a mismatched pair"),
    (replace_line(PAIRS_TXT, 9, "Dave_Brown\tone\t2"), "pairs.txt:9: image number must be"),
    (PAIRS_TXT + "Alice_Smith\t1\t2\n",
     ("header declares 2 folds x 3 matched + 3 mismatched = 12 pair lines, but the file has 13")),
    ("\n".join(PAIRS_TXT.splitlines()[:-1]) + "\n", "but the file has 11"),
    (replace_line(PAIRS_TXT, 2, "Alice_Smith\t1\t7"), "Alice_Smith_0007.jpg: image named in"),
])
def test_read_pairs_errors(lfw, tmp_path, text, message):
    (tmp_path / "pairs.txt").write_text(text)
    with pytest.raises(UserError) as err:
        read_pairs(tmp_path / "pairs.txt", lfw / "lfw")
    assert message in str(err.value)


def test_load_rejects_unaligned_size(tmp_path):
    root = tmp_path / "lfw"
    write_lfw(root)
    (root / "Bob_Jones" / "Bob_Jones_0002.jpg").write_bytes(jpeg(9, size=250))
    (tmp_path / "pairs.txt").write_text(PAIRS_TXT)
    pairs, _ = read_pairs(tmp_path / "pairs.txt", root)
    with pytest.raises(UserError, match=r"Bob_Jones_0002.jpg: expected an aligned 112x112 face, got 250x250"):
        load_pair_images(pairs)


def run_lfw_eval(*args):
    return subprocess.run([sys.executable, str(ROOT / "lfw_eval.py"), *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, check=False)


def test_lfw_eval_end_to_end(lfw):
    out = lfw / "report"
    result = run_lfw_eval("--model", lfw / "model_mobilefacenet.pth", "--lfw_dir", lfw / "lfw",
                          "--pairs", lfw / "pairs.txt", "--aligned", "--batch_size", "8", "--device", "cpu",
                          "--out", out, "--worst", "4")
    assert result.returncode == 0, result.stderr
    assert "mobilefacenet (ours weights, RGB input)" in result.stdout
    assert "12 pairs, 2 folds, 24 images" in result.stdout
    assert "LFW accuracy: 0." in result.stdout and " +- " in result.stdout
    fold_line = next(line for line in result.stdout.splitlines() if line.startswith("fold accuracies: "))
    assert len(fold_line.split()) == 4
    assert sorted(p.name for p in out.iterdir()) == ["misclassified.txt", "roc_lfw.png", "worst_pairs.png"]
    rows = [line.split("\t") for line in (out / "misclassified.txt").read_text().splitlines()
            if not line.startswith("#")]
    twin = [row for row in rows if row[5] == "Alice_Smith/Alice_Smith_0003.jpg"]
    assert twin and twin[0][:3] == ["1", "6", "different"] and twin[0][6] == "Frank_Smith/Frank_Smith_0001.jpg"
    assert float(twin[0][3]) < float(twin[0][4])
    assert (out / "worst_pairs.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- raw photos: two real faces (scikit-image's astronaut and cameraman) rendered as LFW-style 250x250
# photos from several views (rotation, zoom, shift), plus one photo without a face.
SOURCES = {"Eileen_Collins": ("astronaut", (224, 117), 88), "Camera_Man": ("camera", (226, 155), 56)}
VIEWS = [(0, 1.0, (0, 0)), (-15, 0.9, (6, -4)), (12, 1.1, (-5, 5)), (20, 1.0, (3, 8))]
RAW_PAIRS_TXT = """2\t3
Eileen_Collins\t1\t2
Camera_Man\t1\t3
Eileen_Collins\t3\t4
Eileen_Collins\t1\tCamera_Man\t2
Camera_Man\t4\tNobody_Home\t1
Eileen_Collins\t2\tCamera_Man\t3
Eileen_Collins\t1\t3
Camera_Man\t2\t4
Camera_Man\t1\t2
Eileen_Collins\t4\tCamera_Man\t1
Eileen_Collins\t3\tCamera_Man\t4
Eileen_Collins\t2\tNobody_Home\t1
"""


def lfw_photo(rgb, centre, face_px, angle, zoom, shift):
    """250x250 with the face (~90 px * zoom) near the centre, rotated by `angle` degrees."""
    matrix = cv2.getRotationMatrix2D(centre, angle, zoom * 90 / face_px)
    matrix[:, 2] += (125 + shift[0] - centre[0], 125 + shift[1] - centre[1])
    return cv2.warpAffine(rgb, matrix, (250, 250), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT)


@pytest.fixture(scope="module")
def raw_lfw(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("raw_lfw")
    for name, (photo, centre, face_px) in SOURCES.items():
        (tmp / "lfw" / name).mkdir(parents=True)
        rgb = skimage_photo(photo)
        for n, view in enumerate(VIEWS, start=1):
            (tmp / "lfw" / name / f"{name}_{n:04d}.jpg").write_bytes(encode_jpeg(lfw_photo(rgb, centre, face_px, *view)))
    (tmp / "lfw" / "Nobody_Home").mkdir()
    (tmp / "lfw" / "Nobody_Home" / "Nobody_Home_0001.jpg").write_bytes(encode_jpeg(skimage_photo("coffee")[:250, :250]))
    (tmp / "pairs.txt").write_text(RAW_PAIRS_TXT)
    torch.manual_seed(0)
    save_backbone_weights(build_backbone("mobilefacenet"), tmp / "model_mobilefacenet.pth")
    return tmp


def test_photo_aligner_undoes_the_view(raw_lfw):
    from faces.mtcnn import MTCNN
    aligner = PhotoAligner(MTCNN(), NO_FACE_CROP, root=raw_lfw / "lfw")
    faces = {name: [aligner(raw_lfw / "lfw" / name / f"{name}_{n:04d}.jpg").astype(np.float64)
                    for n in range(1, len(VIEWS) + 1)] for name in SOURCES}
    assert aligner.fallbacks == []
    inner = (slice(None), slice(16, 96), slice(16, 96))

    def diff(a, b):
        return np.abs(a[inner] - b[inner]).mean()

    same = [diff(faces[name][0], view) for name in SOURCES for view in faces[name][1:]]
    other = [diff(a, b) for a in faces["Eileen_Collins"] for b in faces["Camera_Man"]]
    assert max(same) < 25 and min(other) > 2.5 * max(same), (same, other)
    blank = aligner(raw_lfw / "lfw" / "Nobody_Home" / "Nobody_Home_0001.jpg")
    assert blank.shape == (3, 112, 112) and aligner.fallbacks == [raw_lfw / "lfw" / "Nobody_Home" / "Nobody_Home_0001.jpg"]


def test_lfw_eval_raw_photos_end_to_end(raw_lfw):
    out, saved = raw_lfw / "report", raw_lfw / "aligned"
    result = run_lfw_eval("--model", raw_lfw / "model_mobilefacenet.pth", "--lfw_dir", raw_lfw / "lfw",
                          "--pairs", raw_lfw / "pairs.txt", "--batch_size", "8", "--device", "cpu",
                          "--out", out, "--save_aligned", saved)
    assert result.returncode == 0, result.stderr
    assert "12 pairs, 2 folds, 24 images" in result.stdout
    assert "no face found in 1 of 9 photos" in result.stdout
    # Aligned views of one photo are nearly the same image, so even an untrained network ranks every
    # matched pair closer than every mismatched one (AUC 1; the 6-pair folds' thresholds are too coarse
    # for the accuracy to say so).
    assert "LFW accuracy: " in result.stdout and "AUC 1.0000, EER 0.0000" in result.stdout
    assert (out / "no_face.txt").read_text() == "Nobody_Home/Nobody_Home_0001.jpg\n"
    written = sorted(str(path.relative_to(saved)) for path in saved.rglob("*.jpg"))
    assert len(written) == 9 and "Camera_Man/Camera_Man_0004.jpg" in written
    assert cv2.imread(str(saved / written[0])).shape == (112, 112, 3)
    again = run_lfw_eval("--model", raw_lfw / "model_mobilefacenet.pth", "--lfw_dir", saved, "--aligned",
                         "--pairs", raw_lfw / "pairs.txt", "--device", "cpu", "--out", raw_lfw / "report2")
    assert again.returncode == 0, again.stderr
    assert "AUC 1.0000, EER 0.0000" in again.stdout


@pytest.mark.parametrize("extra, message", [
    (["--aligned", "--save_aligned", "x"], "--save_aligned and --mtcnn_weights are for raw photos"),
    (["--mtcnn_weights", "{tmp}"], "pnet.pt: MTCNN weight file not found"),
    (["--save_aligned", "{lfw}"], "would overwrite the photos in --lfw_dir"),
    (["--min_face_size", "8"], "--min_face_size must be >= 12"),
])
def test_lfw_eval_raw_errors(raw_lfw, tmp_path, extra, message):
    extra = [arg.format(tmp=tmp_path, lfw=raw_lfw / "lfw") for arg in extra]
    result = run_lfw_eval("--model", raw_lfw / "model_mobilefacenet.pth", "--lfw_dir", raw_lfw / "lfw",
                          "--pairs", raw_lfw / "pairs.txt", "--device", "cpu", "--out", tmp_path / "out", *extra)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not (tmp_path / "out").exists()
