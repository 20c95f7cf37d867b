"""LFW from pairs.txt: the official-format parser, the aligned-image loader and lfw_eval.py end to end."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from benchmarks.lfw_raw import load_pair_images, read_pairs
from model import build_backbone, save_backbone_weights
from tests.conftest import ROOT
from tests.helpers import jpeg
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


def test_lfw_eval_requires_aligned(lfw):
    result = run_lfw_eval("--model", lfw / "model_mobilefacenet.pth", "--lfw_dir", lfw / "lfw",
                          "--pairs", lfw / "pairs.txt")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--aligned" in lines[0]
    assert "faces" in lines[0]
